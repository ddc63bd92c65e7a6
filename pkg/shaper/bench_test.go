package shaper

import (
	"errors"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// BenchmarkEDTPacket is the datapath's cost per packet, measured by the kernel
// (BPF_PROG_TEST_RUN repeat): budget lookups (array, by slot), flow lookup/update, the compare-and-swap
// clock update and the counters. Reported as ns/op per packet.
func BenchmarkEDTPacket(b *testing.B) {
	for _, tc := range []struct {
		name    string
		wireLen uint32
	}{{"bulk-9000B", 9000}, {"sparse-100B", 100}} {
		b.Run(tc.name, func(b *testing.B) {
			benchProg(b, Budget{Name: "bench", Rate: 10_000_000_000, Horizon: 20 * time.Second}, progName)
		})
	}
}

// BenchmarkCountPacket is the per-packet cost of a count-only attachment
// (netshape_count: one per-CPU counter lookup and two adds), next to
// BenchmarkEDTPacket's shaping cost; and BenchmarkLimitPacket that of the
// no-fq policer (netshape_limit: the shaping budget's clock without flows).
func BenchmarkCountPacket(b *testing.B) {
	benchProg(b, Budget{Name: "bench", CountOnly: true}, countName)
}

func BenchmarkLimitPacket(b *testing.B) {
	benchProg(b, Budget{Name: "bench", Rate: 10_000_000_000, Horizon: 20 * time.Second}, limitName)
}

// benchProg measures program name of budget bd per packet, in the kernel.
func benchProg(b *testing.B, bd Budget, name string) {
	s := openBenchShaper(b)
	if err := s.UpsertBudget(bd); err != nil {
		b.Fatal(err)
	}
	id, _, _ := s.lookupID(bd.Name)
	prog, err := s.load(id, bd.Name, name)
	if err != nil {
		b.Fatal(err)
	}
	frame := packet(0x0800, 0, 1)
	b.ResetTimer()
	_, per, err := prog.Benchmark(frame, b.N, func() {})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "kernel-ns/packet")
}

// BenchmarkRateChange is the control-plane cost of a live rate change.
func BenchmarkRateChange(b *testing.B) {
	s := openBenchShaper(b)
	for i := 0; i < b.N; i++ {
		if err := s.UpsertBudget(Budget{Name: "bench", Rate: uint64(20_000_000 + i%2*30_000_000)}); err != nil {
			b.Fatal(err)
		}
	}
}

func openBenchShaper(b *testing.B) *Shaper {
	b.Helper()
	s, err := Open(Options{PinDir: "/sys/fs/bpf/netshape-bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Destroy() })
	return s
}

// BenchmarkAttachDetach is one attach and one detach of a device's shaping
// program (a container start and stop), per op: with clsact + cls_bpf (the
// default) and with TCX, whose attach and detach each wait out an RCU grace
// period while holding RTNL. The program instances are loaded before the
// timer starts, as the watcher's are.
func BenchmarkAttachDetach(b *testing.B) {
	nettest.RequireRoot(b)
	noFq := errors.Is(FqSupport(), ErrNoFq)
	for _, mode := range []struct {
		name string
		tcx  bool
	}{{"tc", false}, {"tcx", true}} {
		b.Run(mode.name, func(b *testing.B) {
			s, err := Open(Options{PinDir: "/sys/fs/bpf/netshape-bench-attach", TCX: mode.tcx})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Destroy() })
			if err := s.UpsertBudget(Budget{Name: "attach", Rate: 20e6}); err != nil {
				b.Fatal(err)
			}
			if err := s.Preload("attach"); err != nil {
				b.Fatal(err)
			}
			p := nettest.NewPair(b, nettest.NewNetns(b, "att"), nil, 61)
			dev := Device{Name: p.NameB}
			b.ResetTimer()
			for range b.N {
				a, err := s.Attach(dev, "attach", AttachOptions{NoFq: noFq})
				if err != nil {
					b.Fatal(err)
				}
				if mode.tcx && a.Mode != ModeTCX {
					b.Skipf("kernel has no TCX: attached with %s", a.Mode)
				}
				if err := s.Detach(dev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
