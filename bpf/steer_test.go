package bpf

import (
	"bufio"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/nstest"
)

// Integration tests of the steering program with real sockets. Each
// top-level test runs in its own network, mount and PID namespace.

// flipScenario runs the core of an upgrade on group gid: two generations
// of n sockets on listen, generation 1 working; flows clients (sent round
// robin to dsts, whose ports are replaced by the group's) land on
// generation 1 and spread over it; after the flip to generation 2 every old
// flow stays on its exact socket and new flows land on generation 2 only,
// spread over all its sockets. Counters and flow counts are checked
// exactly. It returns every client.
func flipScenario(t *testing.T, e *env, gid uint32, listen netip.AddrPort, dsts []netip.AddrPort, n, flows int) []*client {
	t.Helper()
	gen1 := e.addGen(gid, 1, n, listen)
	port := gen1[0].addr.Port()
	gen2 := e.addGen(gid, 2, n, withPort(listen, port))
	e.setGroup(gid, 1, n, flowDis, hour)
	open := func() []*client {
		var cls []*client
		for i := range flows {
			cls = append(cls, e.clients(1, withPort(dsts[i%len(dsts)], port))...)
		}
		return cls
	}

	old := open()
	got := e.roundtrip(old, 1)
	wantAllIn(t, "flows while generation 1 works", got, gen1, true)
	before := make(map[*client]*server, len(old))
	for c, ss := range got {
		before[c] = sole(t, c, ss)
	}

	e.setGroup(gid, 2, n, flowDis, hour)
	got = e.roundtrip(old, 2)
	moved := 0
	for c, ss := range got {
		if s := sole(t, c, ss); s != before[c] {
			moved++
			if moved <= 5 {
				t.Errorf("flow %d (%s) moved from %s to %s across the flip", c.id, c.local, before[c], s)
			}
		}
	}
	if moved > 0 {
		t.Errorf("%d of %d old flows left their socket across the flip", moved, len(old))
	}

	fresh := open()
	got = e.roundtrip(fresh, 2)
	wantAllIn(t, "new flows after the flip", got, gen2, true)

	f := uint64(flows)
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  5 * f, // 1 + 2 per old flow, 2 per new flow
		"rx_dissected_ok_total":               5 * f,
		"rx_flow_new_unseen":                  2 * f,
		"rx_new_flow_total":                   2 * f,
		"rx_new_flow_working_gen_dispatch_ok": 2 * f,
		"rx_flow_ok":                          3 * f,
	})
	e.wantCounters(0, nil)
	e.wantFlowCounts(gid, hour, map[uint32]int{1: flows, 2: flows})
	return append(old, fresh...)
}

// TestFlipKeepsFlows: generations 1 and 2 of 4 sockets; 200 flows on
// generation 1 stay on their exact sockets after the flip, 200 new flows
// land on generation 2 and reach each of its sockets.
func TestFlipKeepsFlows(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	flipScenario(t, e, 1, lo4, []netip.AddrPort{lo4}, 4, 200)
}

// TestClosedSocketFlowsMove: after the flip, a generation-1 socket closes;
// its flows move to generation 2 (and stay there), the other old flows keep
// their sockets, nothing is lost, and rx_flow_socket_gone counts exactly
// the moved flows once each.
func TestClosedSocketFlowsMove(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, flows = 1, 4, 200
	gen1 := e.addGen(gid, 1, n, lo4)
	port := gen1[0].addr.Port()
	gen2 := e.addGen(gid, 2, n, withPort(lo4, port))
	e.setGroup(gid, 1, n, flowDis, hour)

	old := e.clients(flows, withPort(lo4, port))
	got := e.roundtrip(old, 1)
	wantAllIn(t, "before the flip", got, gen1, true)
	before := make(map[*client]*server)
	for c, ss := range got {
		before[c] = sole(t, c, ss)
	}
	e.setGroup(gid, 2, n, flowDis, hour)

	victim := gen1[0]
	var orphans []*client
	for c, s := range before {
		if s == victim {
			orphans = append(orphans, c)
		}
	}
	if len(orphans) == 0 {
		t.Fatalf("no flow on %s", victim)
	}
	e.close(victim)
	if e.d.Alive(victim.cookie) {
		t.Errorf("Alive(%s) after close", victim)
	}
	if !e.d.Alive(gen1[1].cookie) {
		t.Errorf("Alive(%s) false for an open socket", gen1[1])
	}

	got = e.roundtrip(old, 2)
	for c, ss := range got {
		s := sole(t, c, ss)
		if before[c] == victim {
			if !slices.Contains(gen2, s) {
				t.Errorf("orphaned flow %d landed on %s, want generation 2", c.id, s)
			}
		} else if s != before[c] {
			t.Errorf("flow %d moved from %s to %s although its socket is open", c.id, before[c], s)
		}
	}
	k := uint64(len(orphans))
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  3 * flows,
		"rx_dissected_ok_total":               3 * flows,
		"rx_flow_new_unseen":                  flows,
		"rx_flow_socket_gone":                 k,
		"rx_flow_ok":                          2*flows - k,
		"rx_new_flow_total":                   flows + k,
		"rx_new_flow_working_gen_dispatch_ok": flows + k,
	})
	e.wantFlowCounts(gid, hour, map[uint32]int{1: flows - len(orphans), 2: len(orphans)})
}

// TestNoopDissector: a noop group keeps no flows: every packet goes to the
// working generation, so the flip moves even old flows.
func TestNoopDissector(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, flows = 1, 2, 50
	gen1 := e.addGen(gid, 1, n, lo4)
	port := gen1[0].addr.Port()
	gen2 := e.addGen(gid, 2, n, withPort(lo4, port))
	e.setGroup(gid, 1, n, noopDis, hour)

	cls := e.clients(flows, withPort(lo4, port))
	wantAllIn(t, "generation 1 working", e.roundtrip(cls, 2), gen1, true)
	e.setGroup(gid, 2, n, noopDis, hour)
	wantAllIn(t, "same flows, generation 2 working", e.roundtrip(cls, 2), gen2, true)

	const sent = flows * 4
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  sent,
		"rx_noop_total":                       sent,
		"rx_new_flow_total":                   sent,
		"rx_new_flow_working_gen_dispatch_ok": sent,
	})
	if n := e.flowEntries(); n != 0 {
		t.Errorf("noop group recorded %d flows", n)
	}
	e.wantFlowCounts(gid, hour, nil)
}

// TestManySockets: 256 sockets in one generation all get traffic from
// 256*24 flows (a socket misses out with odds of 256*e^-24), with no
// fallback.
func TestManySockets(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, flows = 1, 256, 256 * 24
	gen1 := e.addGen(gid, 1, n, lo4)
	e.setGroup(gid, 1, n, flowDis, hour)
	cls := e.clients(flows, withPort(lo4, gen1[0].addr.Port()))
	wantAllIn(t, "256 sockets", e.roundtrip(cls, 1), gen1, true)
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  flows,
		"rx_dissected_ok_total":               flows,
		"rx_flow_new_unseen":                  flows,
		"rx_new_flow_total":                   flows,
		"rx_new_flow_working_gen_dispatch_ok": flows,
	})
	e.wantFlowCounts(gid, hour, map[uint32]int{1: flows})
}

// TestFullFlowTable: with a flow table sized for 64 flows (128 entries),
// 1000 flows all land on the working generation (generation 1 sits in the
// group as a decoy), nothing is lost, the table fills and every flow
// beyond it evicts one (counted), and a second round (evicted flows take
// the new-flow path again) keeps every flow on the same socket.
func TestFullFlowTable(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	const maxFlows, gid, n, flows = 64, 1, 4, 1000
	e := newEnv(t, Options{MaxFlows: maxFlows})
	gen1 := e.addGen(gid, 1, n, lo4)
	port := gen1[0].addr.Port()
	gen2 := e.addGen(gid, 2, n, withPort(lo4, port))
	e.setGroup(gid, 2, n, flowDis, hour)

	cls := e.clients(flows, withPort(lo4, port))
	first := e.roundtrip(cls, 1)
	wantAllIn(t, "full table", first, gen2, true)
	size := int(e.d.FlowTableSize())
	if size != 2*maxFlows {
		t.Errorf("flow table of %d entries for %d flows, want %d (twice as many, a power of two)", size, maxFlows, 2*maxFlows)
	}
	if got := e.flowEntries(); got != size {
		t.Errorf("flow table holds %d entries after %d flows, want all %d used", got, flows, size)
	}
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  flows,
		"rx_dissected_ok_total":               flows,
		"rx_flow_new_unseen":                  flows,
		"rx_new_flow_total":                   flows,
		"rx_new_flow_working_gen_dispatch_ok": flows,
		"rx_flow_evicted":                     uint64(flows - size),
	})

	second := e.roundtrip(cls, 1)
	for _, c := range cls {
		if a, b := sole(t, c, first[c]), sole(t, c, second[c]); a != b {
			t.Errorf("flow %d: %s, then %s", c.id, a, b)
		}
	}
	ok, unseen := e.counter(gid, "rx_flow_ok"), e.counter(gid, "rx_flow_new_unseen")-flows
	if ok+unseen != flows || ok > uint64(size) {
		t.Errorf("second round: rx_flow_ok %d + new unseen %d, want %d with at most %d hits", ok, unseen, flows, size)
	}
	if got := e.counter(gid, "rx_flow_create_error"); got != 0 {
		t.Errorf("rx_flow_create_error = %d: a full table should evict, not fail", got)
	}
	if got := e.counter(gid, "rx_fallback_kernel"); got != 0 {
		t.Errorf("rx_fallback_kernel = %d", got)
	}
	if got := e.flowEntries(); got > size {
		t.Errorf("flow table holds %d entries, max %d", got, size)
	}
}

// TestCounterNamesMatchHeader: CounterNames is grm_counters of grmwrap.h,
// field by field, in order (no privileges needed).
func TestCounterNamesMatchHeader(t *testing.T) {
	f, err := os.Open("grmwrap.h")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	field := regexp.MustCompile(`^\s*__u64\s+(\w+);`)
	var want []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "struct grm_counters {"):
			in = true
		case in && strings.HasPrefix(line, "};"):
			in = false
		case in:
			if m := field.FindStringSubmatch(line); m != nil {
				want = append(want, m[1])
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("no counters found in grmwrap.h")
	}
	if got := CounterNames(); !slices.Equal(got, want) {
		t.Errorf("CounterNames() = %v\ngrmwrap.h declares %v", got, want)
	}
	// Names other tools rely on (udpgrm's where the meaning is the same).
	for _, n := range []string{"rx_processed_total", "rx_flow_ok", "rx_new_flow_total", "rx_new_flow_working_gen_dispatch_ok", "rx_fallback_kernel"} {
		if !slices.Contains(want, n) {
			t.Errorf("counter %s missing", n)
		}
	}
}

// TestCountersExact: the counters of a flow group and of a noop group equal
// the datagrams sent, branch by branch, and add up.
func TestCountersExact(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const fg, ng = 3, 9 // a flow group and a noop group

	f1 := e.addGen(fg, 1, 3, lo4)
	port := f1[0].addr.Port()
	e.addGen(fg, 2, 3, withPort(lo4, port))
	e.setGroup(fg, 1, 3, flowDis, hour)
	n1 := e.addGen(ng, 1, 2, lo6)
	e.setGroup(ng, 1, 2, noopDis, hour)

	sent := map[uint32]uint64{}
	send := func(gid uint32, cls []*client, per int) {
		e.roundtrip(cls, per)
		sent[gid] += uint64(len(cls) * per)
	}
	old := e.clients(30, withPort(lo4, port))
	send(fg, old, 3)
	e.setGroup(fg, 2, 3, flowDis, hour)
	fresh := e.clients(20, withPort(lo4, port))
	send(fg, fresh, 2)
	send(fg, old, 1)
	send(ng, e.clients(10, withPort(lo6, n1[0].addr.Port())), 2)

	// Flow group: 50 new flows (first datagram each), the rest hit.
	e.wantCounters(fg, map[string]uint64{
		"rx_processed_total":                  30*3 + 20*2 + 30,
		"rx_dissected_ok_total":               30*3 + 20*2 + 30,
		"rx_flow_new_unseen":                  50,
		"rx_new_flow_total":                   50,
		"rx_new_flow_working_gen_dispatch_ok": 50,
		"rx_flow_ok":                          30*2 + 20 + 30,
	})
	e.wantCounters(ng, map[string]uint64{
		"rx_processed_total":                  20,
		"rx_noop_total":                       20,
		"rx_new_flow_total":                   20,
		"rx_new_flow_working_gen_dispatch_ok": 20,
	})
	e.wantCounters(0, nil)

	// The relations, from the datagrams the test counted itself.
	for _, gid := range []uint32{fg, ng} {
		c, err := e.d.Counters(gid)
		if err != nil {
			t.Fatal(err)
		}
		if c["rx_processed_total"] != sent[gid] {
			t.Errorf("group %d: rx_processed_total %d, sent %d", gid, c["rx_processed_total"], sent[gid])
		}
		if c["rx_new_flow_working_gen_dispatch_ok"] != c["rx_new_flow_total"] {
			t.Errorf("group %d: dispatch_ok %d != new_flow_total %d", gid, c["rx_new_flow_working_gen_dispatch_ok"], c["rx_new_flow_total"])
		}
	}
	c, _ := e.d.Counters(fg)
	if c["rx_flow_ok"]+c["rx_new_flow_total"] != c["rx_processed_total"] {
		t.Errorf("flow group: flow_ok %d + new_flow_total %d != processed %d", c["rx_flow_ok"], c["rx_new_flow_total"], c["rx_processed_total"])
	}

	// Counters of a cleared group start again from zero; the other group
	// keeps its own.
	if err := e.d.ClearGroup(ng); err != nil {
		t.Fatal(err)
	}
	e.wantCounters(ng, nil)
	if got := e.counter(fg, "rx_processed_total"); got != sent[fg] {
		t.Errorf("ClearGroup(%d) touched group %d: processed %d", ng, fg, got)
	}
}

// TestIPv6Group: the flip scenario on an AF_INET6 group on [::1].
func TestIPv6Group(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	flipScenario(t, e, 1, lo6, []netip.AddrPort{lo6}, 4, 100)
}

// TestDualStack: a dual-stack [::] group with IPv4 and IPv6 clients keeps
// the flows of both families sticky across the flip, and the flow table
// holds IPv4 flows v4-mapped, with their exact 4-tuple.
func TestDualStack(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid = 1
	cls := flipScenario(t, e, gid, any6, []netip.AddrPort{lo4, lo6}, 2, 100)

	want := make(map[[2]netip.AddrPort]bool)
	v4 := 0
	for _, c := range cls {
		remote, local := c.local, c.remote
		if remote.Addr().Is4() {
			v4++
			remote = netip.AddrPortFrom(netip.AddrFrom16(remote.Addr().As16()), remote.Port())
			local = netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port())
		}
		want[[2]netip.AddrPort{remote, local}] = true
	}
	if v4 != len(cls)/2 {
		t.Fatalf("%d of %d clients are IPv4", v4, len(cls))
	}
	table := e.flowTable(gid)
	if len(table) != len(want) {
		t.Errorf("flow table has %d flows of group %d, want %d", len(table), gid, len(want))
	}
	for _, f := range table {
		if !want[[2]netip.AddrPort{f.remote, f.local}] {
			t.Errorf("unexpected flow key %s -> %s", f.remote, f.local)
		}
	}
}

// TestGroupIdentity: one port on 127.0.0.1, 127.0.0.2 and [::1] makes three
// groups; flipping one leaves the others' new flows, counters and flows
// alone.
func TestGroupIdentity(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const n, flows = 2, 30
	type grp struct {
		gid        uint32
		addr       netip.AddrPort
		gen1, gen2 []*server
		old        []*client
		before     map[*client]*server
	}
	groups := []*grp{{gid: 1, addr: lo4}, {gid: 2, addr: lo4b}, {gid: 3, addr: lo6}}
	var port uint16 // group 1's first socket picks the port of all three
	for _, g := range groups {
		g.gen1 = e.addGen(g.gid, 1, n, withPort(g.addr, port))
		port = g.gen1[0].addr.Port()
		g.addr = g.gen1[0].addr
		g.gen2 = e.addGen(g.gid, 2, n, g.addr)
		e.setGroup(g.gid, 1, n, flowDis, hour)
	}
	for _, g := range groups {
		g.old = e.clients(flows, g.addr)
		got := e.roundtrip(g.old, 1)
		wantAllIn(t, g.addr.String()+" before the flip", got, g.gen1, true)
		g.before = make(map[*client]*server)
		for c, ss := range got {
			g.before[c] = sole(t, c, ss)
		}
	}

	e.setGroup(1, 2, n, flowDis, hour) // only group 1

	for _, g := range groups {
		for c, ss := range e.roundtrip(g.old, 1) {
			if s := sole(t, c, ss); s != g.before[c] {
				t.Errorf("%s: flow %d moved from %s to %s", g.addr, c.id, g.before[c], s)
			}
		}
		working := g.gen1
		if g.gid == 1 {
			working = g.gen2
		}
		wantAllIn(t, g.addr.String()+" new flows after group 1's flip", e.roundtrip(e.clients(flows, g.addr), 1), working, true)
		e.wantCounters(g.gid, map[string]uint64{
			"rx_processed_total":                  3 * flows,
			"rx_dissected_ok_total":               3 * flows,
			"rx_flow_new_unseen":                  2 * flows,
			"rx_new_flow_total":                   2 * flows,
			"rx_new_flow_working_gen_dispatch_ok": 2 * flows,
			"rx_flow_ok":                          flows,
		})
	}
	e.wantFlowCounts(1, hour, map[uint32]int{1: flows, 2: flows})
	e.wantFlowCounts(2, hour, map[uint32]int{1: 2 * flows})
	e.wantFlowCounts(3, hour, map[uint32]int{1: 2 * flows})
	e.wantCounters(0, nil)
}

// TestBadInput: wrong or missing steering state never loses a datagram and
// is counted.
func TestBadInput(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})

	t.Run("no working socket", func(t *testing.T) {
		// Generation 1 serves 20 flows; generation 2 becomes working
		// with no socket at all (Count 0).
		const gid, flows = 1, 20
		gen1 := e.addGen(gid, 1, 2, lo4)
		dst := gen1[0].addr
		e.setGroup(gid, 1, 2, flowDis, hour)
		old := e.clients(flows, dst)
		before := e.roundtrip(old, 1)
		e.setGroup(gid, 2, 0, flowDis, hour)
		for c, ss := range e.roundtrip(old, 1) {
			if a, b := sole(t, c, before[c]), sole(t, c, ss); a != b {
				t.Errorf("flow %d moved from %s to %s", c.id, a, b)
			}
		}
		wantAllIn(t, "kernel fallback", e.roundtrip(e.clients(flows, dst), 1), gen1, false)
		e.wantCounters(gid, map[string]uint64{
			"rx_processed_total":                  3 * flows,
			"rx_dissected_ok_total":               3 * flows,
			"rx_flow_new_unseen":                  2 * flows,
			"rx_new_flow_total":                   2 * flows,
			"rx_new_flow_working_gen_dispatch_ok": flows,
			"rx_flow_ok":                          flows,
			"rx_no_working_socket":                flows,
			"rx_fallback_kernel":                  flows,
		})
		e.wantFlowCounts(gid, hour, map[uint32]int{1: flows}) // fallbacks record no flow
	})

	t.Run("count beyond slots", func(t *testing.T) {
		// Working generation 3 claims 2 sockets but has no slot.
		const gid, flows = 2, 20
		gen1 := e.addGen(gid, 1, 2, lo4)
		e.setGroup(gid, 3, 2, flowDis, hour)
		wantAllIn(t, "kernel fallback", e.roundtrip(e.clients(flows, gen1[0].addr), 1), gen1, false)
		e.wantCounters(gid, map[string]uint64{
			"rx_processed_total":                     flows,
			"rx_dissected_ok_total":                  flows,
			"rx_flow_new_unseen":                     flows,
			"rx_new_flow_total":                      flows,
			"rx_new_flow_working_gen_dispatch_error": flows,
			"rx_fallback_kernel":                     flows,
		})
	})

	t.Run("slot of another group", func(t *testing.T) {
		// Group 3 on 127.0.0.1:P, group 4 on 127.0.0.2:P; group 3's
		// slot 0 points at group 4's socket.
		const ga, gb, flows = 3, 4, 20
		a := e.addGen(ga, 1, 2, lo4)
		port := a[0].addr.Port()
		b := e.addGen(gb, 1, 1, withPort(lo4b, port))
		e.setGroup(gb, 1, 1, flowDis, hour)
		if err := e.d.SetSlot(ga, 1, 0, b[0].cookie); err != nil {
			t.Fatal(err)
		}
		e.setGroup(ga, 1, 1, flowDis, hour)
		dst := a[0].addr
		wantAllIn(t, "wrong slot, count 1", e.roundtrip(e.clients(flows, dst), 1), a, false)
		e.wantCounters(ga, map[string]uint64{
			"rx_processed_total":                     flows,
			"rx_dissected_ok_total":                  flows,
			"rx_flow_new_unseen":                     flows,
			"rx_new_flow_total":                      flows,
			"rx_new_flow_working_gen_dispatch_error": flows,
			"rx_fallback_kernel":                     flows,
		})
		e.wantFlowCounts(ga, hour, nil)

		// With a good slot 1 next to it, the one retry finds it: every
		// new flow lands on a[1].
		e.setGroup(ga, 1, 2, flowDis, hour) // slot 1 is a[1] already
		wantAllIn(t, "wrong slot 0, good slot 1", e.roundtrip(e.clients(flows, dst), 1), a[1:], true)
		if got := e.counter(ga, "rx_new_flow_working_gen_dispatch_ok"); got != flows {
			t.Errorf("dispatch_ok = %d, want %d", got, flows)
		}
		e.wantCounters(gb, nil)
	})

	t.Run("flow socket gone", func(t *testing.T) {
		const gid, flows = 6, 40
		s := e.addGen(gid, 1, 2, lo4)
		dst := s[0].addr
		e.setGroup(gid, 1, 2, flowDis, hour)
		old := e.clients(flows, dst)
		k := uint64(perSocket(t, e.roundtrip(old, 1))[s[0]])
		if k == 0 {
			t.Fatalf("no flow on %s", s[0])
		}
		e.close(s[0])
		// Slot 0 still names the closed socket: new flows hashed to it
		// take the retry to slot 1.
		wantAllIn(t, "new flows with a dead slot", e.roundtrip(e.clients(flows, dst), 1), s[1:], true)
		// Repack as Steering does: move the last socket into the hole,
		// shrink the count, empty the last slot.
		if err := e.d.SetSlot(gid, 1, 0, s[1].cookie); err != nil {
			t.Fatal(err)
		}
		e.setGroup(gid, 1, 1, flowDis, hour)
		if err := e.d.DeleteSlot(gid, 1, 1); err != nil {
			t.Fatal(err)
		}
		wantAllIn(t, "old flows after the close", e.roundtrip(old, 2), s[1:], true)
		e.wantCounters(gid, map[string]uint64{
			"rx_processed_total":                  4 * flows,
			"rx_dissected_ok_total":               4 * flows,
			"rx_flow_new_unseen":                  2 * flows,
			"rx_flow_socket_gone":                 k,
			"rx_flow_ok":                          2*flows - k,
			"rx_new_flow_total":                   2*flows + k,
			"rx_new_flow_working_gen_dispatch_ok": 2*flows + k,
		})
	})

	t.Run("socket taken out of the maps", func(t *testing.T) {
		// The group's program stays attached to the reuseport group, but
		// the socket left the maps: its slot selects nothing, the kernel
		// decides, and the group's counters say so.
		const gid, flows = 7, 10
		s := e.addGen(gid, 1, 1, lo4)
		e.setGroup(gid, 1, 1, flowDis, hour)
		e.d.RemoveSocket(s[0].cookie)
		e.d.RemoveSocket(s[0].cookie) // twice: a no-op
		if e.d.Alive(s[0].cookie) {
			t.Errorf("Alive after RemoveSocket")
		}
		wantAllIn(t, "socket out of the maps", e.roundtrip(e.clients(flows, s[0].addr), 1), s, true)
		e.wantCounters(gid, map[string]uint64{
			"rx_processed_total":                     flows,
			"rx_dissected_ok_total":                  flows,
			"rx_flow_new_unseen":                     flows,
			"rx_new_flow_total":                      flows,
			"rx_new_flow_working_gen_dispatch_error": flows,
			"rx_fallback_kernel":                     flows,
		})
		e.wantCounters(0, nil)
	})
}

// TestFlowWrongGroupCounted: a flow whose recorded socket sits in another
// reuseport group is counted as rx_flow_wrong_group (not as a gone socket)
// and takes the new-flow path. The flow entry is rewritten by the test,
// since the program itself only records sockets it could select.
//
// Known bug, this test fails until it is fixed: reuseport.c tells "another
// group" by err == -18 (EXDEV), but bpf_sk_select_reuseport returns -EBADFD
// (same family, other group), -EAFNOSUPPORT (other family) or -EPROTOTYPE
// (other protocol) there (net/core/filter.c, sk_select_reuseport), so
// rx_flow_wrong_group never counts and such flows count as
// rx_flow_socket_gone.
func TestFlowWrongGroupCounted(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const ga = 1
	a := e.addGen(ga, 1, 2, lo4)
	port := a[0].addr.Port()
	e.setGroup(ga, 1, 2, flowDis, hour)
	others := map[string]*server{
		"same family":  e.addGen(2, 1, 1, withPort(lo4b, port))[0],
		"other family": e.addGen(3, 1, 1, withPort(lo6, port))[0],
	}
	for _, name := range []string{"same family", "other family"} {
		other := others[name]
		t.Run(name, func(t *testing.T) {
			c := e.clients(1, a[0].addr)
			home := sole(t, c[0], e.roundtrip(c, 1)[c[0]])
			var hit *flowEntry
			for _, f := range e.flowTable(ga) {
				if f.remote.Port() == c[0].local.Port() {
					hit = &f
				}
			}
			if hit == nil {
				t.Fatalf("no flow entry for %s", c[0].local)
			}
			if err := e.d.PointFlow(hit.Pos, other.cookie); err != nil {
				t.Fatal(err)
			}
			wrong, gone := e.counter(ga, "rx_flow_wrong_group"), e.counter(ga, "rx_flow_socket_gone")
			if s := sole(t, c[0], e.roundtrip(c, 1)[c[0]]); s != home {
				t.Errorf("flow went to %s, want %s (its working-generation socket)", s, home)
			}
			if got := e.counter(ga, "rx_flow_wrong_group") - wrong; got != 1 {
				t.Errorf("rx_flow_wrong_group rose by %d, want 1", got)
			}
			if got := e.counter(ga, "rx_flow_socket_gone") - gone; got != 0 {
				t.Errorf("rx_flow_socket_gone rose by %d for a socket that is open (in another group)", got)
			}
		})
	}
	e.wantCounters(2, nil)
	e.wantCounters(3, nil)
}

// TestFlowCounts: FlowCounts reports the live flows of each generation of
// one group, exactly, and nothing older than its timeout.
func TestFlowCounts(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, oldFlows, newFlows = 1, 3, 37, 23
	gen1 := e.addGen(gid, 1, n, lo4)
	dst := gen1[0].addr
	e.addGen(gid, 2, n, dst)
	e.setGroup(gid, 1, n, flowDis, hour)
	e.wantFlowCounts(gid, hour, nil)

	old := e.clients(oldFlows, dst)
	e.roundtrip(old, 2)
	e.wantFlowCounts(gid, hour, map[uint32]int{1: oldFlows})
	e.setGroup(gid, 2, n, flowDis, hour)
	e.roundtrip(e.clients(newFlows, dst), 1)
	e.roundtrip(old, 1)
	e.wantFlowCounts(gid, hour, map[uint32]int{1: oldFlows, 2: newFlows})

	// Another group, generation 7.
	other := e.addGen(2, 7, 1, lo6)
	e.setGroup(2, 7, 1, flowDis, hour)
	e.roundtrip(e.clients(5, other[0].addr), 1)
	e.wantFlowCounts(2, hour, map[uint32]int{7: 5})
	e.wantFlowCounts(gid, hour, map[uint32]int{1: oldFlows, 2: newFlows})
	e.wantFlowCounts(3, hour, nil)

	// Nothing was seen in the last millisecond once 50ms have passed (the
	// last-seen time is refreshed at most once a second).
	time.Sleep(50 * time.Millisecond)
	e.wantFlowCounts(gid, time.Millisecond, nil)
	e.wantFlowCounts(gid, hour, map[uint32]int{1: oldFlows, 2: newFlows})
}

// TestFlowExpiry: a flow idle longer than the group's flow timeout is over:
// its next datagram goes to the working generation and is counted as
// rx_flow_new_had_expired.
func TestFlowExpiry(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	const gid, n, flows = 1, 2, 10
	gen1 := e.addGen(gid, 1, n, lo4)
	gen2 := e.addGen(gid, 2, n, gen1[0].addr)
	e.setGroup(gid, 1, n, flowDis, time.Second)
	cls := e.clients(flows, gen1[0].addr)
	wantAllIn(t, "generation 1", e.roundtrip(cls, 1), gen1, false)
	e.setGroup(gid, 2, n, flowDis, time.Second)
	time.Sleep(1500 * time.Millisecond)
	e.wantFlowCounts(gid, time.Second, nil)
	wantAllIn(t, "expired flows", e.roundtrip(cls, 1), gen2, false)
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  2 * flows,
		"rx_dissected_ok_total":               2 * flows,
		"rx_flow_new_unseen":                  flows,
		"rx_flow_new_had_expired":             flows,
		"rx_new_flow_total":                   2 * flows,
		"rx_new_flow_working_gen_dispatch_ok": 2 * flows,
	})
	e.wantFlowCounts(gid, hour, map[uint32]int{2: flows})
}

// TestFlowRefresh: a flow's last-seen time is written at most once per
// refresh interval, and a flow that keeps sending stays on its socket past
// the flow timeout when the refresh interval is shorter.
func TestFlowRefresh(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	seen := func(t *testing.T, refresh time.Duration) (before, after uint64) {
		e := newEnv(t, Options{Refresh: refresh})
		const gid = 1
		s := e.addGen(gid, 1, 1, lo4)
		e.setGroup(gid, 1, 1, flowDis, hour)
		c := e.clients(1, s[0].addr)
		e.roundtrip(c, 1)
		table := e.flowTable(gid)
		if len(table) != 1 {
			t.Fatalf("%d flows", len(table))
		}
		before = table[0].SeenNs
		time.Sleep(50 * time.Millisecond) // several ticks of the coarse clock
		e.roundtrip(c, 1)
		table = e.flowTable(gid)
		if len(table) != 1 {
			t.Fatalf("%d flows", len(table))
		}
		e.wantCounters(gid, map[string]uint64{
			"rx_processed_total":                  2,
			"rx_dissected_ok_total":               2,
			"rx_flow_new_unseen":                  1,
			"rx_new_flow_total":                   1,
			"rx_new_flow_working_gen_dispatch_ok": 1,
			"rx_flow_ok":                          1,
		})
		return before, table[0].SeenNs
	}
	t.Run("not within the interval", func(t *testing.T) {
		if a, b := seen(t, time.Hour); a != b {
			t.Errorf("last-seen written within the refresh interval: %d, then %d", a, b)
		}
	})
	t.Run("after the interval", func(t *testing.T) {
		if a, b := seen(t, time.Millisecond); b <= a {
			t.Errorf("last-seen not refreshed after the interval: %d, then %d", a, b)
		}
	})
	t.Run("active flows outlive the timeout", func(t *testing.T) {
		e := newEnv(t, Options{Refresh: 100 * time.Millisecond})
		const gid, n, flows, rounds = 2, 2, 10, 8
		gen1 := e.addGen(gid, 1, n, lo4)
		e.addGen(gid, 2, n, gen1[0].addr)
		e.setGroup(gid, 1, n, flowDis, time.Second)
		cls := e.clients(flows, gen1[0].addr)
		first := e.roundtrip(cls, 1)
		e.setGroup(gid, 2, n, flowDis, time.Second)
		// 8 rounds 200ms apart: 1.6s of activity, never 1s idle.
		for range rounds {
			time.Sleep(200 * time.Millisecond)
			for c, ss := range e.roundtrip(cls, 1) {
				if a, b := sole(t, c, first[c]), sole(t, c, ss); a != b {
					t.Fatalf("active flow %d moved from %s to %s", c.id, a, b)
				}
			}
		}
		if got := e.counter(gid, "rx_flow_new_had_expired"); got != 0 {
			t.Errorf("rx_flow_new_had_expired = %d for flows that never idled", got)
		}
		if got := e.counter(gid, "rx_flow_ok"); got != flows*rounds {
			t.Errorf("rx_flow_ok = %d, want %d", got, flows*rounds)
		}
	})
}

// TestAddSocketRejects: sockets that cannot be steered are refused and
// leave nothing behind; group ids out of range are refused.
func TestAddSocketRejects(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	e := newEnv(t, Options{})
	check := func(name string, fd int) {
		t.Helper()
		cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		if _, err := e.d.AddSocket(1, 1, 0, f); err == nil {
			t.Errorf("AddSocket(%s) succeeded", name)
		}
		if e.d.Alive(cookie) {
			t.Errorf("%s left in the sockhash", name)
		}
		var ref reuseportGrmSocketRef
		if err := e.d.objs.SocketGroups.Lookup(cookie, &ref); err == nil {
			t.Errorf("%s left in socket_groups (%+v)", name, ref)
		}
		if _, _, ok := e.d.SocketRef(cookie); ok {
			t.Errorf("%s has a socket index", name)
		}
		var g reuseportGrmGroup
		if err := e.d.objs.Groups.Lookup(uint32(1), &g); err != nil {
			t.Fatal(err)
		}
		for k, s := range g.Slots {
			if s != [banks]reuseportGrmSlot{} {
				t.Errorf("%s: slot %d of group 1 set to %+v", name, k, s)
			}
		}
	}
	unbound, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	check("unbound socket", unbound)
	plain, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(plain, sockaddr(lo4)); err != nil {
		t.Fatal(err)
	}
	check("socket without SO_REUSEPORT", plain)

	for _, gid := range []uint32{0, MaxGroups} {
		if err := e.d.SetGroup(gid, groupState(1, 1)); err == nil {
			t.Errorf("SetGroup(%d) succeeded", gid)
		}
	}
}
