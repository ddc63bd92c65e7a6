package traffic

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

func rxBytes(t *testing.T, dev string) int64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + dev + "/statistics/rx_bytes")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The flood really skips the sender's qdisc and tc egress hook: a drop-all program at TCX egress
// and an 8 kbit/s TBF root on the sending device stop nothing of it, as they would a normal socket.
func TestRootBypassFloodSkipsQdiscAndTcEgress(t *testing.T) {
	nettest.RequireRoot(t)
	p := nettest.NewPair(t, nettest.NewNetns(t, "byp"), nil, 61)
	p.A.Run(t, "tc", "qdisc", "add", "dev", p.NameA, "root", "tbf", "rate", "8kbit", "burst", "1600", "latency", "1ms")
	drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* TC_ACT_SHOT */), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer drop.Close()
	err = InNetns(p.A.Path, func() error {
		ifc, err := net.InterfaceByName(p.NameA)
		if err != nil {
			return err
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: drop, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.InterfaceByName(p.NameB)
	if err != nil {
		t.Fatal(err)
	}
	before := rxBytes(t, p.NameB)
	res, err := BypassFlood(context.Background(), BypassOptions{Netns: p.A.Path, Dev: p.NameA, DstMAC: peer.HardwareAddr,
		DstIP: net.ParseIP(p.IPB), DstPort: 9, Size: 1000, Duration: 5 * time.Second, MaxFrames: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Frames+res.Refused != 2000 || res.Frames < 1000 || res.Bytes != res.Frames*1000 {
		t.Fatalf("flood result %+v, want 2000 frames tried, most of them sent", res)
	}
	// Everything the socket took reached the peer (no qdisc to wait in, no program to drop it).
	time.Sleep(100 * time.Millisecond)
	if got := rxBytes(t, p.NameB) - before; got < res.Bytes {
		t.Fatalf("peer received %d bytes of the %d sent: the flood went through the qdisc or tc egress", got, res.Bytes)
	}
	if _, err := BypassFlood(context.Background(), BypassOptions{Dev: p.NameB, DstMAC: peer.HardwareAddr, DstIP: net.ParseIP(p.IPA),
		Size: 1515, Duration: time.Second}); err == nil {
		t.Fatal("oversized frame accepted")
	}
}
