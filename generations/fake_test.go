package generations

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
)

// slotKey names one slot of the data plane: (group, generation, slot).
type slotKey struct {
	gid, gen, slot uint32
}

func (k slotKey) String() string { return fmt.Sprintf("%d/%d/%d", k.gid, k.gen, k.slot) }

// fakeSocket is one socket the fake data plane knows.
type fakeSocket struct {
	gid   uint32
	alive bool // false once the test closed it
}

// fakeOp records one call into the data plane, in order.
type fakeOp struct {
	op     string // SetGroup, ClearGroup, AddSocket, SetSlot, DeleteSlot, RemoveSocket
	gid    uint32
	gen    uint32
	slot   uint32
	cookie uint64
	state  GroupState // SetGroup only
}

// fakeDP is an in-memory model of the eBPF data plane: group states,
// sockets (cookie -> group, alive) and slots ((group, gen, slot) -> cookie).
// While it is driven it checks what a reader of the maps would see at every
// step (no hole below a published count, no slot overwritten, no socket in
// two slots) and records every breach as a violation. Safe for concurrent
// use: tests close sockets while Steering runs.
type fakeDP struct {
	maxGroups uint32

	mu         sync.Mutex
	nextCookie uint64
	groups     map[uint32]GroupState
	sockets    map[uint64]*fakeSocket // cookie -> socket; RemoveSocket deletes
	closed     map[uint64]bool        // cookies the test closed (even if removed since)
	slots      map[slotKey]uint64
	byFile     map[*os.File]uint64 // file handed to AddSocket -> cookie
	faults     map[string]func(gid, gen, slot uint32) error
	ops        []fakeOp
	violations []string
}

func newFakeDP(maxGroups uint32) *fakeDP {
	return &fakeDP{
		maxGroups: maxGroups,
		groups:    make(map[uint32]GroupState),
		sockets:   make(map[uint64]*fakeSocket),
		closed:    make(map[uint64]bool),
		slots:     make(map[slotKey]uint64),
		byFile:    make(map[*os.File]uint64),
		faults:    make(map[string]func(gid, gen, slot uint32) error),
	}
}

// Fault makes every later call of op (a DataPlane method name) ask fn
// first; a non-nil result is returned instead of performing the call. A nil
// fn removes the fault. RemoveSocket and Alive cannot fail.
func (f *fakeDP) Fault(op string, fn func(gid, gen, slot uint32) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fn == nil {
		delete(f.faults, op)
		return
	}
	f.faults[op] = fn
}

func (f *fakeDP) faultLocked(op string, gid, gen, slot uint32) error {
	if fn := f.faults[op]; fn != nil {
		return fn(gid, gen, slot)
	}
	return nil
}

func (f *fakeDP) violatef(format string, args ...any) {
	f.violations = append(f.violations, fmt.Sprintf(format, args...))
}

func (f *fakeDP) checkGID(gid uint32) error {
	if gid == 0 || gid >= f.maxGroups {
		return fmt.Errorf("group id %d out of range 1..%d", gid, f.maxGroups-1)
	}
	return nil
}

// holeLocked returns the first slot below the published count of gid's
// working generation that is empty, or -1.
func (f *fakeDP) holeLocked(gid uint32, st GroupState) int {
	for i := uint32(0); i < st.Count; i++ {
		if _, ok := f.slots[slotKey{gid, st.WorkingGen, i}]; !ok {
			return int(i)
		}
	}
	return -1
}

func (f *fakeDP) SetGroup(gid uint32, st GroupState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.faultLocked("SetGroup", gid, 0, 0); err != nil {
		return err
	}
	if err := f.checkGID(gid); err != nil {
		f.violatef("SetGroup: %v", err)
		return err
	}
	f.ops = append(f.ops, fakeOp{op: "SetGroup", gid: gid, state: st})
	if h := f.holeLocked(gid, st); h >= 0 {
		f.violatef("SetGroup %d %+v: slot %d of generation %d is empty below the count", gid, st, h, st.WorkingGen)
	}
	f.groups[gid] = st
	return nil
}

func (f *fakeDP) ClearGroup(gid uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.faultLocked("ClearGroup", gid, 0, 0); err != nil {
		return err
	}
	f.ops = append(f.ops, fakeOp{op: "ClearGroup", gid: gid})
	// The real ClearGroup leaves slots and sockets alone: a cleared group
	// that still has any is stale state a new owner of the id would inherit.
	for k := range f.slots {
		if k.gid == gid {
			f.violatef("ClearGroup %d: slot %v still set", gid, k)
		}
	}
	for c, s := range f.sockets {
		if s.gid == gid {
			f.violatef("ClearGroup %d: socket %d still registered", gid, c)
		}
	}
	delete(f.groups, gid)
	return nil
}

func (f *fakeDP) AddSocket(gid, gen, slot uint32, file *os.File) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.faultLocked("AddSocket", gid, gen, slot); err != nil {
		return 0, err
	}
	if err := f.checkGID(gid); err != nil {
		f.violatef("AddSocket: %v", err)
		return 0, err
	}
	// Like the real one: the file must still be open while it is inserted.
	if file == nil {
		f.violatef("AddSocket %d/%d/%d: nil file", gid, gen, slot)
		return 0, errors.New("nil file")
	}
	rc, err := file.SyscallConn()
	if err != nil {
		f.violatef("AddSocket %d/%d/%d: file not usable: %v", gid, gen, slot, err)
		return 0, err
	}
	if cerr := rc.Control(func(uintptr) {}); cerr != nil {
		f.violatef("AddSocket %d/%d/%d: file not usable: %v", gid, gen, slot, cerr)
		return 0, cerr
	}
	if _, ok := f.groups[gid]; !ok {
		f.violatef("AddSocket %d/%d/%d: group %d has no published state", gid, gen, slot, gid)
	}
	k := slotKey{gid, gen, slot}
	if old, ok := f.slots[k]; ok {
		f.violatef("AddSocket %v: slot already holds cookie %d", k, old)
	}
	f.nextCookie++
	c := f.nextCookie
	f.sockets[c] = &fakeSocket{gid: gid, alive: true}
	f.slots[k] = c
	f.byFile[file] = c
	f.ops = append(f.ops, fakeOp{op: "AddSocket", gid: gid, gen: gen, slot: slot, cookie: c})
	return c, nil
}

func (f *fakeDP) SetSlot(gid, gen, slot uint32, cookie uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.faultLocked("SetSlot", gid, gen, slot); err != nil {
		return err
	}
	s, ok := f.sockets[cookie]
	switch {
	case !ok:
		f.violatef("SetSlot %d/%d/%d: cookie %d not registered", gid, gen, slot, cookie)
	case s.gid != gid:
		f.violatef("SetSlot %d/%d/%d: cookie %d belongs to group %d", gid, gen, slot, cookie, s.gid)
	}
	k := slotKey{gid, gen, slot}
	if _, ok := f.slots[k]; !ok {
		f.violatef("SetSlot %v: slot was empty (moving into a hole)", k)
	}
	f.slots[k] = cookie
	f.ops = append(f.ops, fakeOp{op: "SetSlot", gid: gid, gen: gen, slot: slot, cookie: cookie})
	return nil
}

func (f *fakeDP) DeleteSlot(gid, gen, slot uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.faultLocked("DeleteSlot", gid, gen, slot); err != nil {
		return err
	}
	// A reader must never find a hole below the published count.
	if st, ok := f.groups[gid]; ok && st.WorkingGen == gen && slot < st.Count {
		f.violatef("DeleteSlot %d/%d/%d: below the published count %d", gid, gen, slot, st.Count)
	}
	k := slotKey{gid, gen, slot}
	c := f.slots[k]
	delete(f.slots, k)
	f.ops = append(f.ops, fakeOp{op: "DeleteSlot", gid: gid, gen: gen, slot: slot, cookie: c})
	return nil
}

func (f *fakeDP) RemoveSocket(cookie uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, c := range f.slots {
		if c == cookie {
			f.violatef("RemoveSocket %d: still in slot %v", cookie, k)
		}
	}
	delete(f.sockets, cookie)
	f.ops = append(f.ops, fakeOp{op: "RemoveSocket", cookie: cookie})
}

// Alive is true for a registered socket the test has not closed. Like the
// real sockhash, a removed socket is not alive either.
func (f *fakeDP) Alive(cookie uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sockets[cookie]
	return ok && s.alive
}

// Close is the server closing the socket with cookie: Alive reports false
// from now on.
func (f *fakeDP) Close(cookie uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed[cookie] = true
	if s, ok := f.sockets[cookie]; ok {
		s.alive = false
	}
}

// CookieOf returns the cookie the socket handed over as file received.
func (f *fakeDP) CookieOf(file *os.File) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.byFile[file]
	return c, ok
}

// Slot returns the cookie in (gid, gen, slot).
func (f *fakeDP) Slot(gid, gen, slot uint32) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.slots[slotKey{gid, gen, slot}]
	return c, ok
}

// SlotsOf returns the cookies of (gid, gen) by slot, up to the first
// empty slot.
func (f *fakeDP) SlotsOf(gid, gen uint32) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for i := uint32(0); ; i++ {
		c, ok := f.slots[slotKey{gid, gen, i}]
		if !ok {
			return out
		}
		out = append(out, c)
	}
}

// Group returns the published state of gid.
func (f *fakeDP) Group(gid uint32) (GroupState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.groups[gid]
	return st, ok
}

// Registered reports whether cookie is still in the data plane.
func (f *fakeDP) Registered(cookie uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.sockets[cookie]
	return ok
}

// LiveCookies returns the registered sockets not closed yet, sorted.
func (f *fakeDP) LiveCookies() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for c, s := range f.sockets {
		if s.alive {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// NumSockets returns how many sockets are registered.
func (f *fakeDP) NumSockets() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sockets)
}

// Ops returns the calls so far and forgets them.
func (f *fakeDP) Ops() []fakeOp {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ops
	f.ops = nil
	return out
}

// Count returns how many calls of op are in ops (and, for gid != 0, on gid).
func countOps(ops []fakeOp, op string, gid uint32) int {
	n := 0
	for _, o := range ops {
		if o.op == op && (gid == 0 || o.gid == gid) {
			n++
		}
	}
	return n
}

// Empty reports whether the data plane holds nothing (after every group
// was dropped).
func (f *fakeDP) Empty() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.groups) == 0 && len(f.sockets) == 0 && len(f.slots) == 0
}

// check asserts the invariants that tie Steering to the data plane:
//   - no violation was recorded while the data plane was driven;
//   - every group Steering holds has sockets, a distinct id in 1..max-1
//     that is not reserved, a distinct key, and published state in the data
//     plane: the working generation and, as count, the number of sockets
//     of the working generation; the data plane has no state for other ids;
//   - for every generation of every group with n sockets, slots 0..n-1 are
//     set and point at sockets registered in that group (alive or closed but
//     not yet reconciled); no other slot is set, for any generation;
//   - every socket registered in the data plane is in exactly one slot;
//   - Sockets(gen) lists each inode once, and (when inodes is given) its
//     inodes are exactly the sockets in the slots of gen.
func (f *fakeDP) check(t testing.TB, st *Steering, cfg SteeringConfig, inodes map[uint64]uint64) {
	t.Helper()
	working := st.Working()
	groups := st.Groups()
	gens := make(map[uint32]bool)
	for _, g := range groups {
		for gen := range g.Sockets {
			gens[gen] = true
		}
	}
	sockets := make(map[uint32][]uint64)
	bound := make(map[uint32][]GroupKey)
	counts := make(map[uint32]int)
	for gen := range gens {
		sockets[gen] = st.Sockets(gen)
		bound[gen] = st.Bound(gen)
		counts[gen] = st.SocketCount(gen)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.violations {
		t.Errorf("data plane: %s", v)
	}
	f.violations = nil

	ids := make(map[uint32]GroupInfo)
	keys := make(map[GroupKey]bool)
	for i, g := range groups {
		if i > 0 && groups[i-1].ID >= g.ID {
			t.Errorf("Groups not ordered by id: %d before %d", groups[i-1].ID, g.ID)
		}
		if g.ID == 0 || g.ID >= f.maxGroups {
			t.Errorf("group %s: id %d out of 1..%d", g.Key, g.ID, f.maxGroups-1)
		}
		if slices.Contains(cfg.Reserved, g.ID) {
			t.Errorf("group %s: reserved id %d handed out", g.Key, g.ID)
		}
		if _, dup := ids[g.ID]; dup {
			t.Errorf("group id %d used twice", g.ID)
		}
		if keys[g.Key] {
			t.Errorf("group key %s listed twice", g.Key)
		}
		ids[g.ID] = g
		keys[g.Key] = true
		total := 0
		for _, n := range g.Sockets {
			total += n
		}
		if total == 0 {
			t.Errorf("group %s (id %d) has no sockets but was not dropped", g.Key, g.ID)
		}

		ps, ok := f.groups[g.ID]
		if !ok {
			t.Errorf("group %s (id %d): no state in the data plane", g.Key, g.ID)
		} else {
			want := GroupState{WorkingGen: working, Count: uint32(g.Sockets[working]), Dissector: cfg.Dissector, FlowTimeout: cfg.FlowTimeout}
			if ps != want {
				t.Errorf("group %s (id %d): published %+v, want %+v", g.Key, g.ID, ps, want)
			}
		}
		for gen, n := range g.Sockets {
			for i := 0; i < n; i++ {
				k := slotKey{g.ID, gen, uint32(i)}
				c, ok := f.slots[k]
				if !ok {
					t.Errorf("group %s: slot %v empty, generation %d has %d sockets", g.Key, k, gen, n)
					continue
				}
				s, ok := f.sockets[c]
				switch {
				case !ok:
					t.Errorf("slot %v: cookie %d is not registered", k, c)
				case s.gid != g.ID:
					t.Errorf("slot %v: cookie %d is registered in group %d", k, c, s.gid)
				}
			}
		}
	}
	for gid := range f.groups {
		if _, ok := ids[gid]; !ok {
			t.Errorf("data plane has state for group %d that Steering does not hold", gid)
		}
	}

	inSlot := make(map[uint64]slotKey)
	slotsOfGen := make(map[uint32]map[uint64]bool)
	for k, c := range f.slots {
		g, ok := ids[k.gid]
		if !ok {
			t.Errorf("slot %v set in a group Steering does not hold", k)
		} else if k.slot >= uint32(g.Sockets[k.gen]) {
			t.Errorf("slot %v set at or above generation %d's %d sockets", k, k.gen, g.Sockets[k.gen])
		}
		if prev, dup := inSlot[c]; dup {
			t.Errorf("cookie %d in two slots: %v and %v", c, prev, k)
		}
		inSlot[c] = k
		if slotsOfGen[k.gen] == nil {
			slotsOfGen[k.gen] = make(map[uint64]bool)
		}
		slotsOfGen[k.gen][c] = true
	}
	for c, s := range f.sockets {
		if _, ok := inSlot[c]; !ok {
			t.Errorf("socket %d (group %d, alive %v) registered but in no slot", c, s.gid, s.alive)
		}
	}

	for gen, list := range sockets {
		seen := make(map[uint64]bool)
		for _, ino := range list {
			if seen[ino] {
				t.Errorf("Sockets(%d) lists inode %d twice", gen, ino)
			}
			seen[ino] = true
		}
		n := 0
		for _, g := range groups {
			n += g.Sockets[gen]
		}
		if len(list) != n {
			t.Errorf("Sockets(%d) has %d inodes, Groups counts %d", gen, len(list), n)
		}
		if counts[gen] != n {
			t.Errorf("SocketCount(%d) = %d, Groups counts %d", gen, counts[gen], n)
		}
		var wantBound []GroupKey
		for _, g := range groups {
			if g.Sockets[gen] > 0 {
				wantBound = append(wantBound, g.Key)
			}
		}
		if len(bound[gen]) != len(wantBound) {
			t.Errorf("Bound(%d) = %v, want %v", gen, bound[gen], wantBound)
		} else {
			for _, k := range wantBound {
				if !slices.Contains(bound[gen], k) {
					t.Errorf("Bound(%d) = %v, want %v", gen, bound[gen], wantBound)
					break
				}
			}
		}
		if inodes == nil {
			continue
		}
		got := make(map[uint64]bool)
		for _, ino := range list {
			c, ok := inodes[ino]
			if !ok {
				t.Errorf("Sockets(%d): inode %d was never registered", gen, ino)
				continue
			}
			got[c] = true
		}
		if !sameSet(got, slotsOfGen[gen]) {
			t.Errorf("Sockets(%d) = cookies %v, slots of generation %d hold %v", gen, keysOf(got), gen, keysOf(slotsOfGen[gen]))
		}
	}
}

func sameSet(a, b map[uint64]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keysOf(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// harness ties a Steering to a fakeDP and remembers which cookie each
// registered inode got.
type harness struct {
	t   testing.TB
	dp  *fakeDP
	st  *Steering
	cfg SteeringConfig

	mu     sync.Mutex
	inodes map[uint64]uint64 // inode -> cookie
	next   uint64            // last inode handed out by sock
}

func newHarness(t testing.TB, cfg SteeringConfig) *harness {
	t.Helper()
	if cfg.MaxGroups == 0 {
		cfg.MaxGroups = 16
	}
	dp := newFakeDP(cfg.MaxGroups)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &harness{
		t:      t,
		dp:     dp,
		st:     NewSteering(log, dp, cfg),
		cfg:    cfg,
		inodes: make(map[uint64]uint64),
	}
}

// check runs the invariant checker.
func (h *harness) check() {
	h.t.Helper()
	h.mu.Lock()
	inodes := make(map[uint64]uint64, len(h.inodes))
	for k, v := range h.inodes {
		inodes[k] = v
	}
	h.mu.Unlock()
	h.dp.check(h.t, h.st, h.cfg, inodes)
}

// openFile returns a fresh file to hand over as a socket copy.
func openFile(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatalf("open %s: %v", os.DevNull, err)
	}
	return f
}

// assertClosed fails unless Steering closed f.
func assertClosed(t testing.TB, f *os.File) {
	t.Helper()
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("file %s handed to AddSocket was not closed by it (Close: %v)", f.Name(), err)
	}
}

// sock returns a Socket of key and gen with a new inode and an open file.
func (h *harness) sock(key GroupKey, gen uint32) Socket {
	h.mu.Lock()
	h.next++
	ino := 1000 + h.next
	h.mu.Unlock()
	return Socket{Group: key, Generation: gen, PID: 4242, Inode: ino, Cookie: 0, File: openFile(h.t)}
}

// add hands sock to Steering, asserts its file was closed, and returns the
// cookie the data plane gave it (0 when AddSocket did not register it).
func (h *harness) add(s Socket) (uint64, error) {
	err := h.st.AddSocket(h.t.Context(), s)
	if s.File != nil {
		assertClosed(h.t, s.File)
	}
	c, ok := h.dp.CookieOf(s.File)
	if !ok || !h.dp.Registered(c) {
		return 0, err
	}
	h.mu.Lock()
	h.inodes[s.Inode] = c
	h.mu.Unlock()
	return c, err
}

// mustAdd adds a new socket of key and gen, checks the invariants and
// returns its cookie and inode.
func (h *harness) mustAdd(key GroupKey, gen uint32) (cookie, inode uint64) {
	h.t.Helper()
	s := h.sock(key, gen)
	c, err := h.add(s)
	if err != nil {
		h.t.Fatalf("AddSocket(%s, gen %d): %v", key, gen, err)
	}
	if c == 0 {
		h.t.Fatalf("AddSocket(%s, gen %d): socket not registered in the data plane", key, gen)
	}
	h.check()
	return c, s.Inode
}

// groupID returns the id Steering gave key (0: none).
func (h *harness) groupID(key GroupKey) uint32 {
	for _, g := range h.st.Groups() {
		if g.Key == key {
			return g.ID
		}
	}
	return 0
}
