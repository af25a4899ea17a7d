package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
)

// costConfig sizes the per-packet cost measurement.
type costConfig struct {
	lives    []int // live flows in the table
	rounds   int   // measured rounds per scenario, interleaved
	packets  int   // datagrams per round, existing flows and noop
	newFlows int   // datagrams (fresh flows) per round, new flows
	hot      int   // flows sending in the hot-subset scenario
	maxFlows uint32
}

// Scenario names, as the report shows them.
const (
	pathExisting    = "flow, existing flows"
	pathExistingHot = "flow, existing flows, only 1,000 of them sending"
	pathNew         = "flow, new flows"
	pathNoop        = "noop"
	pathEmpty       = "empty program (calibration)"
	pathTouch       = "one random entry of a table this size (calibration)"
	pathTouchNew    = "one entry of a table this size that no datagram touched before (calibration)"
	pathSelect      = "select one of two sockets by index and count it (calibration)"
)

// touchNewBase is the first synthetic client of the new-entry calibration:
// beyond every client the other scenarios use.
const touchNewBase = 10_000_000

// costRow is one measured scenario: ns per packet of every round.
type costRow struct {
	path    string
	live    int
	ns      []float64
	runs    uint64 // program runs counted over the rounds
	sent    uint64 // datagrams sent in the rounds
	counter string // the program counter that must match sent, and its delta
	matched uint64
}

// progStats reads a program's run-time statistics.
func progStats(p *ebpf.Program) (time.Duration, uint64, error) {
	st, err := p.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("program stats: %w", err)
	}
	return st.Runtime, st.RunCount, nil
}

// measure runs send and returns the program's ns per run and its runs
// over it. Loopback delivery normally finishes inside the send call; it
// waits (briefly) for runs still queued.
func measure(p *ebpf.Program, sent int, send func() error) (float64, uint64, error) {
	rt0, rc0, err := progStats(p)
	if err != nil {
		return 0, 0, err
	}
	if err := send(); err != nil {
		return 0, 0, err
	}
	var rt1 time.Duration
	var rc1 uint64
	deadline := time.Now().Add(time.Second)
	for {
		if rt1, rc1, err = progStats(p); err != nil {
			return 0, 0, err
		}
		if rc1-rc0 >= uint64(sent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	runs := rc1 - rc0
	if runs == 0 {
		return 0, 0, fmt.Errorf("the program did not run for %d datagrams", sent)
	}
	return float64(rt1-rt0) / float64(runs), runs, nil
}

const benchGroup = 1

// flowGroup is the state of the benchmark's group: two sockets in the
// working generation, flow timeout far beyond the run.
func flowGroup(d generations.Dissector, count uint32) generations.GroupState {
	return generations.GroupState{WorkingGen: 1, Count: count, Dissector: d, FlowTimeout: time.Hour}
}

// steered is a data plane with a group of server sockets registered in
// the working generation.
type steered struct {
	dp      *bpf.DataPlane
	ft      *flowTable
	srv     []*server
	cookies []uint64
	port    uint16
}

func newSteered(maxFlows uint32, sockets int, tagged func(idx int, tag uint64)) (*steered, error) {
	dp, err := bpf.Load(bpf.Options{MaxFlows: maxFlows})
	if err != nil {
		return nil, err
	}
	s := &steered{dp: dp}
	if s.ft, err = openFlowTable(dp); err != nil {
		s.close()
		return nil, err
	}
	if s.srv, err = newServerGroup(sockets, tagged); err != nil {
		s.close()
		return nil, err
	}
	s.port = s.srv[0].port
	if err := dp.SetGroup(benchGroup, flowGroup(generations.DissectorFlow, uint32(sockets))); err != nil {
		s.close()
		return nil, err
	}
	for k, sv := range s.srv {
		c, err := dp.AddSocket(benchGroup, 1, uint32(k), sv.file)
		if err != nil {
			s.close()
			return nil, err
		}
		s.cookies = append(s.cookies, c)
	}
	return s, nil
}

func (s *steered) setDissector(d generations.Dissector) error {
	return s.dp.SetGroup(benchGroup, flowGroup(d, uint32(len(s.srv))))
}

// counter reads one of the group's counters.
func (s *steered) counter(name string) (uint64, error) {
	c, err := s.dp.Counters(benchGroup)
	if err != nil {
		return 0, err
	}
	v, ok := c[name]
	if !ok {
		return 0, fmt.Errorf("no counter %s", name)
	}
	return v, nil
}

func (s *steered) close() {
	closeServers(s.srv)
	if s.ft != nil {
		s.ft.close()
	}
	s.dp.Close()
}

// runCost measures every scenario at every number of live flows. It also
// returns the flow table's size in entries.
func runCost(cfg costConfig, tx *rawSender, logf func(string, ...any)) ([]costRow, uint32, error) {
	var (
		rows    []costRow
		entries uint32
	)
	for _, live := range cfg.lives {
		r, n, err := costAt(cfg, live, tx, logf)
		if err != nil {
			return nil, 0, fmt.Errorf("%d live flows: %w", live, err)
		}
		rows, entries = append(rows, r...), n
	}
	r, err := costEmpty(cfg, tx)
	if err != nil {
		return nil, 0, fmt.Errorf("calibration: %w", err)
	}
	return append(rows, r), entries, nil
}

// costAt measures existing flows, new flows and noop with live flows in
// the table, in interleaved rounds.
func costAt(cfg costConfig, live int, tx *rawSender, logf func(string, ...any)) ([]costRow, uint32, error) {
	s, err := newSteered(cfg.maxFlows, 2, nil)
	if err != nil {
		return nil, 0, err
	}
	defer s.close()
	prog, err := s.dp.Program(benchGroup)
	if err != nil {
		return nil, 0, err
	}

	// The live flows: one datagram from each of clients [0, live).
	unseen0, err := s.counter("rx_flow_new_unseen")
	if err != nil {
		return nil, 0, err
	}
	if _, _, err := measure(prog, live, func() error { return tx.sendRange(0, live, s.port) }); err != nil {
		return nil, 0, err
	}
	if err := s.ft.checkFlowKey(benchGroup, live-1, s.port); err != nil {
		return nil, 0, err
	}
	n, err := s.ft.count(benchGroup, s.port)
	if err != nil {
		return nil, 0, err
	}
	if n != live {
		return nil, 0, fmt.Errorf("flow table holds %d flows after %d clients sent", n, live)
	}
	unseen1, err := s.counter("rx_flow_new_unseen")
	if err != nil {
		return nil, 0, err
	}
	logf("  %d live flows: table holds %d entries (%d new-flow datagrams counted)", live, n, unseen1-unseen0)

	existing := costRow{path: pathExisting, live: live, counter: "rx_flow_ok"}
	hot := costRow{path: pathExistingHot, live: live, counter: "rx_flow_ok"}
	fresh := costRow{path: pathNew, live: live, counter: "rx_flow_new_unseen"}
	noop := costRow{path: pathNoop, live: live, counter: "rx_noop_total"}
	type scenario struct {
		row  *costRow
		run  func() (float64, uint64, error)
		sent int
	}
	cycle := func(n int) func() (float64, uint64, error) {
		return func() (float64, uint64, error) {
			return measure(prog, cfg.packets, func() error { return tx.sendCycle(0, n, cfg.packets, s.port) })
		}
	}
	// The memory floor: a program that reads and writes one 64-byte
	// element, picked by the packet's hash, of an array as large as the
	// flow table; the same clients cycle through it.
	touch := costRow{path: pathTouch, live: live}
	tp, err := newTouchProgram(s.dp.FlowTableSize())
	if err != nil {
		return nil, 0, err
	}
	defer tp.close()

	touchNew := costRow{path: pathTouchNew, live: live}
	// The floor of noop: select a socket and count the datagram, nothing
	// else, over the same clients.
	sel := costRow{path: pathSelect, live: live}
	sp, err := newSelectProgram()
	if err != nil {
		return nil, 0, err
	}
	defer sp.close()
	freshRound, touchNewRound := 0, 0
	scen := []scenario{
		{&touch, func() (float64, uint64, error) {
			return measure(tp.prog, cfg.packets, func() error { return tx.sendCycle(0, live, cfg.packets, tp.port) })
		}, cfg.packets},
		{&existing, cycle(live), cfg.packets},
		// New flows come from clients never seen before, newFlows more
		// each round; their flows are expired after the round (their
		// entries are reused by the next round's new flows), so that the
		// table holds `live` live flows again.
		{&fresh, func() (float64, uint64, error) {
			from := live + freshRound*cfg.newFlows
			freshRound++
			ns, runs, err := measure(prog, cfg.newFlows, func() error { return tx.sendRange(from, from+cfg.newFlows, s.port) })
			if err != nil {
				return 0, 0, err
			}
			return ns, runs, s.ft.expireRange(benchGroup, from, from+cfg.newFlows, s.port)
		}, cfg.newFlows},
		// The floor of new flows: the same program and array, sent as
		// many never-seen clients as the new-flows scenario.
		{&touchNew, func() (float64, uint64, error) {
			from := touchNewBase + touchNewRound*cfg.newFlows
			touchNewRound++
			return measure(tp.prog, cfg.newFlows, func() error { return tx.sendRange(from, from+cfg.newFlows, tp.port) })
		}, cfg.newFlows},
		{&sel, func() (float64, uint64, error) {
			return measure(sp.prog, cfg.packets, func() error { return tx.sendCycle(0, live, cfg.packets, sp.port) })
		}, cfg.packets},
		{&noop, func() (float64, uint64, error) {
			if err := s.setDissector(generations.DissectorNoop); err != nil {
				return 0, 0, err
			}
			ns, runs, err := cycle(live)()
			if err != nil {
				return 0, 0, err
			}
			return ns, runs, s.setDissector(generations.DissectorFlow)
		}, cfg.packets},
	}
	// With many live flows, also traffic from a few of them only: the
	// table is as large, but few of its entries are in use.
	if live > cfg.hot {
		scen = append(scen, scenario{&hot, cycle(cfg.hot), cfg.packets})
	}
	for r := range cfg.rounds {
		// Rotate the order so that no scenario always follows another.
		for k := range scen {
			sc := scen[(k+r)%len(scen)]
			count := func() (uint64, error) {
				if sc.row.counter == "" {
					return 0, nil // a calibration: no steering counter
				}
				return s.counter(sc.row.counter)
			}
			before, err := count()
			if err != nil {
				return nil, 0, err
			}
			ns, runs, err := sc.run()
			if err != nil {
				return nil, 0, fmt.Errorf("%s: %w", sc.row.path, err)
			}
			after, err := count()
			if err != nil {
				return nil, 0, err
			}
			sc.row.ns = append(sc.row.ns, ns)
			sc.row.runs += runs
			sc.row.sent += uint64(sc.sent)
			sc.row.matched += after - before
		}
	}
	// The floor must have done its work: a selection for every datagram.
	if n, err := sp.selected(); err != nil {
		return nil, 0, err
	} else if n != sel.sent {
		return nil, 0, fmt.Errorf("select floor: %d of %d datagrams selected a socket", n, sel.sent)
	}
	if n, err = s.ft.count(benchGroup, s.port); err != nil {
		return nil, 0, err
	}
	if n != live {
		return nil, 0, fmt.Errorf("flow table holds %d flows after the rounds, not %d", n, live)
	}
	rows := []costRow{existing, fresh, noop}
	if live > cfg.hot {
		rows = []costRow{existing, hot, fresh, noop}
	}
	return append(rows, touch, touchNew, sel), s.dp.FlowTableSize(), nil
}

// costEmpty measures an SK_REUSEPORT program that only returns SK_PASS,
// attached the same way: the floor that the run-time statistics themselves
// (two clock reads around the program) and the program call add.
func costEmpty(cfg costConfig, tx *rawSender) (costRow, error) {
	prog, srv, err := newCalibration("grmbench_empty", passOut())
	if err != nil {
		return costRow{}, err
	}
	defer prog.Close()
	defer closeServers(srv)
	row := costRow{path: pathEmpty, live: 0}
	for range cfg.rounds {
		ns, runs, err := measure(prog, cfg.packets, func() error { return tx.sendCycle(0, 1000, cfg.packets, srv[0].port) })
		if err != nil {
			return costRow{}, err
		}
		row.ns = append(row.ns, ns)
		row.runs += runs
		row.sent += uint64(cfg.packets)
	}
	return row, nil
}

// touchProgram is an SK_REUSEPORT program that reads and writes the
// element hash & (entries-1) of an array of 64-byte elements, attached to
// a group of two sockets of its own: what one access to a random flow
// entry costs on this machine, with nothing else.
type touchProgram struct {
	prog *ebpf.Program
	arr  *ebpf.Map
	srv  []*server
	port uint16
}

func newTouchProgram(entries uint32) (*touchProgram, error) {
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Name: "grmbench_touch", Type: ebpf.Array, KeySize: 4, ValueSize: 64, MaxEntries: entries})
	if err != nil {
		return nil, fmt.Errorf("touch array: %w", err)
	}
	prog, srv, err := newCalibration("grmbench_touch", slices.Concat(asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, mdHashOff, asm.Word),
		asm.And.Imm32(asm.R2, int32(entries-1)),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
	}, bumpElem(arr, -4), passOut()))
	if err != nil {
		arr.Close()
		return nil, err
	}
	return &touchProgram{prog: prog, arr: arr, srv: srv, port: srv[0].port}, nil
}

func (t *touchProgram) close() {
	closeServers(t.srv)
	t.prog.Close()
	t.arr.Close()
}

// mdHashOff is offsetof(struct sk_reuseport_md, hash).
const mdHashOff = 32

// newCalibration loads insns as an SK_REUSEPORT program and attaches it
// to a group of two sockets of its own.
func newCalibration(name string, insns asm.Instructions) (*ebpf.Program, []*server, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.SkReuseport,
		AttachType:   ebpf.AttachSkReuseportSelect,
		License:      "Dual BSD/GPL",
		Instructions: insns,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", name, err)
	}
	srv, err := newServerGroup(2, nil)
	if err != nil {
		prog.Close()
		return nil, nil, err
	}
	if err := attachProgram(srv[0].fd, prog.FD()); err != nil {
		closeServers(srv)
		prog.Close()
		return nil, nil, err
	}
	return prog, srv, nil
}

// bumpElem looks up the element of m whose key is at the frame pointer +
// keyOff and adds one to its first 8 bytes (an empty lookup jumps to
// "out").
func bumpElem(m *ebpf.Map, keyOff int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	}
}

// passOut ends a program with SK_PASS at label "out".
func passOut() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), // SK_PASS
		asm.Return(),
	}
}

// selectProgram is an SK_REUSEPORT program that selects socket hash & 1
// of a REUSEPORT_SOCKARRAY of its group's two sockets and counts the
// datagram in a per-CPU array: the least a noop steering program does.
type selectProgram struct {
	prog  *ebpf.Program
	socks *ebpf.Map
	count *ebpf.Map
	srv   []*server
	port  uint16
}

func newSelectProgram() (*selectProgram, error) {
	p := &selectProgram{}
	var err error
	if p.socks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "grmbench_socks", Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: 2}); err != nil {
		return nil, fmt.Errorf("select floor sockets: %w", err)
	}
	if p.count, err = ebpf.NewMap(&ebpf.MapSpec{Name: "grmbench_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1}); err != nil {
		p.close()
		return nil, fmt.Errorf("select floor counter: %w", err)
	}
	if p.prog, p.srv, err = newCalibration("grmbench_select", slices.Concat(asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, mdHashOff, asm.Word),
		asm.And.Imm32(asm.R2, 1),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R2, p.socks.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -4),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
		asm.JNE.Imm(asm.R0, 0, "out"),
		asm.StoreImm(asm.RFP, -8, 0, asm.Word),
	}, bumpElem(p.count, -8), passOut())); err != nil {
		p.close()
		return nil, err
	}
	p.port = p.srv[0].port
	for i, s := range p.srv {
		if err := p.socks.Update(uint32(i), uint64(s.fd), ebpf.UpdateAny); err != nil {
			p.close()
			return nil, fmt.Errorf("select floor socket %d: %w", i, err)
		}
	}
	return p, nil
}

// selected is how many datagrams the program selected a socket for.
func (p *selectProgram) selected() (uint64, error) {
	var per []uint64
	if err := p.count.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("select floor counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

func (p *selectProgram) close() {
	closeServers(p.srv)
	if p.prog != nil {
		p.prog.Close()
	}
	if p.count != nil {
		p.count.Close()
	}
	if p.socks != nil {
		p.socks.Close()
	}
}
