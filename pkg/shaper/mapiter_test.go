package shaper

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// eachEntry reads a hash map of several batches' worth of entries exactly
// as a key-by-key walk does: every entry once, with its value.
func TestRootEachEntryReadsEveryEntry(t *testing.T) {
	nettest.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: uint32(len(devVal{}.Netns) + len(devVal{}.Name) + 8), MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const n = 3*batchEntries + 7
	for i := range n {
		v := devVal{Budget: uint32(i) * 3}
		v.setDevice(Device{Netns: "/run/netns/x", Name: "eth0"})
		if err := m.Put(devKey{NetnsIno: uint64(i), Ifindex: uint32(i), Hook: Hook(i % 2)}, v); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint64]int{}
	if err := eachEntry(m, func(k devKey, v devVal) {
		seen[k.NetnsIno]++
		if v.Budget != uint32(k.NetnsIno)*3 || k.Ifindex != uint32(k.NetnsIno) || cstr(v.Name[:]) != "eth0" {
			t.Errorf("entry %+v read as %+v", k, v)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("read %d distinct entries, want %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("entry %d read %d times", k, c)
		}
	}
}
