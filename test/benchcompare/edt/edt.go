// Package edt is the comparison's stand-in for Cilium's bandwidth manager: a plain earliest-departure-
// time program for tc egress, as Cilium's edt_sched_departure stamps packets — one departure clock per
// device, delay = wire_len / rate, drop once the clock is 2 s (the horizon) ahead of now, no express
// path for sparse flows, no lock — and fq under it to enforce the stamps. It is written with
// cilium/ebpf's asm package so the bench needs no clang.
package edt

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Offsets in struct __sk_buff (include/uapi/linux/bpf.h), stable UAPI.
const (
	offWireLen = 160
	offTstamp  = 152
)

// Horizon is Cilium's default drop horizon.
const Horizon = 2_000_000_000 // ns

// Program is one loaded program and its state map ({t_last, drops}).
type Program struct {
	Prog  *ebpf.Program
	State *ebpf.Map
}

// Load builds and loads the program for a rate in bit/s (8 kbit/s .. 16 Gbit/s: the byte rate is an
// instruction immediate).
func Load(rateBits uint64, horizonNs int64) (*Program, error) {
	rateBytes := rateBits / 8
	if rateBytes < 1000 || rateBytes > 1<<31-1 {
		return nil, fmt.Errorf("edt: rate %d bit/s out of range", rateBits)
	}
	if horizonNs <= 0 {
		return nil, errors.New("edt: horizon must be positive")
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bc_edt_state", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("edt: create state map: %w", err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		asm.Mov.Imm(asm.R0, 0), // TC_ACT_OK: never blackhole
		asm.Return(),
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("found"), // state
		asm.FnKtimeGetNs.Call(),
		asm.Mov.Reg(asm.R8, asm.R0), // now
		// delay = wire_len * NSEC_PER_SEC / bytes per second
		asm.LoadMem(asm.R9, asm.R6, offWireLen, asm.Word),
		asm.Mul.Imm(asm.R9, 1_000_000_000),
		asm.Div.Imm(asm.R9, int32(rateBytes)),
		// t = max(skb->tstamp, now)
		asm.LoadMem(asm.R1, asm.R6, offTstamp, asm.DWord),
		asm.JGE.Reg(asm.R1, asm.R8, "tset"),
		asm.Mov.Reg(asm.R1, asm.R8),
		// t_next = t_last + delay
		asm.LoadMem(asm.R2, asm.R7, 0, asm.DWord).WithSymbol("tset"),
		asm.Add.Reg(asm.R2, asm.R9),
		asm.JGT.Reg(asm.R2, asm.R1, "later"),
		// The clock is behind t: the packet leaves at t, the clock catches up.
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
		// t_next - now >= horizon: drop (and count it).
		asm.Mov.Reg(asm.R3, asm.R2).WithSymbol("later"),
		asm.Sub.Reg(asm.R3, asm.R8),
		asm.LoadImm(asm.R4, horizonNs, asm.DWord),
		asm.JLT.Reg(asm.R3, asm.R4, "keep"),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Add.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R5, 1),
		asm.StoreXAdd(asm.R3, asm.R5, asm.DWord),
		asm.Mov.Imm(asm.R0, 2), // TC_ACT_SHOT
		asm.Return(),
		asm.StoreMem(asm.R7, 0, asm.R2, asm.DWord).WithSymbol("keep"),
		asm.StoreMem(asm.R6, offTstamp, asm.R2, asm.DWord),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bc_edt", Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("edt: load program: %w", err)
	}
	return &Program{Prog: p, State: m}, nil
}

// Drops is how many packets the horizon dropped so far.
func (p *Program) Drops() (uint64, error) {
	var v [2]uint64
	if err := p.State.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("edt: read state: %w", err)
	}
	return v[1], nil
}

// Close releases the program and its map (an attached filter keeps its own reference).
func (p *Program) Close() error {
	return errors.Join(p.Prog.Close(), p.State.Close())
}
