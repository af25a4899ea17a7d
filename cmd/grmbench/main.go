// Command grmbench measures grmwrap and writes a markdown report
// (docs/BENCHMARKS.md by default), which it also prints.
//
// It must run as root. It re-executes itself in a fresh network and mount
// namespace (with a bpffs of its own), brings loopback up there, and
// measures, all in one run:
//
//   - cost: the steering program's cost in ns per packet, from the kernel's
//     BPF run-time statistics, for the flow dissector (existing and new
//     flows) and noop, with 1, 1,000 and 100,000 live flows in the table;
//   - table: a flow table of 1,000,000 entries: its memory (memlock from
//     fdinfo), filled by traffic, and that steering still follows it;
//   - echo: the echo throughput of one unmodified C echo server with the
//     program attached against the same server without it;
//   - hotpath: the echo throughput of that server plain, under grmwrap with
//     the program detached (interception only) and under grmwrap as it runs;
//   - upgrade: the time of an upgrade and the supervisor's memory;
//   - loss: the highest rate the wrapped server sustains without loss, then
//     at least 1,000,000 datagrams at that rate across 10 upgrades;
//   - scale: 100,000 flows established, an upgrade, each answered again by
//     the same instance, and 100,000 new flows by the new one;
//   - bind: the time of one bind() plain, trapped and managed, and trapped
//     and continued.
//
// Usage:
//
//	grmbench [-out docs/BENCHMARKS.md] [-only SECTION] [-via 'make bench'] [-grmwrap bin/grmwrap]
//
// grmbench -help lists the flags that size each section.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// version is set at build time (make bench: git describe --always --dirty).
var version string

func main() {
	os.Exit(run())
}

func run() int {
	var (
		out       = flag.String("out", "docs/BENCHMARKS.md", "where to write the markdown report")
		only      = flag.String("only", "", "run one section only: "+strings.Join(sections, ", "))
		via       = flag.String("via", "", "how the run was started, for the report (e.g. 'make bench')")
		rounds    = flag.Int("rounds", 9, "measured rounds per cost scenario")
		packets   = flag.Int("packets", 30000, "datagrams per round, existing flows and noop")
		newFlows  = flag.Int("new-flows", 10000, "new flows per round")
		tableSize = flag.Int("table-flows", 1000000, "size of the large flow table")
		echoSrc   = flag.String("echo-src", "testdata/servers/echo.c", "source of the C echo server")
		pairs     = flag.Int("echo-pairs", 80, "echo rounds per mode (alternating pairs)")
		roundDur  = flag.Duration("echo-round", 250*time.Millisecond, "measured time of an echo round (echo, hotpath)")
		settle    = flag.Duration("echo-settle", 20*time.Millisecond, "unmeasured time before each echo round (echo, hotpath)")
		clients   = flag.Int("echo-clients", 4, "echo client sockets (echo, hotpath)")
		window    = flag.Int("echo-window", 4, "echo datagrams in flight per client (echo, hotpath)")
		pin       = flag.Bool("echo-pin", false, "pin the echo server and the clients to a CPU each")
		grmwrap   = flag.String("grmwrap", "bin/grmwrap", "the grmwrap binary (upgrade, hotpath, loss, scale, bind)")
		upgrades  = flag.Int("upgrades", 20, "timed upgrades")
		triples   = flag.Int("hotpath-triples", 60, "hot path rounds per mode (rotated triples)")
		lossFlows = flag.Int("loss-flows", 64, "flows of the loss section")
		lossSend  = flag.Int("loss-senders", 2, "sender goroutines of the loss section")
		lossProbe = flag.Duration("loss-probe", 2*time.Second, "sending time of each step of the rate search")
		lossStart = flag.Float64("loss-start", 20000, "first rate of the search, datagrams/s")
		lossStep  = flag.Float64("loss-step", 20000, "step of the rate search, datagrams/s")
		lossMax   = flag.Float64("loss-max", 400000, "highest rate the search tries")
		lossFrac  = flag.Float64("loss-fraction", 0.75, "fraction of the highest rate that passed a step, for the first control run")
		lossMin   = flag.Int("loss-datagrams", 1000000, "datagrams the upgrade run sends at least")
		lossUps   = flag.Int("loss-upgrades", 10, "upgrades during the loss run")
		lossDrain = flag.Duration("loss-drain", time.Second, "--flow-timeout and --drain-timeout of the loss run")
		scFlows   = flag.Int("scale-flows", 100000, "flows established before the upgrade (scale)")
		scNew     = flag.Int("scale-new-flows", 100000, "flows opened after the upgrade (scale)")
		scSocks   = flag.Int("scale-sockets", 100, "sockets carrying the flows of each set (scale)")
		scRate    = flag.Float64("scale-rate", 50000, "datagrams/s of each pass (scale)")
		scMax     = flag.Int("scale-max-flows", 300000, "--max-flows of the scale run")
		bindSrc   = flag.String("bind-src", "testdata/bench/bindloop.c", "source of the bind loop")
		bindRuns  = flag.Int("bind-rounds", 18, "runs of the bind loop per mode")
		bindN     = flag.Int("bind-n", 2000, "timed binds per run")
	)
	flag.Parse()
	if *only != "" && !slices.Contains(sections, *only) {
		fmt.Fprintf(os.Stderr, "grmbench: -only must be one of %s, not %q\n", strings.Join(sections, ", "), *only)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "grmbench: needs root (network namespace, BPF programs and statistics, pidfd_getfd)")
		return 1
	}
	if !inNetns() {
		code, err := reexecInNetns()
		if err != nil {
			fmt.Fprintf(os.Stderr, "grmbench: %v\n", err)
		}
		return code
	}

	start := time.Now()
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "grmbench: "+format+"\n", a...) }
	if err := setupNetns(); err != nil {
		logf("%v", err)
		return 1
	}
	r := &report{
		command: shellQuote(append([]string{displayName()}, os.Args[1:]...)),
		via:     *via,
		machine: readMachine(version),
		sysctl:  statsSysctl(),
		altCfg:  altConfig{lives: []int{1, 1000}, rounds: *rounds, packets: *packets},
		costCfg: costConfig{
			lives: []int{1, 1000, 100000}, rounds: *rounds, packets: *packets, newFlows: *newFlows,
			hot: 1000, maxFlows: 1 << 18,
		},
		tableCfg: tableConfig{maxFlows: *tableSize, samples: 2000, existing: 100000, fresh: 20000},
		echoCfg: echoConfig{
			src: *echoSrc, pairs: *pairs, round: *roundDur, settle: *settle,
			clients: *clients, window: *window, payload: 64, pin: *pin,
		},
		upgradeCfg: upgradeConfig{grmwrap: *grmwrap, src: *echoSrc, upgrades: *upgrades},
		hotpathCfg: hotpathConfig{
			grmwrap: *grmwrap, src: *echoSrc, triples: *triples, round: *roundDur, settle: *settle,
			clients: *clients, window: *window, payload: 64,
		},
		lossCfg: lossConfig{
			grmwrap: *grmwrap, src: *echoSrc, flows: *lossFlows, senders: *lossSend, payload: 64,
			probe: *lossProbe, start: *lossStart, step: *lossStep, maxRate: *lossMax, fraction: *lossFrac,
			minSent: *lossMin, upgrades: *lossUps, drain: *lossDrain,
		},
		scaleCfg: scaleConfig{
			grmwrap: *grmwrap, src: *echoSrc, flows: *scFlows, newFlows: *scNew, sockets: *scSocks,
			senders: 2, rate: *scRate, maxFlows: *scMax,
		},
		bindCfg: bindConfig{grmwrap: *grmwrap, src: *bindSrc, rounds: *bindRuns, binds: *bindN},
	}
	want := func(s string) bool { return *only == "" || *only == s }
	if err := measureAll(r, want, logf); err != nil {
		logf("%v", err)
		return 1
	}
	r.total = time.Since(start)
	md := r.markdown()
	if dir := filepath.Dir(*out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			logf("create %s: %v", dir, err)
			return 1
		}
	}
	if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		logf("write report: %v", err)
		return 1
	}
	fmt.Print(md)
	logf("report written to %s (%s)", *out, r.total.Round(time.Second))
	return 0
}

// measureAll runs the wanted sections: the two that read BPF run-time
// statistics with the statistics on, the echo comparison with them off.
func measureAll(r *report, want func(string) bool, logf func(string, ...any)) error {
	if want("cost") || want("alternatives") || want("table") {
		stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
		if err != nil {
			return fmt.Errorf("enable BPF run-time statistics: %w", err)
		}
		err = measureStats(r, want, logf)
		// Statistics stay on while the closer is open; errors closing are
		// of no consequence to the figures.
		_ = stats.Close()
		if err != nil {
			return err
		}
	}
	if want("echo") {
		r.sysctlOff = statsSysctl()
		logf("echo throughput, %d pairs of %s rounds", r.echoCfg.pairs, r.echoCfg.round)
		e, err := runEcho(r.echoCfg, logf)
		if err != nil {
			return fmt.Errorf("echo throughput: %w", err)
		}
		r.echo = &e
	}
	if want("hotpath") {
		logf("hot path: %d triples of %s rounds", r.hotpathCfg.triples, r.hotpathCfg.round)
		h, err := runHotpath(r.hotpathCfg, logf)
		if err != nil {
			return fmt.Errorf("hot path: %w", err)
		}
		r.hotpath = &h
	}
	if want("upgrade") {
		logf("upgrades: %d", r.upgradeCfg.upgrades)
		u, err := runUpgrade(r.upgradeCfg, logf)
		if err != nil {
			return fmt.Errorf("upgrades: %w", err)
		}
		r.upgrade = &u
	}
	if want("loss") {
		logf("loss: rate search, then %d upgrades under load", r.lossCfg.upgrades)
		l, err := runLoss(r.lossCfg, logf)
		if err != nil {
			return fmt.Errorf("loss: %w", err)
		}
		r.loss = &l
	}
	if want("scale") {
		logf("scale: %d flows across an upgrade", r.scaleCfg.flows)
		s, err := runScale(r.scaleCfg, logf)
		if err != nil {
			return fmt.Errorf("scale: %w", err)
		}
		r.scale = &s
	}
	if want("bind") {
		logf("bind: %d runs of %d binds per mode", r.bindCfg.rounds, r.bindCfg.binds)
		b, err := runBind(r.bindCfg, logf)
		if err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		r.bind = &b
	}
	return nil
}

// sections are the report's sections, in the order they run.
var sections = []string{"cost", "alternatives", "table", "echo", "hotpath", "upgrade", "loss", "scale", "bind"}

func measureStats(r *report, want func(string) bool, logf func(string, ...any)) error {
	tx, err := newRawSender()
	if err != nil {
		return err
	}
	defer tx.close()
	if want("cost") {
		logf("per-packet cost, live flows %v, %d rounds", r.costCfg.lives, r.costCfg.rounds)
		if r.cost, r.costTableSize, err = runCost(r.costCfg, tx, logf); err != nil {
			return fmt.Errorf("per-packet cost: %w", err)
		}
	}
	if want("alternatives") {
		logf("design alternatives, live flows %v, %d rounds", r.altCfg.lives, r.altCfg.rounds)
		if r.alt, err = runAlternatives(r.altCfg, tx, logf); err != nil {
			return fmt.Errorf("design alternatives: %w", err)
		}
	}
	if want("table") {
		logf("flow table of %d entries", r.tableCfg.maxFlows)
		t, err := runTable(r.tableCfg, tx, logf)
		if err != nil {
			return fmt.Errorf("large flow table: %w", err)
		}
		r.table = &t
	}
	return nil
}

// displayName is how the binary was invoked, as a path relative to the
// working directory when it lies below it (go run's temporary binary is
// named as such).
func displayName() string {
	name := os.Args[0]
	if strings.Contains(name, "/go-build") {
		return "go run ./cmd/grmbench"
	}
	return name
}

// statsSysctl reads kernel.bpf_stats_enabled.
func statsSysctl() string {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "absent"
		}
		return "unreadable"
	}
	return strings.TrimSpace(string(b))
}
