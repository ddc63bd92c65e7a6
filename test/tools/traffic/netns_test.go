package traffic

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// TestRootSocketsOpenInsideNamespaces: ListenIn/DialIn really put their sockets in the given
// namespaces (the address exists only there), and a transfer between them arrives whole.
func TestRootSocketsOpenInsideNamespaces(t *testing.T) {
	nettest.RequireRoot(t)
	p := nettest.NewPair(t, nettest.NewNetns(t, "trfa"), nettest.NewNetns(t, "trfb"), 31)
	ln, err := ListenIn(p.B.Path, net.JoinHostPort(p.IPB, "0"))
	if err != nil {
		t.Fatal(err)
	}
	sink := NewSink(ln)
	defer sink.Close()
	if c, err := net.DialTimeout("tcp", sink.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("reached %s from the test's own namespace", sink.Addr())
	}
	res, err := Send(context.Background(), SendOptions{Addr: sink.Addr().String(), Duration: time.Second, Dial: DialIn(p.A.Path)})
	if err != nil {
		t.Fatalf("send A→B: %v", err)
	}
	if res.Bytes == 0 {
		t.Fatal("nothing sent")
	}
	deadline := time.Now().Add(3 * time.Second)
	for sink.Bytes() != res.Bytes && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sink.Bytes() != res.Bytes {
		t.Errorf("B received %d bytes, A sent %d", sink.Bytes(), res.Bytes)
	}
	if _, err := ListenIn("/nonexistent/netns", "127.0.0.1:0"); err == nil {
		t.Error("ListenIn on a missing namespace succeeded")
	}
}
