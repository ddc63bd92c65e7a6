package shaper

import (
	"errors"

	"github.com/cilium/ebpf"
)

// batchEntries is how many entries one batch syscall reads.
const batchEntries = 256

// eachEntry calls fn for every entry of a hash map. It reads the map in
// batches, a syscall per batchEntries entries instead of two per entry: the
// registry of a thousand containers is three thousand entries, listed by every
// reconcile. Where the kernel has no batch lookup for the map (or a hash
// bucket outgrows a batch) it falls back to walking it key by key. Like any
// walk of a map that changes meanwhile, it may miss or repeat entries written
// concurrently; callers serialise writers (pkg/reconcile's lock).
func eachEntry[K, V any](m *ebpf.Map, fn func(K, V)) error {
	if keys, vals, ok := batchAll[K, V](m); ok {
		for i := range keys {
			fn(keys[i], vals[i])
		}
		return nil
	}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

// batchAll reads every entry in batches; false when it could not (an old
// kernel, a bucket larger than a batch): the caller walks the map instead.
func batchAll[K, V any](m *ebpf.Map) ([]K, []V, bool) {
	var cursor ebpf.MapBatchCursor
	bk, bv := make([]K, batchEntries), make([]V, batchEntries)
	var keys []K
	var vals []V
	for {
		n, err := m.BatchLookup(&cursor, bk, bv, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil, false
		}
		keys, vals = append(keys, bk[:n]...), append(vals, bv[:n]...)
		if err != nil {
			return keys, vals, true // ErrKeyNotExist: the end, with the last entries
		}
	}
}
