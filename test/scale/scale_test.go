//go:build vm

package scale

import (
	"os"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMScaleApplyAll is the CI-sized run of the scale rig: 10 apps of 4 containers, each
// shaped in both directions with its backstop, by one `apply --all`; `apply APP` and a
// repeated `apply --all` change nothing; `report` names every app.
func TestVMScaleApplyAll(t *testing.T) {
	vmresult.RequireVM(t)
	nettest.RequireFq(t)
	runScale(t, 10, "scale_small")
}

// TestVMBenchScale is a thousand containers: 250 apps of 4 (web ×2, worker ×2), timed.
// NETSHAPE_SCALE_APPS sets another app count (CI's bench runs a smaller one).
func TestVMBenchScale(t *testing.T) {
	vmresult.RequireVM(t)
	if os.Getenv("NETSHAPE_BENCH") != "1" {
		t.Skip("benchmark: run by `make bench` (NETSHAPE_BENCH=1)")
	}
	nettest.RequireFq(t)
	runScale(t, scaleApps(t), "scale")
}
