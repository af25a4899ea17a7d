package generations

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const testNetNS = 4026531840

// udp4 returns the key of 127.0.0.1:port in the test namespace.
func udp4(port uint16) GroupKey {
	return GroupKey{NetNS: testNetNS, Family: FamilyINET, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}
}

var errBoom = errors.New("boom")

// failOn returns a fault that fails calls on group gid (any group for 0).
func failOn(gid uint32, err error) func(uint32, uint32, uint32) error {
	return func(g, _, _ uint32) error {
		if gid == 0 || g == gid {
			return err
		}
		return nil
	}
}

// wantState fails unless gid's published state has working gen and count.
func (h *harness) wantState(gid, gen, count uint32) {
	h.t.Helper()
	st, ok := h.dp.Group(gid)
	if !ok {
		h.t.Fatalf("group %d: no published state", gid)
	}
	if st.WorkingGen != gen || st.Count != count {
		h.t.Errorf("group %d: published gen %d count %d, want gen %d count %d", gid, st.WorkingGen, st.Count, gen, count)
	}
	if st.Dissector != h.cfg.Dissector || st.FlowTimeout != h.cfg.FlowTimeout {
		h.t.Errorf("group %d: published dissector %v timeout %v, want %v %v", gid, st.Dissector, st.FlowTimeout, h.cfg.Dissector, h.cfg.FlowTimeout)
	}
}

func sortedInodes(s *Steering, gen uint32) []uint64 {
	out := s.Sockets(gen)
	slices.Sort(out)
	return out
}

func TestParseDissector(t *testing.T) {
	for _, tc := range []struct {
		s string
		d Dissector
		n uint32 // the data plane's number
	}{
		{"flow", DissectorFlow, 0},
		{"noop", DissectorNoop, 1},
	} {
		d, err := ParseDissector(tc.s)
		if err != nil {
			t.Fatalf("ParseDissector(%q): %v", tc.s, err)
		}
		if d != tc.d || uint32(d) != tc.n {
			t.Errorf("ParseDissector(%q) = %d, want %d", tc.s, d, tc.n)
		}
		if got := d.String(); got != tc.s {
			t.Errorf("Dissector(%d).String() = %q, want %q", d, got, tc.s)
		}
		again, err := ParseDissector(d.String())
		if err != nil || again != d {
			t.Errorf("round trip of %v: %v, %v", d, again, err)
		}
	}
	for _, bad := range []string{"", "Flow", "NOOP", " flow", "flow ", "none", "0", "1", "4tuple", "flow,noop"} {
		_, err := ParseDissector(bad)
		if err == nil {
			t.Errorf("ParseDissector(%q) accepted", bad)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("%q", bad)) || !strings.Contains(msg, "flow or noop") {
			t.Errorf("ParseDissector(%q): error %q names neither the value nor the choices", bad, msg)
		}
	}
}

func TestFirstSocketCreatesGroup(t *testing.T) {
	h := newHarness(t, SteeringConfig{MaxGroups: 8, Dissector: DissectorNoop, FlowTimeout: 30 * time.Second})
	if w := h.st.Working(); w != 0 {
		t.Fatalf("Working() = %d before SetWorking, want 0", w)
	}
	if err := h.st.SetWorking(1); err != nil {
		t.Fatalf("SetWorking without groups: %v", err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Fatalf("SetWorking without groups touched the data plane: %+v", ops)
	}
	k := udp4(53)
	c0, _ := h.mustAdd(k, 1)
	if id := h.groupID(k); id != 1 {
		t.Fatalf("first group id = %d, want 1", id)
	}
	h.wantState(1, 1, 1)
	if got, _ := h.dp.Slot(1, 1, 0); got != c0 {
		t.Errorf("slot 1/1/0 = %d, want %d", got, c0)
	}
	// The group is published (count 0) before its first socket, and the
	// count grows only once the slot is set.
	ops := h.dp.Ops()
	want := []fakeOp{
		{op: "SetGroup", gid: 1, state: GroupState{WorkingGen: 1, Count: 0, Dissector: DissectorNoop, FlowTimeout: 30 * time.Second}},
		{op: "AddSocket", gid: 1, gen: 1, slot: 0, cookie: c0},
		{op: "SetGroup", gid: 1, state: GroupState{WorkingGen: 1, Count: 1, Dissector: DissectorNoop, FlowTimeout: 30 * time.Second}},
	}
	if !reflect.DeepEqual(ops, want) {
		t.Errorf("data plane calls:\n got %+v\nwant %+v", ops, want)
	}

	c1, _ := h.mustAdd(k, 1)
	if got, _ := h.dp.Slot(1, 1, 1); got != c1 {
		t.Errorf("second socket: slot 1/1/1 = %d, want %d", got, c1)
	}
	h.wantState(1, 1, 2)
}

func TestFirstSocketBeforeSetWorking(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	h.mustAdd(udp4(53), 1)
	// No working generation yet: the group exists with nothing to steer to.
	h.wantState(1, 0, 0)
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	h.wantState(1, 1, 1)
	h.check()
}

func TestGroupIDsDistinctPerKey(t *testing.T) {
	h := newHarness(t, SteeringConfig{MaxGroups: 16})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	base := GroupKey{NetNS: 100, Family: FamilyINET, Addr: netip.MustParseAddrPort("10.0.0.1:53")}
	variants := []GroupKey{
		base,
		{NetNS: 101, Family: FamilyINET, Addr: base.Addr},                                        // other namespace
		{NetNS: 100, Family: FamilyINET6, Addr: base.Addr},                                       // other family
		{NetNS: 100, Family: FamilyINET6, Addr: netip.MustParseAddrPort("[::ffff:10.0.0.1]:53")}, // v4-mapped
		{NetNS: 100, Family: FamilyINET, Addr: netip.MustParseAddrPort("10.0.0.2:53")},           // other address
		{NetNS: 100, Family: FamilyINET, Addr: netip.MustParseAddrPort("10.0.0.1:54")},           // other port
		{NetNS: 100, Family: FamilyINET6, Addr: netip.MustParseAddrPort("[::1]:53")},
	}
	for i, k := range variants {
		h.mustAdd(k, 1)
		if id := h.groupID(k); id != uint32(i+1) {
			t.Errorf("key %d (%s): id %d, want %d", i, k, id, i+1)
		}
		h.wantState(uint32(i+1), 1, 1)
	}
	// Same keys again: same groups, one more socket each.
	for i, k := range variants {
		h.mustAdd(k, 1)
		if id := h.groupID(k); id != uint32(i+1) {
			t.Errorf("key %d (%s) again: id %d, want %d", i, k, id, i+1)
		}
		h.wantState(uint32(i+1), 1, 2)
	}
	if n := len(h.st.Groups()); n != len(variants) {
		t.Errorf("%d groups, want %d", n, len(variants))
	}
}

func TestReservedIDsSkipped(t *testing.T) {
	cfg := SteeringConfig{MaxGroups: 6, Reserved: []uint32{1, 3, 9}}
	h := newHarness(t, cfg)
	var cookies [3]uint64
	for i, want := range []uint32{2, 4, 5} {
		cookies[i], _ = h.mustAdd(udp4(uint16(100+i)), 1)
		if id := h.groupID(udp4(uint16(100 + i))); id != want {
			t.Errorf("group %d: id %d, want %d", i, id, want)
		}
	}
	s := h.sock(udp4(200), 1)
	if _, err := h.add(s); !errors.Is(err, ErrTooManyGroups) {
		t.Fatalf("fourth group: %v, want ErrTooManyGroups", err)
	}
	h.check()
	if h.groupID(udp4(200)) != 0 {
		t.Errorf("a group was created although ids ran out")
	}

	// Dropping the group with id 4 frees 4, never 1 or 3.
	h.dp.Close(cookies[1])
	if n, err := h.st.Reconcile(); n != 1 || err != nil {
		t.Fatalf("Reconcile = %d, %v; want 1, nil", n, err)
	}
	h.check()
	h.mustAdd(udp4(200), 1)
	if id := h.groupID(udp4(200)); id != 4 {
		t.Errorf("group after a drop: id %d, want the freed 4", id)
	}
}

func TestTooManyGroups(t *testing.T) {
	h := newHarness(t, SteeringConfig{MaxGroups: 3})
	h.mustAdd(udp4(1), 1)
	h.mustAdd(udp4(2), 1)
	s := h.sock(udp4(3), 1)
	c, err := h.add(s)
	if !errors.Is(err, ErrTooManyGroups) {
		t.Fatalf("third group: %v, want ErrTooManyGroups", err)
	}
	if c != 0 || countOps(h.dp.Ops(), "AddSocket", 0) != 2 {
		t.Errorf("the socket reached the data plane")
	}
	h.check()
	if got := sortedInodes(h.st, 1); slices.Contains(got, s.Inode) {
		t.Errorf("the refused socket is listed: %v", got)
	}
	// Existing groups still take sockets.
	h.mustAdd(udp4(1), 1)
	h.mustAdd(udp4(2), 2)
	// A retry of the refused socket is refused again while no id is free.
	s.File = openFile(t)
	if _, err := h.add(s); !errors.Is(err, ErrTooManyGroups) {
		t.Errorf("retry without a free id: %v", err)
	}

	// No id at all.
	h1 := newHarness(t, SteeringConfig{MaxGroups: 1})
	if _, err := h1.add(h1.sock(udp4(1), 1)); !errors.Is(err, ErrTooManyGroups) {
		t.Errorf("MaxGroups 1: %v, want ErrTooManyGroups", err)
	}
	h1.check()
}

func TestAddSocketSameInodeTwice(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	c, ino := h.mustAdd(k, 1)
	h.dp.Ops()

	// The kernel re-delivers the bind: same inode, another copy of the file.
	for _, gen := range []uint32{1, 2} {
		again := Socket{Group: k, Generation: gen, PID: 4242, Inode: ino, File: openFile(t)}
		if got, err := h.add(again); err != nil || got != 0 {
			t.Fatalf("re-delivered bind (gen %d): cookie %d, %v; want 0, nil", gen, got, err)
		}
		h.check()
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Errorf("re-delivered bind touched the data plane: %+v", ops)
	}
	h.wantState(1, 1, 1)
	if got := h.st.Groups(); len(got) != 1 || !reflect.DeepEqual(got[0].Sockets, map[uint32]int{1: 1}) {
		t.Errorf("Groups() = %+v, want one group with one gen-1 socket", got)
	}
	if got := h.st.Sockets(1); !slices.Equal(got, []uint64{ino}) {
		t.Errorf("Sockets(1) = %v, want [%d]", got, ino)
	}
	if got := h.st.Sockets(2); len(got) != 0 {
		t.Errorf("Sockets(2) = %v, want none", got)
	}

	// Once the socket has left steering its inode is free again: a new
	// socket with it is registered.
	h.dp.Close(c)
	if _, err := h.st.Reconcile(); err != nil {
		t.Fatal(err)
	}
	h.check()
	if c2, err := h.add(Socket{Group: k, Generation: 1, Inode: ino, File: openFile(t)}); err != nil || c2 == 0 {
		t.Errorf("inode reused after the socket left: cookie %d, %v", c2, err)
	}
	h.check()
}

func TestNonWorkingGenerationKeepsCount(t *testing.T) {
	h := newHarness(t, SteeringConfig{Dissector: DissectorFlow, FlowTimeout: time.Minute})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	a, b, c := udp4(1), udp4(2), udp4(3)
	h.mustAdd(a, 1)
	h.mustAdd(a, 1)
	h.mustAdd(b, 1)
	ga, gb := h.groupID(a), h.groupID(b)
	h.dp.Ops()

	for range 3 {
		h.mustAdd(a, 2)
		h.wantState(ga, 1, 2)
	}
	h.mustAdd(c, 2) // a new group with only a new generation
	gc := h.groupID(c)
	h.wantState(gc, 1, 0)
	ops := h.dp.Ops()
	if n := countOps(ops, "SetGroup", ga); n != 0 {
		t.Errorf("sockets of a non-working generation republished group %d %d times", ga, n)
	}
	if n := countOps(ops, "SetGroup", gc); n != 1 {
		t.Errorf("new group %d published %d times, want once (creation)", gc, n)
	}

	if err := h.st.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	if w := h.st.Working(); w != 2 {
		t.Errorf("Working() = %d, want 2", w)
	}
	h.wantState(ga, 2, 3)
	h.wantState(gb, 2, 0)
	h.wantState(gc, 2, 1)
	ops = h.dp.Ops()
	for _, gid := range []uint32{ga, gb, gc} {
		if n := countOps(ops, "SetGroup", gid); n != 1 {
			t.Errorf("SetWorking published group %d %d times, want once", gid, n)
		}
	}
	if len(ops) != 3 {
		t.Errorf("SetWorking made %d data plane calls, want 3: %+v", len(ops), ops)
	}
	h.check()

	// And back (a rollback).
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	h.wantState(ga, 1, 2)
	h.wantState(gb, 1, 1)
	h.wantState(gc, 1, 0)
	h.check()
}

func TestReconcileMiddleSocket(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	var c [4]uint64
	var ino [4]uint64
	for i := range c {
		c[i], ino[i] = h.mustAdd(k, 1)
	}
	gid := h.groupID(k)
	h.dp.Ops()

	if n, err := h.st.Reconcile(); n != 0 || err != nil {
		t.Fatalf("Reconcile with all alive = %d, %v", n, err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Fatalf("Reconcile with all alive changed the data plane: %+v", ops)
	}

	h.dp.Close(c[1])
	n, err := h.st.Reconcile()
	if n != 1 || err != nil {
		t.Fatalf("Reconcile = %d, %v; want 1, nil", n, err)
	}
	h.check()
	if got, want := h.dp.SlotsOf(gid, 1), []uint64{c[0], c[3], c[2]}; !slices.Equal(got, want) {
		t.Errorf("slots after closing slot 1 = %v, want %v (last moved into the hole)", got, want)
	}
	if _, ok := h.dp.Slot(gid, 1, 3); ok {
		t.Errorf("slot 3 still set")
	}
	h.wantState(gid, 1, 3)
	if h.dp.Registered(c[1]) {
		t.Errorf("closed socket %d still in the data plane", c[1])
	}
	// Move, shrink, then empty the old last slot, then forget the socket.
	want := []fakeOp{
		{op: "SetSlot", gid: gid, gen: 1, slot: 1, cookie: c[3]},
		{op: "SetGroup", gid: gid, state: GroupState{WorkingGen: 1, Count: 3}},
		{op: "DeleteSlot", gid: gid, gen: 1, slot: 3, cookie: c[3]},
		{op: "RemoveSocket", cookie: c[1]},
	}
	if got := h.dp.Ops(); !reflect.DeepEqual(got, want) {
		t.Errorf("data plane calls:\n got %+v\nwant %+v", got, want)
	}
	wantIno := []uint64{ino[0], ino[2], ino[3]}
	if got := sortedInodes(h.st, 1); !slices.Equal(got, wantIno) {
		t.Errorf("Sockets(1) = %v, want %v", got, wantIno)
	}
}

func TestReconcileSeveral(t *testing.T) {
	for _, closeSlots := range [][]int{
		{5}, {0}, {0, 2, 4}, {3, 4, 5}, {0, 1, 2, 3, 4}, {1, 5}, {0, 5}, {2, 3},
	} {
		t.Run(fmt.Sprint(closeSlots), func(t *testing.T) {
			h := newHarness(t, SteeringConfig{})
			if err := h.st.SetWorking(1); err != nil {
				t.Fatal(err)
			}
			k := udp4(53)
			var cookies []uint64
			for range 6 {
				c, _ := h.mustAdd(k, 1)
				cookies = append(cookies, c)
			}
			other, _ := h.mustAdd(udp4(54), 1) // a bystander group
			gid := h.groupID(k)
			closed := make(map[uint64]bool)
			for _, i := range closeSlots {
				h.dp.Close(cookies[i])
				closed[cookies[i]] = true
			}
			h.dp.Ops()
			n, err := h.st.Reconcile()
			if n != len(closeSlots) || err != nil {
				t.Fatalf("Reconcile = %d, %v; want %d, nil", n, err, len(closeSlots))
			}
			h.check()
			live := make(map[uint64]bool)
			for _, c := range cookies {
				if !closed[c] {
					live[c] = true
				}
			}
			got := make(map[uint64]bool)
			for _, c := range h.dp.SlotsOf(gid, 1) {
				got[c] = true
			}
			if !sameSet(got, live) || len(h.dp.SlotsOf(gid, 1)) != len(live) {
				t.Errorf("slots = %v, want the live sockets %v", h.dp.SlotsOf(gid, 1), keysOf(live))
			}
			h.wantState(gid, 1, uint32(len(live)))
			removed := make(map[uint64]bool)
			for _, o := range h.dp.Ops() {
				if o.op == "RemoveSocket" {
					removed[o.cookie] = true
				}
			}
			if !sameSet(removed, closed) {
				t.Errorf("RemoveSocket called for %v, want %v", keysOf(removed), keysOf(closed))
			}
			if !h.dp.Registered(other) {
				t.Errorf("bystander socket removed")
			}
		})
	}
}

func TestReconcileNonWorkingGeneration(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	var old [3]uint64
	for i := range old {
		old[i], _ = h.mustAdd(k, 1)
	}
	n0, _ := h.mustAdd(k, 2)
	n1, _ := h.mustAdd(k, 2)
	gid := h.groupID(k)
	h.dp.Ops()

	h.dp.Close(old[0])
	if n, err := h.st.Reconcile(); n != 1 || err != nil {
		t.Fatalf("Reconcile = %d, %v", n, err)
	}
	h.check()
	if got, want := h.dp.SlotsOf(gid, 1), []uint64{old[2], old[1]}; !slices.Equal(got, want) {
		t.Errorf("generation 1 slots = %v, want %v", got, want)
	}
	if got, want := h.dp.SlotsOf(gid, 2), []uint64{n0, n1}; !slices.Equal(got, want) {
		t.Errorf("generation 2 slots = %v, want %v", got, want)
	}
	if n := countOps(h.dp.Ops(), "SetGroup", 0); n != 0 {
		t.Errorf("a draining generation's socket leaving republished the group %d times", n)
	}
	h.wantState(gid, 2, 2)

	h.dp.Close(old[1])
	h.dp.Close(old[2])
	if n, err := h.st.Reconcile(); n != 2 || err != nil {
		t.Fatalf("Reconcile = %d, %v", n, err)
	}
	h.check()
	g := h.st.Groups()
	if len(g) != 1 || !reflect.DeepEqual(g[0].Sockets, map[uint32]int{2: 2}) {
		t.Errorf("Groups() = %+v, want only generation 2 with 2 sockets", g)
	}
	if got := h.st.Sockets(1); len(got) != 0 {
		t.Errorf("Sockets(1) = %v, want none", got)
	}
}

func TestReconcileDropsEmptyGroupAndReusesID(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	a, b, c := udp4(1), udp4(2), udp4(3)
	a0, _ := h.mustAdd(a, 1)
	a1, _ := h.mustAdd(a, 2)
	h.mustAdd(b, 1)
	if h.groupID(a) != 1 || h.groupID(b) != 2 {
		t.Fatalf("ids: a %d b %d", h.groupID(a), h.groupID(b))
	}
	h.dp.Ops()

	h.dp.Close(a0)
	h.dp.Close(a1)
	if n, err := h.st.Reconcile(); n != 2 || err != nil {
		t.Fatalf("Reconcile = %d, %v", n, err)
	}
	h.check()
	ops := h.dp.Ops()
	if n := countOps(ops, "ClearGroup", 1); n != 1 {
		t.Errorf("ClearGroup(1) called %d times, want once", n)
	}
	if n := countOps(ops, "ClearGroup", 0); n != 1 {
		t.Errorf("ClearGroup called %d times, want once", n)
	}
	if _, ok := h.dp.Group(1); ok {
		t.Errorf("group 1 still has state in the data plane")
	}
	if h.groupID(a) != 0 {
		t.Errorf("empty group still listed")
	}
	if h.groupID(b) != 2 {
		t.Errorf("group b changed id to %d", h.groupID(b))
	}

	h.mustAdd(c, 1)
	if id := h.groupID(c); id != 1 {
		t.Errorf("new group: id %d, want the freed 1", id)
	}
	h.wantState(1, 1, 1)
	h.mustAdd(a, 1)
	if id := h.groupID(a); id != 3 {
		t.Errorf("a again: id %d, want 3", id)
	}
}

func TestReconcileEverythingClosed(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	for port := uint16(1); port <= 3; port++ {
		for gen := uint32(1); gen <= 3; gen++ {
			h.mustAdd(udp4(port), gen)
			h.mustAdd(udp4(port), gen)
		}
	}
	for _, c := range h.dp.LiveCookies() {
		h.dp.Close(c)
	}
	if n, err := h.st.Reconcile(); n != 18 || err != nil {
		t.Fatalf("Reconcile = %d, %v; want 18, nil", n, err)
	}
	h.check()
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("Groups() = %+v, want none", g)
	}
	if !h.dp.Empty() {
		t.Errorf("data plane not empty")
	}
	if n := countOps(h.dp.Ops(), "ClearGroup", 0); n != 3 {
		t.Errorf("ClearGroup called %d times, want 3", n)
	}
}

func TestReleaseGeneration(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	a, b, c := udp4(1), udp4(2), udp4(3)
	var gen1 []uint64
	var wantReleased []Released
	for _, k := range []GroupKey{a, a, a, b} {
		ck, ino := h.mustAdd(k, 1)
		gen1 = append(gen1, ck)
		wantReleased = append(wantReleased, Released{Group: k, Inode: ino, PID: 4242})
	}
	a2, a2ino := h.mustAdd(a, 2)
	c2, c2ino := h.mustAdd(c, 2)
	ga, gb, gc := h.groupID(a), h.groupID(b), h.groupID(c)
	h.dp.Ops()

	released, err := h.st.ReleaseGeneration(1)
	if err != nil {
		t.Fatalf("ReleaseGeneration(1): %v", err)
	}
	h.check()
	sortReleased(released)
	sortReleased(wantReleased)
	if !reflect.DeepEqual(released, wantReleased) {
		t.Errorf("released:\n got %+v\nwant %+v", released, wantReleased)
	}
	ops := h.dp.Ops()
	removed := make(map[uint64]bool)
	for _, o := range ops {
		if o.op == "RemoveSocket" {
			removed[o.cookie] = true
		}
	}
	want := make(map[uint64]bool)
	for _, ck := range gen1 {
		want[ck] = true
	}
	if !sameSet(removed, want) {
		t.Errorf("RemoveSocket for %v, want %v", keysOf(removed), keysOf(want))
	}
	h.wantState(ga, 1, 0) // it was working: nothing left to steer to
	if h.groupID(b) != 0 {
		t.Errorf("group b (only generation 1) not dropped")
	}
	if countOps(ops, "ClearGroup", gb) != 1 || countOps(ops, "ClearGroup", 0) != 1 {
		t.Errorf("ClearGroup calls: %+v, want only group %d", ops, gb)
	}
	for _, o := range ops {
		if o.gid == gc {
			t.Errorf("group c (generation 2 only) touched: %+v", o)
		}
	}
	if got := h.st.Sockets(1); len(got) != 0 {
		t.Errorf("Sockets(1) = %v after release", got)
	}
	if got := h.dp.SlotsOf(ga, 2); !slices.Equal(got, []uint64{a2}) {
		t.Errorf("group a generation 2 slots = %v", got)
	}
	if got := h.dp.SlotsOf(gc, 2); !slices.Equal(got, []uint64{c2}) {
		t.Errorf("group c generation 2 slots = %v", got)
	}

	// Nothing left of generation 1: a no-op.
	if released, err := h.st.ReleaseGeneration(1); err != nil || len(released) != 0 {
		t.Fatalf("second release: %+v, %v", released, err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Errorf("second release touched the data plane: %+v", ops)
	}
	// Releasing the last generation drops every group.
	released, err = h.st.ReleaseGeneration(2)
	if err != nil {
		t.Fatal(err)
	}
	h.check()
	sortReleased(released)
	wantReleased = []Released{{Group: a, Inode: a2ino, PID: 4242}, {Group: c, Inode: c2ino, PID: 4242}}
	sortReleased(wantReleased)
	if !reflect.DeepEqual(released, wantReleased) {
		t.Errorf("released:\n got %+v\nwant %+v", released, wantReleased)
	}
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("Groups() = %+v, want none", g)
	}
	if !h.dp.Empty() {
		t.Errorf("data plane not empty")
	}
}

func TestReleaseWorkingGenerationPublishesZero(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	h.mustAdd(k, 1)
	for range 4 {
		h.mustAdd(k, 2)
	}
	gid := h.groupID(k)
	h.dp.Ops()
	if released, err := h.st.ReleaseGeneration(2); err != nil || len(released) != 4 {
		t.Fatalf("ReleaseGeneration(2) = %d sockets, %v; want 4, nil", len(released), err)
	}
	h.check()
	h.wantState(gid, 2, 0)
	// The count never exceeds the slots still set (the fake checks every
	// step); and it went down one at a time to 0.
	var counts []uint32
	for _, o := range h.dp.Ops() {
		if o.op == "SetGroup" {
			counts = append(counts, o.state.Count)
		}
	}
	if !slices.Equal(counts, []uint32{3, 2, 1, 0}) {
		t.Errorf("published counts %v, want [3 2 1 0]", counts)
	}
}

func sortReleased(r []Released) {
	slices.SortFunc(r, func(a, b Released) int { return cmp.Compare(a.Inode, b.Inode) })
}

func TestGroupsAndSockets(t *testing.T) {
	h := newHarness(t, SteeringConfig{Reserved: []uint32{2}})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("Groups() on a new Steering = %+v", g)
	}
	a, b, c := udp4(1), udp4(2), udp4(3)
	inodes := make(map[uint32][]uint64)
	for _, x := range []struct {
		k   GroupKey
		gen uint32
	}{{a, 1}, {a, 1}, {b, 1}, {a, 2}, {c, 3}, {c, 3}, {b, 2}, {c, 3}} {
		_, ino := h.mustAdd(x.k, x.gen)
		inodes[x.gen] = append(inodes[x.gen], ino)
	}
	want := []GroupInfo{
		{Key: a, ID: 1, Sockets: map[uint32]int{1: 2, 2: 1}},
		{Key: b, ID: 3, Sockets: map[uint32]int{1: 1, 2: 1}},
		{Key: c, ID: 4, Sockets: map[uint32]int{3: 3}},
	}
	if got := h.st.Groups(); !reflect.DeepEqual(got, want) {
		t.Errorf("Groups():\n got %+v\nwant %+v", got, want)
	}
	for gen, want := range inodes {
		if got := sortedInodes(h.st, gen); !slices.Equal(got, want) {
			t.Errorf("Sockets(%d) = %v, want %v", gen, got, want)
		}
	}
	if got := h.st.Sockets(99); len(got) != 0 {
		t.Errorf("Sockets(99) = %v", got)
	}
	for gen, want := range map[uint32][]GroupKey{1: {a, b}, 2: {a, b}, 3: {c}, 99: nil} {
		got := h.st.Bound(gen)
		slices.SortFunc(got, func(x, y GroupKey) int { return x.Addr.Compare(y.Addr) })
		if !slices.Equal(got, want) {
			t.Errorf("Bound(%d) = %v, want %v", gen, got, want)
		}
		if n := h.st.SocketCount(gen); n != len(inodes[gen]) {
			t.Errorf("SocketCount(%d) = %d, want %d", gen, n, len(inodes[gen]))
		}
	}
	// The result is a copy.
	g := h.st.Groups()
	g[0].Sockets[1] = 100
	if h.st.Groups()[0].Sockets[1] != 2 {
		t.Errorf("Groups() shares its maps with Steering")
	}
}

func TestAddSocketDataPlaneErrorNewGroup(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	h.dp.Fault("AddSocket", failOn(0, errBoom))
	s := h.sock(udp4(53), 1)
	if _, err := h.add(s); !errors.Is(err, errBoom) {
		t.Fatalf("AddSocket: %v, want the data plane's error", err)
	}
	h.check()
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("group left behind: %+v", g)
	}
	if got := h.st.Sockets(1); len(got) != 0 {
		t.Errorf("half-registered socket: %v", got)
	}
	ops := h.dp.Ops()
	if countOps(ops, "SetGroup", 1) != 1 || countOps(ops, "ClearGroup", 1) != 1 {
		t.Errorf("want the new group published then cleared: %+v", ops)
	}
	if !h.dp.Empty() {
		t.Errorf("data plane not empty")
	}

	// The bind is re-delivered: the same inode registers normally.
	h.dp.Fault("AddSocket", nil)
	s.File = openFile(t)
	c, err := h.add(s)
	if err != nil || c == 0 {
		t.Fatalf("retry: cookie %d, %v", c, err)
	}
	h.check()
	if h.groupID(udp4(53)) != 1 {
		t.Errorf("retry: id %d, want 1", h.groupID(udp4(53)))
	}
	if got, _ := h.dp.Slot(1, 1, 0); got != c {
		t.Errorf("retry: slot 0 = %d, want %d", got, c)
	}
}

func TestAddSocketDataPlaneErrorExistingGroup(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	h.mustAdd(k, 1)
	h.mustAdd(k, 1)
	gid := h.groupID(k)
	h.dp.Ops()

	h.dp.Fault("AddSocket", failOn(0, errBoom))
	for _, gen := range []uint32{1, 3} {
		if _, err := h.add(h.sock(k, gen)); !errors.Is(err, errBoom) {
			t.Fatalf("gen %d: %v, want the data plane's error", gen, err)
		}
		h.check()
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Errorf("failed adds changed the data plane: %+v", ops)
	}
	g := h.st.Groups()
	if len(g) != 1 || !reflect.DeepEqual(g[0].Sockets, map[uint32]int{1: 2}) {
		t.Errorf("Groups() = %+v, want the group unchanged", g)
	}
	h.wantState(gid, 1, 2)

	h.dp.Fault("AddSocket", nil)
	c, _ := h.mustAdd(k, 1)
	if got, _ := h.dp.Slot(gid, 1, 2); got != c {
		t.Errorf("next socket in slot 2: %d, want %d", got, c)
	}
	h.mustAdd(k, 3)
}

func TestAddSocketSetGroupErrorOnNewGroup(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	h.dp.Fault("SetGroup", failOn(0, errBoom))
	s := h.sock(udp4(53), 1)
	if _, err := h.add(s); !errors.Is(err, errBoom) {
		t.Fatalf("AddSocket: %v, want the data plane's error", err)
	}
	h.check()
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("group left behind: %+v", g)
	}
	if n := countOps(h.dp.Ops(), "AddSocket", 0); n != 0 {
		t.Errorf("socket added to an unpublished group")
	}
	h.dp.Fault("SetGroup", nil)
	s.File = openFile(t)
	if c, err := h.add(s); err != nil || c == 0 {
		t.Fatalf("retry: cookie %d, %v", c, err)
	}
	h.check()
	h.wantState(1, 1, 1)
}

// A publish that fails after the socket is in its slot: AddSocket reports
// the error, the socket stays registered (it is in the data plane), and the
// count is stale (too low, never a hole) until the next publish.
func TestAddSocketPublishErrorAfterSlot(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	h.mustAdd(k, 1)
	gid := h.groupID(k)
	h.dp.Fault("SetGroup", failOn(gid, errBoom))
	c, err := h.add(h.sock(k, 1))
	if !errors.Is(err, errBoom) {
		t.Fatalf("AddSocket: %v, want the data plane's error", err)
	}
	if c == 0 {
		t.Fatalf("socket not in the data plane")
	}
	if got, _ := h.dp.Slot(gid, 1, 1); got != c {
		t.Errorf("slot 1 = %d, want %d", got, c)
	}
	if st, _ := h.dp.Group(gid); st.Count != 1 {
		t.Errorf("published count %d, want the stale 1", st.Count)
	}
	h.dp.Fault("SetGroup", nil)
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	h.check()
	h.wantState(gid, 1, 2)
}

func TestSetWorkingSetGroupErrorsJoined(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	for port := uint16(1); port <= 3; port++ {
		h.mustAdd(udp4(port), 1)
		h.mustAdd(udp4(port), 2)
		h.mustAdd(udp4(port), 2)
	}
	err1, err3 := errors.New("group 1 failed"), errors.New("group 3 failed")
	h.dp.Fault("SetGroup", func(gid, _, _ uint32) error {
		switch gid {
		case 1:
			return err1
		case 3:
			return err3
		}
		return nil
	})
	err := h.st.SetWorking(2)
	if !errors.Is(err, err1) || !errors.Is(err, err3) {
		t.Fatalf("SetWorking: %v, want both groups' errors", err)
	}
	if w := h.st.Working(); w != 2 {
		t.Errorf("Working() = %d, want 2", w)
	}
	h.wantState(2, 2, 2)
	h.wantState(1, 1, 1)
	h.wantState(3, 1, 1)

	h.dp.Fault("SetGroup", nil)
	if err := h.st.SetWorking(2); err != nil {
		t.Fatalf("SetWorking again: %v", err)
	}
	h.check()
}

func TestReconcileSetSlotErrorReported(t *testing.T) {
	h := newHarness(t, SteeringConfig{})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)
	c0, _ := h.mustAdd(k, 1)
	h.mustAdd(k, 1)
	h.dp.Fault("SetSlot", failOn(0, errBoom))
	h.dp.Close(c0)
	n, err := h.st.Reconcile()
	if n != 1 || !errors.Is(err, errBoom) {
		t.Errorf("Reconcile = %d, %v; want 1 and the data plane's error", n, err)
	}
	// The data plane is now inconsistent; that is what the error says.
	h.dp.mu.Lock()
	h.dp.violations = nil
	h.dp.mu.Unlock()
}

// AddSocket without a file is refused; like every other failed AddSocket
// it must leave no group behind (a group without sockets is dropped and its
// id freed).
func TestAddSocketNilFileLeavesNoGroup(t *testing.T) {
	h := newHarness(t, SteeringConfig{MaxGroups: 2})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	s := h.sock(udp4(53), 1)
	s.File.Close()
	s.File = nil
	if err := h.st.AddSocket(t.Context(), s); err == nil {
		t.Fatalf("AddSocket without a file accepted")
	}
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("BUG: AddSocket without a file left group %+v behind (published in the data plane, id taken)", g)
	}
	// With the only id taken by the leftover, a real socket of another
	// address is refused.
	if _, err := h.add(h.sock(udp4(54), 1)); err != nil {
		t.Errorf("BUG: next address refused: %v", err)
	}
}

func TestConcurrentAddReconcileSetWorking(t *testing.T) {
	cfg := SteeringConfig{MaxGroups: 32, Dissector: DissectorFlow, FlowTimeout: time.Minute, Reserved: []uint32{2}}
	h := newHarness(t, cfg)
	keys := []GroupKey{
		udp4(53), udp4(54),
		{NetNS: 7, Family: FamilyINET, Addr: netip.MustParseAddrPort("127.0.0.1:53")},
		{NetNS: testNetNS, Family: FamilyINET6, Addr: netip.MustParseAddrPort("[::1]:53")},
		{NetNS: testNetNS, Family: FamilyINET6, Addr: netip.MustParseAddrPort("[::ffff:127.0.0.1]:53")},
	}
	const adders, perAdder = 8, 60

	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { // the servers close sockets; the supervisor reconciles
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if live := h.dp.LiveCookies(); len(live) > 0 {
				for range 1 + rng.IntN(3) {
					h.dp.Close(live[rng.IntN(len(live))])
				}
			}
			if _, err := h.st.Reconcile(); err != nil {
				t.Errorf("Reconcile: %v", err)
				return
			}
			runtime.Gosched()
		}
	})
	bg.Go(func() { // upgrades, rollbacks, an instance exiting; status
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			gen := uint32(1 + i%3)
			if err := h.st.SetWorking(gen); err != nil {
				t.Errorf("SetWorking(%d): %v", gen, err)
				return
			}
			if i%10 == 9 {
				if _, err := h.st.ReleaseGeneration(3); err != nil {
					t.Errorf("ReleaseGeneration: %v", err)
					return
				}
			}
			_ = h.st.Groups()
			_ = h.st.Sockets(gen)
			runtime.Gosched()
		}
	})

	var wg sync.WaitGroup
	for a := range adders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(a), 99))
			for i := range perAdder {
				s := h.sock(keys[rng.IntN(len(keys))], uint32(1+rng.IntN(3)))
				if _, err := h.add(s); err != nil {
					t.Errorf("AddSocket: %v", err)
					return
				}
				if i%5 == 0 { // a re-delivered bind
					again := s
					again.File = openFile(t)
					if _, err := h.add(again); err != nil {
						t.Errorf("re-delivered AddSocket: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	h.check()

	// Half of what is left closes; then everything.
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range h.dp.LiveCookies() {
		if rng.IntN(2) == 0 {
			h.dp.Close(c)
		}
	}
	if _, err := h.st.Reconcile(); err != nil {
		t.Fatal(err)
	}
	h.check()
	if len(h.dp.LiveCookies()) != h.dp.NumSockets() {
		t.Errorf("closed sockets survived Reconcile")
	}
	for _, c := range h.dp.LiveCookies() {
		h.dp.Close(c)
	}
	if _, err := h.st.Reconcile(); err != nil {
		t.Fatal(err)
	}
	h.check()
	if g := h.st.Groups(); len(g) != 0 {
		t.Errorf("Groups() = %+v after every socket closed", g)
	}
	if !h.dp.Empty() {
		t.Errorf("data plane not empty after every socket closed")
	}
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestChanged(t *testing.T) {
	h := newHarness(t, SteeringConfig{MaxGroups: 2})
	if err := h.st.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	k := udp4(53)

	ch := h.st.Changed()
	if closed(ch) {
		t.Fatalf("Changed closed before any change")
	}
	c0, ino := h.mustAdd(k, 1)
	if !closed(ch) {
		t.Errorf("adding a socket did not close Changed")
	}

	ch = h.st.Changed()
	if closed(ch) {
		t.Fatalf("a fresh Changed is already closed")
	}
	// Not changes of sockets: a re-delivered bind, a failed add, a new
	// working generation, a Reconcile with nothing closed.
	if _, err := h.add(Socket{Group: k, Generation: 1, Inode: ino, File: openFile(t)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.add(h.sock(udp4(54), 1)); !errors.Is(err, ErrTooManyGroups) {
		t.Fatalf("second group with MaxGroups 2: %v", err)
	}
	h.dp.Fault("AddSocket", failOn(0, errBoom))
	if _, err := h.add(h.sock(k, 1)); !errors.Is(err, errBoom) {
		t.Fatal(err)
	}
	h.dp.Fault("AddSocket", nil)
	if err := h.st.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if closed(ch) {
		t.Errorf("Changed closed without a change of sockets")
	}
	h.check()

	h.dp.Close(c0)
	if _, err := h.st.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Errorf("a socket leaving did not close Changed")
	}

	h.mustAdd(k, 3)
	ch = h.st.Changed()
	if _, err := h.st.ReleaseGeneration(3); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Errorf("ReleaseGeneration did not close Changed")
	}

	// A waiter wakes.
	ch = h.st.Changed()
	done := make(chan struct{})
	go func() {
		<-ch
		close(done)
	}()
	h.mustAdd(k, 1)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("waiter on Changed not woken")
	}
}
