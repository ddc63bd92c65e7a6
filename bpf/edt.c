// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// netshape EDT rate limiter.
//
// Attached at tc egress of a device whose root qdisc is fq. For every packet it
// computes an earliest departure time (skb->tstamp) from the packet's budget:
// one virtual FIFO clock per budget, advanced by wire_len / rate. fq holds the
// packet until that time. Any number of devices (in any netns) share a budget:
// the attachment names the budget (a read-only budget_id, or the cls_bpf
// filter's classid; see budget_of), so no per-packet lookup depends on an ifindex.
//
// Three refinements over plain EDT (see docs/DESIGN.md for the measurements):
//  - drop horizon: a packet whose budget backlog *before* it exceeds
//    horizon_ns is dropped, so a sender without backpressure cannot queue
//    unboundedly (measured before the packet so one big GSO packet always fits);
//  - CE marking: above ce_ns an ECN-capable packet is CE-marked (it still
//    waits for its slot, the rate stays exact) so ECN senders back off early;
//  - express for sparse flows: a small packet of a flow with nothing of its own
//    in flight leaves now instead of behind the bulk queue. It is still charged
//    to the budget clock, so the long-run rate is unchanged; only order changes.
//    Express stops once the backlog passes express_ns, bounding any burst.
//
// Two variants of it, picked per attachment by the loader:
//  - netshape_limit: the same budget enforced without fq (a kernel without
//    sch_fq): the budget clock is a policer, a packet whose backlog before it
//    exceeds the horizon is dropped, nothing is stamped (nothing would honour
//    it). Degraded: TCP gets drops instead of backpressure and no pacing.
//  - netshape_count: count-only budgets (BUDGET_COUNT_ONLY): bytes and packets
//    into the budget's counters, nothing else; no qdisc needed.
//
// A further program, netshape_police, is the backstop for app egress: see the
// comment above it.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define NSEC_PER_SEC 1000000000ULL

// A departure time further ahead than this is not a pacing decision of the
// local stack (TCP paces at most a few ms ahead); it is a receive timestamp on
// another clock and must not be honoured, or the packet would wait for years.
#define TSTAMP_MAX_AHEAD_NS NSEC_PER_SEC

// budget_cfg.flags
#define BUDGET_COUNT_ONLY 1 // count bytes and packets, enforce nothing (rate_bps is 0)
#define BUDGET_NOFQ 2       // a device polices this budget without fq (netshape_limit)

// The no-fq policer's smallest burst tolerance. A TCP sender that meets a
// drop stalls for about its minimum RTO (200 ms; a locally dropped packet
// waits for the probe timer, a forwarded one for recovery). A bucket smaller
// than the stall wastes the stall: with 20 ms a bulk flow got 12 % of the
// rate, with 100 ms 52 %, with 300 ms 99.6-100.8 % (docs/MEASUREMENTS.md). The
// backstop of a BUDGET_NOFQ budget allows this much more, so it never drops
// what the no-fq policer passed.
#define NOFQ_TOL_NS (300 * 1000000ULL)

struct budget_cfg {
	__u64 rate_bps;      // bits per second; 0 = no limit (fail open)
	__u64 horizon_ns;    // drop when the backlog before the packet exceeds this
	__u64 ce_ns;         // CE-mark when the backlog exceeds this; 0 = never
	__u64 express_ns;    // express allowed while the backlog is below this; 0 = off
	__u32 express_bytes; // largest packet that may go express
	__u32 flags;         // BUDGET_*; was padding, so old pins read as 0
};

// The budget clock is one 64-bit word, charged with compare-and-swap rather
// than under a bpf_spin_lock (a helper call pair with IRQ save/restore, ~40 ns
// per packet): a packet reads the clock, decides from that value (express,
// drop or queue) and installs the clock's new value only if the clock still
// holds what it read; otherwise another CPU charged a packet in between, and
// it decides again from the value that CPU left. Every charge applies to the
// exact clock value it was decided on, as under a lock, so sharing across
// devices and CPUs stays exact. CAS_TRIES failures in a row (as many other
// packets of the budget charged within this one's few-ns windows) drop the
// packet, counted as dropped: the budget is never exceeded.
struct budget_state {
	__u64 t_last; // departure time at which the budget is next free
};

#define CAS_TRIES 32

struct budget_stats {
	__u64 bytes;   // bytes passed (wire length)
	__u64 packets; // packets passed
	__u64 delayed; // packets given a departure time in the future
	__u64 dropped; // packets dropped at the horizon
	__u64 marked;  // packets CE-marked
	__u64 express; // packets sent ahead of the queue as a sparse flow
};

struct flow_key {
	__u32 budget;
	__u32 hash;
};

// Every budget map is an array indexed by the budget's slot, 1..MAX_BUDGETS
// (the loader allocates slots; 0 is never one, so an instance left with
// budget_id 0 reads an all-zero config and passes). An array lookup with a
// known map is inlined by the verifier into a bounds check and an add: the
// hash lookups these replaced cost ~75 of the program's ~210 ns. A slot
// holds zeros until its budget is configured, and is zeroed again before
// reuse, so "all zero" means "no budget": pass, uncounted.
#define MAX_BUDGETS 4096
#define SLOTS (MAX_BUDGETS + 1)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct budget_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct budget_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct budget_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_stats SEC(".maps");

// Per flow: the time its last packet's slot ends. A flow whose slot has passed
// has nothing of its own waiting and counts as sparse.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_flows SEC(".maps");

// Which budget a packet is charged to, set by the loader. An instance for a
// TCX link (or BPF_PROG_TEST_RUN) has its budget's slot as budget_id. With
// cls_bpf one instance serves every budget (from_classid set): cls_bpf puts
// the filter's classid in tc_classid before it runs the program, and the
// loader gives each filter its budget's slot as classid. A verifier run per
// budget cost more than everything else in shaping a thousand containers.
// tc_classid is read only then: at a TCX hook it holds whatever the stack
// left in skb->cb.
volatile const __u32 budget_id = 0;
volatile const __u32 from_classid = 0;

static __always_inline __u32 budget_of(struct __sk_buff *skb)
{
	return from_classid ? skb->tc_classid : budget_id;
}

// TC_ACT_UNSPEC (== TCX_NEXT) lets any other program or filter on the device
// run and decide; we only ever add a timestamp or drop.
#define PASS TC_ACT_UNSPEC

// The smallest header a segmentation offload repeats per segment (Ethernet +
// IPv4 + TCP without options). At tc ingress skb->len counts a GSO packet's
// headers once; charging each further segment at least this much means a
// crafted GSO packet with tiny segments cannot put more on the wire than it
// was charged for (TCP), while a paced TCP packet is never charged more than
// EDT charged it (its real headers are at least this long).
#define MIN_SEG_HEADER 54

// count adds one packet to a budget's counters. Callers have checked that the
// slot holds a budget (a non-zero config): a free slot stays all zero.
static __always_inline void count(__u32 id, __u64 len)
{
	struct budget_stats *cnt = bpf_map_lookup_elem(&netshape_stats, &id);
	if (cnt) {
		cnt->bytes += len;
		cnt->packets++;
	}
}

// netshape_count: a count-only attachment. It never drops or stamps, so it
// needs no qdisc, and it runs at either tc hook. At egress wire_len already
// counts a GSO packet's every segment's headers (so it exceeds skb->len); at
// ingress wire_len is skb->len without the MAC header, and a GSO packet's
// further segments are charged MIN_SEG_HEADER each, as the policer does.
SEC("tc")
int netshape_count(struct __sk_buff *skb)
{
	__u64 len = skb->wire_len;
	if (len <= skb->len) {
		__u32 segs = skb->gso_segs;
		len = skb->len;
		if (segs > 1)
			len += (__u64)(segs - 1) * MIN_SEG_HEADER;
	}
	__u32 id = budget_of(skb);
	struct budget_cfg *cfg = bpf_map_lookup_elem(&netshape_cfg, &id);
	// A free slot (no budget there) passes uncounted; a budget switched
	// from count-only to a rate counts here until the device is re-attached.
	if (cfg && (cfg->rate_bps || cfg->flags))
		count(id, len);
	return PASS;
}

// A shaping attachment on a budget without a rate: a count-only budget (the
// device is being switched to count-only, or its attach raced the switch)
// is counted; anything else passes uncounted.
static __always_inline int pass_unlimited(__u32 id, struct budget_cfg *cfg, struct __sk_buff *skb)
{
	if (cfg->flags & BUDGET_COUNT_ONLY)
		count(id, skb->wire_len ? skb->wire_len : skb->len);
	return PASS;
}

// netshape_limit: the budget without fq (the kernel has no sch_fq). The
// budget's clock becomes a policer, shared with every other device and CPU on
// the budget exactly as EDT shares it (the same compare-and-swap charge): a packet whose backlog
// before it exceeds the tolerance (the horizon, at least NOFQ_TOL_NS) is
// dropped, else it is charged (clock = max(clock, now) + cost) and leaves now,
// unstamped. Over any window w at most rate*(w + tolerance) plus one packet
// passes. No express (nothing is queued to jump) and so no flow table; CE
// marking as in EDT.
SEC("tc")
int netshape_limit(struct __sk_buff *skb)
{
	__u32 id = budget_of(skb);
	struct budget_cfg *cfg = bpf_map_lookup_elem(&netshape_cfg, &id);
	if (!cfg)
		return PASS;
	if (!cfg->rate_bps)
		return pass_unlimited(id, cfg, skb);
	struct budget_state *st = bpf_map_lookup_elem(&netshape_state, &id);
	if (!st)
		return PASS;
	struct budget_stats *cnt = bpf_map_lookup_elem(&netshape_stats, &id);

	__u64 len = skb->wire_len ? skb->wire_len : skb->len;
	__u64 cost = len * 8 * NSEC_PER_SEC / cfg->rate_bps;
	__u64 now = bpf_ktime_get_ns();
	__u64 backlog;
	int drop = 0;

	__u64 tol = cfg->horizon_ns > NOFQ_TOL_NS ? cfg->horizon_ns : NOFQ_TOL_NS;

	__u64 clock = *(volatile __u64 *)&st->t_last;
	int i;
	for (i = 0; i < CAS_TRIES; i++) {
		backlog = clock > now ? clock - now : 0;
		if (backlog > tol)
			break;
		__u64 seen = __sync_val_compare_and_swap(&st->t_last, clock, now + backlog + cost);
		if (seen == clock)
			break;
		clock = seen;
	}
	drop = i == CAS_TRIES || backlog > tol;

	if (drop) {
		if (cnt)
			cnt->dropped++;
		return TC_ACT_SHOT;
	}
	int marked = 0;
	if (cfg->ce_ns && backlog > cfg->ce_ns)
		marked = bpf_skb_ecn_set_ce(skb) == 1;
	if (cnt) {
		cnt->bytes += len;
		cnt->packets++;
		if (marked)
			cnt->marked++;
	}
	return PASS;
}

SEC("tc")
int netshape_edt(struct __sk_buff *skb)
{
	__u32 id = budget_of(skb);
	struct budget_cfg *cfg = bpf_map_lookup_elem(&netshape_cfg, &id);
	if (!cfg)
		return PASS;
	if (!cfg->rate_bps)
		return pass_unlimited(id, cfg, skb);
	struct budget_state *st = bpf_map_lookup_elem(&netshape_state, &id);
	if (!st)
		return PASS;
	struct budget_stats *cnt = bpf_map_lookup_elem(&netshape_stats, &id);

	__u64 len = skb->wire_len ? skb->wire_len : skb->len;
	__u64 cost = len * 8 * NSEC_PER_SEC / cfg->rate_bps;
	__u64 now = bpf_ktime_get_ns();

	__u64 ts = skb->tstamp;
	if (ts < now || ts - now > TSTAMP_MAX_AHEAD_NS)
		ts = now;

	struct flow_key fk = { .budget = id, .hash = bpf_get_hash_recalc(skb) };
	__u64 *flow_end = bpf_map_lookup_elem(&netshape_flows, &fk);
	int sparse = len <= cfg->express_bytes && (!flow_end || *flow_end <= now);

	__u64 start, backlog, depart;
	int drop = 0, express = 0;

	__u64 clock = *(volatile __u64 *)&st->t_last;
	int i;
	for (i = 0; i < CAS_TRIES; i++) {
		start = clock > ts ? clock : ts;
		// The budget's own queue, not any pacing delay the sender chose.
		backlog = clock > now ? clock - now : 0;
		if (sparse && start > ts && backlog <= cfg->express_ns) {
			express = 1;
			depart = ts;
		} else if (backlog > cfg->horizon_ns) {
			drop = 1;
			break;
		} else {
			express = 0;
			depart = start;
		}
		__u64 seen = __sync_val_compare_and_swap(&st->t_last, clock, start + cost);
		if (seen == clock)
			break;
		clock = seen;
	}
	if (i == CAS_TRIES)
		drop = 1;

	if (drop) {
		if (cnt)
			cnt->dropped++;
		return TC_ACT_SHOT;
	}

	__u64 end = depart + cost;
	// A known flow's end is stored in place: the lookup above already
	// marked its LRU entry as used, and one aligned 64-bit store is as
	// atomic as the update, which would allocate and swap a whole element
	// (~135 of the ~350 ns this program cost under BPF_PROG_TEST_RUN).
	if (flow_end)
		*flow_end = end;
	else
		bpf_map_update_elem(&netshape_flows, &fk, &end, BPF_ANY);

	int marked = 0;
	if (!express && cfg->ce_ns && backlog > cfg->ce_ns)
		marked = bpf_skb_ecn_set_ce(skb) == 1;

	skb->tstamp = depart;

	if (cnt) {
		cnt->bytes += len;
		cnt->packets++;
		if (depart > now)
			cnt->delayed++;
		if (marked)
			cnt->marked++;
		if (express)
			cnt->express++;
	}
	return PASS;
}

// ---------------------------------------------------------------------------
// Backstop: police app egress on the host side.
//
// A container with CAP_NET_RAW (Docker's default) can send through an
// AF_PACKET socket with PACKET_QDISC_BYPASS: its frames skip eth0's qdisc and
// tc egress hook, so netshape_edt never sees them. netshape_police runs at tc
// ingress of the host-side veth (in the host netns, out of the container's
// reach) and checks every frame against the same budget.
//
// Why a policer here and EDT at the source: on the host side the sending
// socket is already orphaned, so no backpressure is possible, only drops. At
// the source TCP feels fq's backpressure and keeps its rate without loss;
// traffic it paced passes this policer untouched, only what outruns the
// budget by more than its tolerance is dropped and counted as bypassed.
//
// GCRA (a virtual clock per budget, like the EDT one): per frame, under the
// budget's lock, if tat < now then tat = now; if tat - now > tol the frame is
// dropped; else tat += cost. Checked before charging (as EDT measures its
// backlog before the packet), so one large GSO packet always fits. tol covers
// how far a paced stream can legitimately run ahead of the budget clock: EDT
// express lets sparse packets leave up to 2x the horizon early, and delivery
// from the container veth to this hook jitters (softirq backlog). What gets
// through over any window w is at most rate*(w + tol) plus one frame, plus
// once per live rate decrease the credit that decrease granted.

struct police_cfg {
	__u64 tol_ns;        // tolerance: how far tat may run ahead of now
	__u64 credit_bytes;  // one-off allowance granted by a live rate decrease
	__u64 credit_until;  // ... usable until this time (CLOCK_MONOTONIC ns)
	__u64 credit_seq;    // bumped on every grant
};

struct police_state {
	struct bpf_spin_lock lock;
	__u32 _pad;
	__u64 tat;         // theoretical arrival time of the budget's next byte
	__u64 credit_left; // what is left of the grant credit_seq names
	__u64 credit_seq;
};

struct police_stats {
	__u64 bytes;    // bytes passed (charged length)
	__u64 packets;  // frames passed
	__u64 bypassed; // frames dropped: they outran the budget (EDT never paced them)
	__u64 credited; // frames passed on the credit of a rate decrease
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct police_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_pcfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct police_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_pstate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct police_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netshape_pstats SEC(".maps");

SEC("tc")
int netshape_police(struct __sk_buff *skb)
{
	__u32 id = budget_of(skb);
	struct budget_cfg *cfg = bpf_map_lookup_elem(&netshape_cfg, &id);
	if (!cfg || !cfg->rate_bps)
		return PASS;
	struct police_cfg *pc = bpf_map_lookup_elem(&netshape_pcfg, &id);
	if (!pc)
		return PASS;
	struct police_state *st = bpf_map_lookup_elem(&netshape_pstate, &id);
	if (!st)
		return PASS;
	struct police_stats *cnt = bpf_map_lookup_elem(&netshape_pstats, &id);

	// No protocol is parsed: every ethertype is charged alike.
	__u64 len = skb->len;
	__u32 segs = skb->gso_segs;
	if (segs > 1)
		len += (__u64)(segs - 1) * MIN_SEG_HEADER;
	__u64 cost = len * 8 * NSEC_PER_SEC / cfg->rate_bps;
	__u64 now = bpf_ktime_get_ns();
	__u64 tol = pc->tol_ns;
	if (cfg->flags & BUDGET_NOFQ)
		tol += NOFQ_TOL_NS; // the no-fq policer's burst reaches this hook as it is
	__u64 credit_until = pc->credit_until;
	__u64 credit_seq = pc->credit_seq;
	__u64 credit_bytes = pc->credit_bytes;

	int verdict; // 0 pass, 1 pass on credit, 2 drop
	bpf_spin_lock(&st->lock);
	if (st->credit_seq != credit_seq) {
		st->credit_seq = credit_seq;
		st->credit_left = credit_bytes;
	}
	if (now < credit_until && st->credit_left >= len) {
		// A live decrease: what EDT stamped at the old rate is still on
		// its way. Spend the credit first and leave the clock alone, so
		// those bytes do not eat the new rate's tolerance (a stream paced
		// at exactly the new rate would never drain it again).
		st->credit_left -= len;
		verdict = 1;
	} else {
		if (st->tat < now)
			st->tat = now;
		if (st->tat - now <= tol) {
			st->tat += cost;
			verdict = 0;
		} else {
			verdict = 2;
		}
	}
	bpf_spin_unlock(&st->lock);

	if (verdict == 2) {
		if (cnt)
			cnt->bypassed++;
		return TC_ACT_SHOT;
	}
	if (cnt) {
		cnt->bytes += len;
		cnt->packets++;
		if (verdict == 1)
			cnt->credited++;
	}
	return PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
