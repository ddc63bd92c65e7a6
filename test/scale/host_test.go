package scale

import (
	"os"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// The host runs of the scale rig: the same CLI, reconcile and shaper against real
// namespaces and veths on the host kernel. Without sch_fq there (the host CI kernel)
// every shaping attachment takes the degraded no-fq path (netshape_limit, no qdisc),
// so these time the control plane, not fq; the VM runs (scale_test.go) time both.

// TestRootScaleApplyAll is TestVMScaleApplyAll on the host: 10 apps of 4 containers.
func TestRootScaleApplyAll(t *testing.T) {
	nettest.RequireRoot(t)
	runScale(t, 10, "scale_small_host")
}

// TestRootBenchScale is TestVMBenchScale on the host (real hardware, no TCG):
// NETSHAPE_SCALE_APPS apps of 4, default 250.
func TestRootBenchScale(t *testing.T) {
	nettest.RequireRoot(t)
	if os.Getenv("NETSHAPE_BENCH") != "1" {
		t.Skip("benchmark: run with NETSHAPE_BENCH=1")
	}
	runScale(t, scaleApps(t), "scale_host")
}
