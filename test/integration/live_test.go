//go:build vm

package integration

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMLiveRateChange: a flow runs through a 20 Mbit/s budget; UpsertBudget raises it to 50 while
// the flow keeps writing. The new rate must hold within 1 s, on the same TCP connection with no
// error. Then clearing — Detach of the device (egress) or RemoveBudget (ingress) — lifts the limit
// from the same connection and leaves the device clean.
func TestVMLiveRateChange(t *testing.T) {
	vmresult.RequireVM(t)
	const (
		from, to = 20e6, 50e6
		phase    = 2 * time.Second // measuring window of each steady phase
		settle   = time.Second     // the promise: the new rate within this
		step     = 250 * time.Millisecond
		// cleared: the rate after clearing must exceed the old limit by this factor. An enforced
		// 50 Mbit/s budget delivers at most (1+tolerance) of it, 1.03x over the 1 s window, so
		// 1.5x is an outcome no enforced limit produces: physics, not an earlier probe of this
		// guest's speed. Unshaped, a guest carries 280-1400 Mbit/s (test/vm/README.md); the
		// slowest cleared flow seen, with three TCG guests on the host's two cores, ran at 2x.
		cleared = 1.5
	)
	for _, d := range directions {
		t.Run(string(d), func(t *testing.T) {
			s := openShaper(t)
			w := newWorld(t, 1)
			a := w.apps[0]
			name := "live/" + string(d)
			upsert(t, s, shaper.Budget{Name: name, Rate: from})
			attach(t, s, a.device(d), name)
			if d == Egress {
				attachBackstop(t, s, a, name)
			}
			snd, rcv, rip := w.ends(a, d)
			sink := newSink(t, rcv, rip)
			total := warmup + phase + settle + phase + 3*time.Second
			f := startFlow(t, snd, sink.Addr().String(), total+5*time.Second)
			smp := startSampler(sink.Bytes, 10*time.Millisecond, total+5*time.Second)
			defer smp.stop()
			wf := f.wireFactor(t)
			rateOver := func(a, b time.Time) float64 {
				n, secs := smp.between(a, b)
				if secs == 0 {
					return 0
				}
				return float64(n) * 8 / secs * wf
			}

			t0 := time.Now().Add(warmup)
			time.Sleep(time.Until(t0.Add(phase)))
			before := rateOver(t0, t0.Add(phase))

			tc := time.Now()
			if err := s.UpsertBudget(shaper.Budget{Name: name, Rate: to}); err != nil {
				t.Fatalf("raise budget to 50 Mbit/s: %v", err)
			}
			time.Sleep(settle + phase + step)
			after := rateOver(tc.Add(settle), tc.Add(settle+phase))
			// Settling time: the start of the first 250 ms window after the change that already runs at
			// the new rate within that window's own tolerance (11% at 50 Mbit/s; 20 Mbit/s is far below).
			low := 1 - tolerance(to, step) - tcgSlack
			settled := time.Duration(-1)
			for off := time.Duration(0); off <= settle+phase-step; off += 10 * time.Millisecond {
				if rateOver(tc.Add(off), tc.Add(off+step)) >= low*to {
					settled = off
					break
				}
			}
			info, err := f.info()
			if err != nil {
				t.Fatal(err)
			}
			sameConn := f.err == nil && sink.Conns() == 1 && info.State == unix.BPF_TCP_ESTABLISHED

			// Clear: egress by Detach (the budget stays, unused), ingress by RemoveBudget.
			how := "Detach"
			tr := time.Now()
			if d == Egress {
				err = errors.Join(s.Detach(a.device(d)), s.Detach(a.backstop()))
			} else {
				how = "RemoveBudget"
				err = s.RemoveBudget(name)
			}
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			time.Sleep(500*time.Millisecond + phase/2 + step)
			clearedBps := rateOver(tr.Add(500*time.Millisecond), tr.Add(500*time.Millisecond+phase/2))
			info, err = f.info()
			if err != nil {
				t.Fatal(err)
			}
			retrans := info.Total_retrans
			ferr := f.stop()
			stillSame := ferr == nil && sink.Conns() == 1 && info.State == unix.BPF_TCP_ESTABLISHED

			tolPhase := tolerance(to, phase)
			vmresult.Report(t, "live_rate_change", map[string]any{
				"direction": string(d), "from_bps": from, "target_bps": to,
				"before_bps": before, "before_ratio": before / from,
				"achieved_bps": after, "ratio": after / to, "window_s": phase.Seconds(), "tolerance": tolPhase,
				"settle_ms": settled.Milliseconds(), "target": "new rate within 1 s, same connection",
				"same_connection": sameConn && stillSame, "clear_by": how,
				"cleared_bps": clearedBps, "cleared_vs_limit": clearedBps / to, "cleared_min_vs_limit": cleared,
				"conn_total_retrans": retrans,
			})
			t.Logf("%s: %s → %s Mbit/s: before %s, after %s (settled in %s); cleared by %s: %s Mbit/s",
				d, mbit(from), mbit(to), mbit(before), mbit(after), settled, how, mbit(clearedBps))

			if q := before / from; q > 1+tolerance(from, phase) || q < 1-tolerance(from, phase)-tcgSlack {
				t.Errorf("before the change: %s Mbit/s for %s", mbit(before), mbit(from))
			}
			if q := after / to; q > 1+tolPhase || q < 1-tolPhase-tcgSlack {
				t.Errorf("after the change: %s Mbit/s for %s (ratio %.4f, tol %.4f)", mbit(after), mbit(to), q, tolPhase)
			}
			if settled < 0 || settled > settle {
				t.Errorf("new rate reached after %s, want within %s", settled, settle)
			}
			if !sameConn || !stillSame {
				t.Errorf("connection did not survive: write error %v, sink connections %d, state %d", ferr, sink.Conns(), info.State)
			}
			// Unshaped again: a rate no enforced limit of `to` could produce (see cleared).
			if clearedBps < cleared*to {
				t.Errorf("after %s the flow runs at %s Mbit/s, want above %s (%.1fx the old limit)",
					how, mbit(clearedBps), mbit(cleared*to), cleared)
			}
			if d == Egress {
				assertNoBypass(t, s, name)
				if err := s.RemoveBudget(name); err != nil {
					t.Fatal(err)
				}
			}
			assertClean(t, s, a.device(d))
		})
	}
}
