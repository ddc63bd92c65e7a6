//go:build vm

package faults

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
)

// What the shaper owns, by its documented names (pkg/shaper): programs and legacy filters
// named netshape_edt, fq root qdiscs with handle 4e53:, pins under the pin directory.
const (
	progName = "netshape_edt"
	fqHandle = 0x4e53 << 16
)

// devKey names a device the way the registry does: namespace inode and ifindex.
type devKey struct {
	Ino     uint64
	Ifindex int
}

func (k devKey) String() string { return fmt.Sprintf("%d/%d", k.Ino, k.Ifindex) }

// inventory is everything of ours the kernel holds, read from outside the binary: the pinned
// maps, the pins, the qdiscs and filters on every device of the given namespaces, and the
// kernel-wide programs and TCX links.
type inventory struct {
	Atts   []shaper.Attachment
	ByDev  map[devKey]shaper.Attachment
	Stale  []string // recorded, but the device is gone
	Broken []string // recorded on a live device, but not whole

	// Entries of the pinned maps.
	Names, Cfg, State, Stats, Flows int
	FlowsOfDeleted                  int // flows keyed by a budget id that has no name and no config
	FlowsPerBudget                  map[uint32]int
	Inconsistent                    []string // budget maps that disagree

	Pins, LinkPins int // files under the pin directory, and TCX link pins among them

	FqDevs     map[devKey]string // devices with our fq as root qdisc (value: where)
	FilterDevs map[devKey]string // devices with a netshape_edt cls_bpf filter at egress
	TCXLinks   int               // TCX links in the kernel running a netshape_edt program
	Progs      int               // netshape_edt programs loaded in the kernel
}

// Unrecorded lists ours on a device the registry does not know: what an interrupted attach
// would leave half-made.
func (v *inventory) Unrecorded() []string {
	var out []string
	for k, where := range v.FqDevs {
		if _, ok := v.ByDev[k]; !ok {
			out = append(out, "fq 4e53: on "+where)
		}
	}
	for k, where := range v.FilterDevs {
		if _, ok := v.ByDev[k]; !ok {
			out = append(out, "netshape_edt filter on "+where)
		}
	}
	sort.Strings(out)
	return out
}

// tcxRecorded counts the recorded attachments made with TCX.
func (v *inventory) tcxRecorded() int {
	n := 0
	for _, a := range v.Atts {
		if a.Mode == shaper.ModeTCX {
			n++
		}
	}
	return n
}

// Leaks is every way the state is not exactly the recorded attachments, whole.
func (v *inventory) Leaks() []string {
	out := append([]string{}, v.Stale...)
	out = append(out, v.Broken...)
	out = append(out, v.Unrecorded()...)
	out = append(out, v.Inconsistent...)
	if v.FlowsOfDeleted > 0 {
		out = append(out, fmt.Sprintf("%d flow entries of deleted budgets", v.FlowsOfDeleted))
	}
	if n := v.tcxRecorded(); v.LinkPins != n {
		out = append(out, fmt.Sprintf("%d TCX link pins for %d TCX attachments", v.LinkPins, n))
	}
	return out
}

// Summary is the counts, for logs and results.
func (v *inventory) Summary() map[string]any {
	return map[string]any{
		"attachments": len(v.Atts), "stale_attachments": len(v.Stale), "broken_attachments": len(v.Broken),
		"unrecorded": len(v.Unrecorded()), "names": v.Names, "cfg": v.Cfg, "state": v.State, "stats": v.Stats,
		"flows": v.Flows, "flows_of_deleted_budgets": v.FlowsOfDeleted, "pins": v.Pins, "link_pins": v.LinkPins,
		"fq_roots": len(v.FqDevs), "legacy_filters": len(v.FilterDevs), "tcx_links": v.TCXLinks, "programs": v.Progs,
		"inconsistent": len(v.Inconsistent),
	}
}

func (v *inventory) String() string {
	leaks := v.Leaks()
	if len(leaks) > 6 {
		leaks = append(leaks[:6], fmt.Sprintf("... %d more", len(leaks)-6))
	}
	return fmt.Sprintf("%v leaks=%q", v.Summary(), leaks)
}

// takeInventory reads the state under pinDir, scanning the root namespace and the
// namespaces of the given containers for our qdiscs and filters.
func (r *rig) takeInventory(cs []ctr) (*inventory, error) {
	v := &inventory{ByDev: map[devKey]shaper.Attachment{}, FqDevs: map[devKey]string{}, FilterDevs: map[devKey]string{},
		FlowsPerBudget: map[uint32]int{}}
	if _, err := os.Stat(filepath.Join(r.pinDir, "netshape_devs")); errors.Is(err, os.ErrNotExist) {
		// Nothing created yet. (Opening a shaper here would create the pins and race the
		// binary doing the same; the test only ever reads pins.)
		if err := countKernel(v); err != nil {
			return nil, err
		}
		return v, nil
	}
	var err error
	if v.Atts, err = r.attachments(); err != nil {
		return nil, err
	}
	for _, a := range v.Atts {
		k := devKey{a.NetnsIno, a.Ifindex}
		v.ByDev[k] = a
		r.checkWhole(v, a)
	}
	if err := r.countMaps(v); err != nil {
		return nil, err
	}
	err = filepath.WalkDir(r.pinDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		v.Pins++
		if filepath.Base(filepath.Dir(path)) == "links" {
			v.LinkPins++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", r.pinDir, err)
	}
	if err := scanDevices(v, "", r.hostNetnsIno, "host"); err != nil {
		return nil, err
	}
	for _, c := range cs {
		err := scanDevices(v, veth.PidNetns(c.Pid), c.NetnsIno, c.Name)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if err := countKernel(v); err != nil {
		return nil, err
	}
	return v, nil
}

// The registry's layout (pkg/shaper/registry.go), read here independently of the shaper.
type regKey struct {
	NetnsIno uint64
	Ifindex  uint32
	_        uint32
}

type regVal struct {
	Budget uint32
	Mode   uint8
	Flags  uint8
	_      [2]byte
	Netns  [128]byte
	Name   [16]byte
}

// attachments reads the pinned device registry and budget names without creating anything;
// no pins yet means no attachments.
func (r *rig) attachments() ([]shaper.Attachment, error) {
	devs, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, "netshape_devs"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open device registry: %w", err)
	}
	defer devs.Close()
	names, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, "netshape_names"), nil)
	if err != nil {
		return nil, fmt.Errorf("open budget names: %w", err)
	}
	defer names.Close()
	var out []shaper.Attachment
	var k regKey
	var v regVal
	it := devs.Iterate()
	for it.Next(&k, &v) {
		var raw [128]byte
		budget := ""
		if err := names.Lookup(v.Budget, &raw); err == nil {
			budget = cstr(raw[:])
		}
		out = append(out, shaper.Attachment{
			Device: shaper.Device{Netns: cstr(v.Netns[:]), Name: cstr(v.Name[:])},
			Budget: budget, BudgetID: v.Budget, Mode: shaper.Mode(v.Mode), NetnsIno: k.NetnsIno, Ifindex: int(k.Ifindex),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read device registry: %w", err)
	}
	return out, nil
}

func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// checkWhole: the device exists in the recorded namespace, our fq is its root qdisc, our
// program is attached at egress (a pinned TCX link on that ifindex, or a netshape_edt filter),
// and its budget exists.
func (r *rig) checkWhole(v *inventory, a shaper.Attachment) {
	where := fmt.Sprintf("%s (%d/%d, budget %q)", a.Device, a.NetnsIno, a.Ifindex, a.Budget)
	nsPath := a.Device.Netns
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	if ino, err := inode(nsPath); err != nil || ino != a.NetnsIno {
		v.Stale = append(v.Stale, "recorded, namespace gone: "+where)
		return
	}
	h, closeNs, err := nlAt(a.Device.Netns)
	if err != nil {
		v.Stale = append(v.Stale, fmt.Sprintf("recorded, namespace unreadable: %s: %v", where, err))
		return
	}
	defer closeNs()
	l, err := h.LinkByIndex(a.Ifindex)
	if err != nil {
		v.Stale = append(v.Stale, "recorded, device gone: "+where)
		return
	}
	var why []string
	if !hasOurFq(h, l) {
		why = append(why, "no fq 4e53: root")
	}
	switch a.Mode {
	case shaper.ModeTCX:
		pin := filepath.Join(r.pinDir, "links", fmt.Sprintf("%d_%d", a.NetnsIno, a.Ifindex))
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			why = append(why, "no TCX link pin")
			break
		}
		info, err := lk.Info()
		lk.Close()
		switch {
		case err != nil || info.TCX() == nil:
			why = append(why, "pinned link is not TCX")
		case int(info.TCX().Ifindex) != a.Ifindex:
			why = append(why, fmt.Sprintf("TCX link on ifindex %d", info.TCX().Ifindex))
		case progNameOf(info.Program) != progName:
			why = append(why, "TCX link runs another program")
		}
	case shaper.ModeLegacy:
		if !hasOurFilter(h, l) {
			why = append(why, "no netshape_edt filter at egress")
		}
	default:
		why = append(why, fmt.Sprintf("mode %d", a.Mode))
	}
	if a.Budget == "" {
		why = append(why, fmt.Sprintf("budget id %d has no name", a.BudgetID))
	}
	if len(why) > 0 {
		v.Broken = append(v.Broken, where+": "+strings.Join(why, ", "))
	}
}

// nlAt is a netlink handle in the namespace at path ("" = ours).
func nlAt(path string) (*netlink.Handle, func(), error) {
	if path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, nil, err
		}
		return h, h.Close, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, nil, err
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

func hasOurFq(h *netlink.Handle, l netlink.Link) bool {
	qs, err := h.QdiscList(l)
	if err != nil {
		return false
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			return q.Type() == "fq" && q.Attrs().Handle == fqHandle
		}
	}
	return false
}

func hasOurFilter(h *netlink.Handle, l netlink.Link) bool {
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		return false
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, progName) {
			return true
		}
	}
	return false
}

// scanDevices records every device of one namespace that carries our fq or our filter.
func scanDevices(v *inventory, nsPath string, ino uint64, label string) error {
	h, closeNs, err := nlAt(nsPath)
	if err != nil {
		return err
	}
	defer closeNs()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in %s: %w", label, err)
	}
	for _, l := range links {
		k := devKey{ino, l.Attrs().Index}
		where := fmt.Sprintf("%s %s (%s)", label, l.Attrs().Name, k)
		if hasOurFq(h, l) {
			v.FqDevs[k] = where
		}
		if hasOurFilter(h, l) {
			v.FilterDevs[k] = where
		}
	}
	return nil
}

// countMaps counts the pinned maps' entries and checks the budget maps agree: every named
// budget has config, state and counters, every config a name, every attachment a budget.
func (r *rig) countMaps(v *inventory) error {
	keys := map[string]map[uint32]bool{}
	for _, name := range []string{"netshape_names", "netshape_cfg", "netshape_state", "netshape_stats"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, name), nil)
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		ids := map[uint32]bool{}
		var k, next uint32
		var prev any // nil: start
		for i := 0; i <= int(m.MaxEntries()); i++ {
			if err := m.NextKey(prev, &next); err != nil {
				if errors.Is(err, ebpf.ErrKeyNotExist) {
					break
				}
				m.Close()
				return fmt.Errorf("iterate %s: %w", name, err)
			}
			ids[next] = true
			k = next
			prev = k
		}
		m.Close()
		keys[name] = ids
	}
	v.Names, v.Cfg, v.State, v.Stats = len(keys["netshape_names"]), len(keys["netshape_cfg"]), len(keys["netshape_state"]), len(keys["netshape_stats"])
	for id := range keys["netshape_names"] {
		for _, other := range []string{"netshape_cfg", "netshape_state", "netshape_stats"} {
			if !keys[other][id] {
				v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("budget %d named but missing in %s", id, other))
			}
		}
	}
	for id := range keys["netshape_cfg"] {
		if !keys["netshape_names"][id] {
			v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("budget %d configured but not named", id))
		}
	}
	for _, a := range v.Atts {
		if !keys["netshape_cfg"][a.BudgetID] {
			v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("attachment %s uses budget %d, which has no config", a.Device, a.BudgetID))
		}
	}

	flows, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, "netshape_flows"), nil)
	if err != nil {
		return fmt.Errorf("open pinned map netshape_flows: %w", err)
	}
	defer flows.Close()
	type flowKey struct{ Budget, Hash uint32 }
	var fk flowKey
	var prev any
	for i := 0; i <= int(flows.MaxEntries()); i++ {
		var next flowKey
		if err := flows.NextKey(prev, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			return fmt.Errorf("iterate netshape_flows: %w", err)
		}
		v.Flows++
		v.FlowsPerBudget[next.Budget]++
		if !keys["netshape_names"][next.Budget] && !keys["netshape_cfg"][next.Budget] {
			v.FlowsOfDeleted++
		}
		fk = next
		prev = fk
	}
	return nil
}

// countKernel counts netshape_edt programs and the TCX links running one, kernel-wide.
func countKernel(v *inventory) error {
	ours := map[ebpf.ProgramID]bool{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("list programs: %w", err)
		}
		id = next
		if progNameOf(id) == progName {
			ours[id] = true
			v.Progs++
		}
	}
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue // gone while we looked
		}
		if info.Type == link.TCXType && ours[info.Program] {
			v.TCXLinks++
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	return nil
}

func progNameOf(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ""
	}
	return info.Name
}

// expectShaped checks that every container's eth0 is recorded with its app's egress budget and
// its host peer with the ingress budget, and that those attachments are whole.
func (r *rig) expectShaped(v *inventory, cs []ctr, budget func(c ctr, dir string) string) error {
	broken := strings.Join(v.Broken, "\n")
	var errs []error
	for _, c := range cs {
		for _, d := range []struct {
			dir string
			key devKey
		}{{"egress", c.egressDev()}, {"ingress", c.ingressDev(r.hostNetnsIno)}} {
			a, ok := v.ByDev[d.key]
			want := budget(c, d.dir)
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s %s (%s): not recorded", c.Name, d.dir, d.key))
			case a.Budget != want:
				errs = append(errs, fmt.Errorf("%s %s: budget %q, want %q", c.Name, d.dir, a.Budget, want))
			case strings.Contains(broken, fmt.Sprintf("(%d/%d,", d.key.Ino, d.key.Ifindex)):
				errs = append(errs, fmt.Errorf("%s %s: attachment not whole", c.Name, d.dir))
			}
		}
	}
	return errors.Join(errs...)
}

// expectClean: exactly the containers' devices are recorded, each whole, with the expected
// budgets, and nothing else of ours exists (no stale record, no half-made device, no stray pin).
func (r *rig) expectClean(v *inventory, cs []ctr, budget func(c ctr, dir string) string) error {
	var errs []error
	if err := r.expectShaped(v, cs, budget); err != nil {
		errs = append(errs, err)
	}
	if len(v.Atts) != 2*len(cs) {
		errs = append(errs, fmt.Errorf("%d attachments recorded for %d containers (want %d)", len(v.Atts), len(cs), 2*len(cs)))
	}
	for _, l := range v.Leaks() {
		errs = append(errs, errors.New(l))
	}
	return errors.Join(errs...)
}

// defaultBudget is the budget of an app without process-specific keys.
func defaultBudget(c ctr, dir string) string { return c.App + "/_default_/" + dir }

// shapedNow is the light check for polling: the registry and the wholeness of the given
// containers' own devices, without the full inventory's scans.
func (r *rig) shapedNow(cs []ctr, budget func(c ctr, dir string) string) error {
	atts, err := r.attachments()
	if err != nil {
		return err
	}
	v := &inventory{ByDev: map[devKey]shaper.Attachment{}}
	for _, a := range atts {
		v.ByDev[devKey{a.NetnsIno, a.Ifindex}] = a
	}
	for _, c := range cs {
		for _, k := range []devKey{c.egressDev(), c.ingressDev(r.hostNetnsIno)} {
			if a, ok := v.ByDev[k]; ok {
				r.checkWhole(v, a)
			}
		}
	}
	return r.expectShaped(v, cs, budget)
}
