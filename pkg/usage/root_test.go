package usage

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// rmemMax is the most a TCP receiver here may hold unread (tcp_rmem's max).
func rmemMax(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The rate Between reports for a count-only budget on a veth pair is what
// the receiver got over the same moments, plus the headers the budget counts.
func TestRootBetweenMatchesReceiverOnRealTCP(t *testing.T) {
	nettest.RequireRoot(t)
	pinDir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy(); os.RemoveAll(pinDir) })
	appNs := nettest.NewNetns(t, "usage")
	p := nettest.NewPair(t, appNs, nil, 31)
	name := reconcile.BudgetName("web", reconcile.DefaultScope, reconcile.Egress)
	if err := s.UpsertBudget(shaper.Budget{Name: name, CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	// App egress is counted at the host-side veth's ingress, as reconcile does.
	if _, err := s.Attach(shaper.Device{Name: p.NameB}, name, shaper.AttachOptions{Hook: shaper.HookPolice}); err != nil {
		t.Fatal(err)
	}
	ln, err := traffic.ListenIn("", p.IPB+":0")
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := make(chan error, 1)
	go func() {
		_, err := traffic.Send(ctx, traffic.SendOptions{Addr: sink.Addr().String(), Duration: 4 * time.Second, Dial: traffic.DialIn(appNs.Path)})
		sent <- err
	}()
	time.Sleep(time.Second) // past slow start

	b0 := sink.Bytes()
	before, err := Take(s)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	after, err := Take(s)
	if err != nil {
		t.Fatal(err)
	}
	b1 := sink.Bytes()
	rows := Between(before, after, nil)
	if len(rows) != 1 || rows[0].App != "web" || rows[0].Direction != reconcile.Egress || rows[0].Limit != 0 {
		t.Fatalf("rows %+v, want web's counted egress", rows)
	}
	payload := float64(b1 - b0)
	recv := payload * 8 / after.At.Sub(before.At).Seconds()
	// Counted is payload plus 3..5.5 % of headers (pkg/shaper's real-TCP
	// count test); at either edge of the window up to a receive buffer's worth
	// may have been counted and not yet read, or read and counted before.
	slack := 2 * float64(rmemMax(t)) / payload
	ratio := rows[0].Rate / recv
	t.Logf("counted %s, receiver %s (ratio %.4f, allowed %.4f..%.4f)", Human(rows[0].Rate), Human(recv), ratio, 1.03-slack, 1.055+slack)
	if ratio < 1.03-slack || ratio > 1.055+slack {
		t.Errorf("counted rate %s against %s received: ratio %.4f outside %.4f..%.4f", Human(rows[0].Rate), Human(recv), ratio, 1.03-slack, 1.055+slack)
	}
	cancel()
	<-sent
}
