package edt

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// skbCtx is a struct __sk_buff (192 bytes) with wire_len and tstamp set.
func skbCtx(wireLen uint32, tstamp uint64) []byte {
	b := make([]byte, 192)
	binary.LittleEndian.PutUint32(b[offWireLen:], wireLen)
	binary.LittleEndian.PutUint64(b[offTstamp:], tstamp)
	return b
}

func monoNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestRootEDTStampsAsCilium runs the program through BPF_PROG_TEST_RUN (root, this host's kernel):
// an idle clock lets a packet go unstamped, the next one within the same frame time is stamped
// exactly one frame time after the first, a clock beyond the horizon drops and counts, and a later
// timestamp TCP already set is kept.
func TestRootEDTStampsAsCilium(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestRoot* needs root (BPF_PROG_TEST_RUN)")
	}
	const wire = 1514
	p, err := Load(8e6, Horizon) // 1e6 bytes/s: one frame = 1.514 ms
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	frame := uint64(wire) * 1e9 / 1e6
	data := make([]byte, wire-14) // test_run adds nothing; wire_len may exceed len
	run := func(tstamp uint64) (uint32, uint64) {
		t.Helper()
		out := make([]byte, 192)
		ret, err := p.Prog.Run(&ebpf.RunOptions{Data: data, Context: skbCtx(wire, tstamp), ContextOut: out})
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		return ret, binary.LittleEndian.Uint64(out[offTstamp:])
	}
	state := func() [2]uint64 {
		var v [2]uint64
		if err := p.State.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	before := monoNow(t)
	if ret, ts := run(0); ret != 0 || ts != 0 {
		t.Fatalf("first packet on an idle clock: ret %d tstamp %d, want 0 and unstamped", ret, ts)
	}
	tLast := state()[0]
	if tLast < before || tLast > monoNow(t) {
		t.Fatalf("clock after the first packet %d, want the time it ran (%d..now)", tLast, before)
	}
	if ret, ts := run(0); ret != 0 || ts != tLast+frame {
		t.Fatalf("second packet: ret %d tstamp %d, want 0 and %d (one frame time after the first)", ret, ts, tLast+frame)
	}

	far := [2]uint64{monoNow(t) + 3e9, 0}
	if err := p.State.Put(uint32(0), far); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(0); ret != 2 {
		t.Fatalf("clock 3 s ahead (horizon 2 s): ret %d, want TC_ACT_SHOT", ret)
	}
	if d, err := p.Drops(); err != nil || d != 1 {
		t.Fatalf("drops %d (%v), want 1", d, err)
	}
	if s := state(); s[0] != far[0] {
		t.Fatalf("a dropped packet moved the clock: %d, want %d", s[0], far[0])
	}

	if err := p.State.Put(uint32(0), [2]uint64{0, 0}); err != nil {
		t.Fatal(err)
	}
	later := monoNow(t) + 10e6
	if ret, ts := run(later); ret != 0 || ts != later {
		t.Fatalf("packet TCP stamped 10 ms ahead: ret %d tstamp %d, want 0 and %d kept", ret, ts, later)
	}
	if s := state(); s[0] != later {
		t.Fatalf("clock %d, want it caught up to the packet's own time %d", s[0], later)
	}
}

func TestLoadRefusesBadRates(t *testing.T) {
	for _, r := range []uint64{0, 7999, 1 << 40} {
		if p, err := Load(r, Horizon); err == nil {
			p.Close()
			t.Errorf("Load(%d) succeeded, want an error", r)
		}
	}
}
