package bpf

import (
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Flow is one entry of the flow table, as user space reads it.
type Flow struct {
	Pos    uint32 // position in the table
	Group  uint32
	Remote netip.AddrPort // IPv4 v4-mapped
	Local  netip.AddrPort
	SeenNs uint64 // CLOCK_MONOTONIC_COARSE
	Index  uint32 // the serving socket (SocketRef)
	Epoch  uint32
}

// flowSize is sizeof(struct grm_flow): one cache line.
const flowSize = 64

var _ = [1]struct{}{}[unsafe.Sizeof(reuseportGrmFlow{})-flowSize]

// scanFlows calls fn with every used entry of the flow table that was not
// being written when read. It reads the table through its memory mapping
// (a copy of each chunk, no system call per entry); entries the program
// writes meanwhile may be seen before or after the write.
func (d *DataPlane) scanFlows(fn func(pos uint32, f *reuseportGrmFlow)) error {
	n := d.objs.Flows.MaxEntries()
	page := uint64(os.Getpagesize())
	size := (uint64(n)*flowSize + page - 1) / page * page
	// Mapped for this scan only: a mapping kept open would count the
	// whole table in the supervisor's resident memory once read.
	mem, err := unix.Mmap(d.objs.Flows.FD(), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the flow table: %w", err)
	}
	defer unix.Munmap(mem)
	const chunk = 4096
	buf := make([]reuseportGrmFlow, chunk)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), chunk*flowSize)
	for off := uint32(0); off < n; off += chunk {
		k := min(chunk, n-off)
		copy(raw[:k*flowSize], mem[uint64(off)*flowSize:])
		for i := range k {
			if v := &buf[i]; v.Key.Group != 0 && v.Seq&1 == 0 {
				fn(off+i, v)
			}
		}
	}
	return nil
}

// Flows returns the used entries of the flow table.
func (d *DataPlane) Flows() ([]Flow, error) {
	var out []Flow
	err := d.scanFlows(func(pos uint32, f *reuseportGrmFlow) {
		out = append(out, Flow{
			Pos:    pos,
			Group:  f.Key.Group,
			Remote: netip.AddrPortFrom(netip.AddrFrom16(f.Key.RemoteAddr), bits.ReverseBytes16(f.Key.RemotePort)),
			Local:  netip.AddrPortFrom(netip.AddrFrom16(f.Key.LocalAddr), bits.ReverseBytes16(f.Key.LocalPort)),
			SeenNs: f.SeenNs,
			Index:  f.Index,
			Epoch:  f.Epoch,
		})
	})
	return out, err
}

// FlowTableSize is how many entries the flow table has.
func (d *DataPlane) FlowTableSize() uint32 { return d.objs.Flows.MaxEntries() }

// updateFlow rewrites the entry at pos with fn. For tests and benchmarks:
// the flow must be idle (the program writes entries too).
func (d *DataPlane) updateFlow(pos uint32, fn func(*reuseportGrmFlow)) error {
	var v reuseportGrmFlow
	if err := d.objs.Flows.Lookup(pos, &v); err != nil {
		return fmt.Errorf("read flow %d: %w", pos, err)
	}
	if v.Key.Group == 0 || v.Seq&1 != 0 {
		return fmt.Errorf("flow %d: entry unused or being written", pos)
	}
	fn(&v)
	if err := d.objs.Flows.Update(pos, v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write flow %d: %w", pos, err)
	}
	return nil
}

// ExpireFlow ends the flow at pos (its entry is reused by the next new
// flow of its sets). For tests and benchmarks: the flow must be idle.
func (d *DataPlane) ExpireFlow(pos uint32) error {
	return d.updateFlow(pos, func(f *reuseportGrmFlow) { f.SeenNs = 0 })
}

// PointFlow sends the flow at pos to the socket with cookie from its next
// datagram on. For tests and benchmarks: the flow must be idle.
func (d *DataPlane) PointFlow(pos uint32, cookie uint64) error {
	index, epoch, ok := d.SocketRef(cookie)
	if !ok {
		return fmt.Errorf("socket %d is not in the data plane", cookie)
	}
	return d.updateFlow(pos, func(f *reuseportGrmFlow) { f.Index, f.Epoch = index, epoch })
}
