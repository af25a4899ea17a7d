package bpf

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// SetGroup publishes group gid's state. The working generation's slots are
// in one of the group's two banks before the state names it; the working
// generation, its bank and its count change in one 8-byte word, so the
// program never sees one without the others.
func (d *DataPlane) SetGroup(gid uint32, st generations.GroupState) error {
	if gid == 0 || gid >= MaxGroups {
		return fmt.Errorf("group id %d out of range 1..%d", gid, MaxGroups-1)
	}
	if st.Count > MaxSlots {
		return fmt.Errorf("group %d: %d sockets in generation %d, at most %d", gid, st.Count, st.WorkingGen, MaxSlots)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	gb := d.banksLocked(gid)
	bank := 0
	if st.WorkingGen != 0 {
		var err error
		if bank, err = d.bankForLocked(gid, gb, st.WorkingGen, true); err != nil {
			return err
		}
	}
	state := uint64(st.WorkingGen)<<32 | uint64(bank)<<16 | uint64(st.Count)
	if err := d.groups.publish(gid, uint32(st.Dissector), uint32(st.FlowTimeout.Round(time.Second)/time.Second), state); err != nil {
		return err
	}
	gb.live = -1
	if st.WorkingGen != 0 {
		gb.live = bank
	}
	return nil
}

// ClearGroup resets group gid's state and counters (the group is no longer
// used).
func (d *DataPlane) ClearGroup(gid uint32) error {
	if gid == 0 || gid >= MaxGroups {
		return fmt.Errorf("group id %d out of range 1..%d", gid, MaxGroups-1)
	}
	zero := make([]reuseportGrmCounters, ebpf.MustPossibleCPU())
	if err := d.objs.Counters.Update(gid, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear counters of group %d: %w", gid, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.groups.clear(gid); err != nil {
		return err
	}
	d.bankSet[gid] = &groupBanks{live: -1}
	for k := range d.slotOf {
		if k.gid == gid {
			delete(d.slotOf, k)
		}
	}
	// The group's copy of the program stays loaded: a group that gets
	// this id again attaches it instead of loading (and verifying) anew.
	return nil
}

func (d *DataPlane) banksLocked(gid uint32) *groupBanks {
	gb := d.bankSet[gid]
	if gb == nil {
		gb = &groupBanks{live: -1}
		d.bankSet[gid] = gb
	}
	return gb
}

// bankForLocked returns the bank that holds gen's slots, giving gen one
// when it has none: a free bank, or else the one the published state does
// not point at. A bank given is filled with gen's slots before it is
// returned. Without working set, gen gets a bank only if one is free or
// holds another non-working generation; otherwise it returns -1.
func (d *DataPlane) bankForLocked(gid uint32, gb *groupBanks, gen uint32, working bool) (int, error) {
	for b, g := range gb.gen {
		if g == gen {
			return b, nil
		}
	}
	bank := -1
	for b, g := range gb.gen {
		if g == 0 {
			bank = b
			break
		}
	}
	if bank < 0 {
		for b := range gb.gen {
			if b != gb.live {
				bank = b
				break
			}
		}
	}
	if bank < 0 || (!working && bank == gb.live) {
		return -1, nil
	}
	gb.gen[bank] = gen
	for k, cookie := range d.slotOf {
		if k.gid == gid && k.gen == gen {
			if err := d.writeSlotLocked(gid, bank, k.slot, cookie); err != nil {
				gb.gen[bank] = 0
				return -1, err
			}
		}
	}
	if err := d.groups.setBankGens(gid, gb.gen); err != nil {
		gb.gen[bank] = 0
		return -1, err
	}
	return bank, nil
}

// writeSlotLocked writes the socket with cookie (0: none) into slot of a
// bank of group gid.
func (d *DataPlane) writeSlotLocked(gid uint32, bank int, slot uint32, cookie uint64) error {
	var index, epoch uint32
	if cookie != 0 {
		ref, ok := d.socks[cookie]
		if !ok {
			return fmt.Errorf("slot %d of group %d: socket %d is not in the data plane", slot, gid, cookie)
		}
		index, epoch = ref.index, ref.epoch
	}
	return d.groups.setSlot(gid, bank, slot, index, epoch)
}

// AddSocket puts the bound socket f into group gid as (gen, slot): it gets
// an index in the sockets array, its group gets the program attached, and
// the slot points at it. It returns the socket's cookie. f stays the
// caller's.
func (d *DataPlane) AddSocket(gid, gen, slot uint32, f *os.File) (uint64, error) {
	if gid == 0 || gid >= MaxGroups {
		return 0, fmt.Errorf("group id %d out of range 1..%d", gid, MaxGroups-1)
	}
	if slot >= MaxSlots {
		return 0, fmt.Errorf("generation %d already has %d sockets on this address, the most one generation can have", gen, MaxSlots)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("socket handle: %w", err)
	}
	var (
		cookie uint64
		aerr   error
	)
	// Control keeps the fd's blocking mode (Fd would change the server's
	// shared file description to blocking).
	if err := rc.Control(func(fd uintptr) { cookie, aerr = d.addSocket(gid, gen, slot, int(fd)) }); err != nil {
		return 0, fmt.Errorf("socket handle: %w", err)
	}
	return cookie, aerr
}

func (d *DataPlane) addSocket(gid, gen, slot uint32, fd int) (uint64, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("socket cookie: %w", err)
	}
	prog, err := d.Program(gid)
	if err != nil {
		return 0, err
	}
	if err := d.insertSocket(gid, gen, cookie, fd); err != nil {
		return 0, err
	}
	// The program belongs to the reuseport group; attaching again is
	// harmless and covers a group that emptied and was re-created.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, prog.FD()); err != nil {
		d.RemoveSocket(cookie)
		return 0, fmt.Errorf("attach reuseport program: %w", err)
	}
	if err := d.SetSlot(gid, gen, slot, cookie); err != nil {
		d.RemoveSocket(cookie)
		return 0, err
	}
	return cookie, nil
}

// insertSocket gives the socket an index under a new epoch and puts it in
// the sockets array.
func (d *DataPlane) insertSocket(gid, gen uint32, cookie uint64, fd int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.socks[cookie]; ok {
		return fmt.Errorf("socket %d is in the data plane already", cookie)
	}
	index := -1
	for k := range uint32(maxSockets) {
		i := (d.next + k) % maxSockets
		if !d.used[i] {
			index = int(i)
			break
		}
	}
	if index < 0 {
		return fmt.Errorf("%d sockets managed: no room for another", maxSockets)
	}
	// Indexes are handed out round robin, so a freed one rests as long as
	// possible; its epoch changes anyway.
	d.next = uint32(index+1) % maxSockets
	epoch, err := d.bumpEpochLocked(uint32(index))
	if err != nil {
		return err
	}
	if err := d.objs.SockSeen.Update(uint32(index), uint64(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset socket index %d: %w", index, err)
	}
	if err := d.objs.Sockets.Update(uint32(index), uint64(fd), ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("insert socket into the reuseport array: the socket is in another BPF socket map: %w", err)
		}
		return fmt.Errorf("insert socket into the reuseport array (it must be bound, with SO_REUSEPORT): %w", err)
	}
	if err := d.objs.SocketGroups.Update(cookie, reuseportGrmSocketRef{Group: gid, Index: uint32(index)}, ebpf.UpdateAny); err != nil {
		_ = d.objs.Sockets.Delete(uint32(index))
		return fmt.Errorf("record socket group: %w", err)
	}
	d.used[index] = true
	d.socks[cookie] = sockRef{gid: gid, gen: gen, index: uint32(index), epoch: epoch}
	return nil
}

// bumpEpochLocked moves index i to its next epoch (never 0, the empty
// slot) and returns it. The epoch lives in the map, so a restarted
// supervisor continues from it.
func (d *DataPlane) bumpEpochLocked(i uint32) (uint32, error) {
	var e uint32
	if err := d.objs.Epochs.Lookup(i, &e); err != nil {
		return 0, fmt.Errorf("read epoch of socket index %d: %w", i, err)
	}
	e++
	if e == 0 {
		e = 1
	}
	if err := d.objs.Epochs.Update(i, e, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("write epoch of socket index %d: %w", i, err)
	}
	return e, nil
}

// SetSlot points (gid, gen, slot) at the socket with cookie.
func (d *DataPlane) SetSlot(gid, gen, slot uint32, cookie uint64) error {
	if slot >= MaxSlots {
		return fmt.Errorf("slot %d of group %d: at most %d sockets per generation", slot, gid, MaxSlots)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.socks[cookie]; !ok {
		return fmt.Errorf("set slot %d/%d/%d: socket %d is not in the data plane", gid, gen, slot, cookie)
	}
	d.slotOf[slotKey{gid, gen, slot}] = cookie
	bank, err := d.bankForLocked(gid, d.banksLocked(gid), gen, false)
	if err != nil || bank < 0 {
		return err
	}
	return d.writeSlotLocked(gid, bank, slot, cookie)
}

// DeleteSlot empties (gid, gen, slot).
func (d *DataPlane) DeleteSlot(gid, gen, slot uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.slotOf, slotKey{gid, gen, slot})
	gb := d.bankSet[gid]
	if gb == nil || slot >= MaxSlots {
		return nil
	}
	for b, g := range gb.gen {
		if g == gen {
			return d.writeSlotLocked(gid, b, slot, 0)
		}
	}
	return nil
}

// RemoveSocket takes the socket with cookie out of steering and frees its
// index under a new epoch (flows that still name it stop following it). It
// is a no-op for a socket already gone.
func (d *DataPlane) RemoveSocket(cookie uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ref, ok := d.socks[cookie]
	if !ok {
		// A socket of an earlier supervisor: its record has the index.
		var r reuseportGrmSocketRef
		if d.objs.SocketGroups.Lookup(cookie, &r) != nil {
			return
		}
		ref = sockRef{gid: r.Group, index: r.Index}
	}
	// The element may hold another socket already only if this one
	// closed and the index was handed out again, which needs it freed
	// first: so it is this socket's, or empty.
	if c, ok := d.cookieAtLocked(ref.index); ok && c == cookie {
		_ = d.objs.Sockets.Delete(ref.index)
	}
	_ = d.objs.SocketGroups.Delete(cookie)
	// Best effort: should the epoch not change, the index stays out of
	// use rather than let stale flows follow it.
	if _, err := d.bumpEpochLocked(ref.index); err == nil {
		d.used[ref.index] = false
	}
	delete(d.socks, cookie)
}

// cookieAtLocked returns the cookie of the socket at index i, if any.
func (d *DataPlane) cookieAtLocked(i uint32) (uint64, bool) {
	var c uint64
	if err := d.objs.Sockets.Lookup(i, &c); err != nil {
		return 0, false
	}
	return c, true
}

// Alive reports whether the socket with cookie is still open (the kernel
// empties its element of the sockets array when it closes).
func (d *DataPlane) Alive(cookie uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.aliveLocked(cookie)
}

func (d *DataPlane) aliveLocked(cookie uint64) bool {
	ref, ok := d.socks[cookie]
	if !ok {
		var r reuseportGrmSocketRef
		if d.objs.SocketGroups.Lookup(cookie, &r) != nil {
			return false
		}
		ref.index = r.Index
	}
	c, ok := d.cookieAtLocked(ref.index)
	return ok && c == cookie
}

// SocketRef returns the index and epoch under which the socket with cookie
// sits in the sockets array: what a flow entry names.
func (d *DataPlane) SocketRef(cookie uint64) (index, epoch uint32, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ref, ok := d.socks[cookie]
	return ref.index, ref.epoch, ok
}

// restore rebuilds the mirrors from maps reopened from their pins: every
// socket still open, and the slots of the generations the banks hold.
func (d *DataPlane) restore() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		cookie uint64
		ref    reuseportGrmSocketRef
	)
	byIndex := make(map[uint32]uint64)
	groups := make(map[uint32]bool)
	it := d.objs.SocketGroups.Iterate()
	for it.Next(&cookie, &ref) {
		if ref.Index >= maxSockets || ref.Group == 0 || ref.Group >= MaxGroups || !d.aliveLocked(cookie) {
			continue // closed: LiveGroups forgets it
		}
		var epoch uint32
		if err := d.objs.Epochs.Lookup(ref.Index, &epoch); err != nil {
			return fmt.Errorf("read epoch of socket index %d: %w", ref.Index, err)
		}
		d.socks[cookie] = sockRef{gid: ref.Group, index: ref.Index, epoch: epoch}
		d.used[ref.Index] = true
		byIndex[ref.Index] = cookie
		groups[ref.Group] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate socket groups: %w", err)
	}
	for gid := range groups {
		st, err := d.groups.state(gid)
		if err != nil {
			return err
		}
		gens, err := d.groups.bankGens(gid)
		if err != nil {
			return err
		}
		gb := &groupBanks{gen: gens, live: -1}
		if st>>32 != 0 {
			gb.live = int(st>>16) & 1
		}
		d.bankSet[gid] = gb
		for b, gen := range gb.gen {
			if gen == 0 {
				continue
			}
			for slot := range uint32(MaxSlots) {
				var sv reuseportGrmSlot
				if sv.Index, sv.Epoch, err = d.groups.slot(gid, b, slot); err != nil {
					return err
				}
				if c, ok := byIndex[sv.Index]; ok && sv.Epoch != 0 && d.socks[c].epoch == sv.Epoch {
					d.slotOf[slotKey{gid, gen, slot}] = c
					r := d.socks[c]
					r.gen = gen
					d.socks[c] = r
				}
			}
		}
	}
	return nil
}

// Active reports whether any of the sockets with the given cookies served
// a flow seen within timeout: the latest last-seen time of a socket's
// flows is kept per socket, so this reads one element per socket instead
// of walking the flow table. That time may trail the flows' by up to half
// the refresh interval, which is added to timeout.
func (d *DataPlane) Active(cookies []uint64, timeout time.Duration) (bool, error) {
	now, err := coarseNow()
	if err != nil {
		return false, err
	}
	limit := uint64((timeout + d.refresh/2).Nanoseconds())
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range cookies {
		ref, ok := d.socks[c]
		if !ok {
			continue
		}
		var seen uint64
		if err := d.objs.SockSeen.Lookup(ref.index, &seen); err != nil {
			return false, fmt.Errorf("read socket index %d: %w", ref.index, err)
		}
		if seen != 0 && now-seen <= limit {
			return true, nil
		}
	}
	return false, nil
}
