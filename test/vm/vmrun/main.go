// Command vmrun runs commands (usually Go test binaries) inside a qemu guest per kernel and reports back.
//
// For each kernel series (-kernels 6.1,6.12, extracted by test/vm/fetch-kernels.sh) it builds an
// initramfs with the static /init (test/vm/guestinit), the modules to preload and a spec, boots
// qemu (TCG by default; NETSHAPE_VM_ACCEL=kvm for KVM), streams the serial console, prints one line per
// Go test result ("[6.1] PASS TestX (1.2s)"), keeps the console in -out/console-<kernel>.log, and
// writes a JSON summary with boot time, exit codes, test results and every NETSHAPE-RESULT line.
//
// The guest sees the host's / (read-only, with a throw-away writable layer), so commands name host
// paths directly:
//
//	vmrun -init out/init -cmd 'cd test/vm/smoke && ../out/smoke.test -test.v'
//	vmrun -init out/init -- ./out/smoke.test -test.v -test.run TestVMFq
//
// Exit status: 0 when every kernel's commands exited 0; 1 otherwise.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmspec"
)

// Loaded in the guest before anything runs: the 9p/overlay stack to reach the host's root, the
// shaping datapath, what dockerd needs, and what the CNI bandwidth plugin uses (test/cni: tbf,
// ifb, a u32 filter with a mirred action; all modules in Debian's 6.1 and 6.12 kernels).
// Anything else is autoloaded through /lib/modules.
const defaultModules = "virtio_pci,9pnet_virtio,9p,overlay,veth,sch_fq,sch_ingress,cls_bpf,bridge,br_netfilter," +
	"sch_tbf,ifb,cls_u32,act_mirred"

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type options struct {
	kernels  []string
	cache    string
	initBin  string
	out      string
	summary  string
	timeout  time.Duration
	mem      string
	smp      int
	modules  []string
	env      []string
	commands []string
	dir      string
	verbose  bool
	parallel bool
	appendK  string
	bzImage  bool
	shell    bool
}

// Summary is the JSON written to -summary.
type Summary struct {
	Started     time.Time    `json:"started"`
	WallSeconds float64      `json:"wall_seconds"`
	Accel       string       `json:"accel"`
	Commands    []string     `json:"commands"`
	Passed      bool         `json:"passed"`
	Kernels     []*KernelRun `json:"kernels"`
}

// KernelRun is what happened in one VM.
type KernelRun struct {
	Kernel  string `json:"kernel"`
	Release string `json:"release"`
	// BootSeconds: qemu start until /init printed NETSHAPE-READY (host clock);
	// GuestUptimeAtReady: the guest's own /proc/uptime at that point.
	BootSeconds        float64           `json:"boot_seconds"`
	GuestUptimeAtReady float64           `json:"guest_uptime_at_ready"`
	TotalSeconds       float64           `json:"total_seconds"`
	ExitCode           int               `json:"exit_code"` // -1: the guest never printed NETSHAPE-EXIT
	CommandExits       []int             `json:"command_exits"`
	TimedOut           bool              `json:"timed_out"`
	Passed             bool              `json:"passed"`
	Error              string            `json:"error,omitempty"`
	Tests              []TestResult      `json:"tests"`
	Results            []json.RawMessage `json:"results"`
	Console            string            `json:"console"`
}

// TestResult is one "--- PASS/FAIL/SKIP: Name (1.23s)" line of go test -v output.
type TestResult struct {
	Command int     `json:"command"` // index into Summary.Commands
	Name    string  `json:"name"`
	Result  string  `json:"result"`
	Seconds float64 `json:"seconds"`
	// Output: for a FAIL, the test's own lines before its result line (its t.Log/t.Error output).
	Output []string `json:"output,omitempty"`
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		os.Exit(2)
	}
	ok, err := runAll(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func parseFlags() (*options, error) {
	o := &options{}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root" // same default as fetch-kernels.sh
	}
	cache := os.Getenv("NETSHAPE_VM_CACHE")
	if cache == "" {
		cache = filepath.Join(home, ".cache", "netshape-vm")
	}
	var kernels, modules string
	var env, cmds stringList
	flag.StringVar(&kernels, "kernels", "6.1,6.12", "kernel series to boot, comma separated (aliases under <cache>/kernels)")
	flag.StringVar(&o.cache, "cache", cache, "kernel cache dir ($NETSHAPE_VM_CACHE)")
	flag.StringVar(&o.initBin, "init", "", "static guest /init binary (CGO_ENABLED=0 go build ./test/vm/guestinit)")
	flag.StringVar(&o.out, "out", "test/vm/out", "directory for initramfs images and console logs")
	flag.StringVar(&o.summary, "summary", "", "JSON summary path (default <out>/summary.json)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "per-VM timeout, boot to poweroff")
	flag.StringVar(&o.mem, "mem", "2G", "guest memory")
	flag.IntVar(&o.smp, "smp", 2, "guest vCPUs")
	flag.StringVar(&modules, "modules", defaultModules, "modules to load in /init, in order")
	flag.Var(&env, "env", "KEY=VALUE for the guest commands (repeatable)")
	flag.Var(&cmds, "cmd", "shell command to run in the guest (repeatable; run in order, all of them)")
	flag.StringVar(&o.dir, "dir", "", "working directory of the commands in the guest (default: the current one)")
	flag.BoolVar(&o.verbose, "v", false, "print the whole guest console, not just test results")
	flag.BoolVar(&o.parallel, "parallel", false, "boot all kernels at once (each VM gets -smp CPUs of TCG)")
	flag.StringVar(&o.appendK, "append", os.Getenv("NETSHAPE_VM_APPEND"), "extra kernel command line ($NETSHAPE_VM_APPEND)")
	flag.BoolVar(&o.bzImage, "bzimage", false, "boot vmlinuz even when an uncompressed vmlinux is cached")
	flag.BoolVar(&o.shell, "shell", false, "interactive: boot the first kernel with a bash on the console (quit: exit, or Ctrl-A x)")
	flag.Parse()

	if o.initBin == "" {
		return nil, errors.New("-init is required")
	}
	o.kernels = splitList(kernels)
	o.modules = splitList(modules)
	o.env = env
	o.commands = cmds
	if args := flag.Args(); len(args) > 0 {
		o.commands = append(o.commands, shellJoin(args))
	}
	if o.shell {
		o.commands = []string{"exec /bin/bash -i"}
		o.kernels = o.kernels[:1]
	}
	if len(o.commands) == 0 {
		return nil, errors.New("nothing to run: give -cmd or a command after --")
	}
	if o.dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		o.dir = wd
	}
	if o.summary == "" {
		o.summary = filepath.Join(o.out, "summary.json")
	}
	return o, nil
}

func runAll(o *options) (bool, error) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", o.out, err)
	}
	sum := &Summary{Started: time.Now(), Accel: accel(), Commands: o.commands}
	runs := make([]*KernelRun, len(o.kernels))
	var wg sync.WaitGroup
	var printMu sync.Mutex
	for i, k := range o.kernels {
		one := func() {
			runs[i] = runKernel(o, k, &printMu)
		}
		if o.parallel {
			wg.Add(1)
			go func() { defer wg.Done(); one() }()
		} else {
			one()
		}
	}
	wg.Wait()
	sum.Kernels = runs
	sum.WallSeconds = round(time.Since(sum.Started).Seconds())
	sum.Passed = true
	fmt.Println("vmrun summary:")
	for _, r := range runs {
		sum.Passed = sum.Passed && r.Passed
		verdict := "PASS"
		if !r.Passed {
			verdict = "FAIL"
		}
		pass, fail := 0, 0
		for _, t := range r.Tests {
			switch t.Result {
			case "PASS":
				pass++
			case "FAIL":
				fail++
			}
		}
		fmt.Printf("  %-5s %-24s %s  boot %.1fs  total %.1fs  exit %d  tests %d pass / %d fail  results %d\n",
			r.Kernel, r.Release, verdict, r.BootSeconds, r.TotalSeconds, r.ExitCode, pass, fail, len(r.Results))
		if r.Error != "" {
			fmt.Printf("        error: %s\n        console: %s\n", r.Error, r.Console)
		}
	}
	fmt.Printf("  wall %.1fs, summary %s\n", sum.WallSeconds, o.summary)
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return false, err
	}
	if err := os.WriteFile(o.summary, append(b, '\n'), 0o644); err != nil {
		return false, fmt.Errorf("write summary: %w", err)
	}
	return sum.Passed, nil
}

func accel() string {
	if a := os.Getenv("NETSHAPE_VM_ACCEL"); a != "" {
		return a
	}
	return "tcg"
}

// runKernel boots one VM and never returns an error: everything that goes wrong ends up in r.Error.
func runKernel(o *options, kernel string, printMu *sync.Mutex) *KernelRun {
	r := &KernelRun{Kernel: kernel, ExitCode: -1}
	start := time.Now()
	defer func() {
		r.TotalSeconds = round(time.Since(start).Seconds())
		r.Passed = r.Error == "" && r.ExitCode == 0
		if !r.Passed && r.Error == "" {
			r.Error = fmt.Sprintf("guest exit code %d", r.ExitCode)
		}
	}()
	kdir, err := filepath.EvalSymlinks(filepath.Join(o.cache, "kernels", kernel))
	if err != nil {
		r.Error = fmt.Sprintf("kernel %s not cached (run test/vm/fetch-kernels.sh): %v", kernel, err)
		return r
	}
	r.Release = filepath.Base(kdir)
	r.Console = filepath.Join(o.out, "console-"+kernel+".log")
	initrd := filepath.Join(o.out, "initrd-"+kernel+".gz")
	guestTimeout, err := buildInitramfs(o, kernel, kdir, r.Release, initrd)
	if err != nil {
		r.Error = err.Error()
		return r
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", qemuArgs(o, kdir, initrd)...)
	cmd.WaitDelay = 5 * time.Second
	if o.shell {
		// The terminal talks to the guest directly; nothing to parse.
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			r.Error = fmt.Sprintf("qemu: %v", err)
		}
		r.ExitCode = 0
		return r
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	cmd.Stderr = cmd.Stdout // qemu's own complaints belong in the console log too
	logf, err := os.Create(r.Console)
	if err != nil {
		r.Error = fmt.Sprintf("create console log: %v", err)
		return r
	}
	defer logf.Close()
	if err := cmd.Start(); err != nil {
		r.Error = fmt.Sprintf("start qemu: %v", err)
		return r
	}
	say := func(format string, args ...any) {
		printMu.Lock()
		defer printMu.Unlock()
		fmt.Printf("[%s] "+format+"\n", append([]any{kernel}, args...)...)
	}
	say("booting %s (%s, guest deadline %s)", r.Release, accel(), guestTimeout)
	scanConsole(io.TeeReader(stdout, logf), r, start, o.verbose, say)
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		r.TimedOut = true
		r.Error = fmt.Sprintf("VM timed out after %s", o.timeout)
	} else if r.ExitCode == -1 {
		r.Error = fmt.Sprintf("guest ended without %s (qemu: %v)", vmspec.MarkExit, waitErr)
	}
	if r.Error != "" || r.ExitCode != 0 {
		say("FAILED (%s); console: %s", firstNonEmpty(r.Error, fmt.Sprintf("exit %d", r.ExitCode)), r.Console)
		if !o.verbose {
			tail(r.Console, 30, say)
		}
	}
	return r
}

// buildInitramfs writes the initramfs for one kernel; it returns the in-guest deadline it put in the spec.
func buildInitramfs(o *options, kernel, kdir, release, out string) (time.Duration, error) {
	modDir := filepath.Join(kdir, "lib", "modules", release)
	mods, err := resolveModules(modDir, o.modules)
	if err != nil {
		return 0, err
	}
	// The guest stops its commands a little before the host kills qemu, so the console still says
	// which command hung and the guest powers off cleanly.
	guestTimeout := o.timeout - min(max(15*time.Second, o.timeout/10), o.timeout/2)
	spec := vmspec.Spec{
		Interactive: o.shell,
		Kernel:      kernel,
		Release:     release,
		ModulesDir:  modDir,
		Commands:    o.commands,
		Dir:         o.dir,
		Env:         guestEnv(o, kernel, release),
		TimeoutSec:  int(guestTimeout.Seconds()),
	}
	files := []initramfsFile{{dst: "/init", src: o.initBin, mode: 0o755}}
	for _, ko := range mods {
		dst := "/netshape/modules/" + filepath.Base(ko)
		spec.Modules = append(spec.Modules, dst)
		files = append(files, initramfsFile{dst: dst, src: filepath.Join(modDir, ko), mode: 0o644})
	}
	js, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return 0, err
	}
	files = append(files, initramfsFile{dst: vmspec.SpecPath, data: js, mode: 0o644})
	return guestTimeout, writeInitramfs(out, files)
}

func guestEnv(o *options, kernel, release string) []string {
	// NETSHAPE_REQUIRE_FQ: test/nettest.RequireFq fails instead of skipping where fq must exist.
	env := []string{"NETSHAPE_VM=1", "NETSHAPE_VM_KERNEL=" + kernel, "NETSHAPE_VM_RELEASE=" + release, "NETSHAPE_REQUIRE_FQ=1"}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "CI" || k == "GOTRACEBACK" || (strings.HasPrefix(k, "NETSHAPE_") && !strings.HasPrefix(k, "NETSHAPE_VM")) {
			env = append(env, kv)
		}
	}
	return append(env, o.env...)
}

func qemuArgs(o *options, kdir, initrd string) []string {
	var args []string
	if accel() == "kvm" {
		args = []string{"-accel", "kvm", "-cpu", "host"}
	} else {
		args = []string{"-accel", "tcg,thread=multi", "-cpu", "max"}
	}
	// quiet + loglevel=5: boot chatter off, but warnings and oops traces still reach the console.
	// mitigations=off: speculative-execution workarounds only cost time under emulation.
	// norandmaps: qemu 7.2 keys x86 translations by virtual address, so with ASLR every exec
	// (runc, iptables, each container's init) had its libraries translated afresh: 30-50 MB/s of
	// new code filled the 1 GiB translation buffer every ~30 s, and each flush slowed the whole
	// guest 3-4x for ~100 ms (every slow start in the start-latency benchmark). Without: ~0.2 MB/s.
	cmdline := "console=ttyS0 panic=-1 quiet loglevel=5 mitigations=off random.trust_cpu=on norandmaps"
	if o.appendK != "" {
		cmdline += " " + o.appendK
	}
	return append(args,
		"-smp", strconv.Itoa(o.smp), "-m", o.mem,
		"-nographic", "-no-reboot",
		// No NIC at all: the tests make their own namespaces and veths, and nothing may leave the machine.
		"-nic", "none",
		"-kernel", kernelImage(o, kdir), "-initrd", initrd, "-append", cmdline,
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
	)
}

// kernelImage prefers the uncompressed ELF vmlinux (qemu boots it through PVH, skipping the kernel's
// self-decompression, 1-3 s under TCG) and falls back to the bzImage.
func kernelImage(o *options, kdir string) string {
	if !o.bzImage {
		if _, err := os.Stat(filepath.Join(kdir, "vmlinux")); err == nil {
			return filepath.Join(kdir, "vmlinux")
		}
	}
	return filepath.Join(kdir, "vmlinuz")
}

var (
	testLine  = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)
	testStart = regexp.MustCompile(`^=== (RUN|CONT|NAME|PAUSE) `)
)

// scanConsole follows the console until qemu closes it, filling r from the marker lines.
func scanConsole(rd io.Reader, r *KernelRun, start time.Time, verbose bool, say func(string, ...any)) {
	cmdIdx := -1
	var cur []string // lines since the last "=== RUN/CONT/NAME": the running test's output
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if verbose {
			say("%s", line)
		}
		switch {
		case hasMark(line, vmspec.MarkReady):
			r.BootSeconds = round(time.Since(start).Seconds())
			for _, f := range strings.Fields(payload(line, vmspec.MarkReady)) {
				if v, ok := strings.CutPrefix(f, "uptime="); ok {
					r.GuestUptimeAtReady, _ = strconv.ParseFloat(v, 64)
				}
			}
			if !verbose {
				say("guest ready after %.1fs (guest uptime %.2fs)", r.BootSeconds, r.GuestUptimeAtReady)
			}
		case hasMark(line, vmspec.MarkCmdExit):
			f := strings.Fields(payload(line, vmspec.MarkCmdExit))
			if len(f) == 2 {
				code, _ := strconv.Atoi(f[1])
				r.CommandExits = append(r.CommandExits, code)
				if !verbose {
					say("command %s exited %d", f[0], code)
				}
			}
		case hasMark(line, vmspec.MarkCmd):
			idx, _, _ := strings.Cut(payload(line, vmspec.MarkCmd), " ")
			cmdIdx, _ = strconv.Atoi(idx)
			if !verbose {
				say("run: %s", payload(line, vmspec.MarkCmd))
			}
		case hasMark(line, vmspec.MarkResult):
			p := payload(line, vmspec.MarkResult)
			if json.Valid([]byte(p)) {
				r.Results = append(r.Results, json.RawMessage(p))
			} else {
				say("ignoring malformed result line: %s", p)
			}
			if !verbose {
				say("result %s", p)
			}
		case hasMark(line, vmspec.MarkError):
			if !verbose {
				say("guest error: %s", payload(line, vmspec.MarkError))
			}
		case hasMark(line, vmspec.MarkExit):
			r.ExitCode, _ = strconv.Atoi(strings.TrimSpace(payload(line, vmspec.MarkExit)))
		default:
			if m := testLine.FindStringSubmatch(line); m != nil {
				secs, _ := strconv.ParseFloat(m[3], 64)
				tr := TestResult{Command: cmdIdx, Name: m[2], Result: m[1], Seconds: secs}
				if m[1] == "FAIL" {
					tr.Output = append([]string(nil), cur[max(0, len(cur)-40):]...)
				}
				r.Tests = append(r.Tests, tr)
				if !verbose {
					say("%s %s (%ss)", m[1], m[2], m[3])
					for _, l := range tr.Output {
						say("    | %s", l)
					}
				}
				cur = cur[:0]
			} else if testStart.MatchString(line) {
				cur = cur[:0]
			} else {
				cur = append(cur, line)
			}
		}
	}
}

// Markers are matched anywhere in a line: a kernel message can land in front of one on the console.
func hasMark(line, mark string) bool { return strings.Contains(line, mark+" ") }

func payload(line, mark string) string {
	_, p, _ := strings.Cut(line, mark+" ")
	return strings.TrimSpace(p)
}

func tail(path string, n int, say func(string, ...any)) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	say("last %d console lines:", len(lines))
	for _, l := range lines {
		say("| %s", l)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// shellJoin quotes args for /bin/sh -c.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func round(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }
