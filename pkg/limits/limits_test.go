package limits

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

func fixture(t *testing.T) *dokkutest.Fixture {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1, "worker", 1)
	return f
}

func TestValidate(t *testing.T) {
	cpus := runtime.NumCPU()
	for _, tc := range []struct {
		name   string
		req    Request
		stored map[string]string // resource keys of shop
		want   string            // "" = valid, else the exact error
	}{
		{"memory-ok", Request{Memory: "6m"}, nil, ""},
		{"memory-bare-is-mb", Request{Memory: "64"}, nil, ""},
		{"memory-below-6m", Request{Memory: "5m"}, nil, "--memory: 5m is below Docker's minimum of 6m"},
		{"memory-bytes-below-6m", Request{Memory: "6291455b"}, nil, "--memory: 6291455b is below Docker's minimum of 6m"},
		{"memory-word", Request{Memory: "x"}, nil, `--memory: dokku passes memory "x" to docker as "xm": invalid size "xm": malformed number: must start with a digit`},
		{"swap-equal-ok", Request{Memory: "64m", MemorySwap: "64m"}, nil, ""},
		{"swap-unlimited", Request{Memory: "64m", MemorySwap: "-1"}, nil, ""},
		{"swap-below-memory", Request{Memory: "64m", MemorySwap: "32m"}, nil, "--memory-swap: 32m is less than the memory limit (64m); memory-swap is memory plus swap"},
		{"swap-below-stored-memory", Request{MemorySwap: "32m"}, map[string]string{"_default_.limit.memory": "64"},
			"--memory-swap: 32m is less than the memory limit (64m); memory-swap is memory plus swap"},
		{"swap-below-inherited-memory", Request{Process: "web", MemorySwap: "32m"}, map[string]string{"_default_.limit.memory": "64m"},
			"--memory-swap: 32m is less than the memory limit (64m); memory-swap is memory plus swap"},
		{"swap-above-proc-memory", Request{Process: "web", MemorySwap: "32m"}, map[string]string{"_default_.limit.memory": "64m", "web.limit.memory": "16m"}, ""},
		{"memory-above-stored-swap", Request{Memory: "1g"}, map[string]string{"_default_.limit.memory-swap": "512m"},
			"--memory: 1g is more than the stored memory-swap limit 512m (memory plus swap): give --memory-swap too"},
		{"memory-with-unlimited-stored-swap", Request{Memory: "1g"}, map[string]string{"_default_.limit.memory-swap": "-1"}, ""},
		{"swap-word", Request{MemorySwap: "lots"}, nil, `--memory-swap: invalid size "lots": malformed number: must start with a digit`},
		{"cpus-ok", Request{CPUs: "0.5"}, nil, ""},
		{"cpus-min", Request{CPUs: "0.01"}, nil, ""},
		{"cpus-host", Request{CPUs: fmt.Sprint(cpus)}, nil, ""},
		{"cpus-zero", Request{CPUs: "0"}, nil, fmt.Sprintf("--cpus: 0 is outside 0.01..%d (this host's CPUs)", cpus)},
		{"cpus-negative", Request{CPUs: "-1"}, nil, fmt.Sprintf("--cpus: -1 is outside 0.01..%d (this host's CPUs)", cpus)},
		{"cpus-0.001", Request{CPUs: "0.001"}, nil, "--cpus: 0.001 has more than two decimals"},
		{"cpus-0.125", Request{CPUs: "0.125"}, nil, "--cpus: 0.125 has more than two decimals"},
		{"cpus-too-many", Request{CPUs: fmt.Sprint(cpus + 1)}, nil, fmt.Sprintf("--cpus: %d is outside 0.01..%d (this host's CPUs)", cpus+1, cpus)},
		{"cpus-1e3", Request{CPUs: "1e3"}, nil, `--cpus: "1e3" is not a decimal number of CPUs`},
		{"cpus-NaN", Request{CPUs: "NaN"}, nil, `--cpus: "NaN" is not a decimal number of CPUs`},
		{"cpus-Inf", Request{CPUs: "Inf"}, nil, `--cpus: "Inf" is not a decimal number of CPUs`},
		{"cpus-hex", Request{CPUs: "0x1"}, nil, `--cpus: "0x1" is not a decimal number of CPUs`},
		{"cpus-plus", Request{CPUs: "+1"}, nil, `--cpus: "+1" is not a decimal number of CPUs`},
		{"cpus-underscore", Request{CPUs: "1_0"}, nil, `--cpus: "1_0" is not a decimal number of CPUs`},
		{"blkio-10", Request{BlkioWeight: "10"}, nil, ""},
		{"blkio-1000", Request{BlkioWeight: "1000"}, nil, ""},
		{"blkio-9", Request{BlkioWeight: "9"}, nil, `--blkio-weight: "9" is not a whole number in 10..1000`},
		{"blkio-1001", Request{BlkioWeight: "1001"}, nil, `--blkio-weight: "1001" is not a whole number in 10..1000`},
		{"blkio-abc", Request{BlkioWeight: "abc"}, nil, `--blkio-weight: "abc" is not a whole number in 10..1000`},
		{"blkio-65546", Request{BlkioWeight: "65546"}, nil, `--blkio-weight: "65546" is not a whole number in 10..1000`},
		{"device-ok", Request{DeviceReadBps: []string{"/dev/sda:10mb"}, DeviceWriteIOPS: []string{"/dev/nvme0n1:1000"}}, nil, ""},
		{"device-not-dev", Request{DeviceReadBps: []string{"sda:10mb"}}, nil, `--device-read-bps: "sda:10mb" is not DEVICE:VALUE with DEVICE a path under /dev/`},
		{"device-bare-dev", Request{DeviceReadBps: []string{"/dev/:10mb"}}, nil, `--device-read-bps: "/dev/:10mb" is not DEVICE:VALUE with DEVICE a path under /dev/`},
		{"device-no-colon", Request{DeviceWriteBps: []string{"/dev/sda"}}, nil, `--device-write-bps: "/dev/sda" is not DEVICE:VALUE with DEVICE a path under /dev/`},
		{"device-space", Request{DeviceWriteBps: []string{"/dev/s da:1mb"}}, nil, `--device-write-bps: "/dev/s da:1mb": ` + onlySafe},
		{"device-bps-zero", Request{DeviceWriteBps: []string{"/dev/sda:0"}}, nil, `--device-write-bps: "0": not a positive byte rate such as 10mb`},
		{"device-bps-word", Request{DeviceReadBps: []string{"/dev/sda:fast"}}, nil, `--device-read-bps: "fast": not a positive byte rate such as 10mb`},
		{"device-iops-fraction", Request{DeviceReadIOPS: []string{"/dev/sda:1.5"}}, nil, `--device-read-iops: "1.5": IOPS must be a positive whole number`},
		{"device-iops-zero", Request{DeviceWriteIOPS: []string{"/dev/sda:0"}}, nil, `--device-write-iops: "0": IOPS must be a positive whole number`},
		{"device-iops-unit", Request{DeviceWriteIOPS: []string{"/dev/sda:10k"}}, nil, `--device-write-iops: "10k": IOPS must be a positive whole number`},
		{"device-twice", Request{DeviceReadBps: []string{"/dev/sda:1mb", "/dev/sda:2mb"}}, nil, "--device-read-bps: /dev/sda given twice"},
		{"device-same-dev-other-flag", Request{DeviceReadBps: []string{"/dev/sda:1mb"}, DeviceWriteBps: []string{"/dev/sda:2mb"}}, nil, ""},
		{"device-alias-twice", Request{DeviceReadBps: []string{"/dev/sda:1mb", "/dev/disk/by-id/ata-disk0:2mb"}}, nil, "--device-read-bps: /dev/sda and /dev/disk/by-id/ata-disk0 are the same device"},
		{"device-alias-ok", Request{DeviceWriteIOPS: []string{"/dev/disk/by-id/ata-disk0:50", "/dev/sdb:60"}}, nil, ""},
		// Issue 8 item 3: each of these was saved and broke the next deploy.
		{"device-null", Request{DeviceReadBps: []string{"/dev/null:10mb"}}, nil, "--device-read-bps: /dev/null is not a block device but a character device"},
		{"device-dotdot", Request{DeviceReadBps: []string{"/dev/../etc/passwd:1mb"}}, nil, `--device-read-bps: "/dev/../etc/passwd": the device path must be clean (no .., //, trailing /)`},
		{"device-missing", Request{DeviceReadBps: []string{"/dev/netshape-no-such-disk:1mb"}}, nil, "--device-read-bps: /dev/netshape-no-such-disk does not exist"},
		{"device-cmd-subst", Request{DeviceReadBps: []string{"/dev/sd$(id):1mb"}}, nil, `--device-read-bps: "/dev/sd$(id):1mb": ` + onlySafe},
		{"device-backquote", Request{DeviceReadBps: []string{"/dev/sd`id`:5"}}, nil, "--device-read-bps: \"/dev/sd`id`:5\": " + onlySafe},
		{"device-semicolon", Request{DeviceWriteIOPS: []string{"/dev/sda:5;reboot"}}, nil, `--device-write-iops: "/dev/sda:5;reboot": ` + onlySafe},
		{"device-tab", Request{DeviceWriteIOPS: []string{"/dev/sda:5\t"}}, nil, `--device-write-iops: "/dev/sda:5\t": ` + onlySafe},
		{"device-double-slash", Request{DeviceWriteIOPS: []string{"/dev//sda:5"}}, nil, `--device-write-iops: "/dev//sda": the device path must be clean (no .., //, trailing /)`},
		{"device-bps-space-unit", Request{DeviceReadBps: []string{"/dev/sda:10 mb"}}, nil, `--device-read-bps: "/dev/sda:10 mb": ` + onlySafe},
		{"device-bps-docker-units", Request{DeviceReadBps: []string{"/dev/sda:1GiB"}, DeviceWriteBps: []string{"/dev/sda:512k"}}, nil, ""},
		{"device-iops-plus", Request{DeviceReadIOPS: []string{"/dev/sda:+5"}}, nil, `--device-read-iops: "+5": IOPS must be a positive whole number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fixture(t)
			for k, v := range tc.stored {
				f.SetProperty(dokku.ResourcePlugin, "shop", k, v)
			}
			tc.req.App = "shop"
			tc.req.Devices = fakeDevices
			err := tc.req.Validate(f.Env)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v, want valid", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Fatalf("Validate: %v\nwant %s", err, tc.want)
			}
		})
	}
}

const onlySafe = "only letters, digits and / . _ - + : are allowed (no whitespace or shell characters)"

// fakeDevices stands in for disks this host may not have (sdX, an nvme and
// a by-id alias of sda); every other path goes to the real BlockDevice.
func fakeDevices(path string) (uint64, error) {
	switch path {
	case "/dev/sda", "/dev/disk/by-id/ata-disk0":
		return 8<<8 | 0, nil
	case "/dev/sdb":
		return 8<<8 | 16, nil
	case "/dev/sdc":
		return 8<<8 | 32, nil
	case "/dev/nvme0n1":
		return 259 << 8, nil
	}
	return BlockDevice(path)
}

// TestRootBlockDevice runs the real check on device nodes made for the test
// (mknod needs root): a block device directly and through symlinks passes;
// a character device, a regular file, a FIFO, a directory, a dangling
// symlink and a missing path do not.
func TestRootBlockDevice(t *testing.T) {
	nettest.RequireRoot(t)
	dir := t.TempDir()
	blk := filepath.Join(dir, "blk")
	if err := unix.Mknod(blk, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200))); err != nil {
		t.Fatal(err)
	}
	chr := filepath.Join(dir, "chr")
	if err := unix.Mknod(chr, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	reg := filepath.Join(dir, "reg")
	if err := os.WriteFile(reg, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := func(name, target string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l1 := link("l1", "blk")
	l2 := link("l2", l1) // a chain, like /dev/disk/by-id → ../../sda
	for _, tc := range []struct {
		path string
		want string // "" = block device 7:200
	}{
		{blk, ""},
		{l1, ""},
		{l2, ""},
		{chr, chr + " is not a block device but a character device"},
		{link("tochr", chr), filepath.Join(dir, "tochr") + " is not a block device but a character device (" + chr + ")"},
		{reg, reg + " is not a block device but a regular file"},
		{fifo, fifo + " is not a block device but a FIFO"},
		{dir, dir + " is not a block device but a directory"},
		{link("dangling", "nowhere"), filepath.Join(dir, "dangling") + " does not exist"},
		{filepath.Join(dir, "missing"), filepath.Join(dir, "missing") + " does not exist"},
		{"/dev/null", "/dev/null is not a block device but a character device"},
	} {
		rdev, err := BlockDevice(tc.path)
		switch {
		case tc.want == "" && (err != nil || rdev != unix.Mkdev(7, 200)):
			t.Errorf("%s: %d:%d %v, want 7:200", tc.path, unix.Major(rdev), unix.Minor(rdev), err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%s: %v, want %s", tc.path, err, tc.want)
		}
	}
}

func TestEmpty(t *testing.T) {
	if !(Request{App: "shop", Process: "web"}).Empty() {
		t.Error("request with only a scope is not empty")
	}
	for _, r := range []Request{{Memory: "1g"}, {MemorySwap: "1g"}, {CPUs: "1"}, {BlkioWeight: "10"},
		{DeviceReadBps: []string{"x"}}, {DeviceWriteBps: []string{"x"}}, {DeviceReadIOPS: []string{"x"}}, {DeviceWriteIOPS: []string{"x"}}} {
		if r.Empty() {
			t.Errorf("%+v is empty", r)
		}
	}
}

func ownedLines(t *testing.T, f *dokkutest.Fixture, proc string) []string {
	t.Helper()
	o, err := f.Env.DockerOptions().Owned("shop", proc)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(o.Owned)
	return o.Owned
}

func TestPersistMerge(t *testing.T) {
	f := fixture(t)
	f.SetDockerOptions("shop", "", "--restart=on-failure:10", "-v /data:/data")
	persist := func(r Request) []string {
		t.Helper()
		r.App = "shop"
		r.Devices = fakeDevices
		if err := r.Validate(f.Env); err != nil {
			t.Fatal(err)
		}
		msgs, err := Persist(f.Env, r)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	msgs := persist(Request{Memory: "512m", CPUs: "1.5", BlkioWeight: "500", DeviceReadBps: []string{"/dev/sda:10mb"}})
	wantMsgs := []string{"docker option --blkio-weight=500", "docker option --device-read-bps=/dev/sda:10mb", "memory limit 512m", "cpu limit 1.5"}
	if !slices.Equal(msgs, wantMsgs) {
		t.Errorf("messages %q, want %q", msgs, wantMsgs)
	}
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.memory")); got != "512m" {
		t.Errorf("memory = %q", got)
	}
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.cpu")); got != "1.5" {
		t.Errorf("cpu = %q", got)
	}

	// Same device: replaced. Another device: added. blkio: replaced.
	persist(Request{DeviceReadBps: []string{"/dev/sda:20mb", "/dev/sdb:5mb"}, BlkioWeight: "600"})
	want := []string{"--blkio-weight=600", "--device-read-bps=/dev/sda:20mb", "--device-read-bps=/dev/sdb:5mb"}
	if got := ownedLines(t, f, "_default_"); !slices.Equal(got, want) {
		t.Errorf("owned %q, want %q", got, want)
	}
	// Another flag on the same device is a separate limit.
	persist(Request{DeviceWriteBps: []string{"/dev/sda:1mb"}, DeviceReadIOPS: []string{"/dev/sda:100"}})
	want = []string{"--blkio-weight=600", "--device-read-bps=/dev/sda:20mb", "--device-read-bps=/dev/sdb:5mb",
		"--device-read-iops=/dev/sda:100", "--device-write-bps=/dev/sda:1mb"}
	if got := ownedLines(t, f, "_default_"); !slices.Equal(got, want) {
		t.Errorf("owned %q, want %q", got, want)
	}
	// Memory alone leaves the options and the other keys as they are.
	persist(Request{Memory: "1g"})
	if got := ownedLines(t, f, "_default_"); !slices.Equal(got, want) {
		t.Errorf("owned after memory-only set %q, want %q", got, want)
	}
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.cpu")); got != "1.5" {
		t.Errorf("cpu = %q", got)
	}
	// Operator lines survive byte for byte, the list stays sorted.
	lines := strings.Split(strings.TrimSuffix(f.Read(f.PropertyPath("docker-options", "shop", "_default_.deploy")), "\n"), "\n")
	if !slices.Contains(lines, "--restart=on-failure:10") || !slices.Contains(lines, "-v /data:/data") || !slices.IsSorted(lines) || len(lines) != 7 {
		t.Errorf("docker-options %q", lines)
	}
	// A process scope has its own lines.
	persist(Request{Process: "web", BlkioWeight: "100"})
	if got := ownedLines(t, f, "web"); !slices.Equal(got, []string{"--blkio-weight=100"}) {
		t.Errorf("web owned %q", got)
	}
	if got := ownedLines(t, f, "_default_"); !slices.Equal(got, want) {
		t.Errorf("default owned changed by a web set: %q", got)
	}
}

// An operator line using a flag of the request: nothing at all is written,
// not even the memory limit given alongside.
func TestPersistForeignConflictWritesNothing(t *testing.T) {
	f := fixture(t)
	f.SetDockerOptions("shop", "", "--blkio-weight 200")
	r := Request{App: "shop", Memory: "256m", BlkioWeight: "300"}
	if err := r.Validate(f.Env); err != nil {
		t.Fatal(err)
	}
	_, err := Persist(f.Env, r)
	var foreign *dokku.ForeignOptionsError
	if !errors.As(err, &foreign) || !errors.Is(err, dokku.ErrForeignOption) {
		t.Fatalf("Persist: %v, want ForeignOptionsError", err)
	}
	keys, _ := f.Env.Properties(dokku.ResourcePlugin).Keys("shop")
	if len(keys) != 0 {
		t.Fatalf("resource keys written: %v", keys)
	}
	if got := f.Read(f.PropertyPath("docker-options", "shop", "_default_.deploy")); got != "--blkio-weight 200\n" {
		t.Fatalf("docker-options = %q", got)
	}
}

func TestStoredInheritance(t *testing.T) {
	f := fixture(t)
	f.SetResource("shop", "", dokku.Limit, dokku.Memory, "256")
	f.SetResource("shop", "", dokku.Limit, dokku.CPU, "1")
	f.SetResource("shop", "worker", dokku.Limit, dokku.Memory, "1g")
	f.SetResource("shop", "worker", dokku.Limit, dokku.MemorySwap, "-1")
	f.SetResource("shop", "web", dokku.Limit, dokku.CPU, "0.25")
	f.SetResource("shop", "", dokku.Reserve, dokku.Memory, "128m") // a reservation is not a limit
	if err := f.Env.DockerOptions().SetOwned("shop", "_default_", []string{"--blkio-weight=500", "--device-read-bps=/dev/sda:1mb"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Env.DockerOptions().SetOwned("shop", "worker", []string{"--blkio-weight=50"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proc    string
		want    containers.Resources
		devices bool
	}{
		// Docker's default memory-swap for a new container is twice the memory.
		{"web", containers.Resources{Memory: 256 << 20, MemorySwap: 512 << 20, NanoCPUs: 25e7, BlkioWeight: 500}, true},
		{"worker", containers.Resources{Memory: 1 << 30, MemorySwap: -1, NanoCPUs: 1e9, BlkioWeight: 50}, true},
		{"clock", containers.Resources{Memory: 256 << 20, MemorySwap: 512 << 20, NanoCPUs: 1e9, BlkioWeight: 500}, true},
		{"_default_", containers.Resources{Memory: 256 << 20, MemorySwap: 512 << 20, NanoCPUs: 1e9, BlkioWeight: 500}, true},
	} {
		got, devices, err := stored(f.Env, "shop", tc.proc)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want || devices != tc.devices {
			t.Errorf("stored(%s) = %+v devices=%v, want %+v devices=%v", tc.proc, got, devices, tc.want, tc.devices)
		}
	}

	// Swap without memory cannot be changed live; nothing stored at all is zero.
	g := fixture(t)
	g.SetResource("shop", "", dokku.Limit, dokku.MemorySwap, "1g")
	if got, devices, err := stored(g.Env, "shop", "web"); err != nil || !got.IsZero() || devices {
		t.Errorf("swap only: %+v %v %v, want zero", got, devices, err)
	}
	// A stored value Docker would refuse is an error naming the key.
	g.SetResource("shop", "web", dokku.Limit, dokku.Memory, "lots")
	if _, _, err := stored(g.Env, "shop", "web"); err == nil || !strings.Contains(err.Error(), "web.limit.memory") {
		t.Errorf("bad stored memory: %v", err)
	}
}

func TestClear(t *testing.T) {
	f := fixture(t)
	f.SetDockerOptions("shop", "", "--restart=on-failure:10")
	for _, r := range []Request{
		{App: "shop", Memory: "512m", MemorySwap: "1g", CPUs: "1", BlkioWeight: "300"},
		{App: "shop", Process: "web", Memory: "256m", BlkioWeight: "200"},
	} {
		if _, err := Persist(f.Env, r); err != nil {
			t.Fatal(err)
		}
	}
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit") // network: not Clear's
	f.SetResource("shop", "", dokku.Reserve, dokku.Memory, "128m")
	if err := Clear(f.Env, "shop", "_default_"); err != nil {
		t.Fatal(err)
	}
	keys, _ := f.Env.Properties(dokku.ResourcePlugin).Keys("shop")
	if want := []string{"_default_.limit.network-egress", "_default_.reserve.memory", "web.limit.memory"}; !slices.Equal(keys, want) {
		t.Errorf("keys after Clear %q, want %q", keys, want)
	}
	if got := f.Read(f.PropertyPath("docker-options", "shop", "_default_.deploy")); got != "--restart=on-failure:10\n" {
		t.Errorf("default docker-options %q", got)
	}
	if got := ownedLines(t, f, "web"); !slices.Equal(got, []string{"--blkio-weight=200"}) {
		t.Errorf("web lines %q", got)
	}
	c, err := Read(f.Env, "shop", "_default_")
	if err != nil || c.Memory != "" || c.MemorySwap != "" || c.CPUs != "" || len(c.Options) != 0 {
		t.Errorf("Read after Clear: %+v %v", c, err)
	}
	// Clearing again is not an error.
	if err := Clear(f.Env, "shop", "_default_"); err != nil {
		t.Fatal(err)
	}
	if c, _ := Read(f.Env, "shop", "web"); c.Memory != "256m" || !slices.Equal(c.Options, []string{"--blkio-weight=200"}) {
		t.Errorf("web after clearing _default_: %+v", c)
	}
}

type fakeDocker struct {
	list    []containers.Container
	updates map[string]containers.Resources
	fail    map[string]error
}

func (f *fakeDocker) ListApp(context.Context, string) ([]containers.Container, error) {
	return f.list, nil
}

func (f *fakeDocker) UpdateResources(_ context.Context, id string, r containers.Resources) error {
	if err := f.fail[id]; err != nil {
		return err
	}
	f.updates[id] = r
	return nil
}

func TestApplyLive(t *testing.T) {
	f := fixture(t)
	f.SetResource("shop", "", dokku.Limit, dokku.Memory, "64m")
	f.SetResource("shop", "worker", dokku.Limit, dokku.CPU, "0.5")
	// Stored but not part of the requests below: never pushed (a daemon
	// without the blkio controller would refuse it on every set).
	if err := f.Env.DockerOptions().SetOwned("shop", "_default_", []string{"--blkio-weight=300"}); err != nil {
		t.Fatal(err)
	}
	newDocker := func() *fakeDocker {
		return &fakeDocker{
			list: []containers.Container{
				{ID: "w1", Name: "shop.web.1", ProcessType: "web"},
				{ID: "k1", Name: "shop.worker.1", ProcessType: "worker"},
				{ID: "gone", Name: "shop.web.2", ProcessType: "web"},
				{ID: "bad", Name: "shop.web.3", ProcessType: "web"},
			},
			updates: map[string]containers.Resources{},
			fail:    map[string]error{"gone": containers.ErrGone, "bad": errors.New("boom")},
		}
	}
	d := newDocker()
	applied, note, err := ApplyLive(context.Background(), d, f.Env, Request{App: "shop", Memory: "64m"})
	if err != nil {
		t.Fatal(err)
	}
	if note != "" {
		t.Errorf("note %q without device limits", note)
	}
	mem := containers.Resources{Memory: 64 << 20, MemorySwap: 128 << 20}
	if len(d.updates) != 2 || d.updates["w1"] != mem || d.updates["k1"] != mem {
		t.Errorf("updates %+v, want memory only on w1 and k1", d.updates)
	}
	var names []string
	for _, a := range applied {
		names = append(names, a.Container)
		if (a.Err != nil) != (a.Container == "shop.web.3") {
			t.Errorf("%s: err %v", a.Container, a.Err)
		}
	}
	if !slices.Equal(names, []string{"shop.web.1", "shop.worker.1", "shop.web.3"}) {
		t.Errorf("applied %v (a gone container is skipped)", names)
	}

	// A process-scoped request touches only that process type's containers.
	d = newDocker()
	if _, _, err := ApplyLive(context.Background(), d, f.Env, Request{App: "shop", Process: "worker", CPUs: "0.5"}); err != nil {
		t.Fatal(err)
	}
	if len(d.updates) != 1 || d.updates["k1"] != (containers.Resources{NanoCPUs: 5e8}) {
		t.Errorf("worker cpus: updates %+v", d.updates)
	}
	// The blkio weight goes out when it is what is being set.
	d = newDocker()
	if _, _, err := ApplyLive(context.Background(), d, f.Env, Request{App: "shop", BlkioWeight: "300"}); err != nil {
		t.Fatal(err)
	}
	if d.updates["w1"] != (containers.Resources{BlkioWeight: 300}) {
		t.Errorf("blkio: updates %+v", d.updates)
	}
	// Device limits: nothing to push, a note instead.
	d = newDocker()
	_, note, err = ApplyLive(context.Background(), d, f.Env, Request{App: "shop", DeviceWriteBps: []string{"/dev/sda:1mb"}})
	if err != nil || len(d.updates) != 0 || !strings.Contains(note, "dokku ps:rebuild shop") {
		t.Errorf("devices: updates %+v note %q err %v", d.updates, note, err)
	}
}

// FuzzDeviceLimitStoredVerbatim: whatever a device flag accepts is stored
// as one docker-options word that no shell would change. Dokku expands
// these lines in a shell on `docker run`: an accepted value must need no
// quoting at all (quoting is not relied on), split into exactly one word,
// and hold no character a shell interprets.
func FuzzDeviceLimitStoredVerbatim(f *testing.F) {
	for _, s := range []string{"/dev/sda:10mb", "/dev/null:10mb", "/dev/../etc/passwd:1mb", "/dev/sd$(id):1mb",
		"/dev/sd`id`:5", "/dev/sda:1mb;reboot", "/dev/sda:1mb #x", "/dev/disk/by-id/ata-X_1.2:5", "/dev/sda:1\n", "/dev/s'a:1"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	anyDevice := func(string) (uint64, error) { return 1, nil }
	f.Fuzz(func(t *testing.T, arg string, iops bool) {
		r := Request{App: "shop", Devices: anyDevice}
		if iops {
			r.DeviceReadIOPS = []string{arg}
		} else {
			r.DeviceReadBps = []string{arg}
		}
		opts, err := r.options()
		if err != nil {
			return
		}
		if len(opts) != 1 {
			t.Fatalf("%q: %d options", arg, len(opts))
		}
		line := opts[0]
		if strings.ContainsAny(line, " \t\n\r'\"`$\\;&|<>()*?[]{}!#~") {
			t.Fatalf("%q stored as %q: holds a shell character", arg, line)
		}
		if again, err := dokku.CanonicalOwnedOption(line); err != nil || again != line {
			t.Fatalf("%q stored as %q, which re-canonicalises to %q (%v)", arg, line, again, err)
		}
		if !strings.HasPrefix(line, "--device-read-") || !strings.HasSuffix(line, arg) {
			t.Fatalf("%q stored as %q", arg, line)
		}
	})
}
