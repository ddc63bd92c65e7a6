package shaper

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ForeignQdiscError is ErrForeignQdisc with what is there: the device and
// its root qdisc's kind and handle, so callers can name it.
type ForeignQdiscError struct {
	Device Device
	Kind   string // e.g. "htb"
	Handle string // e.g. "1:"
}

func (e *ForeignQdiscError) Error() string {
	return fmt.Sprintf("device %s: %v: %s %s (use --force to replace it)", e.Device, ErrForeignQdisc, e.Kind, e.Handle)
}

func (e *ForeignQdiscError) Unwrap() error { return ErrForeignQdisc }

func foreignQdisc(dev Device, q netlink.Qdisc) *ForeignQdiscError {
	return &ForeignQdiscError{Device: dev, Kind: q.Type(), Handle: tcHandle(q.Attrs().Handle)}
}

// tcHandle writes a qdisc handle as tc shows it: "1:", or "1:2".
func tcHandle(h uint32) string {
	if minor := h & 0xffff; minor != 0 {
		return fmt.Sprintf("%x:%x", h>>16, minor)
	}
	return fmt.Sprintf("%x:", h>>16)
}

// CheckAttach reports, without changing anything, what would stop Attach on
// dev with hook today: a foreign root qdisc (*ForeignQdiscError, shaping
// only), a kernel without sch_fq (ErrNoFq, shaping only), or a missing
// device or namespace. nil means an Attach is expected to work.
func CheckAttach(dev Device, hook Hook) error {
	ns, err := openNetns(dev)
	if err != nil {
		return err
	}
	defer ns.close()
	l, err := ns.link(dev)
	if err != nil {
		return err
	}
	if hook != HookShape {
		return nil
	}
	root, err := rootQdisc(ns, l, dev)
	if err != nil {
		return err
	}
	if root != nil && isOurFq(root) {
		return nil
	}
	if root != nil && root.Attrs().Handle != 0 {
		return foreignQdisc(dev, root)
	}
	if err := FqSupport(); err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	return nil
}

// FqSupport reports whether this kernel can create an fq qdisc (built in, or
// a module it loads on demand): nil, ErrNoFq, or the probe's own failure.
// It tries on the loopback device of a network namespace of its own, made
// for the probe and gone with it, so no device anyone uses is touched. The
// answer is kept for the life of the process.
var FqSupport = sync.OnceValue(probeFq)

func probeFq() error {
	errc := make(chan error, 1)
	go func() {
		// The thread moves to a fresh namespace and is never moved back:
		// it stays locked, so the runtime ends it with this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("probe for sch_fq: new network namespace: %w", err)
			return
		}
		h, err := netlink.NewHandle()
		if err != nil {
			errc <- fmt.Errorf("probe for sch_fq: netlink: %w", err)
			return
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			errc <- fmt.Errorf("probe for sch_fq: loopback: %w", err)
			return
		}
		fq := netlink.NewFq(netlink.QdiscAttrs{LinkIndex: lo.Attrs().Index, Handle: fqHandle, Parent: netlink.HANDLE_ROOT})
		err = h.QdiscReplace(fq)
		switch {
		case errors.Is(err, unix.ENOENT):
			errc <- ErrNoFq
		case err != nil:
			errc <- fmt.Errorf("probe for sch_fq: %w", err)
		default:
			errc <- nil
		}
	}()
	return <-errc
}

// FqModule says where sch_fq could come from on this kernel, for advice to
// an operator whose kernel has no fq: "module" when the running kernel's
// module directory ships sch_fq.ko (it can be loaded), "builtin" when the
// kernel lists it as built in, "" when neither (or the list is unreadable).
// Read once per process: a degraded apply asks once per device.
var FqModule = sync.OnceValue(fqModule)

func fqModule() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return ""
	}
	dir := "/lib/modules/" + unix.ByteSliceToString(uts.Release[:])
	if b, err := os.ReadFile(dir + "/modules.builtin"); err == nil && strings.Contains(string(b), "/sch_fq.ko") {
		return "builtin"
	}
	if b, err := os.ReadFile(dir + "/modules.dep"); err == nil && strings.Contains(string(b), "/sch_fq.ko") {
		return "module"
	}
	return ""
}
