// Command guestinit is /init of the test VM's initramfs (build it static: CGO_ENABLED=0).
//
// It loads the kernel modules listed in the spec, mounts the host's / read-only over 9p, puts a tmpfs-backed
// overlayfs on top of it and switches root into that (so the guest is a writable, throw-away clone of the
// host with every host tool in it), sets up the usual pseudo filesystems, runs the spec's commands with
// their output on the console, prints marker lines (see package vmspec) and powers the VM off.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmspec"
)

func main() {
	code := run()
	fmt.Printf("%s %d\n", vmspec.MarkExit, code)
	unix.Sync()
	// Power off rather than return: PID 1 exiting panics the kernel (which, with panic=-1 and qemu's
	// -no-reboot, also ends the VM, but looks like a crash in the console log).
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("%s poweroff: %v\n", vmspec.MarkError, err)
	}
	select {}
}

func run() int {
	spec, err := setup()
	if err != nil {
		fmt.Printf("%s %v\n", vmspec.MarkError, err)
		return vmspec.ExitSetup
	}
	fmt.Printf("%s uptime=%s kernel=%s\n", vmspec.MarkReady, uptime(), spec.Release)
	return runCommands(spec)
}

func setup() (*vmspec.Spec, error) {
	// The kernel's own pseudo filesystems first: module loading and the console need /dev, /proc, /sys.
	for _, m := range []struct{ src, dst, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		if err := mount(m.src, m.dst, m.typ, 0, ""); err != nil {
			return nil, err
		}
	}
	raw, err := os.ReadFile(vmspec.SpecPath)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	spec := &vmspec.Spec{}
	if err := json.Unmarshal(raw, spec); err != nil {
		return nil, fmt.Errorf("parse spec %s: %w", vmspec.SpecPath, err)
	}
	for _, ko := range spec.Modules {
		if err := loadModule(ko); err != nil {
			return nil, err
		}
	}
	if err := switchToHostClone(); err != nil {
		return nil, err
	}
	if err := setupNewRoot(spec); err != nil {
		return nil, err
	}
	return spec, nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open module %s: %w", path, err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// switchToHostClone mounts host / (9p, ro) + tmpfs upper as an overlay at /newroot and makes it the root,
// the way switch_root does: move the mount over / and chroot into it.
func switchToHostClone() error {
	steps := []struct {
		src, dst, typ string
		flags         uintptr
		data          string
	}{
		// msize 256 KiB: the default 8 KiB makes reading a test binary over 9p slow under TCG.
		// cache=loose is safe because the export is read-only and the host does not change it during a run.
		{"hostroot", "/hostro", "9p", unix.MS_RDONLY, "trans=virtio,version=9p2000.L,msize=262144,cache=loose"},
		{"tmpfs", "/rw", "tmpfs", 0, "mode=0755"},
	}
	for _, s := range steps {
		if err := mount(s.src, s.dst, s.typ, s.flags, s.data); err != nil {
			return err
		}
	}
	for _, d := range []string{"/rw/upper", "/rw/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	// index/redirect_dir/metacopy off: 9p has no file handles or xattrs overlayfs could use for them.
	opts := "lowerdir=/hostro,upperdir=/rw/upper,workdir=/rw/work,index=off,redirect_dir=off,metacopy=off"
	if err := mount("overlay", "/newroot", "overlay", 0, opts); err != nil {
		return err
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(d, "/newroot"+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into new root: %w", d, err)
		}
	}
	if err := unix.Chdir("/newroot"); err != nil {
		return fmt.Errorf("chdir /newroot: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move new root over /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into new root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

func setupNewRoot(spec *vmspec.Spec) error {
	mounts := []struct {
		src, dst, typ string
		data          string
	}{
		{"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620"},
		{"shm", "/dev/shm", "tmpfs", "mode=1777"},
		// Hide the host's runtime state (e.g. its docker.sock) and give the guest its own. /tmp stays the
		// host's (copy-on-write) so binaries and scripts built there can be run in the guest.
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		// overlay2 (dockerd in the guest) refuses an overlayfs upper; give it a plain tmpfs.
		{"tmpfs", "/var/lib/docker", "tmpfs", "mode=0711"},
		{"tmpfs", "/var/lib/containerd", "tmpfs", "mode=0711"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", "nsdelegate"},
		{"bpf", "/sys/fs/bpf", "bpf", "mode=0700"},
		{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
		{"debugfs", "/sys/kernel/debug", "debugfs", ""},
	}
	for _, m := range mounts {
		if err := mount(m.src, m.dst, m.typ, 0, m.data); err != nil {
			return err
		}
	}
	holdCgroupKeys()
	links := map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
		"/dev/ptmx":   "pts/ptmx",
	}
	for link, target := range links {
		_ = os.Remove(link) // devtmpfs may have a ptmx node already
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("symlink %s: %w", link, err)
		}
	}
	if spec.ModulesDir != "" && spec.Release != "" {
		// modprobe and request_module() look in /lib/modules/$(uname -r); point it at the cached tree.
		dst := filepath.Join("/lib/modules", spec.Release)
		if err := os.MkdirAll("/lib/modules", 0o755); err != nil {
			return fmt.Errorf("mkdir /lib/modules: %w", err)
		}
		_ = os.RemoveAll(dst)
		if err := os.Symlink(spec.ModulesDir, dst); err != nil {
			return fmt.Errorf("link %s: %w", dst, err)
		}
	}
	if err := unix.Sethostname([]byte("netshape-vm")); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := os.WriteFile("/etc/hostname", []byte("netshape-vm\n"), 0o644); err != nil {
		return fmt.Errorf("write /etc/hostname: %w", err)
	}
	if err := linkUp("lo"); err != nil {
		return err
	}
	holdTCKeys()
	return nil
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for %s up: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("ifreq %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func mount(src, dst, typ string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", dst, err)
	}
	if err := unix.Mount(src, dst, typ, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", typ, dst, data, err)
	}
	return nil
}

// runCommands runs every command (a failing one does not stop the rest) and returns the first non-zero
// exit code, or ExitTimeout when the deadline cut a command short.
func runCommands(spec *vmspec.Spec) int {
	deadline := time.Now().Add(time.Duration(spec.TimeoutSec) * time.Second)
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin",
		"HOME=/root", "TERM=dumb"}, spec.Env...)
	first := 0
	for i, c := range spec.Commands {
		fmt.Printf("%s %d %s\n", vmspec.MarkCmd, i, c)
		code := runOne(c, spec.Dir, env, deadline, spec.Interactive)
		fmt.Printf("%s %d %d\n", vmspec.MarkCmdExit, i, code)
		if first == 0 {
			first = code
		}
	}
	return first
}

func runOne(command, dir string, env []string, deadline time.Time, interactive bool) int {
	if time.Now().After(deadline) {
		return vmspec.ExitTimeout
	}
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdin = nil
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stdout // one stream keeps stderr lines in order with stdout on the console
	// Own process group so a timeout can stop the whole tree (shell, test binary, its helpers).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if interactive {
		// /dev/console cannot be a controlling terminal; the serial port itself can, which gives the
		// shell job control and Ctrl-C.
		tty, err := os.OpenFile("/dev/ttyS0", os.O_RDWR, 0)
		if err != nil {
			fmt.Printf("%s open /dev/ttyS0: %v\n", vmspec.MarkError, err)
			return vmspec.ExitSetup
		}
		defer tty.Close()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.Env = append(cmd.Env, "TERM=linux")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}
	if err := cmd.Start(); err != nil {
		fmt.Printf("%s start %q: %v\n", vmspec.MarkError, command, err)
		return vmspec.ExitSetup
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case err := <-done:
		return exitCode(err)
	case <-timer.C:
		// SIGQUIT first: Go test binaries answer it with every goroutine's stack, which says where it hung.
		fmt.Printf("%s in-guest deadline reached, stopping %q\n", vmspec.MarkError, command)
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGQUIT)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			<-done
		}
		return vmspec.ExitTimeout
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	if v, err := strconv.ParseFloat(f[0], 64); err == nil {
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return f[0]
}
