package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// bindConfig sizes the bind section.
type bindConfig struct {
	grmwrap string
	src     string // bindloop.c
	rounds  int
	binds   int // timed binds per run
}

// The three ways a bind runs.
const (
	bindPlain     = 0 // no grmwrap
	bindManaged   = 1 // trapped, bound by grmwrap on the server's behalf
	bindContinued = 2 // trapped, not managed: the kernel binds (CONTINUE)
)

var bindModeNames = [3]string{"plain (no grmwrap)", "trapped, managed (grmwrap binds it)", "trapped, not managed (continued)"}

// bindRun is one bindloop run's line.
type bindRun struct {
	median, p90, p99, min, roundMean float64 // ns
	reuseport                        int     // binds after which the socket had SO_REUSEPORT
	binds                            int
}

// parseBindLine reads bindloop's "binds=N median_ns=M ..." line.
func parseBindLine(line string) (bindRun, error) {
	var r bindRun
	fields := map[string]*float64{"median_ns": &r.median, "p90_ns": &r.p90, "p99_ns": &r.p99, "min_ns": &r.min, "round_mean_ns": &r.roundMean}
	seen := 0
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return r, fmt.Errorf("bindloop line %q: %s: %w", line, k, err)
		}
		switch k {
		case "binds":
			r.binds = int(n)
		case "reuseport_after_bind":
			r.reuseport = int(n)
		default:
			p, ok := fields[k]
			if !ok {
				continue
			}
			*p = float64(n)
		}
		seen++
	}
	if seen != 7 {
		return r, fmt.Errorf("bindloop line %q: want 7 fields", line)
	}
	return r, nil
}

// bindResult holds every run of the bind section.
type bindResult struct {
	runs      [3][]bindRun
	procnetUS []float64 // reading /proc/net/udp and udp6 once, µs
	cmds      [3]string
	// An untrapped syscall (getppid), ns: [0] plain, [1] under grmwrap's
	// filter; and their commands.
	syscallNS   [3][]float64
	syscallCmds [3]string
	syscalls    int
	udpHash     string // net.ipv4.udp_hash_entries in this namespace
}

// syscallsPerRun is how many getppid calls a syscall run times.
const syscallsPerRun = 500000

// parseSyscallLine reads bindloop's "syscalls=N mean_ns=M" line.
func parseSyscallLine(line string) (float64, error) {
	var n, mean int64 = -1, -1
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscalls":
			n = x
		case "mean_ns":
			mean = x
		}
	}
	if n <= 0 || mean < 0 {
		return 0, fmt.Errorf("bindloop line %q: want syscalls= and mean_ns=", line)
	}
	return float64(mean), nil
}

// medianOf is the median of one figure over the runs of a mode.
func (b *bindResult) medianOf(mode int, fig func(bindRun) float64) float64 {
	var xs []float64
	for _, r := range b.runs[mode] {
		xs = append(xs, fig(r))
	}
	return median(xs)
}

// runBind times binds of bindloop plain, under grmwrap with the bind
// managed, and under grmwrap with it continued, in rotated rounds.
func runBind(cfg bindConfig, logf func(string, ...any)) (bindResult, error) {
	var res bindResult
	dir, loop, err := buildInTemp("bind", cfg.src, "bindloop")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	const managedPort, otherPort = 7530, 7531
	n := strconv.Itoa(cfg.binds)
	rt := filepath.Join(dir, "run")
	wrapped := func(name string, port int) []string {
		return []string{cfg.grmwrap, "--runtime-dir", rt, "--name", name, "--log-level", "warn",
			"--listen", "127.0.0.1:" + strconv.Itoa(managedPort), "--", loop, "127.0.0.1", strconv.Itoa(port), n}
	}
	argv := [3][]string{
		bindPlain:     {loop, "127.0.0.1", strconv.Itoa(managedPort), n},
		bindManaged:   wrapped("grmbench-bind-managed", managedPort),
		bindContinued: wrapped("grmbench-bind-continued", otherPort),
	}
	wrappedSys := wrapped("grmbench-bind-syscall", managedPort)
	res.syscalls = syscallsPerRun
	sysArgv := [3][]string{
		{loop, "--syscall", strconv.Itoa(syscallsPerRun)},
		append(wrappedSys[:len(wrappedSys)-3:len(wrappedSys)-3], "--syscall", strconv.Itoa(syscallsPerRun)),
		{loop, "--syscall-allow-filter", strconv.Itoa(syscallsPerRun)},
	}
	short := func(a []string) string {
		// As typed, without the temporary runtime directory.
		var out []string
		for i := 0; i < len(a); i++ {
			if a[i] == "--runtime-dir" {
				i++
				continue
			}
			s := a[i]
			if filepath.IsAbs(s) || strings.HasPrefix(s, "bin/") {
				s = filepath.Base(s)
			}
			out = append(out, s)
		}
		return shellQuote(out)
	}
	for m, a := range sysArgv {
		res.syscallCmds[m] = short(a)
	}
	for m, a := range argv {
		res.cmds[m] = short(a)
	}
	for k := range cfg.rounds {
		for _, m := range orders[k%len(orders)] {
			out, err := exec.Command(argv[m][0], argv[m][1:]...).Output()
			if err != nil {
				return res, fmt.Errorf("%s: %w (%s)", res.cmds[m], err, strings.TrimSpace(string(out)))
			}
			run, err := parseBindLine(strings.TrimSpace(string(out)))
			if err != nil {
				return res, err
			}
			res.runs[m] = append(res.runs[m], run)
		}
		for i := range 3 {
			m := (i + k) % 3
			out, err := exec.Command(sysArgv[m][0], sysArgv[m][1:]...).Output()
			if err != nil {
				return res, fmt.Errorf("%s: %w (%s)", res.syscallCmds[m], err, strings.TrimSpace(string(out)))
			}
			ns, err := parseSyscallLine(strings.TrimSpace(string(out)))
			if err != nil {
				return res, err
			}
			res.syscallNS[m] = append(res.syscallNS[m], ns)
		}
	}
	logf("  bind median: plain %.2f µs, managed %.1f µs, continued %.1f µs",
		res.medianOf(bindPlain, func(r bindRun) float64 { return r.median })/1000,
		res.medianOf(bindManaged, func(r bindRun) float64 { return r.median })/1000,
		res.medianOf(bindContinued, func(r bindRun) float64 { return r.median })/1000)

	if b, err := os.ReadFile("/proc/sys/net/ipv4/udp_hash_entries"); err == nil {
		res.udpHash = strings.TrimSpace(string(b))
	}
	// What a managed bind reads to find a port's holders, timed alone.
	for range 200 {
		t := time.Now()
		for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
			if _, err := os.ReadFile(f); err != nil {
				return res, err
			}
		}
		res.procnetUS = append(res.procnetUS, float64(time.Since(t).Nanoseconds())/1000)
	}
	return res, nil
}

func (r *report) bindSection(w func(string, ...any)) {
	b, c := r.bind, r.bindCfg
	w("## The cost of one trapped bind\n\n")
	w("%s\n\n", r.sectionCmd("bind"))
	w("How: `%s` (compiled with `gcc -O2`) runs 50 unmeasured then %s measured rounds of\n", c.src, thousands(uint64(c.binds)))
	w("`socket(AF_INET, SOCK_DGRAM)`, `bind(127.0.0.1:PORT)`, `getsockopt(SO_REUSEPORT)`, `close()`, and\n")
	w("times each `bind()` call alone (`CLOCK_MONOTONIC`). It never sets SO_REUSEPORT, so a socket that has\n")
	w("it after bind was bound by grmwrap (the count in the last column). Three ways, %d runs each, in\n", len(b.runs[bindPlain]))
	w("the six orders in turn:\n")
	for m := range b.cmds {
		w("- %s: `%s`\n", bindModeNames[m], b.cmds[m])
	}
	w("\nEvery figure is the median over runs of that run's figure. A managed bind's server waits while\n")
	w("the supervisor copies the socket, reads the address, checks that no socket it does not manage\n")
	w("holds the port (reading `/proc/net/udp` and `/proc/net/udp6`), binds on the server's behalf and\n")
	w("registers the socket with the data plane (sockhash, slot, program attached); a continued bind\n")
	w("waits for the copy, the address and the decision only.\n\n")
	w("| bind | median µs | p90 µs | p99 µs | min µs | whole round (socket to close), mean µs | above plain (median) µs | SO_REUSEPORT after bind |\n")
	w("|---|---|---|---|---|---|---|---|\n")
	base := b.medianOf(bindPlain, func(r bindRun) float64 { return r.median })
	for m := range b.runs {
		med := b.medianOf(m, func(r bindRun) float64 { return r.median })
		above := "-"
		if m != bindPlain {
			above = fmt.Sprintf("%.1f", (med-base)/1000)
		}
		reuse := 0
		for _, run := range b.runs[m] {
			reuse += run.reuseport
		}
		w("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %s of %s |\n", bindModeNames[m], med/1000,
			b.medianOf(m, func(r bindRun) float64 { return r.p90 })/1000,
			b.medianOf(m, func(r bindRun) float64 { return r.p99 })/1000,
			b.medianOf(m, func(r bindRun) float64 { return r.min })/1000,
			b.medianOf(m, func(r bindRun) float64 { return r.roundMean })/1000, above,
			thousands(uint64(reuse)), thousands(uint64(len(b.runs[m])*c.binds)))
	}
	w("\nWhat the filter costs a syscall it does not trap (the hot path's recvfrom, sendto, ppoll):\n")
	w("`%s` plain and `%s`, %s `getppid` calls per run,\n", b.syscallCmds[0], b.syscallCmds[1], thousands(uint64(b.syscalls)))
	w("alternating, %d runs each:\n\n", len(b.syscallNS[0]))
	w("| syscall | ns per call, median of runs (min-max) |\n|---|---|\n")
	w("| getppid, plain | %s |\n", spread(b.syscallNS[0], 0))
	w("| getppid, under grmwrap's seccomp filter | %s |\n", spread(b.syscallNS[1], 0))
	w("| getppid, under a one-instruction allow-all filter (`%s`) | %s |\n", b.syscallCmds[2], spread(b.syscallNS[2], 0))
	w("| grmwrap's filter minus plain, medians | %.0f |\n", median(b.syscallNS[1])-median(b.syscallNS[0]))
	w("| grmwrap's filter minus the allow-all filter, medians | %.0f |\n\n", median(b.syscallNS[1])-median(b.syscallNS[2]))
	w("The allow-all filter is the floor of any seccomp filter: a syscall of a filtered process takes\n")
	w("the kernel's slower entry path even when the filter's verdict for it is cached. grmwrap's\n")
	w("filter decides bind and setsockopt only; every other syscall's verdict is constant, so the\n")
	w("kernel caches it and does not run the filter (the last row is noise around 0 when so).\n")
	w("\nFor comparison, reading `/proc/net/udp` and `/proc/net/udp6` once in this network namespace, as the\n")
	w("supervisor does for every managed bind (to find sockets it does not manage on the port), takes\n")
	w("%s µs, median (min-max) of %d reads by this process: the kernel walks every bucket of\n", spread(b.procnetUS, 1), len(b.procnetUS))
	w("the UDP hash table for each file, used or not (`net.ipv4.udp_hash_entries` here: %s; negative: the\n", b.udpHash)
	w("namespace shares the host's table).\n\n")
}
