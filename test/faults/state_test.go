//go:build vm

package faults

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
)

// What the shaper owns, by its documented names (pkg/shaper): the shaping program and its
// legacy filters named netshape_edt at tc egress with an fq root qdisc of handle 4e53:, the
// backstop policer and its legacy filters named netshape_police at tc ingress (no qdisc), and
// pins under the pin directory (TCX links under links/, one per device and hook).
const (
	progName   = "netshape_edt"
	policeName = "netshape_police"
	fqHandle   = 0x4e53 << 16
)

// hookProg is the program a hook runs; hookParent the clsact side it runs at with legacy tc;
// hookTCX its TCX attach type.
func hookProg(h shaper.Hook) string {
	if h == shaper.HookPolice {
		return policeName
	}
	return progName
}

func hookParent(h shaper.Hook) uint32 {
	if h == shaper.HookPolice {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func hookTCX(h shaper.Hook) ebpf.AttachType {
	if h == shaper.HookPolice {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

// hooks are every hook a device can carry, each at most once.
var hooks = []shaper.Hook{shaper.HookShape, shaper.HookPolice}

// devKey names an attachment the way the registry does: namespace inode, ifindex and hook
// (a host-side veth carries both the app's ingress shaping and its egress backstop).
type devKey struct {
	Ino     uint64
	Ifindex int
	Hook    shaper.Hook
}

func (k devKey) String() string { return fmt.Sprintf("%d/%d/%s", k.Ino, k.Ifindex, k.Hook) }

// linkPin is the TCX link pin of an attachment (pkg/shaper linkPin): the shaping hook keeps
// the name it had before the policer existed, other hooks add their name.
func linkPin(pinDir string, k devKey) string {
	name := fmt.Sprintf("%d_%d", k.Ino, k.Ifindex)
	if k.Hook != shaper.HookShape {
		name += "_" + k.Hook.String()
	}
	return filepath.Join(pinDir, "links", name)
}

// inventory is everything of ours the kernel holds, read from outside the binary: the pinned
// maps, the pins, the qdiscs and filters on every device of the given namespaces, and the
// kernel-wide programs and TCX links.
type inventory struct {
	Atts       []shaper.Attachment
	ByDev      map[devKey]shaper.Attachment
	Stale      []string        // recorded, but the device is gone
	Broken     []string        // recorded on a live device, but not whole
	BrokenDevs map[devKey]bool // the keys of Broken

	// Entries of the pinned maps.
	Names, Cfg, State, Stats, Flows int
	Pcfg, Pstate, Pstats            int // the policer's per-budget maps
	FlowsOfDeleted                  int // flows keyed by a budget id that has no name and no config
	FlowsPerBudget                  map[uint32]int
	Inconsistent                    []string // budget maps that disagree

	Pins, LinkPins int      // files under the pin directory, and TCX link pins among them
	StrayLinkPins  []string // link pins of no recorded TCX attachment

	FqDevs                   map[devKey]string // devices with our fq as root qdisc (hook: shape; value: where)
	FilterDevs               map[devKey]string // our cls_bpf filters: at egress (hook shape) or ingress (hook police)
	Misplaced                []string          // one of our filters at the other hook's side
	TCXLinks                 int               // TCX links in the kernel running one of our programs
	Progs                    int               // netshape_edt and netshape_police programs loaded in the kernel
	PoliceProgs, PoliceLinks int               // of which netshape_police
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
			out = append(out, hookProg(k.Hook)+" filter on "+where)
		}
	}
	out = append(out, v.Misplaced...)
	out = append(out, v.StrayLinkPins...)
	sort.Strings(out)
	return out
}

// hookRecorded counts the recorded attachments of one hook.
func (v *inventory) hookRecorded(h shaper.Hook) int {
	n := 0
	for _, a := range v.Atts {
		if a.Hook == h {
			n++
		}
	}
	return n
}

// filters counts the devices with our legacy filter at one hook.
func (v *inventory) filters(h shaper.Hook) int {
	n := 0
	for k := range v.FilterDevs {
		if k.Hook == h {
			n++
		}
	}
	return n
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
		"pcfg": v.Pcfg, "pstate": v.Pstate, "pstats": v.Pstats,
		"flows": v.Flows, "flows_of_deleted_budgets": v.FlowsOfDeleted, "pins": v.Pins, "link_pins": v.LinkPins,
		"fq_roots": len(v.FqDevs), "legacy_filters": len(v.FilterDevs), "tcx_links": v.TCXLinks, "programs": v.Progs,
		"police_attachments": v.hookRecorded(shaper.HookPolice), "police_filters": v.filters(shaper.HookPolice),
		"police_links": v.PoliceLinks, "police_programs": v.PoliceProgs,
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
	v := &inventory{ByDev: map[devKey]shaper.Attachment{}, BrokenDevs: map[devKey]bool{}, FqDevs: map[devKey]string{},
		FilterDevs: map[devKey]string{}, FlowsPerBudget: map[uint32]int{}}
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
	tcxPins := map[string]bool{}
	for _, a := range v.Atts {
		k := keyOf(a)
		if _, dup := v.ByDev[k]; dup {
			v.Inconsistent = append(v.Inconsistent, "recorded twice: "+k.String())
		}
		v.ByDev[k] = a
		r.checkWhole(v, a)
		if a.Mode == shaper.ModeTCX {
			tcxPins[linkPin(r.pinDir, k)] = true
		}
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
			if !tcxPins[path] {
				v.StrayLinkPins = append(v.StrayLinkPins, "link pin of no recorded TCX attachment: "+filepath.Base(path))
			}
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
	Hook     uint32
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
			Budget: budget, BudgetID: v.Budget, Mode: shaper.Mode(v.Mode), Hook: shaper.Hook(k.Hook),
			NetnsIno: k.NetnsIno, Ifindex: int(k.Ifindex),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read device registry: %w", err)
	}
	return out, nil
}

func keyOf(a shaper.Attachment) devKey { return devKey{a.NetnsIno, a.Ifindex, a.Hook} }

func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// checkWhole: the device exists in the recorded namespace, our program runs at the hook's
// side of it (a pinned TCX link of that hook's attach type on that ifindex, or the hook's
// legacy filter at that side of clsact), a shaping hook has our fq as root qdisc (the policer
// needs none), and the budget exists.
func (r *rig) checkWhole(v *inventory, a shaper.Attachment) {
	k := keyOf(a)
	where := fmt.Sprintf("%s %s (%s, budget %q)", a.Device, a.Hook, k, a.Budget)
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
	switch a.Hook {
	case shaper.HookShape:
		if !hasOurFq(h, l) {
			why = append(why, "no fq 4e53: root")
		}
	case shaper.HookPolice:
	default:
		why = append(why, fmt.Sprintf("unknown hook %d", uint32(a.Hook)))
	}
	prog := hookProg(a.Hook)
	switch a.Mode {
	case shaper.ModeTCX:
		lk, err := link.LoadPinnedLink(linkPin(r.pinDir, k), nil)
		if err != nil {
			why = append(why, "no TCX link pin "+filepath.Base(linkPin(r.pinDir, k)))
			break
		}
		info, err := lk.Info()
		lk.Close()
		switch {
		case err != nil || info.TCX() == nil:
			why = append(why, "pinned link is not TCX")
		case int(info.TCX().Ifindex) != a.Ifindex:
			why = append(why, fmt.Sprintf("TCX link on ifindex %d", info.TCX().Ifindex))
		case ebpf.AttachType(info.TCX().AttachType) != hookTCX(a.Hook):
			why = append(why, fmt.Sprintf("TCX link at %s, want %s", ebpf.AttachType(info.TCX().AttachType), hookTCX(a.Hook)))
		case progNameOf(info.Program) != prog:
			why = append(why, fmt.Sprintf("TCX link runs %q, want %s", progNameOf(info.Program), prog))
		}
	case shaper.ModeLegacy:
		if !hasFilter(h, l, a.Hook, prog) {
			why = append(why, fmt.Sprintf("no %s filter at %s", prog, side(a.Hook)))
		}
	default:
		why = append(why, fmt.Sprintf("mode %d", a.Mode))
	}
	if a.Budget == "" {
		why = append(why, fmt.Sprintf("budget id %d has no name", a.BudgetID))
	}
	if len(why) > 0 {
		v.Broken = append(v.Broken, where+": "+strings.Join(why, ", "))
		if v.BrokenDevs != nil {
			v.BrokenDevs[k] = true
		}
	}
}

func side(h shaper.Hook) string {
	if h == shaper.HookPolice {
		return "ingress"
	}
	return "egress"
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

// ourFilters lists the names of our cls_bpf filters at one hook's side of clsact (none
// without clsact).
func ourFilters(h *netlink.Handle, l netlink.Link, hook shaper.Hook) []string {
	fs, err := h.FilterList(l, hookParent(hook))
	if err != nil {
		return nil
	}
	var out []string
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "netshape_") {
			out = append(out, bf.Name)
		}
	}
	return out
}

// hasFilter: the hook's program as a cls_bpf filter at the hook's side. The kernel reports
// the name cls_bpf was given ("netshape_police"), or with a section suffix.
func hasFilter(h *netlink.Handle, l netlink.Link, hook shaper.Hook, prog string) bool {
	for _, name := range ourFilters(h, l, hook) {
		if name == prog || strings.HasPrefix(name, prog+":") {
			return true
		}
	}
	return false
}

// scanDevices records every device of one namespace that carries our fq or one of our
// filters, keyed by the hook that owns it; a filter of ours at the wrong side is misplaced.
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
		for _, hook := range hooks {
			k := devKey{ino, l.Attrs().Index, hook}
			where := fmt.Sprintf("%s %s (%s)", label, l.Attrs().Name, k)
			if hook == shaper.HookShape && hasOurFq(h, l) {
				v.FqDevs[k] = where
			}
			names := ourFilters(h, l, hook)
			if len(names) > 0 {
				v.FilterDevs[k] = where
			}
			for _, name := range names {
				if name != hookProg(hook) && !strings.HasPrefix(name, hookProg(hook)+":") {
					v.Misplaced = append(v.Misplaced, fmt.Sprintf("filter %s at %s of %s", name, side(hook), where))
				}
			}
			if len(names) > 1 {
				v.Misplaced = append(v.Misplaced, fmt.Sprintf("%d filters of ours at %s of %s", len(names), side(hook), where))
			}
		}
	}
	return nil
}

// budgetMaps are the pinned maps indexed by budget slot: the names map (a hash: a slot is
// taken when named) and the budget arrays, where every slot always has an entry. An array
// entry counts as present when its slot holds a configured budget (non-zero config), or when
// it is not all zero: anything non-zero in an unnamed slot is a leftover.
var budgetMaps = []string{"netshape_names", "netshape_cfg", "netshape_state", "netshape_stats",
	"netshape_pcfg", "netshape_pstate", "netshape_pstats"}

// nonZeroSlots is the slots of an array map whose value (on any CPU, for a per-CPU map) is not all zero.
func nonZeroSlots(m *ebpf.Map) (map[uint32]bool, error) {
	out := map[uint32]bool{}
	var k uint32
	zero := func(b []byte) bool {
		for _, c := range b {
			if c != 0 {
				return false
			}
		}
		return true
	}
	if m.Type() == ebpf.PerCPUArray {
		// A slice of fixed-size byte arrays, one per CPU, sized at run time.
		val := reflect.New(reflect.SliceOf(reflect.ArrayOf(int(m.ValueSize()), reflect.TypeOf(byte(0)))))
		it := m.Iterate()
		for it.Next(&k, val.Interface()) {
			cpus := val.Elem()
			for i := 0; i < cpus.Len(); i++ {
				if !zero(cpus.Index(i).Slice(0, int(m.ValueSize())).Bytes()) {
					out[k] = true
				}
			}
		}
		return out, it.Err()
	}
	var val []byte
	it := m.Iterate()
	for it.Next(&k, &val) {
		if !zero(val) {
			out[k] = true
		}
	}
	return out, it.Err()
}

// countMaps counts the budget maps' entries and checks they agree: every named budget is
// configured, nothing is left in an unnamed slot, every attachment has a configured budget.
func (r *rig) countMaps(v *inventory) error {
	keys := map[string]map[uint32]bool{}
	for _, name := range budgetMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, name), nil)
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		ids := map[uint32]bool{}
		if name == "netshape_names" {
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
		} else if ids, err = nonZeroSlots(m); err != nil {
			m.Close()
			return fmt.Errorf("iterate %s: %w", name, err)
		}
		m.Close()
		keys[name] = ids
	}
	for _, name := range budgetMaps[2:] {
		for id := range keys["netshape_cfg"] {
			keys[name][id] = true // a configured budget's entries are its own, zero or not
		}
	}
	v.Names, v.Cfg, v.State, v.Stats = len(keys["netshape_names"]), len(keys["netshape_cfg"]), len(keys["netshape_state"]), len(keys["netshape_stats"])
	v.Pcfg, v.Pstate, v.Pstats = len(keys["netshape_pcfg"]), len(keys["netshape_pstate"]), len(keys["netshape_pstats"])
	for id := range keys["netshape_names"] {
		if !keys["netshape_cfg"][id] {
			v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("budget %d named but not configured", id))
		}
	}
	for _, other := range budgetMaps[1:] {
		for id := range keys[other] {
			if !keys["netshape_names"][id] {
				v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("budget %d in %s but not named", id, other))
			}
		}
	}
	for _, a := range v.Atts {
		if !keys["netshape_cfg"][a.BudgetID] {
			v.Inconsistent = append(v.Inconsistent, fmt.Sprintf("%s attachment %s uses budget %d, which has no config", a.Hook, a.Device, a.BudgetID))
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

// countKernel counts our programs (netshape_edt, netshape_police) and the TCX links running
// one, kernel-wide.
func countKernel(v *inventory) error {
	ours := map[ebpf.ProgramID]string{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("list programs: %w", err)
		}
		id = next
		switch name := progNameOf(id); name {
		case policeName:
			v.PoliceProgs++
			fallthrough
		case progName:
			ours[id] = name
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
		if name, ok := ours[info.Program]; ok && info.Type == link.TCXType {
			v.TCXLinks++
			if name == policeName {
				v.PoliceLinks++
			}
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

// expected is one attachment a running container must have.
type expected struct {
	what string // for messages
	key  devKey
	dir  string // whose budget it enforces: the app's egress or ingress
}

// attachmentsOf are a container's three attachments: its app egress shaped at eth0, the
// same budget policed at the host-side peer's ingress (the backstop), and its app ingress
// shaped at the host-side peer.
func (r *rig) attachmentsOf(c ctr) []expected {
	return []expected{
		{"egress", c.egressDev(), "egress"},
		{"egress backstop", c.policeDev(r.hostNetnsIno), "egress"},
		{"ingress", c.ingressDev(r.hostNetnsIno), "ingress"},
	}
}

// expectShaped checks that each container has its three attachments recorded with its app's
// budgets, and that they are whole.
func (r *rig) expectShaped(v *inventory, cs []ctr, budget func(c ctr, dir string) string) error {
	var errs []error
	for _, c := range cs {
		for _, d := range r.attachmentsOf(c) {
			a, ok := v.ByDev[d.key]
			want := budget(c, d.dir)
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s %s (%s): not recorded", c.Name, d.what, d.key))
			case a.Budget != want:
				errs = append(errs, fmt.Errorf("%s %s: budget %q, want %q", c.Name, d.what, a.Budget, want))
			case v.BrokenDevs[d.key]:
				errs = append(errs, fmt.Errorf("%s %s: attachment not whole", c.Name, d.what))
			}
		}
	}
	return errors.Join(errs...)
}

// expectClean: exactly the containers' attachments are recorded, each whole, with the
// expected budgets, and nothing else of ours exists (no stale record, no half-made device, no
// stray pin).
func (r *rig) expectClean(v *inventory, cs []ctr, budget func(c ctr, dir string) string) error {
	var errs []error
	if err := r.expectShaped(v, cs, budget); err != nil {
		errs = append(errs, err)
	}
	if len(v.Atts) != 3*len(cs) {
		errs = append(errs, fmt.Errorf("%d attachments recorded for %d containers (want %d: 3 each)", len(v.Atts), len(cs), 3*len(cs)))
	}
	if n := v.hookRecorded(shaper.HookPolice); n != len(cs) {
		errs = append(errs, fmt.Errorf("%d backstop attachments recorded for %d containers", n, len(cs)))
	}
	for _, l := range v.Leaks() {
		errs = append(errs, errors.New(l))
	}
	return errors.Join(errs...)
}

// defaultBudget is the budget of an app without process-specific keys.
func defaultBudget(c ctr, dir string) string { return c.App + "/_default_/" + dir }

// shapedNow is the light check for polling: the registry and the wholeness of the given
// containers' own attachments, without the full inventory's scans.
func (r *rig) shapedNow(cs []ctr, budget func(c ctr, dir string) string) error {
	atts, err := r.attachments()
	if err != nil {
		return err
	}
	v := &inventory{ByDev: map[devKey]shaper.Attachment{}, BrokenDevs: map[devKey]bool{}}
	for _, a := range atts {
		v.ByDev[keyOf(a)] = a
	}
	for _, c := range cs {
		for _, d := range r.attachmentsOf(c) {
			if a, ok := v.ByDev[d.key]; ok {
				r.checkWhole(v, a)
			}
		}
	}
	return r.expectShaped(v, cs, budget)
}
