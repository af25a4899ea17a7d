package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grmwrap/grmwrap/internal/load"
)

// lossConfig sizes the loss section.
type lossConfig struct {
	grmwrap  string
	src      string
	flows    int
	senders  int
	payload  int
	probe    time.Duration // sending time of each step of the rate search
	start    float64       // first rate tried, datagrams/s
	step     float64       // added at each step
	maxRate  float64       // highest rate tried
	fraction float64       // of the highest steady rate, for the upgrade run
	minSent  int           // datagrams the upgrade run sends at least
	upgrades int
	drain    time.Duration // --drain-timeout and --flow-timeout
}

// rateStep is one step of the rate search.
type rateStep struct {
	rate     float64
	achieved float64 // send rate the load reached
	sent     int
	lost     int
	ok       bool
	drops    string // kernel UDP drop counters during the step
	slips    int
	maxLagMS float64
}

// lossGen is one generation's part of an upgrade run.
type lossGen struct {
	gen      uint32
	pid      int
	answered int
}

// lossRun is one run at a fixed rate, with or without upgrades.
type lossRun struct {
	name       string
	rate       float64
	upgrades   int // asked for
	duration   time.Duration
	res        *load.Result
	upgradeAt  []time.Duration // since the run's start
	upgradeMS  []float64       // `grmwrap upgrade` wall time
	gens       []lossGen
	unknown    int // answers from an instance not in the list
	backwards  int // flows answered by an older generation after a newer one
	allGens    int // flows answered by every generation of the run
	counters   counters
	drops      string
	serverDrop uint64  // drops counted on the server's sockets (/proc/net/udp)
	loadDrop   uint64  // ... on the load's sockets
	nearDrops  uint64  // server drops in samples that overlap the nearWindow after an upgrade began
	nearShare  float64 // the share of the run those samples cover
	liveAfter  int
}

// lossResult is what the loss section measured.
type lossResult struct {
	steps      []rateStep
	steady     float64 // highest rate that passed a short step
	rate       float64 // the rate of the upgrade run
	runs       []lossRun
	wrappedCmd string
}

// runLoss finds the highest rate the wrapped echo server answers without
// loss, then sends at (a fraction of) it while upgrading the server
// cfg.upgrades times, with control runs without upgrades around it (see
// below).
func runLoss(cfg lossConfig, logf func(string, ...any)) (lossResult, error) {
	var res lossResult
	dir, echo, err := buildInTemp("loss", cfg.src, "echo-c")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	const port = 7510
	drain := cfg.drain.String()
	sup, err := startSupervisor(cfg.grmwrap, dir, []string{"--name", "grmbench-loss", "--log-level", "warn",
		"--flow-timeout", drain, "--drain-timeout", drain, "--", echo, "--addr", "127.0.0.1", strconv.Itoa(port)}, 1)
	if err != nil {
		return res, err
	}
	defer sup.stop()
	res.wrappedCmd = sup.commandLine()
	addr := "127.0.0.1:" + strconv.Itoa(port)

	// The rate search: up the ladder until a rate fails twice in a row,
	// then once halfway between the last rate that passed and it.
	probe := func(rate float64) (bool, error) {
		var step rateStep
		for try := 0; try < 2; try++ {
			u0 := load.UDPCounters()
			r, err := load.Run(context.Background(), load.Config{Addr: addr, Flows: cfg.flows, Rate: rate, Duration: cfg.probe,
				Grace: time.Second, Payload: cfg.payload, Senders: cfg.senders})
			if err != nil {
				return false, err
			}
			step = rateStep{rate: rate, achieved: r.SendRate, sent: r.Sent, lost: r.Lost + r.Dups + r.Stray,
				drops: udpDrops(u0, load.UDPCounters()), slips: r.Slips, maxLagMS: r.MaxLagMS}
			step.ok = step.lost == 0 && r.SendRate >= 0.98*rate
			res.steps = append(res.steps, step)
			logf("  rate %.0f/s: sent at %.0f/s, %d lost: %v", rate, r.SendRate, r.Lost, step.ok)
			if step.ok {
				return true, nil
			}
		}
		return false, nil
	}
	for rate := cfg.start; rate <= cfg.maxRate; rate += cfg.step {
		ok, err := probe(rate)
		if err != nil {
			return res, err
		}
		if !ok {
			if res.steady > 0 {
				mid := res.steady + cfg.step/2
				if ok, err := probe(mid); err != nil {
					return res, err
				} else if ok {
					res.steady = mid
				}
			}
			break
		}
		res.steady = rate
	}
	if res.steady == 0 {
		return res, fmt.Errorf("no rate from %.0f/s up was sustained without loss", cfg.start)
	}

	// Long enough for cfg.minSent datagrams, and upgrades 1.5 drain
	// timeouts (at least a second) apart, so that each new generation
	// serves the flows of the one before it before the next comes.
	gap := math.Max(1, 1.5*cfg.drain.Seconds())
	durationAt := func(rate float64) time.Duration {
		return time.Duration(math.Ceil(math.Max(float64(cfg.minSent)/rate, float64(cfg.upgrades+1)*gap))) * time.Second
	}
	do := func(run lossRun) (lossRun, error) {
		logf("  %s: %.0f/s for %s, %d upgrades", run.name, run.rate, run.duration, run.upgrades)
		if err := lossUpgradeRun(cfg, sup, addr, port, &run); err != nil {
			return run, err
		}
		logf("  sent %d, lost %d, duplicates %d; server drops near upgrades %d, elsewhere %d",
			run.res.Sent, run.res.Lost, run.res.Dups, run.nearDrops, run.serverDrop-run.nearDrops)
		res.runs = append(res.runs, run)
		return run, nil
	}
	// A short step that passed is no proof that the rate holds for the
	// whole run: confirm it with a control run of the full duration, and
	// lower it by 20% until a control loses nothing (three tries). When
	// the upgrade run loses datagrams, the control runs again after it;
	// if that loses too, the machine did not sustain the rate (it changed
	// meanwhile): everything runs again 20% lower (three rounds at most).
	rate := math.Round(res.steady * cfg.fraction)
	for round := 1; ; round++ {
		for try := 1; ; try++ {
			run, err := do(lossRun{name: "control at " + thousands(uint64(rate)) + "/s", rate: rate, duration: durationAt(rate)})
			if err != nil {
				return res, err
			}
			if run.res.Lost == 0 || try == 3 {
				break
			}
			rate = math.Round(rate * 0.8)
		}
		res.rate = rate
		run, err := do(lossRun{name: "upgrades at " + thousands(uint64(rate)) + "/s", rate: rate, upgrades: cfg.upgrades, duration: durationAt(rate)})
		if err != nil {
			return res, err
		}
		if run.res.Lost == 0 {
			return res, nil
		}
		after, err := do(lossRun{name: "control after, at " + thousands(uint64(rate)) + "/s", rate: rate, duration: durationAt(rate)})
		if err != nil {
			return res, err
		}
		if after.res.Lost == 0 || round == 3 {
			return res, nil
		}
		rate = math.Round(rate * 0.8)
	}
}

// lossUpgradeRun sends at run.rate for run.duration while upgrading
// run.upgrades times, evenly spread, and fills in run.
func lossUpgradeRun(cfg lossConfig, sup *supervisor, addr string, port uint16, run *lossRun) error {
	st, err := sup.status()
	if err != nil {
		return err
	}
	c0, firstGen := st.Counters, st.Working
	u0 := load.UDPCounters()
	watch := watchDrops(port, 50*time.Millisecond)
	type outcome struct {
		r   *load.Result
		err error
	}
	done := make(chan outcome, 1)
	start := time.Now()
	go func() {
		r, err := load.Run(context.Background(), load.Config{Addr: addr, Flows: cfg.flows, Rate: run.rate,
			Duration: run.duration, Grace: 2 * time.Second, Payload: cfg.payload, Senders: cfg.senders})
		done <- outcome{r, err}
	}()
	// Nothing else runs meanwhile (no status calls): only the upgrades.
	every := run.duration / time.Duration(run.upgrades+1)
	var upErr error
	for k := 1; k <= run.upgrades; k++ {
		time.Sleep(time.Until(start.Add(time.Duration(k) * every)))
		run.upgradeAt = append(run.upgradeAt, time.Since(start))
		d, err := sup.upgrade()
		if err != nil {
			upErr = fmt.Errorf("upgrade %d: %w", k, err)
			break
		}
		run.upgradeMS = append(run.upgradeMS, float64(d.Microseconds())/1000)
	}
	out := <-done
	drops := watch()
	run.serverDrop, run.loadDrop = drops.server, drops.others
	run.nearDrops, run.nearShare = drops.near(start, run.upgradeAt, nearWindow)
	if upErr != nil {
		return upErr
	}
	if out.err != nil {
		return out.err
	}
	run.res = out.r
	run.drops = udpDrops(u0, load.UDPCounters())
	if st, err = sup.waitLive(1, 10*time.Second); err != nil {
		return err
	}
	run.liveAfter = st.live()
	run.counters = st.Counters.sub(c0)
	// status keeps the last 16 ended generations: enough for a run's.
	pids := make(map[string]uint32)
	for _, g := range st.Generations {
		if g.Generation >= firstGen {
			pids[strconv.Itoa(g.Pid)] = g.Generation
		}
	}
	run.summarize(pids)
	return nil
}

// summarize splits the answers of a run by generation and checks that
// every flow only ever moved forward.
func (run *lossRun) summarize(pids map[string]uint32) {
	byGen := make(map[uint32]*lossGen)
	for pid, g := range pids {
		p, _ := strconv.Atoi(pid)
		byGen[g] = &lossGen{gen: g, pid: p}
	}
	for who, n := range run.res.By {
		if g, ok := pids[who]; ok {
			byGen[g].answered += n
		} else {
			run.unknown += n
		}
	}
	for _, g := range byGen {
		run.gens = append(run.gens, *g)
	}
	slices.SortFunc(run.gens, func(a, b lossGen) int { return int(a.gen) - int(b.gen) })
	for _, f := range run.res.Flows {
		if !forwardOnly(f.Order, pids) {
			run.backwards++
		}
		if len(f.By) == len(pids) {
			run.allGens++
		}
	}
}

// forwardOnly reports whether the instances of order (answering
// instances, repeats collapsed) have rising generations: a flow may move to
// a newer generation, never back.
func forwardOnly(order []string, gens map[string]uint32) bool {
	last := uint32(0)
	for _, who := range order {
		g, ok := gens[who]
		if !ok || g < last {
			return false
		}
		last = g
	}
	return true
}

// nearWindow is how long after an upgrade began its effects are looked
// for in the drops.
const nearWindow = 250 * time.Millisecond

// dropSample is the server sockets' drops counted up to a moment.
type dropSample struct {
	at     time.Time
	server uint64
}

// dropCount is what watchDrops saw.
type dropCount struct {
	server, others uint64
	samples        []dropSample
}

// near returns the server drops counted in the samples whose interval
// overlaps [u, u+window] for an upgrade begun at start+u, and the share of
// the sampled time those intervals cover.
func (d dropCount) near(start time.Time, upgrades []time.Duration, window time.Duration) (uint64, float64) {
	var drops uint64
	var nearTime, total time.Duration
	for i := 1; i < len(d.samples); i++ {
		a, b := d.samples[i-1], d.samples[i]
		span := b.at.Sub(a.at)
		total += span
		for _, u := range upgrades {
			from := start.Add(u)
			if a.at.Before(from.Add(window)) && b.at.After(from) {
				drops += b.server - a.server
				nearTime += span
				break
			}
		}
	}
	if total == 0 {
		return drops, 0
	}
	return drops, nearTime.Seconds() / total.Seconds()
}

// watchDrops samples the drops column of /proc/net/udp every interval
// until the returned function is called, which returns the datagrams
// dropped on sockets bound to port (the server's, every generation's) and
// on the others (the load's), counted from the first sample (or from 0 for
// sockets that appeared later), and the server's count at every sample. A
// socket's drops after its last sample (at most one interval before it
// closed) are not seen.
func watchDrops(port uint16, interval time.Duration) func() dropCount {
	type sock struct {
		server      bool
		first, last uint64
	}
	socks := make(map[uint64]*sock)
	var samples []dropSample
	sample := func(initial bool) {
		b, err := os.ReadFile("/proc/net/udp")
		if err != nil {
			return
		}
		for _, e := range parseUDPDrops(string(b)) {
			s, ok := socks[e.inode]
			if !ok {
				s = &sock{server: e.port == port}
				if initial {
					s.first = e.drops
				}
				socks[e.inode] = s
			}
			s.last = e.drops
		}
		var server uint64
		for _, s := range socks {
			if s.server {
				server += s.last - s.first
			}
		}
		samples = append(samples, dropSample{at: time.Now(), server: server})
	}
	sample(true)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				sample(false)
				return
			case <-t.C:
				sample(false)
			}
		}
	}()
	return func() dropCount {
		close(stop)
		<-done
		d := dropCount{samples: samples}
		for _, s := range socks {
			if s.server {
				d.server += s.last - s.first
			} else {
				d.others += s.last - s.first
			}
		}
		return d
	}
}

// udpDropEntry is a socket's line of /proc/net/udp: its local port, inode
// and drops.
type udpDropEntry struct {
	port  uint16
	inode uint64
	drops uint64
}

// parseUDPDrops reads /proc/net/udp; malformed lines are skipped.
func parseUDPDrops(text string) []udpDropEntry {
	var out []udpDropEntry
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 13 {
			continue // header, or the empty last line
		}
		_, portHex, ok := strings.Cut(f[1], ":")
		port, err1 := strconv.ParseUint(portHex, 16, 16)
		inode, err2 := strconv.ParseUint(f[9], 10, 64)
		drops, err3 := strconv.ParseUint(f[len(f)-1], 10, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		out = append(out, udpDropEntry{port: uint16(port), inode: inode, drops: drops})
	}
	return out
}

func (r *report) lossSection(w func(string, ...any)) {
	l, c := r.loss, r.lossCfg
	w("## Loss during upgrades\n\n")
	w("%s\n\n", r.sectionCmd("loss"))
	w("How: `%s` (the unmodified C echo server). The load is `internal/load` (what `grmload` runs):\n", l.wrappedCmd)
	w("%d flows (one connected UDP socket each), %d sender goroutines each owning a share of the flows\n", c.flows, c.senders)
	w("and keeping to one schedule, datagrams of %d bytes numbered per flow; a datagram is lost when\n", c.payload)
	w("no answer for it came by the end of the grace period (2 s). A sender more than 2 ms behind its\n")
	w("schedule (its goroutine was not run in time) moves the schedule on rather than send the backlog in\n")
	w("one burst (a *schedule slip*; every datagram is still sent, a little later): with catch-up bursts,\n")
	w("the load generator's own stalls (the longest lag of a sender is in the tables) overflowed the\n")
	w("server's receive queue and showed as the server's loss, with or without grmwrap.\n\n")
	w("First the highest steady rate without upgrades: %s s at each rate from %s/s up in steps of\n", trimFloat(c.probe.Seconds()), thousands(uint64(c.start)))
	w("%s/s; a rate passes when nothing is lost and the load sent at 98%% or more of it. A failed rate\n", thousands(uint64(c.step)))
	w("is tried once more; the ladder ends at a rate that fails twice, and the rate halfway below it is\n")
	w("tried last. A short step that passed proves little about a longer run on this shared machine, so\n")
	w("then, each run long enough for %s datagrams and for upgrades 1.5 drain timeouts apart:\n", thousands(uint64(c.minSent)))
	w("- **control**: %s%% of that rate without upgrades; while a control loses datagrams, another at\n", trimFloat(100*c.fraction))
	w("  80%% of its rate (three at most). The rate of the last control is the steady rate of the run;\n")
	w("- **upgrades**: that rate, with `grmwrap upgrade PID` %d times, evenly spread (nothing else runs\n", c.upgrades)
	w("  meanwhile: the generations are read from `grmwrap status` after the run);\n")
	w("- **control after**, only when the upgrade run lost datagrams: the control again, to see whether\n")
	w("  the machine changed meanwhile. If it loses datagrams too, the machine did not sustain the rate:\n")
	w("  all three run again at 80%% of it (three rounds at most). Every run is in the table.\n\n")
	w("`--flow-timeout` and `--drain-timeout` are %s: under steady load no flow goes idle, so each old\n", c.drain)
	w("generation keeps its flows for the drain timeout, then its sockets leave steering, its flows move\n")
	w("to the working generation, and it is stopped once its receive queue is empty. Where datagrams\n")
	w("were dropped: the kernel's UDP counters of the namespace (`/proc/net/snmp`), and the `drops` column\n")
	w("of `/proc/net/udp` sampled every 50 ms, split into the server's sockets (every generation's) and\n")
	w("the load's; the server's drops are also split by time: in the samples that overlap the %s\n", nearWindow)
	w("after an upgrade began, and elsewhere.\n\n")
	w("| rate tried (datagrams/s) | sent at (datagrams/s) | sent | lost | kernel UDP drops | schedule slips (longest lag) | passed |\n|---|---|---|---|---|---|---|\n")
	for _, s := range l.steps {
		w("| %s | %s | %s | %s | %s | %d (%.1f ms) | %s |\n", thousands(uint64(s.rate)), thousands(uint64(s.achieved)), thousands(uint64(s.sent)),
			thousands(uint64(s.lost)), s.drops, s.slips, s.maxLagMS, yesNo(s.ok))
	}
	w("\nHighest rate that passed a step: %s datagrams/s; rate of the last upgrade run: **%s datagrams/s**.\n\n",
		thousands(uint64(l.steady)), thousands(uint64(l.rate)))
	w("| run |")
	for _, run := range l.runs {
		w(" %s |", run.name)
	}
	w(" target |\n|---|")
	for range l.runs {
		w("---|")
	}
	w("---|\n")
	row := func(name, target string, f func(run lossRun) string) {
		w("| %s |", name)
		for _, run := range l.runs {
			w(" %s |", f(run))
		}
		w(" %s |\n", target)
	}
	row("rate asked / achieved (datagrams/s)", "-", func(run lossRun) string {
		return thousands(uint64(run.rate)) + " / " + thousands(uint64(run.res.SendRate))
	})
	row("duration of sending asked", "-", func(run lossRun) string { return run.duration.String() })
	row("schedule slips of the load's senders (longest lag)", "-", func(run lossRun) string {
		return fmt.Sprintf("%d (%.1f ms)", run.res.Slips, run.res.MaxLagMS)
	})
	row("upgrades done (exit 0)", "10", func(run lossRun) string {
		if run.upgrades == 0 {
			return "-"
		}
		return fmt.Sprintf("%d, at %s", len(run.upgradeMS), secondsList(run.upgradeAt))
	})
	row("`grmwrap upgrade` wall time, median (min-max)", "-", func(run lossRun) string { return medianRange(run.upgradeMS, "ms") })
	row("datagrams sent", ">= 1,000,000", func(run lossRun) string { return thousands(uint64(run.res.Sent)) })
	row("answered", "-", func(run lossRun) string { return thousands(uint64(run.res.Answered)) })
	row("**lost**", "0", func(run lossRun) string {
		v := "(meets)"
		if run.upgrades == 0 {
			v = "(control)"
		} else if run.res.Lost != 0 {
			v = "(**above target**)"
		}
		return fmt.Sprintf("**%s** %s", thousands(uint64(run.res.Lost)), v)
	})
	row("lost, fraction of sent", "0", func(run lossRun) string {
		return strconv.FormatFloat(100*float64(run.res.Lost)/float64(max(run.res.Sent, 1)), 'f', 3, 64) + "%"
	})
	row("duplicates / stray answers / send errors", "0", func(run lossRun) string {
		return fmt.Sprintf("%d / %d / %d", run.res.Dups, run.res.Stray, run.res.SendErrors)
	})
	row("kernel UDP counters (/proc/net/snmp)", "-", func(run lossRun) string { return run.drops })
	row("drops on the server's sockets / the load's (/proc/net/udp)", "-", func(run lossRun) string {
		return thousands(run.serverDrop) + " / " + thousands(run.loadDrop)
	})
	row(fmt.Sprintf("server drops within %s after an upgrade began / elsewhere (share of the run those samples cover)", nearWindow), "-",
		func(run lossRun) string {
			if run.upgrades == 0 {
				return "- / " + thousands(run.serverDrop)
			}
			return fmt.Sprintf("%s / %s (%.0f%%)", thousands(run.nearDrops), thousands(run.serverDrop-run.nearDrops), 100*run.nearShare)
		})
	row("flows that went back to an older generation", "0", func(run lossRun) string {
		return fmt.Sprintf("%d of %d", run.backwards, len(run.res.Flows))
	})
	row("flows answered by every generation of the run", "-", func(run lossRun) string {
		return fmt.Sprintf("%d of %d (%s)", run.allGens, len(run.res.Flows), plural(len(run.gens), "generation"))
	})
	row("live generations after the run", "1", func(run lossRun) string { return strconv.Itoa(run.liveAfter) })
	row("data plane: rx_processed / rx_flow_ok / rx_new_flow / rx_flow_socket_gone / rx_fallback_kernel / rx_no_working_socket", "-",
		func(run lossRun) string {
			return counterList(run.counters, "rx_processed_total", "rx_flow_ok", "rx_new_flow_total", "rx_flow_socket_gone",
				"rx_fallback_kernel", "rx_no_working_socket")
		})
	for _, run := range l.runs {
		if run.upgrades == 0 {
			continue
		}
		w("\nAnswers by generation, run \"%s\":\n\n| generation | pid | answered |\n|---|---|---|\n", run.name)
		for _, g := range run.gens {
			w("| %d | %d | %s |\n", g.gen, g.pid, thousands(uint64(g.answered)))
		}
		if run.unknown > 0 {
			w("| ? | not a generation's pid | %s |\n", thousands(uint64(run.unknown)))
		}
	}
	w("\n")
}

// plural formats "1 generation", "2 generations".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// trimFloat formats v with up to 2 decimals and no trailing zeros.
func trimFloat(v float64) string {
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64)
}

// secondsList formats durations as "1.0 s, 2.1 s, ...".
func secondsList(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, strconv.FormatFloat(d.Seconds(), 'f', 1, 64))
	}
	return strings.Join(parts, ", ") + " s"
}

// counterList formats the named counters, separated by " / ".
func counterList(c counters, names ...string) string {
	var parts []string
	for _, n := range names {
		parts = append(parts, thousands(c[n]))
	}
	return strings.Join(parts, " / ")
}
