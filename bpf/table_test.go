package bpf

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
)

// TestIndexReuseKeepsStaleFlowsOff: a socket closes, leaves its slot and
// its index is handed to a new socket of a generation that is not working.
// The closed socket's flows must not follow the index to the new socket:
// they take the new-flow path to the working generation (counted as
// rx_flow_socket_gone), because the index's epoch moved on.
func TestIndexReuseKeepsStaleFlowsOff(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, flows = 1, 60
	gen1 := e.addGen(gid, 1, 2, lo4)
	port := gen1[0].addr.Port()
	e.setGroup(gid, 1, 2, flowDis, hour)
	cls := e.clients(flows, withPort(lo4, port))
	got := e.roundtrip(cls, 1)
	wantAllIn(t, "generation 1", got, gen1, true)
	victim, survivor := gen1[0], gen1[1]
	var orphans []*client
	for c, ss := range got {
		if sole(t, c, ss) == victim {
			orphans = append(orphans, c)
		}
	}
	oldIndex, oldEpoch, ok := e.d.SocketRef(victim.cookie)
	if !ok {
		t.Fatalf("%s has no index", victim)
	}

	// What Steering does when a socket closes: the last socket moves into
	// its slot, the count shrinks, the last slot empties, the socket goes.
	e.close(victim)
	if err := e.d.SetSlot(gid, 1, 0, survivor.cookie); err != nil {
		t.Fatal(err)
	}
	e.setGroup(gid, 1, 1, flowDis, hour)
	if err := e.d.DeleteSlot(gid, 1, 1); err != nil {
		t.Fatal(err)
	}
	e.d.RemoveSocket(victim.cookie)

	// The next socket gets the freed index (handed out round robin, so
	// point the search at it).
	e.d.mu.Lock()
	e.d.next = oldIndex
	e.d.mu.Unlock()
	next := e.listen(withPort(lo4, port))
	e.add(next, gid, 2, 0)
	index, epoch, _ := e.d.SocketRef(next.cookie)
	if index != oldIndex || epoch == oldEpoch {
		t.Fatalf("new socket at index %d epoch %d; the closed one had %d epoch %d: want the same index, another epoch", index, epoch, oldIndex, oldEpoch)
	}

	got = e.roundtrip(cls, 1)
	for c, ss := range got {
		if s := sole(t, c, ss); s != survivor {
			t.Errorf("flow %d landed on %s, want %s (the working generation's only socket)", c.id, s, survivor)
		}
	}
	if n := e.counter(gid, "rx_flow_socket_gone"); n != uint64(len(orphans)) {
		t.Errorf("rx_flow_socket_gone = %d, want %d (the closed socket's flows)", n, len(orphans))
	}
}

// TestBanksAcrossFlips: generations take turns in the group's two banks of
// slots. A generation that is not working is filled into the bank the
// published state does not name; a flip to a generation without a bank
// (a rollback two generations back) fills one first. After every flip new
// flows spread over exactly the working generation's sockets and old flows
// stay where they are.
func TestBanksAcrossFlips(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, flows = 1, 3, 90
	gens := map[uint32][]*server{1: e.addGen(gid, 1, n, lo4)}
	dst := gens[1][0].addr
	e.setGroup(gid, 1, n, flowDis, hour)
	gens[2] = e.addGen(gid, 2, n, dst)
	gens[3] = e.addGen(gid, 3, n, dst) // both banks busy: gen 3 waits without one

	home := make(map[*client]*server)
	for _, gen := range []uint32{1, 2, 3, 2, 1, 3} {
		e.setGroup(gid, gen, n, flowDis, hour)
		fresh := e.clients(flows, dst)
		wantAllIn(t, "new flows", e.roundtrip(fresh, 1), gens[gen], true)
		for c, ss := range e.roundtrip(fresh, 1) {
			home[c] = sole(t, c, ss)
		}
		var old []*client
		for c := range home {
			if !slices.Contains(fresh, c) {
				old = append(old, c)
			}
		}
		for c, ss := range e.roundtrip(old, 1) {
			if s := sole(t, c, ss); s != home[c] {
				t.Errorf("working generation %d: flow %d moved from %s to %s", gen, c.id, home[c], s)
			}
		}
		e.d.mu.Lock()
		gb := *e.d.bankSet[gid]
		e.d.mu.Unlock()
		if gb.live < 0 || gb.gen[gb.live] != gen {
			t.Errorf("working generation %d: banks hold %v, the live one is %d", gen, gb.gen, gb.live)
		}
	}
	if n := e.counter(gid, "rx_new_flow_working_gen_dispatch_error") + e.counter(gid, "rx_fallback_kernel"); n != 0 {
		t.Errorf("%d datagrams found no working socket", n)
	}
}

// TestMaxFlowsFit: a table sized for MaxFlows holds that many live flows
// without evicting any; a second datagram of every flow finds its entry.
func TestMaxFlowsFit(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	const maxFlows, gid = 2048, 1
	e := newEnv(t, Options{MaxFlows: maxFlows})
	gen1 := e.addGen(gid, 1, 2, lo4)
	e.setGroup(gid, 1, 2, flowDis, hour)
	cls := e.clients(maxFlows, gen1[0].addr)
	e.roundtrip(cls, 1)
	e.roundtrip(cls, 1)
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  2 * maxFlows,
		"rx_dissected_ok_total":               2 * maxFlows,
		"rx_flow_new_unseen":                  maxFlows,
		"rx_new_flow_total":                   maxFlows,
		"rx_new_flow_working_gen_dispatch_ok": maxFlows,
		"rx_flow_ok":                          maxFlows,
	})
	if got := len(e.flowTable(gid)); got != maxFlows {
		t.Errorf("flow table holds %d flows, want %d", got, maxFlows)
	}
}

// TestActive: Active says whether a socket served a flow within the
// timeout, from the per-socket time the program keeps: true after a flow's
// first datagram, false once the flows went quiet for longer than the
// timeout, true again with the next datagram; a socket that never served
// a flow is never active.
func TestActive(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{Refresh: 10 * time.Millisecond})
	const gid = 1
	gen1 := e.addGen(gid, 1, 1, lo4)
	gen2 := e.addGen(gid, 2, 1, gen1[0].addr)
	e.setGroup(gid, 1, 1, flowDis, hour)
	active := func(ss []*server, timeout time.Duration) bool {
		t.Helper()
		var cookies []uint64
		for _, s := range ss {
			cookies = append(cookies, s.cookie)
		}
		a, err := e.d.Active(cookies, timeout)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if active(gen1, hour) || active(gen2, hour) {
		t.Fatal("active before any datagram")
	}
	cls := e.clients(3, gen1[0].addr)
	e.roundtrip(cls, 1)
	if !active(gen1, hour) {
		t.Error("generation 1 not active after its flows' first datagrams")
	}
	if active(gen2, hour) {
		t.Error("generation 2 active without a flow")
	}
	const quiet = 100 * time.Millisecond
	time.Sleep(2 * quiet)
	if active(gen1, quiet) {
		t.Errorf("generation 1 active after %v without datagrams (timeout %v)", 2*quiet, quiet)
	}
	e.roundtrip(cls[:1], 1) // older than the refresh interval: rewritten
	if !active(gen1, quiet) {
		t.Error("generation 1 not active after a datagram of an existing flow")
	}
}

// TestGroupsMappedPerGroup: user space maps the groups array group by
// group (two or three pages each), not whole: the kernel maps every page
// of a mapping at once, so a whole mapping would put the array's 4 MiB in
// the supervisor's resident memory. A cleared group is unmapped.
func TestGroupsMappedPerGroup(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	mapped := func() int {
		t.Helper()
		maps, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for line := range strings.Lines(string(maps)) {
			if !strings.Contains(line, "bpf-map") {
				continue
			}
			var lo, hi uint64
			if _, err := fmt.Sscanf(line, "%x-%x", &lo, &hi); err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			n += int(hi - lo)
		}
		return n
	}
	page := os.Getpagesize()
	for _, gid := range []uint32{1, 2, MaxGroups - 1} {
		e.setGroup(gid, 1, 0, flowDis, hour)
	}
	if got, most := mapped(), 3*3*page; got == 0 || got > most {
		t.Fatalf("%d bytes of BPF maps mapped for 3 groups, want 1 to %d", got, most)
	}
	for _, gid := range []uint32{1, 2} {
		if err := e.d.ClearGroup(gid); err != nil {
			t.Fatal(err)
		}
	}
	if got, most := mapped(), 3*page; got == 0 || got > most {
		t.Errorf("%d bytes of BPF maps mapped for 1 group, want 1 to %d", got, most)
	}
	// The last group still steers by its element.
	st, err := e.d.groups.state(MaxGroups - 1)
	if err != nil || st>>32 != 1 {
		t.Errorf("state of group %d = %#x, %v; want generation 1", MaxGroups-1, st, err)
	}
}
