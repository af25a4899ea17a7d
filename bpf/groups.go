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

// groupTable is the groups array mapped into user space. The program reads
// elements while they are written, so every field is written with one
// aligned atomic store, and the state last.
type groupTable struct {
	mem []byte
}

// mapGroups maps the groups array read-write.
func mapGroups(m *ebpf.Map) (groupTable, error) {
	page := uintptr(os.Getpagesize())
	size := (uintptr(m.MaxEntries())*groupSize + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return groupTable{}, fmt.Errorf("map the groups array: %w", err)
	}
	return groupTable{mem: mem}, nil
}

func (t *groupTable) close() {
	if t.mem != nil {
		_ = unix.Munmap(t.mem)
		t.mem = nil
	}
}

// elem is group gid's element in place (gid < MaxGroups, checked by the
// callers).
func (t *groupTable) elem(gid uint32) *reuseportGrmGroup {
	return (*reuseportGrmGroup)(unsafe.Pointer(&t.mem[uintptr(gid)*groupSize]))
}

// state reads group gid's packed state.
func (t *groupTable) state(gid uint32) uint64 { return atomic.LoadUint64(&t.elem(gid).State) }

// setState publishes group gid's packed state.
func (t *groupTable) setState(gid uint32, st uint64) { atomic.StoreUint64(&t.elem(gid).State, st) }

// setConfig writes group gid's dissector and flow timeout.
func (t *groupTable) setConfig(gid, dissector, timeoutSec uint32) {
	e := t.elem(gid)
	atomic.StoreUint32(&e.Dissector, dissector)
	atomic.StoreUint32(&e.FlowTimeoutSec, timeoutSec)
}

// bankGens reads which generation each bank of group gid holds.
func (t *groupTable) bankGens(gid uint32) [banks]uint32 {
	e := t.elem(gid)
	var out [banks]uint32
	for b := range out {
		out[b] = atomic.LoadUint32(&e.BankGen[b])
	}
	return out
}

// setBankGens records which generation each bank of group gid holds.
func (t *groupTable) setBankGens(gid uint32, gens [banks]uint32) {
	e := t.elem(gid)
	for b, g := range gens {
		atomic.StoreUint32(&e.BankGen[b], g)
	}
}

// slotWord is a grm_slot as one little-endian word: index, then epoch.
func slotWord(index, epoch uint32) uint64 { return uint64(index) | uint64(epoch)<<32 }

// slot reads slot i of bank b of group gid.
func (t *groupTable) slot(gid uint32, b int, i uint32) (index, epoch uint32) {
	w := atomic.LoadUint64((*uint64)(unsafe.Pointer(&t.elem(gid).Slots[i][b])))
	return uint32(w), uint32(w >> 32)
}

// setSlot writes slot i of bank b of group gid in one store (epoch 0:
// empty).
func (t *groupTable) setSlot(gid uint32, b int, i, index, epoch uint32) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&t.elem(gid).Slots[i][b])), slotWord(index, epoch))
}

// clear empties group gid: its state first, so that the program stops
// using the rest before it goes.
func (t *groupTable) clear(gid uint32) {
	t.setState(gid, 0)
	e := t.elem(gid)
	t.setConfig(gid, 0, 0)
	t.setBankGens(gid, [banks]uint32{})
	for i := range e.Slots {
		for b := range e.Slots[i] {
			t.setSlot(gid, b, uint32(i), 0, 0)
		}
	}
}
