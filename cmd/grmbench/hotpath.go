package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// hotpathConfig sizes the hot path comparison.
type hotpathConfig struct {
	grmwrap string
	src     string        // echo.c
	triples int           // rounds per mode
	round   time.Duration // measured time of a round
	settle  time.Duration // unmeasured time before it
	clients int
	window  int
	payload int
}

// The three modes of the hot path comparison.
const (
	modePlain     = 0 // the server alone
	modeIntercept = 1 // under grmwrap, program detached: the seccomp filter only
	modeSteered   = 2 // under grmwrap as it runs: filter and program
)

var modeNames = [3]string{"A", "B", "C"}

// orders are the six orders of the three modes; triple t uses
// orders[t%6], so each mode takes each place equally often.
var orders = [6][3]int{{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 2, 1}, {2, 1, 0}, {1, 0, 2}}

// hotpathResult holds the replies per second of every round.
type hotpathResult struct {
	rates      [3][]float64 // by mode, one per triple
	ratioB     []float64    // B/A of each triple
	ratioC     []float64    // C/A of each triple
	ratioCB    []float64    // C/B of each triple
	replies    [3]uint64
	elapsed    [3]time.Duration
	runs       [3]uint64 // program runs (rx_processed_total) counted in each mode's rounds
	progID     uint32
	plainCmd   string
	wrappedCmd string
}

// aggregate is the rate of mode m over all its rounds divided by the
// plain server's.
func (h *hotpathResult) aggregate(m int) float64 {
	rate := func(m int) float64 {
		if h.elapsed[m] == 0 {
			return 0
		}
		return float64(h.replies[m]) / h.elapsed[m].Seconds()
	}
	if rate(modePlain) == 0 {
		return 0
	}
	return rate(m) / rate(modePlain)
}

// runHotpath compares the echo rate of the unmodified C echo server run
// plainly (A), under grmwrap with its steering program detached (B), and
// under grmwrap with the program attached (C), in rotated triples.
func runHotpath(cfg hotpathConfig, logf func(string, ...any)) (hotpathResult, error) {
	var res hotpathResult
	dir, echo, err := buildInTemp("hotpath", cfg.src, "echo-c")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	const plainPort, wrappedPort = 7501, 7502

	// A: the server alone, as it runs without grmwrap (no --reuseport).
	plain := exec.Command(echo, "--addr", "127.0.0.1", fmt.Sprint(plainPort))
	plain.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := plain.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := plain.Start(); err != nil {
		return res, fmt.Errorf("start echo server: %w", err)
	}
	defer func() {
		_ = plain.Process.Signal(syscall.SIGTERM)
		_ = plain.Wait() // killed or exited: either is what was asked
	}()
	if _, err := readyPort(stdout); err != nil {
		return res, err
	}
	res.plainCmd = fmt.Sprintf("echo-c --addr 127.0.0.1 %d", plainPort)

	// B and C: the same command under grmwrap.
	sup, err := startSupervisor(cfg.grmwrap, dir, []string{"--name", "grmbench-hotpath", "--log-level", "warn",
		"--", echo, "--addr", "127.0.0.1", fmt.Sprint(wrappedPort)}, 1)
	if err != nil {
		return res, err
	}
	defer sup.stop()
	res.wrappedCmd = sup.commandLine()
	st, err := sup.status()
	if err != nil {
		return res, err
	}
	instance, err := st.genPid(st.Working)
	if err != nil {
		return res, err
	}
	sock, err := takeSocket(instance, wrappedPort)
	if err != nil {
		return res, err
	}
	defer sock.Close()
	prog, err := supervisorProgram(sup.pid)
	if err != nil {
		return res, err
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return res, err
	}
	if id, ok := info.ID(); ok {
		res.progID = uint32(id)
	}
	sockFD := int(sock.Fd())

	processed := func() (uint64, error) {
		st, err := sup.status()
		if err != nil {
			return 0, err
		}
		return st.Counters["rx_processed_total"], nil
	}
	round := func(mode int) (float64, error) {
		port := uint16(wrappedPort)
		switch mode {
		case modePlain:
			port = plainPort
		case modeIntercept:
			if err := detachProgram(sockFD); err != nil {
				return 0, err
			}
		case modeSteered:
			if err := attachProgram(sockFD, prog.FD()); err != nil {
				return 0, err
			}
		}
		p0, err := processed()
		if err != nil {
			return 0, err
		}
		clients, err := startClients(echoConfig{clients: cfg.clients, window: cfg.window, payload: cfg.payload}, port)
		if err != nil {
			return 0, err
		}
		time.Sleep(cfg.settle)
		r0, t0 := clients.replies.Load(), time.Now()
		time.Sleep(cfg.round)
		r1, t1 := clients.replies.Load(), time.Now()
		clients.close()
		p1, err := processed()
		if err != nil {
			return 0, err
		}
		res.runs[mode] += p1 - p0
		res.replies[mode] += r1 - r0
		res.elapsed[mode] += t1.Sub(t0)
		return float64(r1-r0) / t1.Sub(t0).Seconds(), nil
	}
	for t := range cfg.triples {
		var rate [3]float64
		for _, m := range orders[t%len(orders)] {
			if rate[m], err = round(m); err != nil {
				return res, fmt.Errorf("round %s: %w", modeNames[m], err)
			}
		}
		for m := range rate {
			res.rates[m] = append(res.rates[m], rate[m])
		}
		res.ratioB = append(res.ratioB, rate[modeIntercept]/rate[modePlain])
		res.ratioC = append(res.ratioC, rate[modeSteered]/rate[modePlain])
		res.ratioCB = append(res.ratioCB, rate[modeSteered]/rate[modeIntercept])
		if (t+1)%10 == 0 {
			logf("  %d triples: B/A median %.3f, C/A median %.3f", t+1, median(res.ratioB), median(res.ratioC))
		}
	}
	// Leave the group as grmwrap made it.
	if err := attachProgram(sockFD, prog.FD()); err != nil {
		return res, err
	}
	return res, nil
}

func (r *report) hotpathSection(w func(string, ...any)) {
	h, c := r.hotpath, r.hotpathCfg
	w("## Hot path: the C echo server plain, under grmwrap without steering, and with it\n\n")
	w("%s\n\n", r.sectionCmd("hotpath"))
	w("How: the unmodified C echo server (`gcc -O2 %s`, one socket, one thread) in three modes:\n", c.src)
	w("- **A, plain**: `%s`, as it runs without grmwrap;\n", h.plainCmd)
	w("- **B, interception only**: `%s`, with grmwrap's steering program\n", h.wrappedCmd)
	w("  taken off the server's reuseport group. grmwrap has no switch for that, so the benchmark does it:\n")
	w("  it copies the server's socket (`pidfd_getfd`) and detaches the group's program\n")
	w("  (`SO_DETACH_REUSEPORT_BPF`). What remains is everything else grmwrap does to the server: the\n")
	w("  seccomp filter every syscall of the server passes (recvfrom, sendto, ppoll are allowed by it,\n")
	w("  never trapped) and SO_REUSEPORT on its socket (a reuseport group of one socket);\n")
	w("- **C, steering**: the same server with the program attached again (`SO_ATTACH_REUSEPORT_EBPF`\n")
	w("  with the supervisor's own program: a copy of its descriptor taken with `pidfd_getfd` from the\n")
	w("  supervisor, checked to be the only `grm_reuseport` SK_REUSEPORT program it holds, id %d),\n", h.progID)
	w("  i.e. grmwrap as it runs: filter, flow table lookups and socket selection for every datagram.\n\n")
	w("Each round starts %d new client sockets (goroutines, connected UDP, %d datagrams of %d bytes in\n", c.clients, c.window, c.payload)
	w("flight each, closed loop) against the mode's server, waits %s, counts replies for %s and closes\n", c.settle, c.round)
	w("them. Rounds come in triples in the six orders of A, B, C in turn (each mode takes each place\n")
	w("equally often); a triple's ratios compare rounds adjacent in time, and the median over %d triples\n", len(h.ratioB))
	w("discards the swings of this shared machine. The program's run counter (`rx_processed_total` from\n")
	w("`grmwrap status --json`, read before and after each round) shows that the program ran in C rounds\n")
	w("only.\n\n")
	w("| figure | value | target |\n|---|---|---|\n")
	w("| A: replies/s plain, median of rounds (min-max) | %s | - |\n", spread(h.rates[modePlain], 0))
	w("| B: replies/s under grmwrap, interception only | %s | - |\n", spread(h.rates[modeIntercept], 0))
	w("| C: replies/s under grmwrap with steering | %s | - |\n", spread(h.rates[modeSteered], 0))
	w("| **B/A, median of %d triples** (min-max) | **%s** %s | >= 0.99 |\n", len(h.ratioB), spread(h.ratioB, 3), verdict(median(h.ratioB), 0.99))
	w("| **C/A, median of %d triples** (min-max) | **%s** %s | >= 0.95 |\n", len(h.ratioC), spread(h.ratioC, 3), verdict(median(h.ratioC), 0.95))
	w("| C/B (the program alone), median (min-max) | %s | - |\n", spread(h.ratioCB, 3))
	w("| B/A and C/A over all rounds (total replies / total time) | %.3f and %.3f | - |\n", h.aggregate(modeIntercept), h.aggregate(modeSteered))
	if r.bind != nil {
		cost := median(r.bind.syscallNS[1]) - median(r.bind.syscallNS[0])
		w("| the filter's cost per untrapped syscall (getppid, bind section below; the server makes three per datagram: ppoll, recvfrom, sendto) | %.0f ns (a one-instruction allow-all filter: %.0f ns) | - |\n",
			cost, median(r.bind.syscallNS[2])-median(r.bind.syscallNS[0]))
		if a := median(h.rates[modePlain]); a > 0 {
			w("| B/A that cost alone implies: 1 / (1 + 3 x cost x A) | %.4f | >= 0.99 |\n", 1/(1+3*cost*1e-9*a))
		}
	}
	w("| program runs counted over whole rounds (settling and closing included) A / B / C | %s / %s / %s (replies in the measured part of C rounds: %s) | 0 in A and B |\n\n",
		thousands(h.runs[modePlain]), thousands(h.runs[modeIntercept]), thousands(h.runs[modeSteered]), thousands(h.replies[modeSteered]))
}

// verdict says whether v meets a lower bound.
func verdict(v, atLeast float64) string {
	if v >= atLeast {
		return "(meets)"
	}
	return "(**below target**)"
}
