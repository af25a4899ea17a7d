package main

import (
	"context"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/load"
)

// scaleConfig sizes the scale section.
type scaleConfig struct {
	grmwrap  string
	src      string
	flows    int // flows established before the upgrade
	newFlows int // flows opened after it
	sockets  int // sockets carrying each set of flows
	senders  int
	rate     float64 // datagrams/s of each pass
	maxFlows int     // --max-flows
}

// scaleResult is what the scale section found.
type scaleResult struct {
	wrappedCmd    string
	pid1, pid2    int
	passTime      [3]time.Duration // establish, after the upgrade, new flows (retries included)
	passRate      [3]float64       // achieved send rates of the first sends
	retried       [3]int           // flows sent again because their datagram went unanswered
	upgradeMS     float64
	established   int // flows that generation 1 answered before the upgrade
	firstOther    int // ... that another instance (or two) answered
	firstLost     int // ... that nobody answered, retries included
	same          int // established flows answered after the upgrade by the same instance only
	misrouted     int // ... by another instance
	secondLost    int // ... not answered after the upgrade, retries included
	newByGen2     int // new flows answered by generation 2 only
	newOther      int // ... by another instance
	newLost       int
	stray, dups   int
	sendErrors    int
	flowsGen      [2]int // live flows per generation in grmwrap status after the run
	counters      counters
	drops         string
	sharedSockets int
	nofile        uint64 // this process's RLIMIT_NOFILE (hard)
}

// answeredBy returns the first instance that answered a datagram of
// answers ("" for none) and how many distinct instances answered.
func answeredBy(answers []string) (string, int) {
	var seen []string
	for _, a := range answers {
		if a != "" && !slices.Contains(seen, a) {
			seen = append(seen, a)
		}
	}
	if len(seen) == 0 {
		return "", 0
	}
	return seen[0], len(seen)
}

// flowVerdict is what became of an established flow across the upgrade.
type flowVerdict int

const (
	flowNotEstablished flowVerdict = iota // nobody answered before the upgrade
	flowSplitBefore                       // two instances answered before the upgrade
	flowSame                              // after the upgrade only the instance of before answered
	flowMisrouted                         // after the upgrade another instance answered
	flowUnanswered                        // nobody answered after the upgrade
)

// judgeFlow classifies a flow whose first split datagrams were sent before
// the upgrade.
func judgeFlow(answers []string, split int) flowVerdict {
	split = min(split, len(answers))
	before, n := answeredBy(answers[:split])
	switch {
	case n == 0:
		return flowNotEstablished
	case n > 1:
		return flowSplitBefore
	}
	after, m := answeredBy(answers[split:])
	switch {
	case m == 0:
		return flowUnanswered
	case m > 1 || after != before:
		return flowMisrouted
	}
	return flowSame
}

// runScale establishes cfg.flows flows (one datagram each) with the wrapped
// echo server, upgrades it, sends again on every flow and opens
// cfg.newFlows new ones, and checks who answered each. A datagram that
// goes unanswered (the machine drops some) is sent again, twice at most,
// so that every flow is judged on an answer.
func runScale(cfg scaleConfig, logf func(string, ...any)) (scaleResult, error) {
	var res scaleResult
	dir, echo, err := buildInTemp("scale", cfg.src, "echo-c")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	const port = 7520
	sup, err := startSupervisor(cfg.grmwrap, dir, []string{"--name", "grmbench-scale", "--log-level", "warn",
		"--max-flows", strconv.Itoa(cfg.maxFlows), "--flow-timeout", "10m", "--drain-timeout", "10m",
		"--", echo, "--addr", "127.0.0.1", strconv.Itoa(port)}, 1)
	if err != nil {
		return res, err
	}
	defer sup.stop()
	res.wrappedCmd = sup.commandLine()
	st, err := sup.status()
	if err != nil {
		return res, err
	}
	c0 := st.Counters
	if res.pid1, err = st.genPid(st.Working); err != nil {
		return res, err
	}
	gen1 := strconv.Itoa(res.pid1)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	ctx := context.Background()
	u0 := load.UDPCounters()

	// pass sends one datagram on each of n flows of s, then again on the
	// flows nobody answered since from[i] datagrams (twice at most).
	pass := func(s *load.Session, k, n int, from []int) {
		t := time.Now()
		before := s.Result().SendSeconds
		s.Send(ctx, cfg.rate, n)
		if d := s.Result().SendSeconds - before; d > 0 {
			res.passRate[k] = float64(n) / d
		}
		for try := 0; ; try++ {
			if s.Settle(ctx, 2*time.Second) || try == 2 {
				break
			}
			var again []int
			for i := range n {
				if _, m := answeredBy(s.Answers(i)[from[i]:]); m == 0 {
					again = append(again, i)
				}
			}
			res.retried[k] += len(again)
			s.SendTo(ctx, cfg.rate, again)
		}
		res.passTime[k] = time.Since(t)
	}
	old, err := load.Open(load.Config{Addr: addr, Flows: cfg.flows, Sockets: cfg.sockets, Senders: cfg.senders})
	if err != nil {
		return res, err
	}
	defer old.Close()
	res.sharedSockets = cfg.sockets
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		res.nofile = lim.Max
	}
	pass(old, 0, cfg.flows, make([]int, cfg.flows))
	split := make([]int, cfg.flows)
	for i := range cfg.flows {
		a := old.Answers(i)
		split[i] = len(a)
		switch who, n := answeredBy(a); {
		case n == 1 && who == gen1:
			res.established++
		case n == 0:
			res.firstLost++
		default:
			res.firstOther++
		}
	}
	logf("  %d flows established with generation 1 in %s", res.established, res.passTime[0].Round(time.Millisecond))

	d, err := sup.upgrade()
	if err != nil {
		return res, err
	}
	res.upgradeMS = float64(d.Microseconds()) / 1000
	if st, err = sup.status(); err != nil {
		return res, err
	}
	if res.pid2, err = st.genPid(st.Working); err != nil {
		return res, err
	}
	gen2 := strconv.Itoa(res.pid2)

	pass(old, 1, cfg.flows, split)
	for i := range cfg.flows {
		switch judgeFlow(old.Answers(i), split[i]) {
		case flowSame:
			res.same++
		case flowMisrouted:
			res.misrouted++
		case flowUnanswered:
			res.secondLost++
		}
	}
	logf("  after the upgrade: %d same instance, %d misrouted, %d unanswered", res.same, res.misrouted, res.secondLost)

	fresh, err := load.Open(load.Config{Addr: addr, Flows: cfg.newFlows, Sockets: cfg.sockets, Senders: cfg.senders})
	if err != nil {
		return res, err
	}
	defer fresh.Close()
	pass(fresh, 2, cfg.newFlows, make([]int, cfg.newFlows))
	for i := range cfg.newFlows {
		switch who, n := answeredBy(fresh.Answers(i)); {
		case n == 1 && who == gen2:
			res.newByGen2++
		case n == 0:
			res.newLost++
		default:
			res.newOther++
		}
	}
	logf("  new flows: %d by generation 2, %d by another instance, %d unanswered", res.newByGen2, res.newOther, res.newLost)

	if st, err = sup.status(); err != nil {
		return res, err
	}
	res.counters = st.Counters.sub(c0)
	for k, g := range []uint32{1, 2} {
		if gs := st.gen(g); gs != nil {
			res.flowsGen[k] = gs.Flows
		}
	}
	res.drops = udpDrops(u0, load.UDPCounters())
	ro, rn := old.Close(), fresh.Close()
	res.stray, res.dups, res.sendErrors = ro.Stray+rn.Stray, ro.Dups+rn.Dups, ro.SendErrors+rn.SendErrors
	return res, nil
}

func (r *report) scaleSection(w func(string, ...any)) {
	s, c := r.scale, r.scaleCfg
	w("## %s concurrent flows across an upgrade\n\n", thousands(uint64(c.flows)))
	w("%s\n\n", r.sectionCmd("scale"))
	w("How: `%s` (the unmodified C echo server). A flow is a 4-tuple; this process may hold\n", s.wrappedCmd)
	w("%s descriptors (RLIMIT_NOFILE's hard limit, not raisable without CAP_SYS_RESOURCE), so the flows share %d\n", thousands(s.nofile), s.sharedSockets)
	w("UDP sockets bound to 0.0.0.0 (`internal/load` with `Sockets`): each flow sends from its own\n")
	w("address of 127.0.0.0/8 (`IP_PKTINFO`), and an answer counts for a flow only when it carries the\n")
	w("flow's number and arrived on the flow's socket, sent to the flow's address. Three passes, each one\n")
	w("datagram per flow at %s datagrams/s; a flow whose datagram has no answer 2 s after the pass\n", thousands(uint64(c.rate)))
	w("is sent one more, twice at most (this machine drops a few datagrams at full receive queues), so\n")
	w("that every flow is judged on an answer:\n")
	w("1. %s flows established: their first datagram, answered by generation 1;\n", thousands(uint64(c.flows)))
	w("2. `grmwrap upgrade PID`, then one more datagram on each of those flows: the instance that answers\n")
	w("   must be the one that answered the flow before (misrouted: another instance answered any of the\n")
	w("   flow's datagrams after the upgrade);\n")
	w("3. %s new flows (new sockets, so new 4-tuples): generation 2 must answer each.\n\n", thousands(uint64(c.newFlows)))
	w("`--flow-timeout` and `--drain-timeout` are 10 minutes, so generation 1 keeps its flows throughout.\n\n")
	w("| figure | value | target |\n|---|---|---|\n")
	w("| flows established with generation 1 (pid %d) | %s of %s (other instance or two instances: %d, unanswered: %d) | all |\n",
		s.pid1, thousands(uint64(s.established)), thousands(uint64(c.flows)), s.firstOther, s.firstLost)
	w("| `grmwrap upgrade` wall time (generation 2: pid %d) | %.1f ms | - |\n", s.pid2, s.upgradeMS)
	w("| established flows answered after the upgrade by the same instance | %s | all |\n", thousands(uint64(s.same)))
	mv := "(meets)"
	if s.misrouted != 0 {
		mv = "(**above target**)"
	}
	w("| **misrouted** (answered after the upgrade by another instance) | **%s** %s | 0 |\n", thousands(uint64(s.misrouted)), mv)
	w("| established flows not answered after the upgrade | %s | 0 |\n", thousands(uint64(s.secondLost)))
	w("| new flows answered by generation 2 | %s of %s (other instance: %d, unanswered: %d) | all |\n",
		thousands(uint64(s.newByGen2)), thousands(uint64(c.newFlows)), s.newOther, s.newLost)
	w("| stray answers / duplicate answers / send errors | %d / %d / %d | 0 |\n", s.stray, s.dups, s.sendErrors)
	w("| live flows per generation in `grmwrap status` after the run (1 / 2) | %s / %s | %s / %s |\n",
		thousands(uint64(s.flowsGen[0])), thousands(uint64(s.flowsGen[1])), thousands(uint64(c.flows)), thousands(uint64(c.newFlows)))
	w("| data plane: rx_flow_ok / rx_new_flow / rx_flow_create_error / rx_flow_new_had_expired / rx_fallback_kernel | %s | - |\n",
		counterList(s.counters, "rx_flow_ok", "rx_new_flow_total", "rx_flow_create_error", "rx_flow_new_had_expired", "rx_fallback_kernel"))
	w("| passes 1, 2, 3: time with retries (achieved send rate; flows sent again) | %s (%s/s; %d), %s (%s/s; %d), %s (%s/s; %d) | - |\n",
		s.passTime[0].Round(time.Millisecond), thousands(uint64(s.passRate[0])), s.retried[0],
		s.passTime[1].Round(time.Millisecond), thousands(uint64(s.passRate[1])), s.retried[1],
		s.passTime[2].Round(time.Millisecond), thousands(uint64(s.passRate[2])), s.retried[2])
	w("| kernel UDP drops in the namespace | %s | - |\n\n", s.drops)
}
