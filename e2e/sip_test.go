//go:build e2e

package e2e

// SIP end to end: sipp (Debian sip-tester) and kamailio, as packaged.
//
// The UAC is sipp's built-in uac scenario with one socket per call (-t un),
// so each call is one flow (exact 4-tuple) and every call is held long enough
// to straddle the upgrades. sipp counts a call as failed from its own side
// only; the built-in UAS answers a BYE of a dialog it never saw with 200 OK
// (its default "unexpected BYE" behaviour) and counts the call as failed on
// ITS side, so the UAC alone cannot see a UAS that lost its dialogs. The
// sipp UAS tests therefore read the statistics of the UAC and of every UAS
// instance (-trace_stat, one file per instance).
//
// Kamailio is a proxy between the UAC and a plain sipp UAS. Its
// proxy-to-UAS leg is one 4-tuple shared by every call; were it sent from
// the managed socket, grmwrap would keep that flow on the generation that
// saw it first, and the UAS's replies to a newer generation's transactions
// would reach the old generation. So each generation sends to the UAS from
// a socket of its own (testdata/e2e/sip/kamailio.cfg, UPSTREAM), given on
// its command line (`grmwrap upgrade PID -- kamailio ...`).

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

const (
	sipUASPort   = 5070 // the UAS
	sipProxyPort = 5060 // kamailio's managed address
	sipUACPort   = 5080 // the UAC's main socket (calls use sockets of their own)
	sipUpBase    = 5160 // kamailio generation N sends to the UAS from sipUpBase+N

	sipCalls = 240                     // calls per run
	sipRate  = 20                      // calls per second: the UAC runs ~sipCalls/sipRate s
	sipHold  = 3 * time.Second         // pause between ACK and BYE
	sipGap   = 4 * time.Second         // between UAC start and upgrade 1, and between upgrades
	sipFlow  = "6s"                    // --flow-timeout: longer than sipHold, so held calls keep their instance
	sipWait  = 4500 * time.Millisecond // the UAS's closing timewait (4s) and a margin
)

// sippStats is the last row of a sipp -trace_stat file: counter name to
// value, e.g. "SuccessfulCall(C)", "FailedCall(C)", "IncomingCall(C)".
type sippStats map[string]string

// lastSippStats reads the last complete row of a sipp statistics file.
func lastSippStats(path string) (sippStats, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text := string(data)
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		text = text[:i] // drop a row being written
	} else {
		return nil, fmt.Errorf("%s: no complete row", path)
	}
	lines := strings.Split(text, "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("%s: header only", path)
	}
	head := strings.Split(lines[0], ";")
	row := strings.Split(lines[len(lines)-1], ";")
	st := sippStats{}
	for i, name := range head {
		if name != "" && i < len(row) {
			st[name] = row[i]
		}
	}
	return st, nil
}

func readSippStats(t *testing.T, path string) sippStats {
	t.Helper()
	st, err := lastSippStats(path)
	if err != nil {
		t.Fatalf("sipp statistics: %v", err)
	}
	return st
}

// n returns a counter; it fails the test if sipp did not write it.
func (s sippStats) n(t *testing.T, name string) int {
	t.Helper()
	v, ok := s[name]
	if !ok {
		t.Fatalf("sipp statistics have no %s", name)
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		t.Fatalf("sipp statistics: %s=%q: %v", name, v, err)
	}
	return n
}

func (s sippStats) String() string {
	var b strings.Builder
	for _, k := range []string{"TotalCallCreated", "IncomingCall(C)", "OutgoingCall(C)", "SuccessfulCall(C)",
		"FailedCall(C)", "FailedUnexpectedMessage(C)", "FailedTimeoutOnRecv(C)", "FailedMaxUDPRetrans(C)",
		"CurrentCall", "Retransmissions(C)", "DeadCallMsgs(C)"} {
		if v, ok := s[k]; ok {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	return strings.TrimSpace(b.String())
}

// sipUASArgv is the UAS command line: sipp's built-in uas scenario in the
// foreground, statistics to stf when it exits (and every 60s).
func sipUASArgv(stf string) []string {
	return []string{"sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", strconv.Itoa(sipUASPort),
		"-nostdin", "-trace_stat", "-stf", stf}
}

// sipKamailioArgv is the proxy's command line for generation gen: foreground
// (-DD), log to stderr, two workers per listening socket, the managed
// address and the generation's own upstream socket.
func sipKamailioArgv(t *testing.T, dir string, gen int) []string {
	up := fmt.Sprintf("udp:127.0.0.1:%d", sipUpBase+gen)
	return []string{"kamailio", "-DD", "-E", "-n", "2", "-Y", dir,
		"-f", filepath.Join(testbin.Root(t), "testdata", "e2e", "sip", "kamailio.cfg"),
		"-l", fmt.Sprintf("udp:127.0.0.1:%d", sipProxyPort), "-l", up, "-A", "UPSTREAM=" + up}
}

// sipUAC is a running sipp UAC.
type sipUAC struct {
	cmd   *exec.Cmd
	stf   string
	out   string
	done  chan struct{}
	ended time.Time
}

// sipStartUAC starts sipp's built-in uac scenario against target (host:port):
// sipCalls calls at sipRate per second, one socket per call, each held
// sipHold; a call that waits more than 10s for an answer fails instead of
// hanging. Statistics go to dir/uac.csv every second.
func sipStartUAC(t *testing.T, dir, target string) *sipUAC {
	t.Helper()
	u := &sipUAC{stf: filepath.Join(dir, "uac.csv"), out: filepath.Join(dir, "uac.out"), done: make(chan struct{})}
	out, err := os.Create(u.out)
	if err != nil {
		t.Fatal(err)
	}
	u.cmd = exec.Command("sipp", "-sn", "uac", target, "-i", "127.0.0.1", "-p", strconv.Itoa(sipUACPort),
		"-t", "un", "-r", strconv.Itoa(sipRate), "-m", strconv.Itoa(sipCalls),
		"-d", strconv.Itoa(int(sipHold/time.Millisecond)), "-recv_timeout", "10000",
		"-max_socket", "1000", "-nostdin", "-trace_stat", "-stf", u.stf, "-fd", "1")
	u.cmd.Dir = dir
	u.cmd.Stdout = out
	u.cmd.Stderr = out
	t.Logf("UAC: %s", strings.Join(u.cmd.Args, " "))
	if err := u.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("starting the UAC: %v", err)
	}
	go func() {
		_ = u.cmd.Wait()
		u.ended = time.Now()
		out.Close()
		close(u.done)
	}()
	t.Cleanup(func() {
		select {
		case <-u.done:
		default:
			_ = u.cmd.Process.Kill()
			<-u.done
		}
	})
	return u
}

// current logs and returns the calls in progress, from the latest
// statistics row (at most a second old).
func (u *sipUAC) current(t *testing.T, when string) int {
	t.Helper()
	st, err := lastSippStats(u.stf)
	if err != nil {
		t.Logf("UAC %s: no statistics yet: %v", when, err)
		return 0
	}
	t.Logf("UAC %s: %s", when, st)
	return st.n(t, "CurrentCall")
}

// wait waits for the UAC to finish and returns its exit code and final
// statistics.
func (u *sipUAC) wait(t *testing.T) (int, sippStats) {
	t.Helper()
	select {
	case <-u.done:
	case <-time.After(90 * time.Second):
		out, _ := os.ReadFile(u.out)
		t.Fatalf("UAC still running after 90s:\n%s", sipTail(string(out), 3000))
	}
	st := readSippStats(t, u.stf)
	code := u.cmd.ProcessState.ExitCode()
	t.Logf("UAC exited %d: %s", code, st)
	return code, st
}

// sipTail returns the last n bytes of s.
func sipTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// sipDiscard reads a server's stdout so that it never blocks on a full pipe.
func sipDiscard(s *testbin.Server) {
	go func() {
		for range s.Lines {
		}
	}()
}

// sipWaitBound waits until a UDP socket is bound to 127.0.0.1:port in this
// network namespace.
func sipWaitBound(t *testing.T, port int) {
	t.Helper()
	want := fmt.Sprintf("0100007F:%04X", port)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile("/proc/net/udp")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) > 1 && f[1] == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing bound 127.0.0.1:%d within 20s", port)
}

// sipGroupProcs returns the live (not zombie) processes of process group pgid.
func sipGroupProcs(t *testing.T, pgid int) []int {
	t.Helper()
	if pgid <= 0 {
		t.Fatalf("no process group %d", pgid)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state ppid pgrp ...
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sipRecordPIDs notes the pid of every generation in st that runs: status
// reports no pid for a generation that has exited.
func sipRecordPIDs(st Status, pids map[int]int) {
	for _, g := range st.Generations {
		if g.PID > 0 && pids[g.Generation] == 0 {
			pids[g.Generation] = g.PID
		}
	}
}

// sipCheckGenerations checks that st has want generations, the last one
// working and every other one exited.
func sipCheckGenerations(t *testing.T, st Status, want int) {
	t.Helper()
	for _, g := range st.Generations {
		switch {
		case g.Generation == want && g.State != "working":
			t.Errorf("generation %d is %s, want working", g.Generation, g.State)
		case g.Generation < want && g.State != "exited":
			t.Errorf("generation %d is %s, want exited", g.Generation, g.State)
		}
	}
	if len(st.Generations) != want || st.WorkingGeneration != want {
		t.Errorf("status: %d generations, working %d; want %d, working %d: %+v",
			len(st.Generations), st.WorkingGeneration, want, want, st)
	}
}

// sipStopSupervisor stops grmwrap with SIGTERM (it stops every instance) and
// returns its exit status, the working instance's.
func sipStopSupervisor(t *testing.T, s *Supervisor) int {
	t.Helper()
	if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stopping grmwrap: %v", err)
	}
	return s.Wait(t, 30*time.Second)
}

// sipUntil sleeps until d after start.
func sipUntil(start time.Time, d time.Duration) {
	time.Sleep(time.Until(start.Add(d)))
}

// TestSIPUASUpgrade: sipp's UAS under grmwrap, upgraded twice while the UAC
// places calls that straddle both upgrades. Every call succeeds, on the UAC
// and on the UAS instance that took it; each instance saw only its own
// calls (no message of a call reached an instance that did not see its
// INVITE); the old instances drain and exit.
func TestSIPUASUpgrade(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "sipp")
	dir := t.TempDir()
	stf := func(gen int) string { return filepath.Join(dir, fmt.Sprintf("uas-%d.csv", gen)) }

	args := append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", sipUASPort),
		"--flow-timeout", sipFlow, "--drain-timeout", "60s", "--"}, sipUASArgv(stf(1))...)
	t.Logf("grmwrap %s", strings.Join(args, " "))
	s := Start(t, args...)
	sipDiscard(s.Server)
	s.WaitSockets(t, 1)
	pids := map[int]int{}
	sipRecordPIDs(s.Status(t), pids)

	u := sipStartUAC(t, dir, fmt.Sprintf("127.0.0.1:%d", sipUASPort))
	start := time.Now()
	for gen := 2; gen <= 3; gen++ {
		sipUntil(start, time.Duration(gen-1)*sipGap)
		if n := u.current(t, fmt.Sprintf("before upgrade %d", gen-1)); n == 0 {
			t.Fatalf("no call in progress before upgrade %d: the calls would not straddle it", gen-1)
		}
		s.MustUpgrade(t, append([]string{"--"}, sipUASArgv(stf(gen))...)...)
		st := s.Status(t)
		sipRecordPIDs(st, pids)
		for _, g := range st.Generations {
			if g.Generation == gen-1 && g.State != "draining" {
				t.Errorf("right after upgrade %d generation %d is %s, want draining (its calls in progress)", gen-1, g.Generation, g.State)
			}
		}
		t.Logf("upgrade %d: %+v", gen-1, st.Generations)
	}

	code, st := u.wait(t)
	if code != 0 || st.n(t, "FailedCall(C)") != 0 || st.n(t, "SuccessfulCall(C)") != sipCalls {
		t.Errorf("UAC: exit %d, %d successful, %d failed calls; want exit 0, %d successful, 0 failed",
			code, st.n(t, "SuccessfulCall(C)"), st.n(t, "FailedCall(C)"), sipCalls)
	}
	s.WaitDrained(t, 30*time.Second)
	sipCheckGenerations(t, s.Status(t), 3)
	t.Logf("counters: %v", s.Status(t).Counters)

	// The last calls end in the working instance's 4s timewait; then stop
	// it so that it writes its final statistics.
	sipUntil(u.ended, sipWait)
	if code := sipStopSupervisor(t, s); code != 0 {
		t.Errorf("grmwrap (the working sipp) exited %d, want 0 (sipp: 1 when a call failed)", code)
	}
	var incoming, successful, failed int
	for gen := 1; gen <= 3; gen++ {
		g := readSippStats(t, stf(gen))
		t.Logf("UAS generation %d (pid %d): %s", gen, pids[gen], g)
		if g.n(t, "IncomingCall(C)") == 0 {
			t.Errorf("UAS generation %d took no call", gen)
		}
		incoming += g.n(t, "IncomingCall(C)")
		successful += g.n(t, "SuccessfulCall(C)")
		failed += g.n(t, "FailedCall(C)")
	}
	if incoming != sipCalls || successful != sipCalls || failed != 0 {
		t.Errorf("UAS instances: %d calls created, %d successful, %d failed; want %d, %d, 0 "+
			"(a call created twice is a dialog that reached an instance that never saw its INVITE)",
			incoming, successful, failed, sipCalls, sipCalls)
	}
}

// TestSIPUASRestartControl is the negative control of TestSIPUASUpgrade:
// the same run, but the UAS runs without grmwrap and is restarted the plain
// way (SIGTERM, wait for it to exit, start it again) at the two upgrade
// times. The dialogs in progress are lost: their ACKs and BYEs reach an
// instance that never saw the INVITE, so calls fail.
func TestSIPUASRestartControl(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "sipp")
	dir := t.TempDir()
	stf := func(gen int) string { return filepath.Join(dir, fmt.Sprintf("uas-%d.csv", gen)) }
	startUAS := func(gen int) *testbin.Server {
		argv := sipUASArgv(stf(gen))
		t.Logf("UAS %d: %s", gen, strings.Join(argv, " "))
		srv := testbin.Start(t, exec.Command(argv[0], argv[1:]...))
		sipDiscard(srv)
		return srv
	}

	uas := startUAS(1)
	sipWaitBound(t, sipUASPort)
	u := sipStartUAC(t, dir, fmt.Sprintf("127.0.0.1:%d", sipUASPort))
	start := time.Now()
	for gen := 2; gen <= 3; gen++ {
		sipUntil(start, time.Duration(gen-1)*sipGap)
		u.current(t, fmt.Sprintf("before restart %d", gen-1))
		if err := uas.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		t.Logf("restart %d: UAS %d exited %d", gen-1, gen-1, uas.Wait(t, 10*time.Second))
		uas = startUAS(gen)
	}

	code, st := u.wait(t)
	sipUntil(u.ended, sipWait)
	if err := uas.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	uas.Wait(t, 10*time.Second)
	uacFailed := st.n(t, "FailedCall(C)")
	uasFailed, incoming := 0, 0
	for gen := 1; gen <= 3; gen++ {
		g := readSippStats(t, stf(gen))
		t.Logf("UAS %d: %s", gen, g)
		uasFailed += g.n(t, "FailedCall(C)")
		incoming += g.n(t, "IncomingCall(C)")
	}
	t.Logf("plain restarts: UAC exit %d, %d successful, %d failed; UAS instances: %d failed, %d calls created for %d calls",
		code, st.n(t, "SuccessfulCall(C)"), uacFailed, uasFailed, incoming, sipCalls)
	if uacFailed+uasFailed == 0 && incoming == sipCalls {
		t.Errorf("plain restarts failed no call: this scenario cannot tell grmwrap's upgrade from a restart")
	}
}

// TestSIPKamailioUpgrade: kamailio, which forks workers that share its
// socket, proxies between the UAC and a plain sipp UAS and is upgraded twice
// while calls straddle the upgrades. Every call succeeds; each old
// generation drains and exits with all its processes.
func TestSIPKamailioUpgrade(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "sipp", "kamailio")
	dir := t.TempDir()

	argv := sipUASArgv(filepath.Join(dir, "uas.csv"))
	t.Logf("UAS: %s", strings.Join(argv, " "))
	uas := testbin.Start(t, exec.Command(argv[0], argv[1:]...))
	sipDiscard(uas)
	sipWaitBound(t, sipUASPort)

	args := append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", sipProxyPort),
		"--flow-timeout", sipFlow, "--drain-timeout", "60s", "--"}, sipKamailioArgv(t, dir, 1)...)
	t.Logf("grmwrap %s", strings.Join(args, " "))
	s := Start(t, args...)
	sipDiscard(s.Server)
	s.WaitSockets(t, 1)

	// kamailio forks its workers after binding: wait for them, so that the
	// test knows the instance is a process group of several processes.
	pids := map[int]int{}
	sipRecordPIDs(s.Status(t), pids)
	waitWorkers := func(gen int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for len(sipGroupProcs(t, pids[gen])) < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("kamailio generation %d (pid %d) forked no workers; processes in its group: %v\n%s",
					gen, pids[gen], sipGroupProcs(t, pids[gen]), s.Stderr())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("kamailio generation %d (pid %d): processes %v", gen, pids[gen], sipGroupProcs(t, pids[gen]))
	}
	waitWorkers(1)

	u := sipStartUAC(t, dir, fmt.Sprintf("127.0.0.1:%d", sipProxyPort))
	start := time.Now()
	for gen := 2; gen <= 3; gen++ {
		sipUntil(start, time.Duration(gen-1)*sipGap)
		if n := u.current(t, fmt.Sprintf("before upgrade %d", gen-1)); n == 0 {
			t.Fatalf("no call in progress before upgrade %d: the calls would not straddle it", gen-1)
		}
		s.MustUpgrade(t, append([]string{"--"}, sipKamailioArgv(t, dir, gen)...)...)
		st := s.Status(t)
		sipRecordPIDs(st, pids)
		t.Logf("upgrade %d: %+v", gen-1, st.Generations)
		waitWorkers(gen)
	}

	code, st := u.wait(t)
	if code != 0 || st.n(t, "FailedCall(C)") != 0 || st.n(t, "SuccessfulCall(C)") != sipCalls {
		t.Errorf("UAC: exit %d, %d successful, %d failed calls; want exit 0, %d successful, 0 failed",
			code, st.n(t, "SuccessfulCall(C)"), st.n(t, "FailedCall(C)"), sipCalls)
	}
	s.WaitDrained(t, 30*time.Second)
	sipCheckGenerations(t, s.Status(t), 3)
	t.Logf("counters: %v", s.Status(t).Counters)
	for gen := 1; gen <= 2; gen++ {
		if left := sipGroupProcs(t, pids[gen]); len(left) > 0 {
			t.Errorf("kamailio generation %d (pid %d) exited but left processes %v", gen, pids[gen], left)
		}
	}
	if n := len(sipGroupProcs(t, pids[3])); n < 3 {
		t.Errorf("working kamailio (pid %d) has %d processes, want its workers too", pids[3], n)
	}

	sipUntil(u.ended, sipWait)
	if code := sipStopSupervisor(t, s); code != 0 {
		t.Errorf("grmwrap (the working kamailio) exited %d, want 0", code)
	}
	if left := sipGroupProcs(t, pids[3]); len(left) > 0 {
		t.Errorf("kamailio generation 3 left processes %v after grmwrap stopped", left)
	}
	if err := uas.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	uas.Wait(t, 10*time.Second)
	g := readSippStats(t, filepath.Join(dir, "uas.csv"))
	t.Logf("UAS: %s", g)
	if g.n(t, "IncomingCall(C)") != sipCalls || g.n(t, "FailedCall(C)") != 0 {
		t.Errorf("UAS: %d calls created, %d failed; want %d, 0", g.n(t, "IncomingCall(C)"), g.n(t, "FailedCall(C)"), sipCalls)
	}
}

// TestSIPKamailioRestartControl is the negative control of
// TestSIPKamailioUpgrade: the same run with kamailio outside grmwrap,
// restarted the plain way (SIGTERM, wait, start again) at the two upgrade
// times. The restarted proxy does not know the dialogs in progress and
// refuses their BYEs, so calls fail.
func TestSIPKamailioRestartControl(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "sipp", "kamailio")
	dir := t.TempDir()

	argv := sipUASArgv(filepath.Join(dir, "uas.csv"))
	uas := testbin.Start(t, exec.Command(argv[0], argv[1:]...))
	sipDiscard(uas)
	sipWaitBound(t, sipUASPort)

	startProxy := func(gen int) *testbin.Server {
		argv := sipKamailioArgv(t, dir, gen)
		t.Logf("kamailio %d: %s", gen, strings.Join(argv, " "))
		srv := testbin.Start(t, exec.Command(argv[0], argv[1:]...))
		sipDiscard(srv)
		return srv
	}
	proxy := startProxy(1)
	sipWaitBound(t, sipProxyPort)

	u := sipStartUAC(t, dir, fmt.Sprintf("127.0.0.1:%d", sipProxyPort))
	start := time.Now()
	for gen := 2; gen <= 3; gen++ {
		sipUntil(start, time.Duration(gen-1)*sipGap)
		u.current(t, fmt.Sprintf("before restart %d", gen-1))
		if err := proxy.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		t.Logf("restart %d: kamailio %d exited %d", gen-1, gen-1, proxy.Wait(t, 15*time.Second))
		proxy = startProxy(gen)
	}

	code, st := u.wait(t)
	t.Logf("plain restarts: UAC exit %d, %d successful, %d failed calls",
		code, st.n(t, "SuccessfulCall(C)"), st.n(t, "FailedCall(C)"))
	if st.n(t, "FailedCall(C)") == 0 {
		t.Errorf("plain restarts failed no call: this scenario cannot tell grmwrap's upgrade from a restart")
	}
}
