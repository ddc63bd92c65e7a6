// Package testnet builds throw-away network topologies for tests: named network namespaces joined by
// veth pairs, removed again when the test ends. It drives iproute2 (ip), which every test machine and
// VM guest here has, so a failing step reads like the command an operator would type.
package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

var seq atomic.Int64

// Pair is two network namespaces A and B joined by one veth pair, A's end DevA with AddrA, B's end
// DevB with AddrB (both in one /24), links up, lo up in both.
type Pair struct {
	NsA, NsB     string // names under /run/netns
	DevA, DevB   string
	AddrA, AddrB string // without prefix length
}

// PathA is the namespace path of A (for traffic.ListenIn/DialIn or netlink).
func (p *Pair) PathA() string { return "/run/netns/" + p.NsA }

// PathB is the namespace path of B.
func (p *Pair) PathB() string { return "/run/netns/" + p.NsB }

// NewPair creates a Pair and registers its removal with t.Cleanup.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	n := seq.Add(1)
	p := &Pair{
		NsA:   fmt.Sprintf("nstest-%d-%d-a", os.Getpid(), n),
		NsB:   fmt.Sprintf("nstest-%d-%d-b", os.Getpid(), n),
		DevA:  "vtha", // device names are per namespace, so they can be fixed
		DevB:  "vthb",
		AddrA: "10.231.0.1",
		AddrB: "10.231.0.2",
	}
	for _, ns := range []string{p.NsA, p.NsB} {
		Run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("remove netns %s: %v: %s", ns, err, out)
			}
		})
	}
	// Created inside A with the peer moved straight to B: nothing ever appears in the caller's namespace.
	Run(t, "ip", "-n", p.NsA, "link", "add", "name", p.DevA, "type", "veth", "peer", "name", p.DevB, "netns", p.NsB)
	for _, side := range []struct{ ns, dev, addr string }{{p.NsA, p.DevA, p.AddrA}, {p.NsB, p.DevB, p.AddrB}} {
		Run(t, "ip", "-n", side.ns, "addr", "add", side.addr+"/24", "dev", side.dev)
		Run(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
		Run(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
	}
	return p
}

// Run runs a command and fails the test (with its output) if it fails; it returns the output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RunIn runs a command inside the named network namespace (ip netns exec) like Run.
func RunIn(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// RequireRoot fails the test when not root under CI=true (where root is a given), and skips it
// elsewhere so a developer's unprivileged `go test ./...` still runs everything else.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true: failing instead of skipping")
	}
	t.Skip("needs root")
}
