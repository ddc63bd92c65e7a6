// Package shaper enforces bandwidth budgets on network devices with an eBPF
// earliest-departure-time (EDT) program at tc egress and an fq root qdisc that
// holds each packet until its departure time, and police app egress a second
// time with a backstop policer at tc ingress of the host-side veth.
//
// The shaper knows devices and budgets, nothing about Docker or Dokku. Every
// object it creates is owned by name: pins under one bpffs directory, programs
// and legacy filters named "netshape_edt" and "netshape_police", fq root qdiscs with handle 4e53:.
// Anything else on a device is left alone.
package shaper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where budgets, the device registry and TCX links are pinned.
const DefaultPinDir = "/sys/fs/bpf/netshape"

// Errors callers can test with errors.Is. Each returned error also names the
// device or budget it is about.
var (
	ErrNoFq         = errors.New("the kernel has no fq qdisc (sch_fq), which enforces departure times")
	ErrForeignQdisc = errors.New("device has a root qdisc that netshape does not own")
	ErrNoDevice     = errors.New("device not found")
	ErrNoNetns      = errors.New("network namespace not found")
	ErrNoBudget     = errors.New("no such budget")
	ErrBadBudget    = errors.New("invalid budget")
)

// Options configure Open.
type Options struct {
	// PinDir is the bpffs directory holding everything this shaper owns.
	// Default DefaultPinDir. Tests use their own so they never meet production state.
	PinDir string
	// TCX attaches a new device's programs with TCX links (kernel >= 6.6)
	// instead of clsact + cls_bpf. Off by default: each TCX attach or
	// detach waits out an RCU grace period while holding RTNL (~10 ms
	// natively, ~20 ms under emulation, against ~0.13 ms for a qdisc and
	// a filter), which made shaping 1,000 containers take 40 s and held
	// up every other network change on the host meanwhile. A device with
	// another tool's TCX programs at the hook gets TCX regardless (see
	// attachProg). Either way a device keeps the mode it was attached with.
	TCX bool
}

// Shaper holds the pinned maps. Attach may run on several goroutines at once
// for different devices (the hooks of one device go one after the other);
// budget changes and detaches are for one goroutine at a time. Callers
// serialise reconciles across processes (see pkg/reconcile).
type Shaper struct {
	pinDir string
	tcx    bool // Options.TCX
	spec   *ebpf.CollectionSpec
	maps   edtMaps
	names  *ebpf.Map // budget id -> name
	devs   *ebpf.Map // device (netns inode, ifindex) -> attachment

	mu      sync.Mutex
	progs   map[progKey]*ebpf.Program // one loaded program per budget id and hook
	mapIDs  map[ebpf.MapID]bool       // kernel ids of s.maps (progpin.go)
	loading map[progKey]*sync.Mutex   // one lock per program instance being loaded (progpin.go)
	hints   idHints                   // budget name -> id, checked before use (names.go)
}

type progKey struct {
	id   uint32
	prog string // netshape_edt, netshape_limit, netshape_count or netshape_police
}

// Open mounts bpffs if needed and loads (or re-opens) the pinned maps.
func Open(opts Options) (*Shaper, error) {
	dir := opts.PinDir
	if dir == "" {
		dir = DefaultPinDir
	}
	if err := ensureBPFFS(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", dir, err)
	}

	spec, err := loadEdt()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	// An older layout's pins move aside first, or loading would fail on them (migrate.go).
	unlock, err := stashV1(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s := &Shaper{pinDir: dir, tcx: opts.TCX, spec: spec, progs: map[progKey]*ebpf.Program{}}
	pin := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	if err := spec.LoadAndAssign(&s.maps, pin); err != nil {
		return nil, fmt.Errorf("load pinned budget maps in %s: %w", dir, err)
	}
	if s.names, err = ebpf.NewMapWithOptions(namesSpec(), pin.Maps); err != nil {
		s.Close()
		return nil, fmt.Errorf("load pinned budget names in %s: %w", dir, err)
	}
	if s.devs, err = ebpf.NewMapWithOptions(devsSpec(), pin.Maps); err != nil {
		s.Close()
		return nil, fmt.Errorf("load pinned device registry in %s: %w", dir, err)
	}
	if err := s.migrateV1(); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w (devices attached before keep their old programs and limits)", err)
	}
	// Best effort: a stale instance is never used (its name says which build
	// made it), only kept until the next Open or Destroy.
	s.removeStalePrograms()
	return s, nil
}

// PinDir returns the bpffs directory this shaper owns.
func (s *Shaper) PinDir() string { return s.pinDir }

// Close releases this process's handles. Pinned state, attachments and the
// limits they enforce stay in force.
func (s *Shaper) Close() error {
	s.mu.Lock()
	for k, p := range s.progs {
		p.Close()
		delete(s.progs, k)
	}
	s.mu.Unlock()
	for _, m := range []*ebpf.Map{s.names, s.devs} {
		if m != nil {
			m.Close()
		}
	}
	return s.maps.Close()
}

// Destroy removes every pin this shaper owns. Callers detach first; the
// uninstall path uses it after RemoveBudget on every budget.
func (s *Shaper) Destroy() error {
	dir := s.pinDir
	s.Close()
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pin directory %s: %w", dir, err)
	}
	return nil
}

// ensureBPFFS mounts bpffs on dir unless one is already there. A path that
// is not on bpffs would make pinning fail later with a confusing error.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("mount bpffs on %s: mounted but statfs does not report bpffs", dir)
	}
	return nil
}
