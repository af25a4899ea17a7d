package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/load"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// failedWithReason asserts that status shows generation n failed with a
// reason containing want, and generation working as the working one.
func failedWithReason(t *testing.T, st Status, n, working uint32, want string) {
	t.Helper()
	g := genOf(t, st, n)
	if g.State != generations.StateFailed || !strings.Contains(g.Reason, want) {
		t.Errorf("generation %d: state %q reason %q; want failed with %q", n, g.State, g.Reason, want)
	}
	if w := genOf(t, st, working); st.WorkingGeneration != working || w.State != generations.StateWorking {
		t.Errorf("working generation %d (generation %d %q); want %d working", st.WorkingGeneration, working, w.State, working)
	}
}

// TestUpgradeNewGenerationDiesInSettleWindow: generation 2 binds its UDP
// port, then exits 1 50 ms later (a later start step failed). The upgrade
// must fail with the reason, generation 2 must show failed, generation 1
// keep working, no datagram of the load be lost (generation 2 never got
// any), and a further upgrade to a healthy generation 3 work.
func TestUpgradeNewGenerationDiesInSettleWindow(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--drain-timeout", "2s"}, testbin.EchoC(t), "--exit-after-ms", "50@2", strconv.Itoa(port))
	l := startLoad(load.Config{Addr: addr(port), Flows: 16, Rate: 1000, Duration: 3 * time.Second, Grace: 2 * time.Second})
	time.Sleep(300 * time.Millisecond) // let the load's flows start on generation 1
	r := s.upgrade(nil)
	if r.code != 1 || !strings.Contains(r.stderr, "upgrade failed, rolled back: generation 2 exited with status 1 during the settle window") {
		t.Errorf("upgrade: %v; want exit 1 with the settle-window death; grmwrap's log:\n%s", r, s.g.Stderr())
	}
	failedWithReason(t, s.status(), 2, 1, "settle window")
	// New flows after the failed upgrade go to generation 1.
	l2 := startLoad(load.Config{Addr: addr(port), Flows: 16, Rate: 500, Duration: time.Second, Grace: 2 * time.Second})
	noLoss(t, "load across the failed upgrade", l.wait(t))
	noLoss(t, "new flows after it", l2.wait(t))
	s.mustUpgrade(3)
}

// TestUpgradeNewGenerationDiesAfterFlip: generation 2 passes the settle
// window, is made working, then exits 1 within the confirmation window
// (MinDrain, 1s by default). The upgrade must fail with the reason,
// generation 2 show failed, and generation 1 be working again.
func TestUpgradeNewGenerationDiesAfterFlip(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--settle", "200ms"}, testbin.EchoC(t), "--exit-after-ms", "700@2", strconv.Itoa(port))
	r := s.upgrade(nil)
	if r.code != 1 || !strings.Contains(r.stderr, "upgrade failed, rolled back: generation 2 exited with status 1") ||
		!strings.Contains(r.stderr, "after it became working") {
		t.Errorf("upgrade: %v; want exit 1: generation 2 exited after it became working; grmwrap's log:\n%s", r, s.g.Stderr())
	}
	failedWithReason(t, s.status(), 2, 1, "after it became working")
	if !strings.Contains(s.g.Stderr(), "upgrade: generation working") {
		t.Errorf("generation 2 was never made working (the test must cover a death after the flip); grmwrap's log:\n%s", s.g.Stderr())
	}
	if rep := testbin.Echo(t, addr(port), "hello", wait); !strings.HasPrefix(rep, strconv.Itoa(s.first.PID)+" ") {
		t.Errorf("a new flow was answered %q, want by generation 1 (pid %d)", rep, s.first.PID)
	}
}

// TestUpgradeToStoppedGenerationRollsBack: generation 2 is SIGSTOPped
// right after it started, under load; with --ready delay:1s it would be
// ready after 1s. It must not be made working: the upgrade fails when the
// readiness timeout passes, saying it is stopped, and no datagram is lost
// (also of flows that start after it would have been ready).
func TestUpgradeToStoppedGenerationRollsBack(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--ready", "delay:1s", "--ready-timeout", "2500ms", "--kill-timeout", "1s"},
		testbin.EchoC(t), strconv.Itoa(port))
	l := startLoad(load.Config{Addr: addr(port), Flows: 16, Rate: 1000, Duration: 4 * time.Second, Grace: 2 * time.Second})
	up := startCLI(t, s.upgradeArgs(s.pid, nil, nil)...)
	pid := s.instancePID(2)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP generation 2: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) // ESRCH once it is gone
	// New flows from after the moment delay:1s says ready.
	time.Sleep(1200 * time.Millisecond)
	l2 := startLoad(load.Config{Addr: addr(port), Flows: 16, Rate: 1000, Duration: time.Second, Grace: 2 * time.Second})
	r := finish(t, up)
	if r.code != 1 || !strings.Contains(r.stderr, "upgrade failed, rolled back: generation 2 is stopped") {
		t.Errorf("upgrade: %v; want exit 1: generation 2 is stopped; grmwrap's log:\n%s", r, s.g.Stderr())
	}
	failedWithReason(t, s.status(), 2, 1, "stopped")
	noLoss(t, "flows across the upgrade", l.wait(t))
	noLoss(t, "new flows after the delay", l2.wait(t))
}

// TestStoppedWorkingGenerationReportedStalled: the working generation is
// SIGSTOPped under load: status reports it stalled (with the reason) and
// the metric says 1; after SIGCONT both say it recovered.
func TestStoppedWorkingGenerationReportedStalled(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	listen := addr(freeTCPPort(t))
	url := "http://" + listen + "/metrics"
	s := startSvc(t, port, []string{"--metrics-listen", listen}, testbin.EchoC(t), strconv.Itoa(port))
	pid := s.first.PID
	l := startLoad(load.Config{Addr: addr(port), Flows: 8, Rate: 500, Duration: 6 * time.Second, Grace: time.Second})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP generation 1: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) // ESRCH once it is gone
	st := s.waitStatus("generation 1 stalled", func(st Status) bool { return genOf(t, st, 1).Stalled })
	if g := genOf(t, st, 1); !strings.Contains(g.StalledReason, "generation 1 is stopped") || g.State != generations.StateWorking {
		t.Errorf("generation 1: %+v; want working, stalled because stopped", g)
	}
	if v := scrapeMetrics(t, url).value(t, "grmwrap_generation_stalled", "generation", "1"); v != 1 {
		t.Errorf("grmwrap_generation_stalled{generation=1} = %v while stopped, want 1", v)
	}
	waitStderr(t, s.g, `msg="generation stalls: it does not take datagrams off its sockets" generation=1`)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT generation 1: %v", err)
	}
	s.waitStatus("generation 1 recovered", func(st Status) bool { return !genOf(t, st, 1).Stalled })
	if v := scrapeMetrics(t, url).value(t, "grmwrap_generation_stalled", "generation", "1"); v != 0 {
		t.Errorf("grmwrap_generation_stalled{generation=1} = %v after SIGCONT, want 0", v)
	}
	waitStderr(t, s.g, `msg="generation recovered: it takes datagrams again" generation=1`)
	r := l.wait(t)
	t.Logf("load while stopped: sent %d answered %d lost %d", r.Sent, r.Answered, r.Lost)
}

// TestHungGenerationReportedStalledAndReleased: the working generation
// blocks for good (echo-c's "hang": not stopped, it just never reads again)
// while its flows send. Status, the metric and the log report it stalled
// because it has not run; after an upgrade, the hung generation, now
// draining, leaves steering at once, its flows are answered by the new
// generation, and it is stopped, long before the 60 s drain timeout.
func TestHungGenerationReportedStalledAndReleased(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	listen := addr(freeTCPPort(t))
	url := "http://" + listen + "/metrics"
	s := startSvc(t, port, []string{"--metrics-listen", listen, "--drain-timeout", "60s", "--flow-timeout", "60s"},
		testbin.EchoC(t), strconv.Itoa(port))
	first := strconv.Itoa(s.first.PID)
	fs := openNeighbourFlows(t, port, 20)
	if got := fs.answers(t); got[first] != len(fs) {
		t.Fatalf("before the hang: answers %v, want all %d from generation 1 (%s)", got, len(fs), first)
	}
	hangs := openNeighbourFlows(t, port, 1)
	if _, err := hangs[0].Write([]byte("hang")); err != nil {
		t.Fatal(err)
	}
	for i, c := range fs { // they wait in generation 1's queue
		if _, err := c.Write([]byte("late " + strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	st := s.waitStatus("generation 1 stalled", func(st Status) bool { return genOf(t, st, 1).Stalled })
	if g := genOf(t, st, 1); !strings.Contains(g.StalledReason, "generation 1 has not run for") || g.State != generations.StateWorking {
		t.Errorf("generation 1: %+v; want working, stalled because it has not run", g)
	}
	if v := scrapeMetrics(t, url).value(t, "grmwrap_generation_stalled", "generation", "1"); v != 1 {
		t.Errorf("grmwrap_generation_stalled{generation=1} = %v while hung, want 1", v)
	}
	waitStderr(t, s.g, `msg="generation stalls: it does not take datagrams off its sockets" generation=1`)

	started := time.Now()
	s.mustUpgrade(2)
	waitStderr(t, s.g, `msg="draining generation stalls: its sockets leave steering, its flows go to the working generation" generation=1`)
	second := strconv.Itoa(s.instancePID(2))
	got := fs.answers(t)
	if got[second] != len(fs) {
		t.Errorf("flows of the hung generation after the upgrade: answers %v, want all %d from generation 2 (%s)", got, len(fs), second)
	}
	if d := time.Since(started); d > 45*time.Second {
		t.Errorf("the flows moved %v after the upgrade: not before the drain timeout's end", d)
	}
	// Out of steering, it has no flows left to drain: it is stopped.
	s.waitGen(1, generations.StateExited)
	if d := time.Since(started); d > 45*time.Second {
		t.Errorf("the hung generation ended %v after the upgrade: not before the drain timeout's end", d)
	}
}

// TestStoppedOrphanedWorkerReportedStalled: the server of generation 1 runs
// in its own session, orphaned by a double fork (its main process is a
// sleep): neither a descendant of the main pid nor in its process group,
// only in the generation's cgroup. SIGSTOPped under load, it is reported
// stalled: health reads the cgroup's members, not the main pid's tree.
func TestStoppedOrphanedWorkerReportedStalled(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, nil, "sh", "-c", `( setsid "$0" "$1" & ); exec sleep infinity`, testbin.EchoC(t), strconv.Itoa(port))
	worker := s.first.PID
	if genOf(t, s.status(), 1).PID == worker {
		t.Fatalf("the echo server %d is generation 1's main process; want it orphaned", worker)
	}
	l := startLoad(load.Config{Addr: addr(port), Flows: 8, Rate: 500, Duration: 4 * time.Second, Grace: time.Second})
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP the worker: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(worker, syscall.SIGCONT) }) // ESRCH once it is gone
	st := s.waitStatus("generation 1 stalled", func(st Status) bool { return genOf(t, st, 1).Stalled })
	if g := genOf(t, st, 1); !strings.Contains(g.StalledReason, "generation 1 is stopped") {
		t.Errorf("generation 1: %+v; want stalled because stopped", g)
	}
	if err := syscall.Kill(worker, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT the worker: %v", err)
	}
	s.waitStatus("generation 1 recovered", func(st Status) bool { return !genOf(t, st, 1).Stalled })
	l.wait(t)
}
