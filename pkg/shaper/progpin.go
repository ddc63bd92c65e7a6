package shaper

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
)

// Every attachment runs a program instance of its own budget (budget_id is a
// constant in .rodata, bpf/edt.c), and loading one is a verifier run: about a
// millisecond on hardware, tens to hundreds under emulation. So instances are
// pinned under <pin dir>/progs, one per embedded object, program and budget id,
// and a later process (a post-deploy trigger, `apply APP`, the watcher after a
// restart) attaching for the same budget reuses the verified instance.
//
// A pin is named <object tag>_<program>_<budget id>. The tag is a hash of the
// embedded object, so an instance left by another build of this tool is never
// used: Open removes every pin whose tag is not this build's. RemoveBudget
// removes a budget's pins (any tag), Destroy the whole directory.

// lockProgram serialises the loading of one program instance, not of all:
// the verifier is CPU work, and two budgets' programs can be verified at once
// while the devices of one budget, attached together, still load its
// instance once. It returns the unlock.
func (s *Shaper) lockProgram(k progKey) func() {
	s.mu.Lock()
	if s.loading == nil {
		s.loading = map[progKey]*sync.Mutex{}
	}
	m := s.loading[k]
	if m == nil {
		m = &sync.Mutex{}
		s.loading[k] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

func (s *Shaper) cachedProgram(k progKey) *ebpf.Program {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progs[k]
}

func (s *Shaper) keepProgram(k progKey, p *ebpf.Program) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.progs[k] = p
}

// progsDir holds the pinned program instances, under the pin directory.
const progsDir = "progs"

// objectTag names this build's embedded BPF object in pin names.
var objectTag = sync.OnceValue(func() string {
	sum := sha256.Sum256(_EdtBytes)
	return hex.EncodeToString(sum[:6])
})

func (s *Shaper) progPin(k progKey) string {
	return filepath.Join(s.pinDir, progsDir, fmt.Sprintf("%s_%s_%d", objectTag(), k.prog, k.id))
}

// pinnedProgram returns the pinned instance for k, or nil when there is none
// this Shaper can use. One that does not use this Shaper's maps (they were
// replaced after it was pinned) would shape against state nobody reads: it is
// unpinned, and the caller loads a fresh one.
func (s *Shaper) pinnedProgram(k progKey) *ebpf.Program {
	path := s.progPin(k)
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return nil
	}
	if !s.usesOurMaps(p) {
		p.Close()
		os.Remove(path)
		return nil
	}
	return p
}

// pinProgram pins a freshly loaded instance for later processes. A failure
// costs only a later verifier run, never an attachment: it is not an error.
func (s *Shaper) pinProgram(k progKey, p *ebpf.Program) {
	if err := os.MkdirAll(filepath.Join(s.pinDir, progsDir), 0o700); err != nil {
		return
	}
	path := s.progPin(k)
	if err := p.Pin(path); errors.Is(err, os.ErrExist) {
		// Left by a process whose maps were replaced since (pinnedProgram
		// refused it) or pinned by another process just now: ours is as good.
		os.Remove(path)
		p.Pin(path)
	}
}

// usesOurMaps reports whether every netshape map the program uses is one this
// Shaper holds (its .rodata, which holds the budget id, is its own).
func (s *Shaper) usesOurMaps(p *ebpf.Program) bool {
	ours, ok := s.ourMapIDs()
	if !ok {
		return false
	}
	info, err := p.Info()
	if err != nil {
		return false
	}
	ids, ok := info.MapIDs()
	if !ok {
		return false
	}
	shared := 0
	for _, id := range ids {
		if ours[id] {
			shared++
			continue
		}
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return false
		}
		mi, err := m.Info()
		m.Close()
		if err != nil || strings.HasPrefix(mi.Name, ownPrefix) {
			return false // one of our maps, but not the one pinned now
		}
	}
	return shared > 0
}

// ourMapIDs is the set of kernel ids of the datapath maps this Shaper holds
// (every *ebpf.Map of the generated edtMaps), kept for its life.
func (s *Shaper) ourMapIDs() (map[ebpf.MapID]bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mapIDs != nil {
		return s.mapIDs, true
	}
	ids := map[ebpf.MapID]bool{}
	v := reflect.ValueOf(&s.maps).Elem()
	for i := 0; i < v.NumField(); i++ {
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if !ok || m == nil {
			continue
		}
		info, err := m.Info()
		if err != nil {
			return nil, false
		}
		id, ok := info.ID()
		if !ok {
			return nil, false
		}
		ids[id] = true
	}
	s.mapIDs = ids
	return ids, true
}

// dropPrograms closes this Shaper's instances of budget id and removes their
// pins, whichever build left them: the id may be given to another budget next.
func (s *Shaper) dropPrograms(id uint32) error {
	s.mu.Lock()
	for k, p := range s.progs {
		if k.id == id {
			p.Close()
			delete(s.progs, k)
		}
	}
	s.mu.Unlock()
	return s.removeProgramPins(func(_ string, pid uint32) bool { return pid == id })
}

// removeStalePrograms removes the pinned instances of other builds (Open).
func (s *Shaper) removeStalePrograms() error {
	tag := objectTag()
	return s.removeProgramPins(func(t string, _ uint32) bool { return t != tag })
}

// removeProgramPins removes the pins in the programs directory for which drop
// (given the pin's object tag and budget id) is true, and any file there that
// is not named like a pin of ours.
func (s *Shaper) removeProgramPins(drop func(tag string, id uint32) bool) error {
	dir := filepath.Join(s.pinDir, progsDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pinned programs in %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		tag, id, ok := parseProgPin(e.Name())
		if ok && !drop(tag, id) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pinned program %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// parseProgPin splits a pin name <tag>_<program>_<budget id>.
func parseProgPin(name string) (tag string, id uint32, ok bool) {
	tag, rest, ok1 := strings.Cut(name, "_")
	i := strings.LastIndexByte(rest, '_')
	if !ok1 || i < 0 || !strings.HasPrefix(rest, ownPrefix) {
		return "", 0, false
	}
	n, err := strconv.ParseUint(rest[i+1:], 10, 32)
	if err != nil {
		return "", 0, false
	}
	return tag, uint32(n), true
}
