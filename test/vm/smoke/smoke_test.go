//go:build vm

package smoke

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// newPair: two fresh namespaces joined by a veth pair (subnet picks 10.200+.X.0/24 per test).
func newPair(t *testing.T, subnet int) *nettest.Pair {
	t.Helper()
	return nettest.NewPair(t, nettest.NewNetns(t, "smka"), nettest.NewNetns(t, "smkb"), subnet)
}

// TestVMGuestEnvironment: what /init promises every VM test.
func TestVMGuestEnvironment(t *testing.T) {
	vmresult.RequireVM(t)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	if rel, want := unix.ByteSliceToString(uts.Release[:]), os.Getenv("NETSHAPE_VM_RELEASE"); rel != want {
		t.Errorf("kernel release %q, vmrun booted %q", rel, want)
	}
	for path, magic := range map[string]int64{
		"/sys/fs/bpf":    unix.BPF_FS_MAGIC,
		"/sys/fs/cgroup": unix.CGROUP2_SUPER_MAGIC,
		"/run":           unix.TMPFS_MAGIC,
		"/dev/shm":       unix.TMPFS_MAGIC,
	} {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			t.Errorf("statfs %s: %v", path, err)
		} else if st.Type != magic {
			t.Errorf("%s: fs magic %#x, want %#x", path, st.Type, magic)
		}
	}
	for _, p := range []string{"/dev/fd/0", "/dev/pts/ptmx", "/lib/modules/" + os.Getenv("NETSHAPE_VM_RELEASE") + "/modules.dep"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	mods, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"sch_fq", "veth", "cls_bpf", "sch_ingress", "overlay"} {
		if !strings.Contains(string(mods), m+" ") {
			t.Errorf("module %s not loaded", m)
		}
	}
}

// TestVMFqRootOnVeth: the one thing the host cannot do — an fq root qdisc on a veth in a netns.
func TestVMFqRootOnVeth(t *testing.T) {
	vmresult.RequireVM(t)
	p := newPair(t, 1)
	p.A.Run(t, "tc", "qdisc", "add", "dev", p.NameA, "root", "fq")
	out := p.A.Run(t, "tc", "qdisc", "show", "dev", p.NameA)
	if !strings.Contains(out, "qdisc fq ") || !strings.Contains(out, " root ") {
		t.Fatalf("fq root not installed on %s: %s", p.NameA, out)
	}
	p.A.Run(t, "tc", "qdisc", "add", "dev", p.NameA, "clsact")
	// Qdiscs nobody preloaded must come in through the kernel's module autoloading (comparisons use them).
	p.B.Run(t, "tc", "qdisc", "add", "dev", p.NameB, "root", "tbf", "rate", "20mbit", "burst", "32kb", "latency", "25ms")
	if out := p.B.Run(t, "tc", "qdisc", "show", "dev", p.NameB); !strings.Contains(out, "qdisc tbf ") {
		t.Fatalf("tbf not installed: %s", out)
	}
}

// TestVMUnshapedVethTCP measures what one TCP flow gets between two namespaces with nothing shaping it:
// the ceiling any shaped-rate test in this guest has to stay well below.
func TestVMUnshapedVethTCP(t *testing.T) {
	vmresult.RequireVM(t)
	p := newPair(t, 2)
	ln, err := traffic.ListenIn(p.B.Path, net.JoinHostPort(p.IPB, "5001"))
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()

	ctx := context.Background()
	sent := make(chan traffic.SendResult, 1)
	go func() {
		res, err := traffic.Send(ctx, traffic.SendOptions{Addr: sink.Addr().String(), Duration: 3 * time.Second, Dial: traffic.DialIn(p.A.Path)})
		if err != nil {
			t.Errorf("send: %v", err)
		}
		sent <- res
	}()
	got, err := sink.MeasureRate(ctx, 500*time.Millisecond, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	res := <-sent
	vmresult.Report(t, "veth_unshaped_tcp", map[string]any{
		"receiver_bits_per_sec": got.BitsPerSec, "window_seconds": got.Seconds,
		"sender_bits_per_sec": res.BitsPerSec, "sender_per_second_bits": res.PerSecond,
	})
	t.Logf("unshaped veth TCP: %.0f Mbit/s at the receiver (sender %.0f Mbit/s)", got.BitsPerSec/1e6, res.BitsPerSec/1e6)
	// 100 Mbit/s: shaping tests run at 10-50 Mbit/s and need headroom; below this the guest is too slow.
	if got.BitsPerSec < 100e6 {
		t.Errorf("unshaped rate %.1f Mbit/s < 100 Mbit/s", got.BitsPerSec/1e6)
	}
}

// TestVMLoadgenBetweenNamespaces runs the static loadgen binary the way a container app would.
func TestVMLoadgenBetweenNamespaces(t *testing.T) {
	vmresult.RequireVM(t)
	bin := os.Getenv("NETSHAPE_LOADGEN")
	if bin == "" {
		t.Fatal("NETSHAPE_LOADGEN (path of a built test/tools/loadgen) is not set; make vm-smoke sets it")
	}
	p := newPair(t, 3)
	serve := exec.Command("ip", "netns", "exec", p.B.Name, bin, "serve",
		"-sink", p.IPB+":5001", "-echo", p.IPB+":5002", "-duration", "60s")
	stdout, err := serve.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		t.Fatalf("start loadgen serve: %v", err)
	}
	defer func() { _ = serve.Process.Kill(); _ = serve.Wait() }()
	first, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.Contains(first, `"serving":true`) {
		t.Fatalf("loadgen serve did not come up: %q, %v", first, err)
	}

	out := p.A.Run(t, bin, "send", "-to", p.IPB+":5001", "-duration", "2s")
	var final struct {
		Final      bool    `json:"final"`
		Bytes      int64   `json:"bytes"`
		BitsPerSec float64 `json:"bits_per_sec"`
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &final); err != nil || !final.Final || final.Bytes == 0 {
		t.Fatalf("send output's last line is not a final result: %q (%v)", lines[len(lines)-1], err)
	}

	out = p.A.Run(t, bin, "rr", "-to", p.IPB+":5002", "-count", "200", "-interval", "5ms")
	var lat traffic.Latency
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &lat); err != nil {
		t.Fatalf("rr output %q: %v", out, err)
	}
	if lat.Count != 200 || lat.P50Ms <= 0 || lat.P99Ms < lat.P50Ms {
		t.Fatalf("implausible rr result: %+v", lat)
	}
	vmresult.Report(t, "veth_unshaped_rr", map[string]any{
		"p50_ms": lat.P50Ms, "p99_ms": lat.P99Ms, "max_ms": lat.MaxMs, "count": lat.Count,
		"loadgen_send_bits_per_sec": final.BitsPerSec,
	})
}
