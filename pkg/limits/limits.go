// Package limits handles the non-network limits the CLI sets: memory, CPU and
// blkio. They are stored exactly where Dokku keeps them (memory, memory-swap
// and cpu as resource-plugin limits, which the docker-local scheduler passes
// to `docker run`; blkio flags as this tool's own docker-options lines) and
// applied live to running containers where Docker can change them.
package limits

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/size"
)

// DefaultScope is Dokku's process type for "every process type".
const DefaultScope = dokku.DefaultProcess

// Docker's bounds (docker run reference): --memory at least 6 MiB, --cpus in
// steps of 0.01 up to the host's CPU count, --blkio-weight 10..1000.
const (
	minMemory      = 6 << 20
	minBlkioWeight = 10
	maxBlkioWeight = 1000
)

// Request is one `set` of non-network limits for a scope. Empty strings and
// nil slices leave a limit as it is.
type Request struct {
	App, Process                  string
	Memory, MemorySwap, CPUs      string
	BlkioWeight                   string
	DeviceReadBps, DeviceWriteBps []string // DEV:SIZE, e.g. /dev/sda:10mb
	DeviceReadIOPS                []string // DEV:N
	DeviceWriteIOPS               []string

	// Devices checks the device paths; nil means BlockDevice.
	Devices DeviceResolver
}

// Empty reports whether the request sets nothing.
func (r Request) Empty() bool {
	return r.Memory == "" && r.MemorySwap == "" && r.CPUs == "" && r.BlkioWeight == "" &&
		len(r.DeviceReadBps)+len(r.DeviceWriteBps)+len(r.DeviceReadIOPS)+len(r.DeviceWriteIOPS) == 0
}

func (r Request) scope() string {
	if r.Process == "" {
		return DefaultScope
	}
	return r.Process
}

// Check validates every value on its own, without reading Dokku's config:
// syntax, Docker's bounds, and that each device limit names a block device
// Docker can throttle. A failure is one line naming the flag.
func (r Request) Check() error {
	if r.Memory != "" {
		m, err := size.ParseDokkuMemory(r.Memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		if m < minMemory {
			return fmt.Errorf("--memory: %s is below Docker's minimum of 6m", r.Memory)
		}
	}
	if r.MemorySwap != "" && r.MemorySwap != "-1" {
		if _, err := size.Parse(r.MemorySwap); err != nil {
			return fmt.Errorf("--memory-swap: %w", err)
		}
	}
	if r.CPUs != "" {
		if _, err := parseCPUs(r.CPUs); err != nil {
			return err
		}
	}
	if r.BlkioWeight != "" {
		if _, err := parseBlkioWeight(r.BlkioWeight); err != nil {
			return err
		}
	}
	_, err := r.options()
	return err
}

// Validate is Check plus the checks against what is stored. Memory and
// memory-swap are checked as the pair the scope will have afterwards (new
// values, else the stored or inherited ones), since Docker refuses a
// container whose memory-swap is below its memory. Run it under the config
// lock, right before Persist, so that what it checked is what Persist sees.
func (r Request) Validate(env dokku.Env) error {
	if err := r.Check(); err != nil {
		return err
	}
	eff, err := env.ResourceLimits(r.App, r.scope())
	if err != nil {
		return fmt.Errorf("read stored limits of %s: %w", r.App, err)
	}
	var mem size.Size
	if r.Memory != "" {
		mem, _ = size.ParseDokkuMemory(r.Memory)
	} else if eff.Memory.IsSet() {
		mem, _ = size.ParseDokkuMemory(eff.Memory.Value)
	}
	if r.MemorySwap != "" && r.MemorySwap != "-1" {
		sw, _ := size.Parse(r.MemorySwap)
		if mem != 0 && sw < mem {
			return fmt.Errorf("--memory-swap: %s is less than the memory limit (%s); memory-swap is memory plus swap", r.MemorySwap, mem)
		}
	} else if r.MemorySwap == "" && r.Memory != "" && eff.MemorySwap.IsSet() && eff.MemorySwap.Value != "-1" {
		if sw, err := size.Parse(eff.MemorySwap.Value); err == nil && sw < mem {
			return fmt.Errorf("--memory: %s is more than the stored memory-swap limit %s (memory plus swap): give --memory-swap too", r.Memory, eff.MemorySwap.Value)
		}
	}
	return nil
}

func parseCPUs(v string) (int64, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || strings.ContainsAny(v, "eEx+_") {
		return 0, fmt.Errorf("--cpus: %q is not a decimal number of CPUs", v)
	}
	nano := int64(math.Round(f * 1e9))
	if float64(nano)/1e7 != math.Trunc(float64(nano)/1e7) {
		return 0, fmt.Errorf("--cpus: %s has more than two decimals", v)
	}
	if nano < 1e7 || nano > int64(runtime.NumCPU())*1e9 {
		return 0, fmt.Errorf("--cpus: %s is outside 0.01..%d (this host's CPUs)", v, runtime.NumCPU())
	}
	return nano, nil
}

func parseBlkioWeight(v string) (uint16, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n < minBlkioWeight || n > maxBlkioWeight {
		return 0, fmt.Errorf("--blkio-weight: %q is not a whole number in %d..%d", v, minBlkioWeight, maxBlkioWeight)
	}
	return uint16(n), nil
}

// DeviceResolver returns the device number of the block device a path
// names, following symlinks, or an error saying why it is not one.
type DeviceResolver func(path string) (rdev uint64, err error)

// BlockDevice is the DeviceResolver of this host. Docker stats the path when
// it creates the container and writes the device number into the cgroup,
// where anything but a block device (/dev/null is a character device; a
// regular file has device number 0) makes `docker run` fail.
func BlockDevice(path string) (uint64, error) {
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s does not exist", path)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 || !ok {
		what := "a " + fileKind(fi.Mode())
		if real != path {
			what += " (" + real + ")"
		}
		return 0, fmt.Errorf("%s is not a block device but %s", path, what)
	}
	return st.Rdev, nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "file of type " + m.Type().String()
}

// deviceArgChars are the only bytes a device limit may hold. Dokku stores
// docker-options lines shell-quoted and a shell expands them on `docker run`:
// refusing everything a shell could interpret is safer than quoting it.
func deviceArgOK(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/._:+-", c) >= 0) {
			return false
		}
	}
	return v != ""
}

// deviceLimit validates "DEV:VALUE" for one --device-* flag as Docker will
// apply it (docker/cli opts.ValidateThrottle{Bps,IOps}Device, then the
// daemon's stat of DEV) and returns DEV's device number.
func deviceLimit(flag, v string, iops bool, resolve DeviceResolver) (uint64, error) {
	if !deviceArgOK(v) {
		return 0, fmt.Errorf("--%s: %q: only letters, digits and / . _ - + : are allowed (no whitespace or shell characters)", flag, v)
	}
	dev, val, ok := strings.Cut(v, ":")
	if !ok || !strings.HasPrefix(dev, "/dev/") || len(dev) <= len("/dev/") {
		return 0, fmt.Errorf("--%s: %q is not DEVICE:VALUE with DEVICE a path under /dev/", flag, v)
	}
	if filepath.Clean(dev) != dev || slices.Contains(strings.Split(dev, "/"), "..") {
		return 0, fmt.Errorf("--%s: %q: the device path must be clean (no .., //, trailing /)", flag, dev)
	}
	if iops {
		n, err := strconv.ParseUint(val, 10, 64)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("--%s: %q: IOPS must be a positive whole number", flag, val)
		}
	} else if s, err := size.Parse(val); err != nil || s == 0 {
		return 0, fmt.Errorf("--%s: %q: not a positive byte rate such as 10mb", flag, val)
	}
	if resolve == nil {
		resolve = BlockDevice
	}
	rdev, err := resolve(dev)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", flag, err)
	}
	return rdev, nil
}

// options returns the docker-options lines the request's blkio flags make.
func (r Request) options() ([]string, error) {
	var out []string
	if r.BlkioWeight != "" {
		out = append(out, "--blkio-weight="+r.BlkioWeight)
	}
	for _, d := range []struct {
		flag string
		vals []string
		iops bool
	}{
		{"device-read-bps", r.DeviceReadBps, false},
		{"device-write-bps", r.DeviceWriteBps, false},
		{"device-read-iops", r.DeviceReadIOPS, true},
		{"device-write-iops", r.DeviceWriteIOPS, true},
	} {
		seen := map[uint64]string{}
		for _, v := range d.vals {
			rdev, err := deviceLimit(d.flag, v, d.iops, r.Devices)
			if err != nil {
				return nil, err
			}
			dev, _, _ := strings.Cut(v, ":")
			if prev, dup := seen[rdev]; dup {
				if prev == dev {
					return nil, fmt.Errorf("--%s: %s given twice", d.flag, dev)
				}
				return nil, fmt.Errorf("--%s: %s and %s are the same device", d.flag, prev, dev)
			}
			seen[rdev] = dev
			out = append(out, "--"+d.flag+"="+v)
		}
	}
	for i, o := range out {
		c, err := dokku.CanonicalOwnedOption(o)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// optionKey identifies what an owned option limits: the flag, plus the device
// for per-device flags, so a new value replaces the old one for that device.
func optionKey(opt string) string {
	opt = strings.Trim(opt, "'")
	flag, val, _ := strings.Cut(opt, "=")
	if flag == "--blkio-weight" {
		return flag
	}
	dev, _, _ := strings.Cut(val, ":")
	return flag + "=" + dev
}

// Persist stores a validated request. It returns one line per change.
// The docker-options lines are written first: an operator line using one of
// the same flags is only detected by that write, which then changes nothing,
// so such a conflict leaves every limit as it was.
func Persist(env dokku.Env, r Request) ([]string, error) {
	var msgs []string
	opts, err := r.options()
	if err != nil {
		return nil, err
	}
	if len(opts) > 0 {
		do := env.DockerOptions()
		cur, err := do.Owned(r.App, r.scope())
		if err != nil {
			return nil, err
		}
		replaced := map[string]bool{}
		for _, o := range opts {
			replaced[optionKey(o)] = true
		}
		merged := append([]string(nil), opts...)
		for _, o := range cur.Owned {
			if !replaced[optionKey(o)] {
				merged = append(merged, o)
			}
		}
		if err := do.SetOwned(r.App, r.scope(), merged); err != nil {
			return nil, err
		}
		for _, o := range opts {
			msgs = append(msgs, "docker option "+o)
		}
	}
	for _, kv := range []struct {
		typ dokku.ResourceType
		val string
	}{{dokku.Memory, r.Memory}, {dokku.MemorySwap, r.MemorySwap}, {dokku.CPU, r.CPUs}} {
		if kv.val == "" {
			continue
		}
		if err := env.SetResource(r.App, r.scope(), dokku.Limit, kv.typ, kv.val); err != nil {
			return msgs, fmt.Errorf("save %s limit of %s: %w", kv.typ, r.App, err)
		}
		msgs = append(msgs, fmt.Sprintf("%s limit %s", kv.typ, kv.val))
	}
	return msgs, nil
}

// Clear removes this tool's memory, CPU and blkio settings of a scope.
func Clear(env dokku.Env, app, proc string) error {
	for _, t := range []dokku.ResourceType{dokku.Memory, dokku.MemorySwap, dokku.CPU} {
		if err := env.SetResource(app, proc, dokku.Limit, t, "clear"); err != nil {
			return fmt.Errorf("clear %s limit of %s: %w", t, app, err)
		}
	}
	return env.DockerOptions().ClearOwned(app, proc)
}

// Updater changes limits of running containers (pkg/containers).
type Updater interface {
	ListApp(ctx context.Context, app string) ([]containers.Container, error)
	UpdateResources(ctx context.Context, id string, r containers.Resources) error
}

// Applied says what ApplyLive did to one container.
type Applied struct {
	Container string
	Resources containers.Resources
	Err       error
}

// ApplyLive pushes the limits a persisted request set to the app's running
// containers in its scope, at the values each container's process type now
// has (its own keys, else _default_). Only the fields the request touches are
// sent: a stored value the daemon cannot apply (a blkio weight without the
// cgroup controller for it) must not make every later set fail. Device
// bps/iops limits cannot change live; the returned note says so when the
// request has any.
func ApplyLive(ctx context.Context, docker Updater, env dokku.Env, r Request) ([]Applied, string, error) {
	list, err := docker.ListApp(ctx, r.App)
	if err != nil {
		return nil, "", fmt.Errorf("list containers of %s: %w", r.App, err)
	}
	var out []Applied
	for _, c := range list {
		if r.scope() != DefaultScope && c.ProcessType != r.scope() {
			continue
		}
		all, _, err := stored(env, r.App, c.ProcessType)
		if err != nil {
			return out, "", err
		}
		var want containers.Resources
		if r.Memory != "" || r.MemorySwap != "" {
			want.Memory, want.MemorySwap = all.Memory, all.MemorySwap
		}
		if r.CPUs != "" {
			want.NanoCPUs = all.NanoCPUs
		}
		if r.BlkioWeight != "" {
			want.BlkioWeight = all.BlkioWeight
		}
		if want.IsZero() {
			continue
		}
		err = docker.UpdateResources(ctx, c.ID, want)
		if errors.Is(err, containers.ErrGone) {
			continue
		}
		out = append(out, Applied{Container: c.Name, Resources: want, Err: err})
	}
	note := ""
	if len(r.DeviceReadBps)+len(r.DeviceWriteBps)+len(r.DeviceReadIOPS)+len(r.DeviceWriteIOPS) > 0 {
		note = fmt.Sprintf("device read/write limits apply at the next deploy (`dokku ps:rebuild %s`): Docker cannot change them on running containers", r.App)
	}
	return out, note, nil
}

// stored reads the effective limits of a process type: its own keys win over
// _default_ ones, as in Dokku's resource plugin.
func stored(env dokku.Env, app, proc string) (containers.Resources, bool, error) {
	var r containers.Resources
	res, err := env.ResourceLimits(app, proc)
	if err != nil {
		return r, false, err
	}
	if res.Memory.IsSet() {
		m, err := size.ParseDokkuMemory(res.Memory.Value)
		if err != nil {
			return r, false, fmt.Errorf("stored memory limit of %s (%s): %w", app, res.Memory.Key, err)
		}
		r.Memory = int64(m)
		// Docker refuses a memory limit above the current memory+swap limit
		// unless both change together; with no swap limit configured, Docker's
		// own default for a new container is twice the memory.
		r.MemorySwap = 2 * r.Memory
	}
	if res.MemorySwap.IsSet() {
		if res.MemorySwap.Value == "-1" {
			r.MemorySwap = -1
		} else {
			sw, err := size.Parse(res.MemorySwap.Value)
			if err != nil {
				return r, false, fmt.Errorf("stored memory-swap limit of %s: %w", app, err)
			}
			r.MemorySwap = int64(sw)
		}
	}
	if r.Memory == 0 {
		r.MemorySwap = 0 // swap alone cannot be changed live without memory
	}
	if res.CPU.IsSet() {
		n, err := parseCPUs(res.CPU.Value)
		if err != nil {
			return r, false, fmt.Errorf("stored cpu limit of %s: %w", app, err)
		}
		r.NanoCPUs = n
	}
	devices := false
	for _, scope := range []string{DefaultScope, proc} {
		if scope == "" {
			continue
		}
		owned, err := env.DockerOptions().Owned(app, scope)
		if err != nil {
			return r, false, err
		}
		for _, o := range owned.Owned {
			flag, val, _ := strings.Cut(strings.Trim(o, "'"), "=")
			if flag == "--blkio-weight" {
				w, err := parseBlkioWeight(val)
				if err == nil {
					r.BlkioWeight = w
				}
			} else {
				devices = true
			}
		}
	}
	return r, devices, nil
}

// Current is what is stored for a scope, for reports.
type Current struct {
	Memory, MemorySwap, CPUs string
	Options                  []string // this tool's docker-options lines
}

// Read returns the stored values of a scope (no inheritance).
func Read(env dokku.Env, app, proc string) (Current, error) {
	var c Current
	props := env.Properties(dokku.ResourcePlugin)
	for _, kv := range []struct {
		typ dokku.ResourceType
		dst *string
	}{{dokku.Memory, &c.Memory}, {dokku.MemorySwap, &c.MemorySwap}, {dokku.CPU, &c.CPUs}} {
		v, _, err := props.Get(app, dokku.ResourceKey(proc, dokku.Limit, kv.typ))
		if err != nil {
			return c, err
		}
		*kv.dst = v
	}
	owned, err := env.DockerOptions().Owned(app, proc)
	if err != nil {
		return c, err
	}
	c.Options = owned.Owned
	return c, nil
}
