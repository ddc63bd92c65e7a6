package shaper

import (
	"errors"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// The probe agrees with tc on a veth of the test's own, and leaves no
// namespace or qdisc behind in the test's network namespace.
func TestRootFqSupportAgreesWithTc(t *testing.T) {
	nettest.RequireRoot(t)
	have := nettest.HaveFq(t)
	before := nettest.Run(t, "tc", "qdisc", "show")
	err := probeFq()
	switch {
	case have && err != nil:
		t.Fatalf("tc makes fq, the probe says %v", err)
	case !have && !errors.Is(err, ErrNoFq):
		t.Fatalf("tc cannot make fq, the probe says %v, want ErrNoFq", err)
	}
	if after := nettest.Run(t, "tc", "qdisc", "show"); after != before {
		t.Fatalf("probe changed the test's namespace:\n%s\n---\n%s", before, after)
	}
}

func TestTcHandle(t *testing.T) {
	for h, want := range map[uint32]string{0x10000: "1:", 0x4e530000: "4e53:", 0x80010002: "8001:2"} {
		if got := tcHandle(h); got != want {
			t.Errorf("tcHandle(%#x) = %q, want %q", h, got, want)
		}
	}
}
