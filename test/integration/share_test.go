//go:build vm

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// shareWindow: long enough for the tolerance to stay near 1% at 20 Mbit/s, short enough for CI.
const shareWindow = 5 * time.Second

const shareRate = 20e6

// TestVMSharedBudget: one budget is one rate however many flows and devices use it.
//   - 4 parallel flows of one app: their sum holds the rate;
//   - two "containers" (two app netns) attached to one budget, one flow each: the sum holds it.
func TestVMSharedBudget(t *testing.T) {
	vmresult.RequireVM(t)
	for _, d := range directions {
		t.Run(fmt.Sprintf("%s/4flows", d), func(t *testing.T) {
			s := openShaper(t)
			w := newWorld(t, 1)
			name := "four/" + string(d)
			r := bulk(t, s, w, w.apps, d, shaper.Budget{Name: name, Rate: shareRate}, 4, shareWindow)
			vmresult.Report(t, "shared_budget_rate", r.fields(map[string]any{"flows": 4, "devices": 1}))
			t.Logf("%s 4 flows: %s Mbit/s of %s (ratio %.4f, tol %.4f), retrans %d, dropped %d",
				d, mbit(r.achieved), mbit(r.target), r.ratio(), r.tol, r.retrans, r.st.Dropped)
			r.check(t, "4 flows sharing a budget")
			if err := s.RemoveBudget(name); err != nil {
				t.Fatal(err)
			}
			assertClean(t, s, w.apps[0].device(d))
		})
		t.Run(fmt.Sprintf("%s/2containers", d), func(t *testing.T) {
			s := openShaper(t)
			w := newWorld(t, 2)
			name := "two/" + string(d)
			r := bulk(t, s, w, w.apps, d, shaper.Budget{Name: name, Rate: shareRate}, 1, shareWindow)
			vmresult.Report(t, "shared_budget_rate", r.fields(map[string]any{"flows": 2, "devices": 2}))
			t.Logf("%s 2 containers: %s Mbit/s of %s (ratio %.4f, tol %.4f), retrans %d, dropped %d",
				d, mbit(r.achieved), mbit(r.target), r.ratio(), r.tol, r.retrans, r.st.Dropped)
			r.check(t, "2 containers sharing a budget")
			if err := s.RemoveBudget(name); err != nil {
				t.Fatal(err)
			}
			assertClean(t, s, w.apps[0].device(d), w.apps[1].device(d))
		})
	}
}

// TestVMIsolatedBudgets: two apps, two budgets (20 and 50 Mbit/s). App A saturates its budget
// with 4 flows; app B's one flow still gets its own full rate, and A does not get more than its.
func TestVMIsolatedBudgets(t *testing.T) {
	vmresult.RequireVM(t)
	for _, d := range directions {
		t.Run(string(d), func(t *testing.T) {
			s := openShaper(t)
			w := newWorld(t, 2)
			a, b := w.apps[0], w.apps[1]
			budgets := []shaper.Budget{{Name: "A/" + string(d), Rate: 20e6}, {Name: "B/" + string(d), Rate: 50e6}}
			for i, x := range []*app{a, b} {
				upsert(t, s, budgets[i])
				attach(t, s, x.device(d), budgets[i].Name)
				if d == Egress {
					attachBackstop(t, s, x, budgets[i].Name)
				}
			}
			var sinks []*traffic.Sink
			var fs []*flow
			for i, x := range []*app{a, b} {
				snd, rcv, rip := w.ends(x, d)
				sink := newSink(t, rcv, rip)
				sinks = append(sinks, sink)
				for j := 0; j < []int{4, 1}[i]; j++ {
					fs = append(fs, startFlow(t, snd, sink.Addr().String(), warmup+shareWindow+5*time.Second))
				}
			}
			time.Sleep(warmup)
			st0 := []shaper.Stats{stats(t, s, budgets[0].Name), stats(t, s, budgets[1].Name)}
			senders := []*nettest.Netns{}
			for _, x := range []*app{a, b} {
				snd, _, _ := w.ends(x, d)
				senders = append(senders, snd)
			}
			re0 := []int64{retransSegs(t, senders[0]), retransSegs(t, senders[1])}
			rates, el := window(sinks, fs, 0, shareWindow)
			re := []int64{retransSegs(t, senders[0]) - re0[0], retransSegs(t, senders[1]) - re0[1]}
			wf := fs[0].wireFactor(t)
			for _, f := range fs {
				if err := f.stop(); err != nil {
					t.Errorf("flow %s: %v", f.local, err)
				}
			}
			for i, bd := range budgets {
				// In the ingress direction both senders are the one client netns: its retransmits are the sum.
				r := rateResult{dir: d, target: float64(bd.Rate), achieved: rates[i] * wf, window: el, retrans: re[i],
					st: statsDelta(st0[i], stats(t, s, bd.Name)), tol: tolerance(float64(bd.Rate), el)}
				vmresult.Report(t, "isolated_budget_rate", r.fields(map[string]any{"app": bd.Name, "flows": []int{4, 1}[i]}))
				t.Logf("%s %s: %s Mbit/s of %s (ratio %.4f, tol %.4f), dropped %d",
					d, bd.Name, mbit(r.achieved), mbit(r.target), r.ratio(), r.tol, r.st.Dropped)
				r.check(t, "isolated budget "+bd.Name)
			}
			for _, bd := range budgets {
				if d == Egress {
					assertNoBypass(t, s, bd.Name)
				}
				if err := s.RemoveBudget(bd.Name); err != nil {
					t.Fatal(err)
				}
			}
			assertClean(t, s, a.device(d), b.device(d))
		})
	}
}
