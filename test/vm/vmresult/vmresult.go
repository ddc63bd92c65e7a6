// Package vmresult is what test code running inside a VM guest (test/vm) uses to talk to the host:
// Report prints a NETSHAPE-RESULT line that vmrun collects into its JSON summary, and RequireVM makes
// a VM-only test fail loudly when it is run anywhere else.
package vmresult

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmspec"
)

// InVM reports whether this process runs inside a test VM booted by vmrun.
func InVM() bool { return os.Getenv("NETSHAPE_VM") == "1" }

// Kernel is the guest's kernel series as vmrun named it ("6.1", "6.12"), "" outside a VM.
func Kernel() string { return os.Getenv("NETSHAPE_VM_KERNEL") }

// RequireVM fails the test outside a vmrun guest: VM tests need fq and a kernel the host lacks, so
// running one elsewhere would only produce a misleading failure further down.
func RequireVM(t testing.TB) {
	t.Helper()
	if !InVM() {
		t.Fatal("this test runs only inside the test VM (make vm-test); NETSHAPE_VM is not 1")
	}
}

// Report prints one result line: {"test": t.Name(), "kernel": ..., "metric": metric, ...fields}.
// Keep values JSON-encodable; keys "test", "kernel" and "metric" are set here.
func Report(t testing.TB, metric string, fields map[string]any) {
	t.Helper()
	m := map[string]any{}
	for k, v := range fields {
		m[k] = v
	}
	m["test"], m["kernel"], m["metric"] = t.Name(), Kernel(), metric
	b, err := json.Marshal(m)
	if err != nil {
		t.Errorf("encode result %s: %v", metric, err)
		return
	}
	// One write per line so it is not interleaved with other output on the console.
	fmt.Fprintf(os.Stdout, "%s %s\n", vmspec.MarkResult, b)
}
