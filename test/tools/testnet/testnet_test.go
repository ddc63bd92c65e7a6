package testnet

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// TestRootPairCarriesTCP: a pair's namespaces exist, are connected, and traffic.ListenIn/DialIn really
// open their sockets on either side; afterwards everything is gone.
func TestRootPairCarriesTCP(t *testing.T) {
	RequireRoot(t)
	var p *Pair
	t.Run("traffic", func(t *testing.T) {
		p = NewPair(t)
		if out := RunIn(t, p.NsA, "ip", "-br", "addr", "show", "dev", p.DevA); !strings.Contains(out, p.AddrA+"/24") {
			t.Fatalf("A's address missing: %s", out)
		}
		ln, err := traffic.ListenIn(p.PathB(), net.JoinHostPort(p.AddrB, "0"))
		if err != nil {
			t.Fatal(err)
		}
		sink := traffic.NewSink(ln)
		defer sink.Close()
		// From the test's own namespace the address must be unreachable: it only exists inside B.
		if c, err := net.DialTimeout("tcp", sink.Addr().String(), 300*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("reached %s from the caller's namespace", sink.Addr())
		}
		res, err := traffic.Send(context.Background(), traffic.SendOptions{
			Addr: sink.Addr().String(), Duration: time.Second, Dial: traffic.DialIn(p.PathA()),
		})
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
	})
	for _, ns := range []string{p.NsA, p.NsB} {
		if _, err := os.Stat("/run/netns/" + ns); !os.IsNotExist(err) {
			t.Errorf("netns %s still there after cleanup (stat: %v)", ns, err)
		}
	}
}
