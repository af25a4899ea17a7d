package main

import (
	"fmt"
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
)

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

// runCost measures every scenario at every number of live flows.
func runCost(cfg costConfig, tx *rawSender, logf func(string, ...any)) ([]costRow, error) {
	var rows []costRow
	for _, live := range cfg.lives {
		r, err := costAt(cfg, live, tx, logf)
		if err != nil {
			return nil, fmt.Errorf("%d live flows: %w", live, err)
		}
		rows = append(rows, r...)
	}
	r, err := costEmpty(cfg, tx)
	if err != nil {
		return nil, fmt.Errorf("calibration: %w", err)
	}
	return append(rows, r), nil
}

// costAt measures existing flows, new flows and noop with live flows in
// the table, in interleaved rounds.
func costAt(cfg costConfig, live int, tx *rawSender, logf func(string, ...any)) ([]costRow, error) {
	s, err := newSteered(cfg.maxFlows, 2, nil)
	if err != nil {
		return nil, err
	}
	defer s.close()
	prog, err := s.dp.Program(benchGroup)
	if err != nil {
		return nil, err
	}

	// The live flows: one datagram from each of clients [0, live).
	unseen0, err := s.counter("rx_flow_new_unseen")
	if err != nil {
		return nil, err
	}
	if _, _, err := measure(prog, live, func() error { return tx.sendRange(0, live, s.port) }); err != nil {
		return nil, err
	}
	if err := s.ft.checkFlowKey(benchGroup, live-1, s.port); err != nil {
		return nil, err
	}
	n, err := s.ft.count(benchGroup, s.port)
	if err != nil {
		return nil, err
	}
	if n != live {
		return nil, fmt.Errorf("flow table holds %d flows after %d clients sent", n, live)
	}
	unseen1, err := s.counter("rx_flow_new_unseen")
	if err != nil {
		return nil, err
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
	freshRound := 0
	scen := []scenario{
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
			before, err := s.counter(sc.row.counter)
			if err != nil {
				return nil, err
			}
			ns, runs, err := sc.run()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", sc.row.path, err)
			}
			after, err := s.counter(sc.row.counter)
			if err != nil {
				return nil, err
			}
			sc.row.ns = append(sc.row.ns, ns)
			sc.row.runs += runs
			sc.row.sent += uint64(sc.sent)
			sc.row.matched += after - before
		}
	}
	if n, err = s.ft.count(benchGroup, s.port); err != nil {
		return nil, err
	}
	if n != live {
		return nil, fmt.Errorf("flow table holds %d flows after the rounds, not %d", n, live)
	}
	rows := []costRow{existing, fresh, noop}
	if live > cfg.hot {
		rows = []costRow{existing, hot, fresh, noop}
	}
	return rows, nil
}

// costEmpty measures an SK_REUSEPORT program that only returns SK_PASS,
// attached the same way: the floor that the run-time statistics themselves
// (two clock reads around the program) and the program call add.
func costEmpty(cfg costConfig, tx *rawSender) (costRow, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "grmbench_empty",
		Type:       ebpf.SkReuseport,
		AttachType: ebpf.AttachSkReuseportSelect,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1), // SK_PASS
			asm.Return(),
		},
	})
	if err != nil {
		return costRow{}, fmt.Errorf("load empty program: %w", err)
	}
	defer prog.Close()
	srv, err := newServerGroup(2, nil)
	if err != nil {
		return costRow{}, err
	}
	defer closeServers(srv)
	if err := attachProgram(srv[0].fd, prog.FD()); err != nil {
		return costRow{}, err
	}
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
