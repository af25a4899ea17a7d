package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// upgradeConfig sizes the upgrade section.
type upgradeConfig struct {
	grmwrap  string // the grmwrap binary
	src      string // the C echo server's source
	upgrades int
}

// upgradeResult holds the upgrade section's figures.
type upgradeResult struct {
	cliMS       []float64 // `grmwrap upgrade` wall time, ms
	readyMS     []float64 // launch to ready, ms (the server's start-up and bind)
	readyFlipUS []float64 // readiness to flip done, µs
	rss3        int64     // supervisor RSS with 3 live generations, KiB
	rss3Gens    int
	command     string
}

// runUpgrade starts grmwrap with the C echo server, upgrades it cfg.upgrades
// times (each upgrade waits for the previous one's old generation to be
// gone), timing `grmwrap upgrade` and reading the supervisor's own figures
// from its JSON log; then keeps three generations alive (one flow each) and
// reads the supervisor's RSS.
func runUpgrade(cfg upgradeConfig, logf func(string, ...any)) (upgradeResult, error) {
	var res upgradeResult
	dir, err := os.MkdirTemp("", "grmbench-upgrade-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	echo := filepath.Join(dir, "echo-c")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", echo, cfg.src).CombinedOutput(); err != nil {
		return res, fmt.Errorf("build echo server: %v: %s", err, out)
	}
	rt := filepath.Join(dir, "run")
	const port = 7400
	args := []string{"--runtime-dir", rt, "--log-format", "json", "--flow-timeout", "60s", "--drain-timeout", "60s",
		"--", echo, strconv.Itoa(port)}
	res.command = "grmwrap " + strings.Join(args[:len(args)-3], " ") + " -- echo-c " + strconv.Itoa(port)
	sup := exec.Command(cfg.grmwrap, args...)
	logR, logW, err := os.Pipe()
	if err != nil {
		return res, err
	}
	sup.Stderr = logW
	if err := sup.Start(); err != nil {
		return res, fmt.Errorf("start grmwrap: %w", err)
	}
	logW.Close()
	defer func() {
		_ = sup.Process.Signal(os.Interrupt)
		_ = sup.Wait()
	}()
	flips := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(logR)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "upgrade: generation working" {
				flips <- m
			}
		}
	}()
	sock := filepath.Join(rt, strconv.Itoa(sup.Process.Pid)+".sock")
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 500 {
			return res, fmt.Errorf("grmwrap did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	upgrade := func() error {
		start := time.Now()
		out, err := exec.Command(cfg.grmwrap, "upgrade", "--runtime-dir", rt, strconv.Itoa(sup.Process.Pid)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("upgrade: %v: %s", err, out)
		}
		res.cliMS = append(res.cliMS, float64(time.Since(start).Microseconds())/1000)
		select {
		case m := <-flips:
			res.readyMS = append(res.readyMS, num(m["ready_after_us"])/1000)
			res.readyFlipUS = append(res.readyFlipUS, num(m["ready_to_flip_us"]))
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no flip logged")
		}
		return nil
	}
	// Timed upgrades: without flows each old generation leaves after the
	// minimum drain; wait for it, so each upgrade starts from one live
	// generation.
	for i := 0; i < cfg.upgrades; i++ {
		if err := upgrade(); err != nil {
			return res, err
		}
		if err := waitLive(cfg.grmwrap, rt, sup.Process.Pid, 1, 10*time.Second); err != nil {
			return res, err
		}
	}
	logf("upgrade: %d timed upgrades done", cfg.upgrades)
	// Three live generations: a flow on each old one keeps it draining.
	for range 2 {
		c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			return res, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return res, err
		}
		if _, err := c.Read(make([]byte, 64)); err != nil {
			return res, fmt.Errorf("echo before the upgrade: %w", err)
		}
		if err := upgrade(); err != nil {
			return res, err
		}
	}
	if err := waitLive(cfg.grmwrap, rt, sup.Process.Pid, 3, 5*time.Second); err != nil {
		return res, err
	}
	res.rss3Gens = 3
	res.rss3, err = rssKiB(sup.Process.Pid)
	return res, err
}

// waitLive waits until the supervisor reports exactly n live generations.
func waitLive(grmwrap, rt string, pid, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command(grmwrap, "status", "--runtime-dir", rt, "--json", strconv.Itoa(pid)).Output()
		if err == nil {
			var st struct {
				Generations []struct {
					State string `json:"state"`
				} `json:"generations"`
			}
			if json.Unmarshal(out, &st) == nil {
				live := 0
				for _, g := range st.Generations {
					if g.State != "exited" && g.State != "failed" {
						live++
					}
				}
				if live == n {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("supervisor never had %d live generations", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// rssKiB reads VmRSS of pid.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// medianRange formats the median and range of xs.
func medianRange(xs []float64, unit string) string {
	if len(xs) == 0 {
		return "-"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("%.2f %s (%.2f-%.2f)", s[len(s)/2], unit, s[0], s[len(s)-1])
}

func (r *report) upgradeSection(w func(string, ...any)) {
	u := r.upgrade
	w("## Upgrades\n\n")
	w("%s\n\n", r.sectionCmd("upgrade"))
	w("How: `%s` (the unmodified C echo server binds at once), then %d upgrades with\n", u.command, r.upgradeCfg.upgrades)
	w("`grmwrap upgrade PID`, each after the previous old generation was gone. Wall time of the\n")
	w("`grmwrap upgrade` process; the supervisor's own figures from its JSON log (`ready_after_us`:\n")
	w("launch of the new instance to its readiness, i.e. the server's start-up and bind;\n")
	w("`ready_to_flip_us`: readiness to the working generation flipped in every group, which includes\n")
	w("the `--settle` window, 500 ms by default). `grmwrap upgrade` exits 0 only once the new generation\n")
	w("stayed working through the confirmation window (the minimum drain, 1 s here). Then two more\n")
	w("upgrades with a live flow on each old generation, so three generations live, and the\n")
	w("supervisor's VmRSS.\n\n")
	w("| figure | median (min-max) | target |\n|---|---|---|\n")
	w("| readiness to flip, settle window included | %s | settle + under 1 ms |\n", medianRange(u.readyFlipUS, "µs"))
	w("| `grmwrap upgrade` to its exit 0 | %s | settle + confirmation + under 50 ms, server start-up excluded |\n", medianRange(u.cliMS, "ms"))
	w("| of which the server's start-up to ready (launch, exec, bind) | %s | - |\n", medianRange(u.readyMS, "ms"))
	w("| supervisor RSS with %d live generations | %.1f MiB | under 30 MiB |\n\n", u.rss3Gens, float64(u.rss3)/1024)
}
