package bpf

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// groupSize is sizeof(struct grm_group): whole cache lines, so that every
// group's first line holds its state, dissector, flow timeout and first
// slots (the array's elements start page-aligned).
const groupSize = unsafe.Sizeof(reuseportGrmGroup{})

var _ = [1]struct{}{}[groupSize%64]

// groupTable is the groups array, mapped into user space group by group:
// the kernel maps every page of a mapping at once, so mapping the whole
// array would put all of it (4 MiB) in the supervisor's resident memory;
// a group's element takes two or three pages. The program reads elements
// while they are written, so every field is written with one aligned
// atomic store, and the state last. Not safe for concurrent use (the
// DataPlane holds its mutex).
type groupTable struct {
	m    *ebpf.Map
	page uintptr
	mem  map[uint32][]byte // by group id: the pages holding its element
}

func newGroupTable(m *ebpf.Map) *groupTable {
	return &groupTable{m: m, page: uintptr(os.Getpagesize()), mem: make(map[uint32][]byte)}
}

// group returns group gid's element in place, mapping its pages the first
// time (gid < MaxGroups, checked by the callers).
func (t *groupTable) group(gid uint32) (*reuseportGrmGroup, error) {
	start := uintptr(gid) * groupSize
	first := start / t.page * t.page
	mem := t.mem[gid]
	if mem == nil {
		end := (start + groupSize + t.page - 1) / t.page * t.page
		var err error
		mem, err = unix.Mmap(t.m.FD(), int64(first), int(end-first), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("map group %d of the groups array: %w", gid, err)
		}
		t.mem[gid] = mem
	}
	return (*reuseportGrmGroup)(unsafe.Pointer(&mem[start-first])), nil
}

func (t *groupTable) close() {
	for gid, mem := range t.mem {
		_ = unix.Munmap(mem)
		delete(t.mem, gid)
	}
}

// state reads group gid's packed state.
func (t *groupTable) state(gid uint32) (uint64, error) {
	e, err := t.group(gid)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint64(&e.State), nil
}

// publish writes group gid's dissector and flow timeout, then its packed
// state.
func (t *groupTable) publish(gid, dissector, timeoutSec uint32, state uint64) error {
	e, err := t.group(gid)
	if err != nil {
		return err
	}
	atomic.StoreUint32(&e.Dissector, dissector)
	atomic.StoreUint32(&e.FlowTimeoutSec, timeoutSec)
	atomic.StoreUint64(&e.State, state)
	return nil
}

// bankGens reads which generation each bank of group gid holds.
func (t *groupTable) bankGens(gid uint32) ([banks]uint32, error) {
	var out [banks]uint32
	e, err := t.group(gid)
	if err != nil {
		return out, err
	}
	for b := range out {
		out[b] = atomic.LoadUint32(&e.BankGen[b])
	}
	return out, nil
}

// setBankGens records which generation each bank of group gid holds.
func (t *groupTable) setBankGens(gid uint32, gens [banks]uint32) error {
	e, err := t.group(gid)
	if err != nil {
		return err
	}
	for b, g := range gens {
		atomic.StoreUint32(&e.BankGen[b], g)
	}
	return nil
}

// slotWord points at slot i of bank b of e as one word: a grm_slot is
// index then epoch, little-endian.
func slotWord(e *reuseportGrmGroup, b int, i uint32) *uint64 {
	return (*uint64)(unsafe.Pointer(&e.Slots[i][b]))
}

// slot reads slot i of bank b of group gid.
func (t *groupTable) slot(gid uint32, b int, i uint32) (index, epoch uint32, err error) {
	e, err := t.group(gid)
	if err != nil {
		return 0, 0, err
	}
	w := atomic.LoadUint64(slotWord(e, b, i))
	return uint32(w), uint32(w >> 32), nil
}

// setSlot writes slot i of bank b of group gid in one store (epoch 0:
// empty).
func (t *groupTable) setSlot(gid uint32, b int, i, index, epoch uint32) error {
	e, err := t.group(gid)
	if err != nil {
		return err
	}
	atomic.StoreUint64(slotWord(e, b, i), uint64(index)|uint64(epoch)<<32)
	return nil
}

// clear empties group gid, its state first so that the program stops
// using the rest before it goes, and unmaps it.
func (t *groupTable) clear(gid uint32) error {
	e, err := t.group(gid)
	if err != nil {
		return err
	}
	atomic.StoreUint64(&e.State, 0)
	atomic.StoreUint32(&e.Dissector, 0)
	atomic.StoreUint32(&e.FlowTimeoutSec, 0)
	for b := range e.BankGen {
		atomic.StoreUint32(&e.BankGen[b], 0)
	}
	for i := range e.Slots {
		for b := range e.Slots[i] {
			atomic.StoreUint64(slotWord(e, b, uint32(i)), 0)
		}
	}
	err = unix.Munmap(t.mem[gid])
	delete(t.mem, gid)
	if err != nil {
		return fmt.Errorf("unmap group %d: %w", gid, err)
	}
	return nil
}
