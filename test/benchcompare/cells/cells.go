// Package cells is the shape of the peer comparison (`make bench-compare`): which schemes, rates,
// directions and flow counts make up a matrix, what one measured cell holds, and the checks that
// every scheme really did what its row claims before any table is drawn from it. The guest harness
// (test/benchcompare/guest) fills cells; the report (test/benchcompare/report) reads them.
package cells

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scheme names one shaper the comparison puts on the container's devices.
type Scheme string

const (
	Netshape   Scheme = "dokku-netshape"
	TBFRuntime Scheme = "tbf-cni-runtime" // TBF with the burst containerd hands the CNI bandwidth plugin
	TBFSane    Scheme = "tbf-32kb"
	DockerTC   Scheme = "docker-tc"
	HTB        Scheme = "htb"
	CiliumEDT  Scheme = "edt-cilium"
	NoLimit    Scheme = "no-limit"
)

// Schemes in the order the harness runs them at each position of the matrix and the tables list
// them.
var Schemes = []Scheme{NoLimit, Netshape, CiliumEDT, TBFSane, DockerTC, HTB, TBFRuntime}

// Describe says what a scheme is, as the report prints it.
func (s Scheme) Describe() string {
	switch s {
	case Netshape:
		return "this project, through its CLI (`set APP --egress R --ingress R`): EDT + fq, shared budget, express path for sparse flows"
	case TBFRuntime:
		return "`tbf rate R burst 536870911b latency 25ms`: the CNI bandwidth plugin's TBF with the 2^32-bit burst containerd passes it at runtime (test/cni checks that bucket)"
	case TBFSane:
		return "`tbf rate R burst 32kb latency 25ms`: the CNI plugin's TBF with a burst a person would pick"
	case DockerTC:
		return "docker-tc's chain: `netem` (no impairment) at the root, `tbf rate R burst 5kb latency 50ms` under it"
	case HTB:
		return "`htb default 10`, one class `rate R ceil R`, default leaf queue"
	case CiliumEDT:
		return "EDT + fq as Cilium's bandwidth manager stamps it: one departure clock per device, 2 s drop horizon, no express path, no lock (the bench's own BPF program, built in Go with cilium/ebpf's asm package)"
	case NoLimit:
		return "nothing attached: the path's own capacity in this guest at that moment"
	}
	return string(s)
}

// Limits reports whether the scheme is expected to hold its rate over a cell: the runtime-burst TBF
// is not (its 512 MiB bucket outlasts any cell under TCG), and no-limit has no rate.
func (s Scheme) Limits() bool { return s != NoLimit && s != TBFRuntime }

// Dir is a direction named from the app's point of view.
type Dir string

const (
	Egress  Dir = "egress"  // the container sends
	Ingress Dir = "ingress" // the container receives
)

// Matrix is what one kernel's run measures.
type Matrix struct {
	Name    string        // "full" or "ci"
	Schemes []Scheme      // run in this order
	Rates   []float64     // bit/s on the wire; no-limit runs once per direction and flow count
	Dirs    []Dir         //
	Flows   []int         // bulk TCP flows per cell
	Cell    time.Duration // length of one cell (bulk flows run all of it)
	Probe   time.Duration // probes (ping, RR, 256 KiB transfers) start this long after the bulk flows
	Settle  time.Duration // pause between cells, for queues to drain
}

// applyCost is what putting a scheme on and taking it off costs per cell under TCG (dokku-netshape's
// set and clear take 1-3 s, a tc chain a few hundred ms).
const applyCost = time.Second

// Named returns a matrix by name: "full" (the default: 7 schemes × 2 rates × 2 directions × 3 flow
// counts, 5 s cells, ~10 minutes per kernel under TCG) or "ci" (20 Mbit/s, 1 and 16 flows, 4 s cells,
// ~3 minutes). cell overrides the cell length when non-zero.
func Named(name string, cell time.Duration) (Matrix, error) {
	m := Matrix{Name: name, Schemes: Schemes, Dirs: []Dir{Egress, Ingress}, Probe: time.Second, Settle: time.Second}
	switch name {
	case "", "full":
		m.Name, m.Rates, m.Flows, m.Cell = "full", []float64{20e6, 100e6}, []int{1, 4, 16}, 5*time.Second
	case "ci":
		m.Rates, m.Flows, m.Cell = []float64{20e6}, []int{1, 16}, 4*time.Second
	default:
		return Matrix{}, fmt.Errorf("matrix %q: want full or ci", name)
	}
	if cell != 0 {
		if cell < 3*time.Second || cell > time.Minute {
			return Matrix{}, fmt.Errorf("cell length %s: want 3s..1m (probes start after %s)", cell, m.Probe)
		}
		m.Cell = cell
	}
	return m, nil
}

// Spec is one cell to measure.
type Spec struct {
	Scheme Scheme  `json:"scheme"`
	Dir    Dir     `json:"dir"`
	Rate   float64 `json:"rate_bps"` // the limit; for no-limit, the limit of the schemes it was measured beside
	Flows  int     `json:"flows"`
}

// Label is the scheme as a table row names it.
func (s Spec) Label() string { return string(s.Scheme) }

// Specs lists the cells in the order the harness runs them: for each position (rate, direction,
// flows) every scheme in turn, each put on just for its cell. Under TCG the guest's speed drifts with
// the host's load over minutes; interleaving keeps the schemes of one position (and the no-limit
// reference they are checked against) seconds apart.
func (m Matrix) Specs() []Spec {
	var out []Spec
	for _, r := range m.Rates {
		for _, d := range m.Dirs {
			for _, f := range m.Flows {
				for _, s := range m.Schemes {
					out = append(out, Spec{Scheme: s, Dir: d, Rate: r, Flows: f})
				}
			}
		}
	}
	return out
}

// Estimate is how long the cells take, without boot and scheme setup.
func (m Matrix) Estimate() time.Duration {
	return time.Duration(len(m.Specs())) * (m.Cell + m.Settle + applyCost)
}

// Cell is one measured cell. Rates are TCP payload at the receiver, of the bulk flows and the 256 KiB
// transfers together (everything the loaded direction carried but the RR requests and pings, <0.3%
// of 20 Mbit/s); times in ms.
type Cell struct {
	Spec
	Kernel      string    `json:"kernel"`
	CellSeconds float64   `json:"cell_seconds"`
	Bytes       int64     `json:"bytes"`         // received over the cell
	BulkBps     float64   `json:"bulk_cell_bps"` // of which the bulk flows, over the whole cell (0: not measured)
	MeanBps     float64   `json:"mean_bps"`      // after the first second, to the end
	FirstBps    float64   `json:"first_bps"`     // the first second
	ExpectedBps float64   `json:"expected_bps"`  // the limit as TCP payload (MTU goodput share); 0 for no-limit
	SeriesBps   []float64 `json:"series_bps"`    // receiver rate per SeriesStep
	SeriesStep  float64   `json:"series_step_s"`

	Ping Latency `json:"ping"` // ICMP echo, 20 Hz, beside the bulk flows
	RR   Latency `json:"rr"`   // 64 B TCP request/response, one at a time, 10 ms apart
	Xfer Latency `json:"xfer"` // sequential 256 KiB transfers: connect to last byte acknowledged

	Retrans   int64   `json:"retrans"`      // sender's TCP RetransSegs over the cell
	Drops     int64   `json:"drops"`        // qdisc drops on the shaped device plus the scheme's own BPF drops
	SysCPUSec float64 `json:"sys_cpu_s"`    // guest system+irq+softirq CPU seconds over the cell
	CPUPerGB  float64 `json:"cpu_s_per_gb"` // SysCPUSec per GB received
	Error     string  `json:"error,omitempty"`
}

// Latency is a probe's samples and summary.
type Latency struct {
	Count   int       `json:"count"`
	Lost    int       `json:"lost,omitempty"` // pings without an answer
	P50     float64   `json:"p50_ms"`
	P90     float64   `json:"p90_ms"`
	P99     float64   `json:"p99_ms"`
	Samples []float64 `json:"samples_ms,omitempty"`
}

// Summarize fills the percentiles from samples (nearest rank).
func Summarize(samples []float64, lost int) Latency {
	l := Latency{Count: len(samples), Lost: lost, Samples: samples}
	if len(samples) == 0 {
		return l
	}
	s := slices.Sorted(slices.Values(samples))
	l.P50, l.P90, l.P99 = Percentile(s, 0.5), Percentile(s, 0.9), Percentile(s, 0.99)
	return l
}

// Percentile of sorted samples, nearest rank.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Goodput is the share of a wire rate a TCP receiver sees as payload: MTU-52 bytes (IPv4, TCP with
// timestamps) in an MTU+14-byte frame.
func Goodput(mtu int) float64 { return float64(mtu-52) / float64(mtu+14) }

// Check is the harness's guard against a pretty but wrong table: every shaping scheme's long-run
// rate is below 1.5× its limit, the runtime-burst TBF is above 2× (its burst is really there), the
// no-limit cell of the same position (measured seconds apart) carried more than 2× the limit, and
// each limiting scheme's cell carries its probes (on an unlimited path a saturated guest may starve
// them; that is reported, not a harness error). A cell the harness could not measure is an error too.
func Check(cs []Cell) error {
	var errs []error
	free := map[string]float64{}
	for _, c := range cs {
		if c.Scheme == NoLimit && c.Error == "" {
			free[c.position()] = c.MeanBps
		}
	}
	for _, c := range cs {
		name := c.Name()
		switch {
		case c.Error != "":
			errs = append(errs, fmt.Errorf("%s: %s", name, c.Error))
			continue
		case c.Scheme.Limits() && c.MeanBps > 1.5*c.Rate:
			errs = append(errs, fmt.Errorf("%s: %.1f Mbit/s over the cell, above 1.5× the %.0f Mbit/s limit: the scheme did not limit", name, c.MeanBps/1e6, c.Rate/1e6))
		case c.Scheme == TBFRuntime && c.MeanBps < 2*c.Rate:
			errs = append(errs, fmt.Errorf("%s: %.1f Mbit/s, below 2× the %.0f Mbit/s limit: the runtime burst (512 MiB) was not in effect", name, c.MeanBps/1e6, c.Rate/1e6))
		}
		if c.Scheme != NoLimit {
			f, ok := free[c.position()]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: no no-limit cell at the same position (rate, direction, flows) of the run to compare with", name))
			} else if f < 2*c.Rate {
				errs = append(errs, fmt.Errorf("%s: the unlimited path carried %.1f Mbit/s, not above 2× the %.0f Mbit/s limit: the limit was not what held the rate", name, f/1e6, c.Rate/1e6))
			}
		}
		if c.Scheme.Limits() && (c.Ping.Count == 0 || c.RR.Count == 0 || c.Xfer.Count == 0) {
			errs = append(errs, fmt.Errorf("%s: probes missing (ping %d, rr %d, 256 KiB transfers %d)", name, c.Ping.Count, c.RR.Count, c.Xfer.Count))
		}
	}
	return errors.Join(errs...)
}

func (c Cell) position() string { return fmt.Sprint(c.Kernel, c.Dir, c.Rate, c.Flows) }

// Name is the cell's label in messages: kernel/scheme/dir/rate/flows.
func (c Cell) Name() string {
	var b strings.Builder
	if c.Kernel != "" {
		b.WriteString(c.Kernel + "/")
	}
	fmt.Fprintf(&b, "%s/%s/", c.Scheme, c.Dir)
	if c.Rate > 0 {
		fmt.Fprintf(&b, "%gmbit/", c.Rate/1e6)
	}
	fmt.Fprintf(&b, "%dflows", c.Flows)
	return b.String()
}
