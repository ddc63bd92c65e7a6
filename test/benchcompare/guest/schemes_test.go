//go:build vmbench

package guest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/edt"
)

// dev is one shaped device: the container's eth0 (egress) or its host-side peer (ingress).
type dev struct {
	ns   string // netns path; "" = the guest's root namespace
	name string
}

func (d dev) String() string {
	if d.ns == "" {
		return d.name
	}
	return "container " + d.name
}

// tc runs tc on the device's namespace with the given arguments ("dev NAME" is added by the caller).
func (d dev) tc(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"tc"}, args...)
	if d.ns != "" {
		argv = append([]string{"nsenter", "--net=" + d.ns}, argv...)
	}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (d dev) handle() (*netlink.Handle, error) {
	if d.ns == "" {
		return netlink.NewHandle()
	}
	nh, err := netns.GetFromPath(d.ns)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.ns, err)
	}
	defer nh.Close()
	return netlink.NewHandleAt(nh)
}

// qdiscs lists the device's qdiscs through netlink (no tc fork under TCG, where each costs ~0.1 s).
func (d dev) qdiscs() ([]netlink.Qdisc, error) {
	h, err := d.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(d.name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("%s: list qdiscs: %w", d, err)
	}
	return qs, nil
}

// bare checks that nothing is left on the device: only the veth default (noqueue), no clsact.
func (d dev) bare(context.Context) error {
	qs, err := d.qdiscs()
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Type() != "noqueue" {
			return fmt.Errorf("%s still carries a %s qdisc (parent %x)", d, q.Type(), q.Attrs().Parent)
		}
	}
	return nil
}

// qdiscDrops is the drop counter of the device's root qdisc. A classful or chaining root (htb,
// netem over tbf) counts its children's drops too, so summing every qdisc would count them twice; a
// BPF drop at clsact is counted by the scheme's own counter.
func (d dev) qdiscDrops(context.Context) (int64, error) {
	qs, err := d.qdiscs()
	if err != nil {
		return 0, err
	}
	for _, q := range qs {
		a := q.Attrs()
		if a.Parent == netlink.HANDLE_ROOT && a.Statistics != nil && a.Statistics.Queue != nil {
			return int64(a.Statistics.Queue.Drops), nil
		}
	}
	return 0, nil // noqueue: nothing to drop
}

// scheme is one shaper as the harness puts it on and takes it off the two devices.
type scheme interface {
	apply(ctx context.Context, rate float64) error
	remove(ctx context.Context) error
	// bpfDrops is what the scheme's own programs dropped so far in a direction (0 for qdisc-only schemes).
	bpfDrops(d cells.Dir) (int64, error)
}

// tcScheme is a chain of tc commands per device.
type tcScheme struct {
	devs []dev
	cmds func(rate string) [][]string // each is appended to "tc" with "dev NAME" substituted for DEV
	// check runs after apply (e.g. the runtime TBF's bucket as the kernel holds it).
	check func(ctx context.Context, d dev, rate float64) error
}

func (s *tcScheme) apply(ctx context.Context, rate float64) error {
	for _, d := range s.devs {
		for _, c := range s.cmds(fmt.Sprintf("%.0fbit", rate)) {
			args := make([]string, len(c))
			for i, a := range c {
				args[i] = strings.ReplaceAll(a, "DEV", d.name)
			}
			if _, err := d.tc(ctx, args...); err != nil {
				return err
			}
		}
		if s.check != nil {
			if err := s.check(ctx, d, rate); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *tcScheme) remove(ctx context.Context) error {
	var errs []error
	for _, d := range s.devs {
		if _, err := d.tc(ctx, "qdisc", "del", "dev", d.name, "root"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *tcScheme) bpfDrops(cells.Dir) (int64, error) { return 0, nil }

// runtimeBurstBytes is containerd's burst for the CNI bandwidth plugin, 2^32-1 bits, in bytes.
const runtimeBurstBytes = (1<<32 - 1) / 8

// checkRuntimeBucket reads the root TBF back: its bucket must hold the runtime's 512 MiB (within 1%,
// the psched tick rounding), or the row would not be the CNI plugin's.
func checkRuntimeBucket(_ context.Context, d dev, rate float64) error {
	h, err := d.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(d.name)
	if err != nil {
		return err
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
			bucket := float64(t.Buffer) * 64 / 1e9 * rate / 8 // psched ticks are 64 ns
			if bucket < 0.99*runtimeBurstBytes || bucket > 1.01*runtimeBurstBytes {
				return fmt.Errorf("%s: tbf bucket %.0f bytes, want the runtime's %d", d, bucket, runtimeBurstBytes)
			}
			return nil
		}
	}
	return fmt.Errorf("%s: no root tbf after apply", d)
}

func newTCScheme(s cells.Scheme, devs []dev) *tcScheme {
	switch s {
	case cells.TBFRuntime:
		return &tcScheme{devs: devs, check: checkRuntimeBucket, cmds: func(r string) [][]string {
			return [][]string{{"qdisc", "add", "dev", "DEV", "root", "tbf", "rate", r, "burst", strconv.Itoa(runtimeBurstBytes), "latency", "25ms"}}
		}}
	case cells.TBFSane:
		return &tcScheme{devs: devs, cmds: func(r string) [][]string {
			return [][]string{{"qdisc", "add", "dev", "DEV", "root", "tbf", "rate", r, "burst", "32kb", "latency", "25ms"}}
		}}
	case cells.DockerTC:
		// docker-tc chains its qdiscs from the root: netem (here without impairment), then tbf.
		return &tcScheme{devs: devs, cmds: func(r string) [][]string {
			return [][]string{
				{"qdisc", "add", "dev", "DEV", "root", "handle", "1:", "netem"},
				{"qdisc", "add", "dev", "DEV", "parent", "1:1", "handle", "2:", "tbf", "burst", "5kb", "latency", "50ms", "rate", r},
			}
		}}
	case cells.HTB:
		return &tcScheme{devs: devs, cmds: func(r string) [][]string {
			return [][]string{
				{"qdisc", "add", "dev", "DEV", "root", "handle", "1:", "htb", "default", "10"},
				{"class", "add", "dev", "DEV", "parent", "1:", "classid", "1:10", "htb", "rate", r, "ceil", r},
			}
		}}
	}
	return nil
}

// ciliumScheme is edt.Program + fq on each device, attached as a legacy cls_bpf filter (both kernels).
type ciliumScheme struct {
	devs  map[cells.Dir]dev
	progs map[cells.Dir]*edt.Program
}

func (s *ciliumScheme) apply(ctx context.Context, rate float64) error {
	s.progs = map[cells.Dir]*edt.Program{}
	for dir, d := range s.devs {
		p, err := edt.Load(uint64(rate), edt.Horizon)
		if err != nil {
			return err
		}
		s.progs[dir] = p
		if _, err := d.tc(ctx, "qdisc", "add", "dev", d.name, "root", "fq"); err != nil {
			return err
		}
		h, err := d.handle()
		if err != nil {
			return err
		}
		l, err := h.LinkByName(d.name)
		if err == nil {
			err = h.QdiscAdd(&netlink.GenericQdisc{QdiscType: "clsact",
				QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}})
		}
		if err == nil {
			err = h.FilterAdd(&netlink.BpfFilter{Fd: p.Prog.FD(), Name: "bc_edt", DirectAction: true,
				FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_EGRESS, Handle: 1,
					Protocol: unix.ETH_P_ALL, Priority: 1}})
		}
		h.Close()
		if err != nil {
			return fmt.Errorf("attach edt on %s: %w", d, err)
		}
	}
	return nil
}

func (s *ciliumScheme) remove(ctx context.Context) error {
	var errs []error
	for _, d := range s.devs {
		for _, q := range []string{"clsact", "root"} {
			if _, err := d.tc(ctx, "qdisc", "del", "dev", d.name, q); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range s.progs {
		errs = append(errs, p.Close())
	}
	s.progs = nil
	return errors.Join(errs...)
}

func (s *ciliumScheme) bpfDrops(d cells.Dir) (int64, error) {
	p := s.progs[d]
	if p == nil {
		return 0, nil
	}
	n, err := p.Drops()
	return int64(n), err
}

// netshapeScheme drives the real CLI: `set APP --egress R --ingress R` (which applies through
// pkg/reconcile), `clear APP --all` to take it off.
type netshapeScheme struct {
	bin, app, pinDir string
	env              []string
	devs             map[cells.Dir]dev
}

func (s *netshapeScheme) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dokku-netshape %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (s *netshapeScheme) apply(ctx context.Context, rate float64) error {
	r := fmt.Sprintf("%.0fbit", rate)
	if err := s.run(ctx, "set", s.app, "--egress", r, "--ingress", r); err != nil {
		return err
	}
	for _, d := range s.devs {
		out, err := d.tc(ctx, "qdisc", "show", "dev", d.name, "root")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(strings.TrimSpace(out), "qdisc fq ") {
			return fmt.Errorf("after set: %s root qdisc %q, want fq", d, strings.TrimSpace(out))
		}
	}
	return nil
}

func (s *netshapeScheme) remove(ctx context.Context) error {
	return s.run(ctx, "clear", s.app, "--all")
}

func (s *netshapeScheme) bpfDrops(d cells.Dir) (int64, error) {
	sh, err := shaper.Open(shaper.Options{PinDir: s.pinDir})
	if err != nil {
		return 0, err
	}
	defer sh.Close()
	st, err := sh.Budget(s.app + "/_default_/" + string(d))
	if err != nil {
		return 0, err
	}
	return int64(st.Stats.Dropped + st.Stats.Bypassed), nil
}

// noScheme attaches nothing.
type noScheme struct{}

func (noScheme) apply(context.Context, float64) error { return nil }
func (noScheme) remove(context.Context) error         { return nil }
func (noScheme) bpfDrops(cells.Dir) (int64, error)    { return 0, nil }
