// Command grmbench measures grmwrap's eBPF data plane and writes a markdown
// report (docs/BENCHMARKS.md by default), which it also prints.
//
// It must run as root. It re-executes itself in a fresh network and mount
// namespace, brings loopback up there, and measures, all in one run:
//
//   - the steering program's cost in ns per packet, from the kernel's BPF
//     run-time statistics, for the flow dissector (existing and new flows)
//     and noop, with 1, 1,000 and 100,000 live flows in the table;
//   - a flow table of 1,000,000 entries: its memory (memlock from fdinfo),
//     filled by traffic, and that steering still follows it;
//   - the echo throughput of one unmodified C echo server with the program
//     attached against the same server without it, in alternating rounds.
//
// Usage:
//
//	grmbench [-out docs/BENCHMARKS.md] [-only cost|table|echo|upgrade] [-via 'make bench']
//
// grmbench -help lists the flags that size each section.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
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
		only      = flag.String("only", "", "run one section only: cost, table, echo or upgrade")
		via       = flag.String("via", "", "how the run was started, for the report (e.g. 'make bench')")
		rounds    = flag.Int("rounds", 9, "measured rounds per cost scenario")
		packets   = flag.Int("packets", 30000, "datagrams per round, existing flows and noop")
		newFlows  = flag.Int("new-flows", 10000, "new flows per round")
		tableSize = flag.Int("table-flows", 1000000, "size of the large flow table")
		echoSrc   = flag.String("echo-src", "testdata/servers/echo.c", "source of the C echo server")
		pairs     = flag.Int("echo-pairs", 80, "echo rounds per mode (alternating pairs)")
		roundDur  = flag.Duration("echo-round", 250*time.Millisecond, "measured time of an echo round")
		settle    = flag.Duration("echo-settle", 20*time.Millisecond, "unmeasured time after each attach or detach")
		clients   = flag.Int("echo-clients", 4, "echo client sockets")
		window    = flag.Int("echo-window", 4, "echo datagrams in flight per client")
		pin       = flag.Bool("echo-pin", false, "pin the echo server and the clients to a CPU each")
		grmwrap   = flag.String("grmwrap", "bin/grmwrap", "the grmwrap binary, for the upgrade section")
		upgrades  = flag.Int("upgrades", 20, "timed upgrades")
	)
	flag.Parse()
	switch *only {
	case "", "cost", "table", "echo", "upgrade":
	default:
		fmt.Fprintf(os.Stderr, "grmbench: -only must be cost, table, echo or upgrade, not %q\n", *only)
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
	if want("cost") || want("table") {
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
	if want("upgrade") {
		logf("upgrades: %d", r.upgradeCfg.upgrades)
		u, err := runUpgrade(r.upgradeCfg, logf)
		if err != nil {
			return fmt.Errorf("upgrades: %w", err)
		}
		r.upgrade = &u
	}
	return nil
}

func measureStats(r *report, want func(string) bool, logf func(string, ...any)) error {
	tx, err := newRawSender()
	if err != nil {
		return err
	}
	defer tx.close()
	if want("cost") {
		logf("per-packet cost, live flows %v, %d rounds", r.costCfg.lives, r.costCfg.rounds)
		if r.cost, err = runCost(r.costCfg, tx, logf); err != nil {
			return fmt.Errorf("per-packet cost: %w", err)
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
