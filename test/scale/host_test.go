package scale

import (
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// The host runs of the scale rig: the same CLI, reconcile and shaper against real
// namespaces and veths on the host kernel. Without sch_fq there (the host CI kernel)
// every shaping attachment takes the degraded no-fq path (netshape_limit, no qdisc),
// so these time the control plane on real hardware, not fq; the VM runs
// (scale_test.go) time both under emulation.

// TestRootScaleApplyAll is TestVMScaleApplyAll on the host: 10 apps of 4 containers.
func TestRootScaleApplyAll(t *testing.T) {
	nettest.RequireRoot(t)
	runScale(t, 10, "scale_small_host")
}

// BenchmarkScale is a thousand containers on the host (`make bench`, targets in
// test/bench): 250 apps of 4, or NETSHAPE_SCALE_APPS. One scenario per op: `apply
// --all` on nothing attached, `apply APP` among them, `apply --all` again, `report`.
func BenchmarkScale(b *testing.B) {
	nettest.RequireRoot(b)
	apps := scaleApps(b)
	var r scaleResult
	for range b.N {
		r = runScale(b, apps, "scale_host")
	}
	b.ReportMetric(float64(apps*perApp), "containers")
	b.ReportMetric(r.applyAll.Seconds(), "apply-all-s")
	b.ReportMetric(float64(r.applyAllRSS)/1024, "apply-all-rss-MiB")
	b.ReportMetric(float64(r.applyApp)/1e6, "apply-app-ms")
	b.ReportMetric(float64(r.applyAppRSS)/1024, "apply-app-rss-MiB")
	b.ReportMetric(r.applyAllAgain.Seconds(), "apply-all-again-s")
	b.ReportMetric(r.report.Seconds(), "report-s")
	b.ReportMetric(float64(r.reportRSS)/1024, "report-rss-MiB")
}
