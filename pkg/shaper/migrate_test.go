package shaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// v1Object is the BPF object of the hash-map layout (bpf/edt.c before the
// budget maps became arrays), as bpf2go generated it then.
const v1Object = "testdata/edt_v1_bpfel.o"

// v1Install builds what an old binary left in dir: the v1 maps pinned, one
// budget (id v1ID) with a config, clocks and counters, and the v1 no-fq
// policer (it needs no sch_fq, so the test runs on the host and in the VM
// guests alike) attached at dev's tc egress and recorded in the registry. It
// returns the ids of every v1 map and of the program, and closes its own
// handles: from here on only the attachment holds them.
func v1Install(t *testing.T, dir string, dev Device, v1ID uint32, b Budget) (mapIDs []ebpf.MapID, progID ebpf.ProgramID) {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(v1Object)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Maps["netshape_cfg"].Type != ebpf.Hash {
		t.Fatalf("%s is not the hash layout", v1Object)
	}
	for n := range spec.Programs {
		if n != limitName {
			delete(spec.Programs, n)
		}
	}
	if err := spec.Variables["budget_id"].Set(v1ID); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		t.Fatal(err)
	}
	pin := ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	coll, err := ebpf.NewCollectionWithOptions(spec, pin)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	names, err := ebpf.NewMapWithOptions(namesSpec(), pin.Maps)
	if err != nil {
		t.Fatal(err)
	}
	defer names.Close()
	devs, err := ebpf.NewMapWithOptions(devsSpec(), pin.Maps)
	if err != nil {
		t.Fatal(err)
	}
	defer devs.Close()

	var raw [maxNameLen + 1]byte
	copy(raw[:], b.Name)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	stats := make([]edtBudgetStats, ncpu)
	stats[0].Packets, stats[0].Bytes = 1_000_000, 1_500_000_000 // recognisable once carried over
	cfg := b.cfg()
	cfg.Flags |= budgetNoFq
	for _, w := range []struct {
		m   *ebpf.Map
		val any
	}{
		{names, raw},
		{coll.Maps["netshape_state"], v1BudgetState{}},
		{coll.Maps["netshape_stats"], stats},
		{coll.Maps["netshape_pcfg"], edtPoliceCfg{TolNs: uint64(b.PoliceTolerance())}},
		{coll.Maps["netshape_pstate"], edtPoliceState{}},
		{coll.Maps["netshape_pstats"], make([]edtPoliceStats, ncpu)},
		{coll.Maps["netshape_cfg"], cfg},
	} {
		if err := w.m.Update(v1ID, w.val, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("v1 budget into %s: %v", w.m, err)
		}
	}
	prog := coll.Programs[limitName]

	ns, err := openNetns(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.close()
	l, err := ns.link(dev)
	if err != nil {
		t.Fatal(err)
	}
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index), Hook: HookShape}
	// The v1 layout attached a budget's own instance with TCX where the kernel had it.
	old := &Shaper{pinDir: dir}
	mode, ownClsact := ModeTCX, false
	err = old.attachTCX(ns, key, nil, prog, limitName, dev)
	if errors.Is(err, link.ErrNotSupported) {
		mode = ModeLegacy
		ownClsact, err = attachLegacy(ns, l, prog, limitName, dev, HookShape, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	val := devVal{Budget: v1ID, Mode: uint8(mode), Datapath: uint8(DatapathPolicing)}
	if ownClsact {
		val.Flags |= flagOwnClsact
	}
	val.setDevice(dev)
	if err := devs.Update(key, val, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	held := []*ebpf.Map{names}
	for _, m := range coll.Maps {
		held = append(held, m)
	}
	for _, m := range held {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		mapIDs = append(mapIDs, id)
	}
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	progID, _ = info.ID()
	return mapIDs, progID
}

// TestRootMigrateFromHashLayout: a host that ran a binary with the v1 (hash)
// layout, a device shaped by it and TCP flowing through it. The new binary's
// Open moves the old pins aside and carries the budget over without touching
// the device; the next reconcile (here its two shaper calls: the same budget
// upserted, the device attached) swaps the new program in. Throughout, the
// limit holds and traffic flows; afterwards the old pins are gone, the old
// maps and program are freed with the last reference, and the budget kept its
// config and counters.
func TestRootMigrateFromHashLayout(t *testing.T) {
	nettest.RequireRoot(t)
	const (
		rate   = 20_000_000
		window = 3 * time.Second
		name   = "mig/_default_/egress"
		v1ID   = 0x5eed1234 // any id the v1 FNV allocator could have picked
	)
	dir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := ensureBPFFS(filepath.Dir(dir)); err != nil {
		t.Fatal(err)
	}
	app, client := nettest.NewNetns(t, "mapp"), nettest.NewNetns(t, "mcli")
	p := nettest.NewPair(t, app, client, 71)
	dev := Device{Netns: app.Path, Name: p.NameA}
	b := Budget{Name: name, Rate: rate}
	oldMaps, oldProg := v1Install(t, dir, dev, v1ID, b)

	ln, err := traffic.ListenIn(client.Path, p.IPB+":0")
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() {
		_, err := traffic.Send(ctx, traffic.SendOptions{Addr: sink.Addr().String(), Duration: 4*window + 10*time.Second, Dial: traffic.DialIn(app.Path)})
		sent <- err
	}()
	// The policer lets a burst of its tolerance through on top of the rate;
	// any window may hold it once. Unshaped, a veth carries gigabits.
	maxBits := func(w time.Duration) float64 {
		return float64(rate)*(w+max(DefaultHorizon(rate), NoFqTolerance)).Seconds() + 64<<10*8
	}
	measure := func(what string, w time.Duration) int64 {
		t.Helper()
		b0, t0 := sink.Bytes(), time.Now()
		time.Sleep(w)
		got, took := sink.Bytes()-b0, time.Since(t0)
		t.Logf("%s: %.2f Mbit/s over %s", what, float64(got)*8/took.Seconds()/1e6, took.Round(time.Millisecond))
		if bits := float64(got) * 8; bits > maxBits(took) {
			t.Errorf("%s: %.0f bits in %s through a %d bit/s limit, want at most %.0f", what, bits, took, rate, maxBits(took))
		}
		return got
	}
	time.Sleep(time.Second) // past TCP's first round trips
	if measure("v1 program", window) == 0 {
		t.Fatal("no traffic through the v1 program: the setup is broken")
	}

	// One window spans the migration: Open and the re-attach in its middle.
	b0, t0 := sink.Bytes(), time.Now()
	time.Sleep(window / 3)
	s, err := Open(Options{PinDir: dir})
	if err != nil {
		t.Fatalf("open over the v1 layout: %v", err)
	}
	defer s.Destroy()
	if _, err := os.Stat(filepath.Join(dir, stashDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the v1 pins' stash is still there after Open: %v", err)
	}
	st, err := s.Budget(name)
	if err != nil {
		t.Fatalf("budget after migration: %v", err)
	}
	if st.Rate != rate || st.Horizon != DefaultHorizon(rate) || st.Stats.Packets < 1_000_000 {
		t.Errorf("budget after migration %+v: want rate %d, horizon %s and the v1 counters (>= 1e6 packets)", st, rate, DefaultHorizon(rate))
	}
	atts, err := s.Attachments()
	if err != nil || len(atts) != 1 || atts[0].Budget != name || atts[0].BudgetID != st.ID {
		t.Fatalf("attachments after migration: %+v %v; want %s on budget %q slot %d", atts, err, dev, name, st.ID)
	}
	// What reconcile does for the app: the same budget, the device attached.
	if err := s.UpsertBudget(b); err != nil {
		t.Fatal(err)
	}
	a, err := s.Attach(dev, name, AttachOptions{NoFq: true})
	if err != nil {
		t.Fatalf("re-attach after migration: %v", err)
	}
	if a.Unchanged || a.Datapath != DatapathPolicing {
		t.Fatalf("re-attach after migration: %+v; want the program replaced, policing", a)
	}
	time.Sleep(max(0, window-time.Since(t0)))
	got, took := sink.Bytes()-b0, time.Since(t0)
	t.Logf("across Open and re-attach: %.2f Mbit/s over %s", float64(got)*8/took.Seconds()/1e6, took.Round(time.Millisecond))
	if got == 0 || float64(got)*8 > maxBits(took) {
		t.Errorf("%d bytes in %s across Open and re-attach: want some and at most %.0f bits", got, took, maxBits(took))
	}
	if measure("new program", window) == 0 {
		t.Error("no traffic through the new program")
	}
	if a, err := s.Attach(dev, name, AttachOptions{NoFq: true}); err != nil || !a.Unchanged {
		t.Errorf("second attach: %+v %v; want unchanged", a, err)
	}
	if st2, err := s.Budget(name); err != nil || st2.Stats.Packets <= st.Stats.Packets {
		t.Errorf("new program's counters: %+v %v; want more than %d packets", st2.Stats, err, st.Stats.Packets)
	}
	cancel()
	if err := <-sent; err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("sender: %v", err)
	}

	// Nothing of the v1 layout is left: no pin, and (once the kernel has
	// released them) no map or program.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	want := []string{"links", "netshape_cfg", "netshape_devs", "netshape_flows", "netshape_names", "netshape_pcfg", "netshape_pstate", "netshape_pstats", "netshape_state", "netshape_stats", "progs"}
	if !slices.Equal(left, want) {
		t.Errorf("pins after migration: %v, want %v", left, want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The library unmaps a collection's .rodata (which holds a
		// reference to it) only when the collection is collected.
		runtime.GC()
		var alive []string
		for _, id := range oldMaps {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				info, _ := m.Info()
				alive = append(alive, info.Name)
				m.Close()
			}
		}
		if p, err := ebpf.NewProgramFromID(oldProg); err == nil {
			alive = append(alive, "program "+limitName)
			p.Close()
		}
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v1 objects still alive after re-attach: %v", alive)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRootMigrateResumes: a migration that died part way (some pins moved
// aside, or all of them but nothing carried yet) is finished by the next Open:
// the budget arrives with its config and the device is re-attached by the
// next Attach.
func TestRootMigrateResumes(t *testing.T) {
	nettest.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		moved []string // pins the dead run had moved into the stash
	}{
		{"some pins moved", v1Maps[:3]},
		{"all pins moved", v1Maps},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := ensureBPFFS(filepath.Dir(dir)); err != nil {
				t.Fatal(err)
			}
			p := nettest.NewPair(t, nettest.NewNetns(t, "mres"), nil, 72)
			dev := Device{Netns: p.A.Path, Name: p.NameA}
			b := Budget{Name: "res/_default_/egress", Rate: 5_000_000}
			v1Install(t, dir, dev, 77, b)
			if err := os.MkdirAll(filepath.Join(dir, stashDir), 0o700); err != nil {
				t.Fatal(err)
			}
			for _, n := range tc.moved {
				if err := os.Rename(filepath.Join(dir, n), filepath.Join(dir, stashDir, n)); err != nil {
					t.Fatal(err)
				}
			}
			s, err := Open(Options{PinDir: dir})
			if err != nil {
				t.Fatalf("open after an interrupted migration: %v", err)
			}
			defer s.Destroy()
			st, err := s.Budget(b.Name)
			if err != nil || st.Rate != b.Rate || st.Stats.Packets < 1_000_000 {
				t.Fatalf("budget after resumed migration: %+v %v; want rate %d and the v1 counters", st, err, b.Rate)
			}
			if _, err := os.Stat(filepath.Join(dir, stashDir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stash left after the resumed migration: %v", err)
			}
			a, err := s.Attach(dev, b.Name, AttachOptions{NoFq: true})
			if err != nil || a.Unchanged || a.BudgetID != st.ID {
				t.Fatalf("attach after resumed migration: %+v %v; want the program replaced on slot %d", a, err, st.ID)
			}
		})
	}
}

// TestRootMigrateConcurrentOpens: readers open the shaper without the
// reconcile lock, so several processes may meet one v1 layout at once. Every
// Open succeeds and the budget ends up in exactly one slot.
func TestRootMigrateConcurrentOpens(t *testing.T) {
	nettest.RequireRoot(t)
	dir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := ensureBPFFS(filepath.Dir(dir)); err != nil {
		t.Fatal(err)
	}
	p := nettest.NewPair(t, nettest.NewNetns(t, "mcon"), nil, 73)
	b := Budget{Name: "con/_default_/egress", Rate: 5_000_000}
	v1Install(t, dir, Device{Netns: p.A.Path, Name: p.NameA}, 99, b)
	const opens = 4
	errs := make(chan error, opens)
	shapers := make(chan *Shaper, opens)
	for range opens {
		go func() {
			s, err := Open(Options{PinDir: dir})
			errs <- err
			shapers <- s
		}()
	}
	for range opens {
		if err := <-errs; err != nil {
			t.Errorf("concurrent open over the v1 layout: %v", err)
		}
		if s := <-shapers; s != nil {
			defer s.Close()
		}
	}
	s, err := Open(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	names, err := s.allNames()
	if err != nil || len(names) != 1 {
		t.Fatalf("names after concurrent migrations: %v %v; want the one budget once", names, err)
	}
	if st, err := s.Budget(b.Name); err != nil || st.Rate != b.Rate {
		t.Fatalf("budget after concurrent migrations: %+v %v", st, err)
	}
}

// TestRootConcurrentOpensOnAFreshDirectory: the watcher, the CLI and a
// report may all open the shaper for the first time at once (first install).
// Two creators of one pin used to meet with "pin map: file exists".
func TestRootConcurrentOpensOnAFreshDirectory(t *testing.T) {
	nettest.RequireRoot(t)
	for round := range 5 {
		dir := fmt.Sprintf("/sys/fs/bpf/netshape-test-%s-%d", nettest.Suffix(), round)
		t.Cleanup(func() { os.RemoveAll(dir) })
		const opens = 6
		errs := make(chan error, opens)
		start := make(chan struct{})
		for range opens {
			go func() {
				<-start
				s, err := Open(Options{PinDir: dir})
				if err == nil {
					err = s.UpsertBudget(Budget{Name: "fresh/_default_/egress", Rate: 1_000_000})
					s.Close()
				}
				errs <- err
			}()
		}
		close(start)
		for range opens {
			if err := <-errs; err != nil {
				t.Errorf("round %d: concurrent first open: %v", round, err)
			}
		}
		s, err := Open(Options{PinDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		names, err := s.allNames()
		s.Close()
		if err != nil || len(names) != 1 {
			t.Fatalf("round %d: names after concurrent first opens: %v %v; want the one budget once", round, names, err)
		}
	}
}

// TestRootAllocateJoinsANameRegisteredMeanwhile is the window behind
// concurrent first opens, made deterministic: another process registers a
// budget's name after this one found it missing. Allocating it then must
// give the slot already holding that name, not a second slot for the same
// budget, and must not reset it (fresh is false).
func TestRootAllocateJoinsANameRegisteredMeanwhile(t *testing.T) {
	s := openTestShaper(t)
	other, err := Open(Options{PinDir: s.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	const name = "meanwhile/_default_/egress"
	first, fresh, err := other.allocateID(name)
	if err != nil || !fresh {
		t.Fatalf("first allocation: slot %d fresh %v: %v", first, fresh, err)
	}
	again, fresh, err := s.allocateID(name) // as if its lookupID had run just before
	if err != nil || again != first || fresh {
		t.Fatalf("second allocation of %q: slot %d fresh %v (%v); want slot %d, not fresh", name, again, fresh, err, first)
	}
	names, err := s.allNames()
	if err != nil || len(names) != 1 {
		t.Fatalf("names: %v %v; want %q once", names, err, name)
	}
}
