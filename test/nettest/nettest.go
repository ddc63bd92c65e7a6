// Package nettest builds throwaway network namespaces and veth pairs for
// tests that need root. Everything it creates is removed by t.Cleanup.
package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireRoot fails the test when not root under CI (CI runs as root, so a
// skip there would hide a broken setup) and skips it otherwise.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root, and CI runs as root")
	}
	t.Skip("needs root")
}

// Netns is a named network namespace (ip netns add).
type Netns struct {
	Name string
	Path string // /run/netns/NAME
}

// Suffix returns a short random suffix for names that must not collide.
func Suffix() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewNetns creates a namespace with lo up.
func NewNetns(t testing.TB, prefix string) *Netns {
	t.Helper()
	name := prefix + Suffix()
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := &Netns{Name: name, Path: "/run/netns/" + name}
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Run runs a command in the namespace and fails the test on error.
func (n *Netns) Run(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Pair connects two namespaces with a veth pair and addresses them in
// 10.X.0.0/24 (X from the caller, to keep pairs apart). A nil namespace means
// the test's own. Names must not be prefixes of iproute2 keywords.
type Pair struct {
	A, B         *Netns
	NameA, NameB string
	IPA, IPB     string
}

// NewPair creates the pair and brings both ends up.
func NewPair(t testing.TB, a, b *Netns, subnet int) *Pair {
	t.Helper()
	s := Suffix()
	p := &Pair{A: a, B: b, NameA: "nsa" + s, NameB: "nsb" + s,
		IPA: fmt.Sprintf("10.%d.%d.1", 200+subnet/256, subnet%256), IPB: fmt.Sprintf("10.%d.%d.2", 200+subnet/256, subnet%256)}
	Run(t, "ip", "link", "add", p.NameA, "type", "veth", "peer", "name", p.NameB)
	t.Cleanup(func() { exec.Command("ip", "link", "del", p.NameA).Run() })
	for _, end := range []struct {
		ns   *Netns
		name string
		ip   string
	}{{a, p.NameA, p.IPA}, {b, p.NameB, p.IPB}} {
		if end.ns != nil {
			Run(t, "ip", "link", "set", end.name, "netns", end.ns.Name)
		}
		end.ns.run(t, "ip", "addr", "add", end.ip+"/24", "dev", end.name)
		end.ns.run(t, "ip", "link", "set", end.name, "up")
	}
	return p
}

// Path of a namespace for shaper.Device: "" for the test's own.
func (n *Netns) PathOrSelf() string {
	if n == nil {
		return ""
	}
	return n.Path
}

func (n *Netns) run(t testing.TB, args ...string) string {
	if n == nil {
		return Run(t, args...)
	}
	return n.Run(t, args...)
}

// Run runs a command and fails the test if it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Output runs a command and returns its output and error, for assertions on failures.
func Output(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// HaveFq probes the running kernel for sch_fq on a throwaway veth.
func HaveFq(t testing.TB) bool {
	t.Helper()
	p := NewPair(t, NewNetns(t, "fqprobe"), nil, 250)
	_, err := Output("ip", "netns", "exec", p.A.Name, "tc", "qdisc", "add", "dev", p.NameA, "root", "fq")
	return err == nil
}

// RequireFq skips on kernels without sch_fq (the dev/CI host): such tests run
// inside the Debian 6.1 and 6.12 guests of `make vm-test`, which set
// NETSHAPE_REQUIRE_FQ=1 so that a missing fq there fails instead of skipping.
func RequireFq(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if HaveFq(t) {
		return
	}
	if os.Getenv("NETSHAPE_REQUIRE_FQ") == "1" {
		t.Fatal("NETSHAPE_REQUIRE_FQ=1 but the kernel has no sch_fq")
	}
	t.Skip("kernel has no sch_fq: run by `make vm-test` in Debian 6.1/6.12 guests")
}
