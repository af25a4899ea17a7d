package generations

// Unit tests of the Manager state machine against the fakes in
// manager_fakes_test.go. No test asserts on wall-clock durations: waits for
// asynchronous transitions poll Status (or a fake's counters) with mHang as
// a guard against hangs only.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// mHang bounds every wait for something asynchronous. It is a hang guard,
// never a timing assertion.
const mHang = 10 * time.Second

// mConfig is the configuration of every test unless it tunes it: short, so
// that timeouts, when a test relies on them, pass quickly.
func mConfig() Config {
	return Config{
		ReadyTimeout: 200 * time.Millisecond,
		DrainTimeout: 300 * time.Millisecond,
		KillTimeout:  100 * time.Millisecond,
		DrainPoll:    5 * time.Millisecond,
	}
}

func mKey(port uint16) GroupKey {
	return GroupKey{NetNS: 7, Family: FamilyINET, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}
}

func mKey6(port uint16) GroupKey {
	return GroupKey{NetNS: 7, Family: FamilyINET6, Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), port)}
}

func mSig(gen uint32, sig syscall.Signal) mEvent { return mEvent{Op: "signal", Gen: gen, Sig: sig} }
func mRel(gen uint32) mEvent                     { return mEvent{Op: "Release", Gen: gen} }
func mKill(gen uint32) mEvent                    { return mEvent{Op: "kill", Gen: gen} }

func mClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// mWaitFor polls cond until it holds; mHang is only a hang guard.
func mWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(mHang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", mHang, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// mRecv receives from ch; mHang is only a hang guard.
func mRecv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(mHang):
		t.Fatalf("gave up after %v waiting for %s", mHang, what)
		panic("unreachable")
	}
}

type mHarness struct {
	t   *testing.T
	log *mLog
	l   *mLauncher
	s   *mSockets
	r   *mReady
	cfg Config
	m   *Manager
}

// newMHarness builds a manager over fresh fakes. Readiness is automatic
// (ready at once) unless a test holds a generation. Cleanup stops
// everything, waits for the drains and checks the SetWorking history.
func newMHarness(t *testing.T, tune func(*Config)) *mHarness {
	t.Helper()
	cfg := mConfig()
	if tune != nil {
		tune(&cfg)
	}
	log := &mLog{}
	h := &mHarness{t: t, log: log, l: newMLauncher(log), s: newMSockets(log), r: newMReady(log, true), cfg: cfg}
	h.m = NewManager(slog.New(slog.DiscardHandler), cfg, h.l, h.s, h.r)
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.m.Stop(syscall.SIGKILL)
			h.m.Wait()
		}()
		select {
		case <-done:
		case <-time.After(mHang):
			t.Errorf("cleanup: Stop and Wait did not return within %v; events: %v", mHang, h.log)
		}
		h.checkSetWorking()
	})
	return h
}

// checkSetWorking asserts the SetWorking history: generations only move
// forward, except for two steps back: the restore right after a failed
// SetWorking, and a revive (the working generation exited on its own, or
// failed its confirmation and was released, and a draining one is made
// working again; see Manager.reviveLocked). Every
// generation made working by an upgrade was ready first.
func (h *mHarness) checkSetWorking() {
	h.t.Helper()
	calls := h.s.SetWorkingCalls()
	at := h.log.find(func(e mEvent) bool { return e.Op == "SetWorking" })
	if len(at) != len(calls) {
		h.t.Errorf("fake: %d SetWorking calls, %d events", len(calls), len(at))
		return
	}
	var cur, highest uint32
	for i, c := range calls {
		restore := i > 0 && !calls[i-1].OK && c.Gen == cur
		exit := h.log.index(mEvent{Op: "exit", Gen: cur, Code: h.exitCodeOf(cur)})
		// or released: a stalled generation failed its confirmation (unflip)
		rel := h.log.index(mRel(cur))
		revive := cur != 0 && c.Gen < cur && (exit >= 0 && exit < at[i] || rel >= 0 && rel < at[i])
		if !restore && !revive && c.Gen <= highest {
			h.t.Errorf("SetWorking(%d) after SetWorking(%d): a generation made working again; calls %v\nevents: %v", c.Gen, highest, calls, h.log)
		}
		if restore {
			continue
		}
		if c.OK {
			cur = c.Gen
		}
		if revive {
			continue
		}
		highest = max(highest, c.Gen)
		if c.Gen > 1 {
			ready := h.log.index(mEvent{Op: "ready", Gen: c.Gen})
			if ready < 0 || ready > at[i] {
				h.t.Errorf("SetWorking(%d) without readiness before it; events: %v", c.Gen, h.log)
			}
		}
	}
}

func (h *mHarness) exitCodeOf(gen uint32) int {
	if p := h.l.Proc(gen); p != nil {
		return p.ExitCode()
	}
	return -1
}

func (h *mHarness) start() {
	h.t.Helper()
	if err := h.m.Start(context.Background(), nil); err != nil {
		h.t.Fatalf("Start: %v", err)
	}
	h.wantStates(1, map[uint32]State{1: StateWorking})
}

func (h *mHarness) states() (uint32, map[uint32]State) {
	w, gens := h.m.Status()
	st := make(map[uint32]State, len(gens))
	for _, g := range gens {
		if _, dup := st[g.Generation]; dup {
			h.t.Errorf("Status lists generation %d twice: %+v", g.Generation, gens)
		}
		st[g.Generation] = g.State
	}
	return w, st
}

func (h *mHarness) lookup(n uint32) (GenerationStatus, bool) {
	_, gens := h.m.Status()
	for _, g := range gens {
		if g.Generation == n {
			return g, true
		}
	}
	return GenerationStatus{}, false
}

func (h *mHarness) gen(n uint32) GenerationStatus {
	h.t.Helper()
	g, ok := h.lookup(n)
	if !ok {
		w, st := h.states()
		h.t.Fatalf("Status has no generation %d (working %d, %v)", n, w, st)
	}
	return g
}

// wantStates asserts Status exactly: the working generation and the state
// of every generation listed.
func (h *mHarness) wantStates(working uint32, want map[uint32]State) {
	h.t.Helper()
	if w, got := h.states(); w != working || !maps.Equal(got, want) {
		h.t.Fatalf("Status: working %d, states %v; want working %d, states %v\nevents: %v", w, got, working, want, h.log)
	}
}

// waitStates waits until Status is exactly as wanted.
func (h *mHarness) waitStates(working uint32, want map[uint32]State) {
	h.t.Helper()
	deadline := time.Now().Add(mHang)
	for {
		w, got := h.states()
		if w == working && maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("gave up after %v: Status: working %d, states %v; want working %d, states %v\nevents: %v", mHang, w, got, working, want, h.log)
		}
		time.Sleep(time.Millisecond)
	}
}

type mResult struct {
	gen uint32
	err error
}

func (h *mHarness) upgradeAsync(ctx context.Context, argv []string, timeout time.Duration) <-chan mResult {
	ch := make(chan mResult, 1)
	go func() {
		n, err := h.m.Upgrade(ctx, argv, timeout)
		ch <- mResult{n, err}
	}()
	return ch
}

// mustUpgrade upgrades and wants generation want to be working.
func (h *mHarness) mustUpgrade(want uint32) {
	h.t.Helper()
	r := mRecv(h.t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err != nil || r.gen != want {
		h.t.Fatalf("Upgrade = %d, %v; want %d, nil\nevents: %v", r.gen, r.err, want, h.log)
	}
	if w, _ := h.m.Status(); w != want {
		h.t.Fatalf("after Upgrade: working %d, want %d", w, want)
	}
}

func (h *mHarness) stop(sig syscall.Signal) int {
	h.t.Helper()
	ch := make(chan int, 1)
	go func() { ch <- h.m.Stop(sig) }()
	return mRecv(h.t, ch, "Stop")
}

// waitDrains waits for every drain goroutine to finish.
func (h *mHarness) waitDrains() {
	h.t.Helper()
	ch := make(chan struct{})
	go func() { h.m.Wait(); close(ch) }()
	mRecv(h.t, ch, "the drains (Manager.Wait)")
}

// wantStoppedAfterRelease asserts that gen was released, then got exactly
// one stop signal, and no Kill unless killed.
func (h *mHarness) wantStoppedAfterRelease(gen uint32, killed bool) {
	h.t.Helper()
	rel, sig := h.log.index(mRel(gen)), h.log.index(mSig(gen, h.stopSignal()))
	if rel < 0 || sig < 0 || rel > sig {
		h.t.Errorf("generation %d: Release at %d, stop signal at %d: want the release before the signal\nevents: %v", gen, rel, sig, h.log)
	}
	if n := h.log.count(mSig(gen, h.stopSignal())); n != 1 {
		h.t.Errorf("generation %d got %d stop signals, want 1\nevents: %v", gen, n, h.log)
	}
	p := h.l.Proc(gen)
	if killed {
		if k := h.log.index(mKill(gen)); k < sig {
			h.t.Errorf("generation %d: kill at %d, stop signal at %d: want a Kill after the ignored signal", gen, k, sig)
		}
		if c := p.ExitCode(); c != 137 {
			h.t.Errorf("generation %d exit code %d, want 137 (killed)", gen, c)
		}
	} else if k := p.Kills(); k != 0 {
		h.t.Errorf("generation %d killed %d times though it obeyed the stop signal", gen, k)
	}
}

func (h *mHarness) stopSignal() syscall.Signal {
	if h.cfg.StopSignal != 0 {
		return h.cfg.StopSignal
	}
	return syscall.SIGTERM
}

// --- start -----------------------------------------------------------------

func TestManagerBeforeStart(t *testing.T) {
	h := newMHarness(t, nil)
	if w, gens := h.m.Status(); w != 0 || len(gens) != 0 {
		t.Errorf("Status before Start = %d, %+v; want 0, none", w, gens)
	}
	if n, err := h.m.Upgrade(context.Background(), nil, 0); n != 0 || !errors.Is(err, ErrNotRunning) {
		t.Errorf("Upgrade before Start = %d, %v; want ErrNotRunning", n, err)
	}
	if err := h.m.Forward(syscall.SIGHUP); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Forward before Start = %v; want ErrNotRunning", err)
	}
	if c := h.l.Calls(); len(c) != 0 {
		t.Errorf("launched %v before Start", c)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed before Start")
	}
}

func TestManagerStart(t *testing.T) {
	h := newMHarness(t, nil)
	h.s.Bind(1, mKey(5301), mKey(5302))
	h.s.SetFlows(1, 4, nil)
	entered := h.r.Hold(1)
	ready := make(chan error, 1)
	if err := h.m.Start(context.Background(), ready); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// Working at once, before its readiness says anything: it is the only one.
	h.wantStates(1, map[uint32]State{1: StateWorking})
	if g := h.gen(1); g.PID != h.l.Proc(1).Pid() || g.Sockets != 2 || g.Flows != 4 || g.Reason != "" {
		t.Errorf("Status of generation 1 = %+v; want pid %d, 2 sockets, 4 flows, no reason", g, h.l.Proc(1).Pid())
	}
	if argv, ok := h.l.Argv(1); !ok || argv != nil {
		t.Errorf("generation 1 launched with argv %q (launched %v); want nil (the supervisor's command line)", argv, ok)
	}
	// Steering points at generation 1 before it runs, so its first binds
	// are steered.
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}}) {
		t.Errorf("SetWorking calls %v; want [1]", sw)
	}
	if sw, l := h.log.index(mEvent{Op: "SetWorking", Gen: 1}), h.log.index(mEvent{Op: "launch", Gen: 1}); sw > l {
		t.Errorf("SetWorking(1) at %d after launch(1) at %d", sw, l)
	}

	if err := h.m.Start(context.Background(), nil); err == nil {
		t.Error("second Start succeeded")
	}
	if c := h.l.Calls(); !slices.Equal(c, []uint32{1}) {
		t.Errorf("launches after a second Start: %v; want [1]", c)
	}
	if n := len(h.s.SetWorkingCalls()); n != 1 {
		t.Errorf("second Start called SetWorking again (%d calls)", n)
	}

	mRecv(t, entered, "readiness of generation 1")
	h.r.Ready(1)
	if err := mRecv(t, ready, "Start's readiness result"); err != nil {
		t.Errorf("readiness of generation 1: %v", err)
	}
	h.wantStates(1, map[uint32]State{1: StateWorking})
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed while generation 1 runs")
	}
}

func TestManagerStartReadinessFailureKeepsGeneration1Working(t *testing.T) {
	h := newMHarness(t, nil)
	h.r.Fail(1, errMTest)
	ready := make(chan error, 1)
	if err := h.m.Start(context.Background(), ready); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := mRecv(t, ready, "Start's readiness result"); !errors.Is(err, errMTest) {
		t.Errorf("readiness result %v; want %v", err, errMTest)
	}
	// There is nothing to roll back to: generation 1 stays working.
	h.wantStates(1, map[uint32]State{1: StateWorking})
	if s := h.l.Proc(1).Signals(); len(s) != 0 {
		t.Errorf("generation 1 signalled %v after its readiness failed", s)
	}
}

func TestManagerStartFailures(t *testing.T) {
	check := func(t *testing.T, h *mHarness) {
		t.Helper()
		if w, gens := h.m.Status(); w != 0 || len(gens) != 0 {
			t.Errorf("Status after a failed Start = %d, %+v; want 0, none", w, gens)
		}
		if _, err := h.m.Upgrade(context.Background(), nil, 0); !errors.Is(err, ErrNotRunning) {
			t.Errorf("Upgrade after a failed Start = %v; want ErrNotRunning", err)
		}
		if err := h.m.Forward(syscall.SIGHUP); !errors.Is(err, ErrNotRunning) {
			t.Errorf("Forward after a failed Start = %v; want ErrNotRunning", err)
		}
	}
	t.Run("SetWorking fails", func(t *testing.T) {
		h := newMHarness(t, nil)
		h.s.FailSetWorking(1, errMTest, false)
		if err := h.m.Start(context.Background(), nil); !errors.Is(err, errMTest) {
			t.Fatalf("Start = %v; want %v", err, errMTest)
		}
		if c := h.l.Calls(); len(c) != 0 {
			t.Errorf("launched %v although steering could not point at generation 1", c)
		}
		check(t, h)
	})
	t.Run("Launch fails", func(t *testing.T) {
		h := newMHarness(t, nil)
		h.l.Fail(1, errMTest)
		if err := h.m.Start(context.Background(), nil); !errors.Is(err, errMTest) {
			t.Fatalf("Start = %v; want %v", err, errMTest)
		}
		check(t, h)
	})
}

// --- upgrade -----------------------------------------------------------------

func TestUpgradeMakesNewGenerationWorkingOnlyAfterReadiness(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.Bind(1, mKey(5301))
	h.s.SetFlows(1, 1, nil) // generation 1 keeps draining until the test ends its flow
	entered := h.r.Hold(2)
	argv := []string{"/srv/dns", "-v2"}
	res := h.upgradeAsync(context.Background(), argv, 0)
	mRecv(t, entered, "readiness of generation 2")
	h.s.Bind(2, mKey(5301))

	h.wantStates(1, map[uint32]State{1: StateWorking, 2: StateStarting})
	if g := h.gen(2); g.PID != h.l.Proc(2).Pid() || g.Sockets != 1 {
		t.Errorf("Status of the starting generation = %+v; want pid %d, 1 socket", g, h.l.Proc(2).Pid())
	}
	if n := h.log.ops("SetWorking", 2); n != 0 || h.s.Working() != 1 {
		t.Fatalf("SetWorking(2) called %d times before readiness (steering working %d)", n, h.s.Working())
	}
	if got, _ := h.l.Argv(2); !slices.Equal(got, argv) {
		t.Errorf("generation 2 launched with %q, want %q", got, argv)
	}

	h.r.Ready(2)
	if r := mRecv(t, res, "Upgrade"); r.err != nil || r.gen != 2 {
		t.Fatalf("Upgrade = %d, %v; want 2, nil", r.gen, r.err)
	}
	h.wantStates(2, map[uint32]State{1: StateDraining, 2: StateWorking})
	if n := h.log.ops("SetWorking", 2); n != 1 || h.s.Working() != 2 {
		t.Errorf("SetWorking(2) called %d times (steering working %d); want once", n, h.s.Working())
	}
	// Draining: still serving its flow, so neither released nor signalled.
	if n := h.log.ops("Release", 1); n != 0 {
		t.Errorf("generation 1 released while it has a live flow")
	}
	if s := h.l.Proc(1).Signals(); len(s) != 0 {
		t.Errorf("generation 1 signalled %v while it has a live flow", s)
	}

	h.s.SetFlows(1, 0, nil)
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.wantStoppedAfterRelease(1, false)
	if n := h.log.ops("Release", 2) + h.log.ops("signal", 2); n != 0 {
		t.Errorf("the new working generation was released or signalled; events: %v", h.log)
	}

	// nil argv: the supervisor's own command line.
	h.mustUpgrade(3)
	if got, ok := h.l.Argv(3); !ok || got != nil {
		t.Errorf("generation 3 launched with %q, want nil", got)
	}
}

func TestUpgradeReadinessTimeoutArgument(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	for i, tc := range []struct {
		timeout, want time.Duration
	}{
		{0, h.cfg.ReadyTimeout},
		{50 * time.Millisecond, 50 * time.Millisecond},
	} {
		gen := uint32(i + 2)
		before := time.Now()
		r := mRecv(t, h.upgradeAsync(context.Background(), nil, tc.timeout), "Upgrade")
		after := time.Now()
		if r.err != nil || r.gen != gen {
			t.Fatalf("Upgrade = %d, %v; want %d", r.gen, r.err, gen)
		}
		dl := h.r.Deadline(gen)
		if dl.IsZero() || dl.Before(before.Add(tc.want)) || dl.After(after.Add(tc.want)) {
			t.Errorf("Upgrade(timeout %v): readiness deadline %v; want %v after the call (between %v and %v)",
				tc.timeout, dl, tc.want, before.Add(tc.want), after.Add(tc.want))
		}
	}
}

// TestUpgradeRollback covers every way an upgrade fails. In each the
// working generation stays working, the new one ends failed with the
// reason Upgrade returned, its sockets are released and its process is
// stopped (stop signal after the release, Kill if it ignores the signal),
// and a later upgrade works.
func TestUpgradeRollback(t *testing.T) {
	type rollbackCase struct {
		name    string
		ignore  bool                                         // the new generation ignores the stop signal
		prepare func(h *mHarness)                            // before Upgrade
		hold    bool                                         // hold its readiness
		act     func(h *mHarness, cancel context.CancelFunc) // once it waits for readiness
		check   func(t *testing.T, err error)
		stopped bool // the manager had to stop the process (it still ran)
		wantSW  []mSetWorking
	}
	is := func(target error) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			if !errors.Is(err, target) {
				t.Errorf("Upgrade error %q; want one wrapping %v", err, target)
			}
		}
	}
	says := func(s string) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("Upgrade error %q; want it to say %q", err, s)
			}
		}
	}
	fail := func(h *mHarness, _ context.CancelFunc) { h.r.Fail(2, errMTest) }
	swFails := func(h *mHarness) { h.s.FailSetWorking(2, errMTest, true) }
	only1 := []mSetWorking{{1, true}}
	restored := []mSetWorking{{1, true}, {2, false}, {1, true}}
	cases := []rollbackCase{
		{name: "readiness error", hold: true, act: fail, check: is(errMTest), stopped: true, wantSW: only1},
		{name: "readiness error, ignores the stop signal", ignore: true, hold: true, act: fail, check: is(errMTest), stopped: true, wantSW: only1},
		{name: "readiness timeout", hold: true, check: is(context.DeadlineExceeded), stopped: true, wantSW: only1},
		{name: "readiness timeout, ignores the stop signal", ignore: true, hold: true, check: is(context.DeadlineExceeded), stopped: true, wantSW: only1},
		{name: "caller cancels", hold: true, act: func(_ *mHarness, cancel context.CancelFunc) { cancel() }, check: is(context.Canceled), stopped: true, wantSW: only1},
		{name: "exits before ready", hold: true, act: func(h *mHarness, _ context.CancelFunc) { h.l.Proc(2).Exit(3) }, check: says("exited with status 3"), wantSW: only1},
		{name: "exits at once, readiness says ready", prepare: func(h *mHarness) { h.l.ExitAtOnce(2, 5) }, check: says("exited with status 5"), wantSW: only1},
		{name: "SetWorking fails", prepare: swFails, check: is(errMTest), stopped: true, wantSW: restored},
		{name: "SetWorking fails, ignores the stop signal", ignore: true, prepare: swFails, check: is(errMTest), stopped: true, wantSW: restored},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newMHarness(t, nil)
			h.start()
			h.s.Bind(1, mKey(5301))
			if tc.ignore {
				h.l.Ignore(2)
			}
			if tc.prepare != nil {
				tc.prepare(h)
			}
			var entered <-chan struct{}
			if tc.hold {
				entered = h.r.Hold(2)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			res := h.upgradeAsync(ctx, nil, 0)
			if tc.hold {
				mRecv(t, entered, "readiness of generation 2")
				h.wantStates(1, map[uint32]State{1: StateWorking, 2: StateStarting})
				if tc.act != nil {
					tc.act(h, cancel)
				}
			}
			r := mRecv(t, res, "Upgrade")
			if r.err == nil || r.gen != 0 {
				t.Fatalf("Upgrade = %d, %v; want a failure", r.gen, r.err)
			}
			tc.check(t, r.err)

			// Never without a working generation: the old one still works.
			h.wantStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
			if g := h.gen(2); g.Reason != r.err.Error() || g.Sockets != 0 || g.Flows != 0 {
				t.Errorf("Status of the failed generation %+v; want reason %q, no sockets or flows", g, r.err)
			}
			if w := h.s.Working(); w != 1 {
				t.Errorf("steering left pointing at generation %d", w)
			}
			if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, tc.wantSW) {
				t.Errorf("SetWorking calls %v; want %v", sw, tc.wantSW)
			}
			if tc.wantSW[len(tc.wantSW)-1].Gen == 1 && len(tc.wantSW) > 1 {
				if a, b := h.log.index(mEvent{Op: "SetWorking", Gen: 2}), h.log.find(func(e mEvent) bool { return e == mEvent{Op: "SetWorking", Gen: 1} }); len(b) != 2 || b[1] < a {
					t.Errorf("SetWorking(1) not restored after the failed SetWorking(2); events: %v", h.log)
				}
			}

			// The new generation is gone before Upgrade returns.
			p2 := h.l.Proc(2)
			if !p2.isDone() {
				t.Fatalf("Upgrade returned while the failed generation still runs")
			}
			if n := h.log.count(mRel(2)); n != 1 {
				t.Errorf("failed generation released %d times, want 1; events: %v", n, h.log)
			}
			if tc.stopped {
				h.wantStoppedAfterRelease(2, tc.ignore)
				if !tc.ignore && p2.ExitCode() != 0 {
					t.Errorf("exit code %d, want 0 (stopped by its signal)", p2.ExitCode())
				}
			} else if s, k := p2.Signals(), p2.Kills(); len(s) != 0 || k != 0 {
				t.Errorf("a generation that had exited got signals %v and %d kills", s, k)
			}
			// The working generation was not touched.
			if s := h.l.Proc(1).Signals(); len(s) != 0 || h.log.count(mRel(1)) != 0 {
				t.Errorf("working generation signalled %v or released; events: %v", s, h.log)
			}
			if mClosed(h.m.WorkingExited()) {
				t.Error("WorkingExited closed by a rollback")
			}

			// A later upgrade works.
			h.mustUpgrade(3)
			h.waitStates(3, map[uint32]State{1: StateExited, 2: StateFailed, 3: StateWorking})
		})
	}
}

func TestUpgradeLaunchFails(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	h.l.Fail(2, errMTest)
	n, err := h.m.Upgrade(context.Background(), nil, 0)
	if n != 0 || !errors.Is(err, errMTest) {
		t.Fatalf("Upgrade = %d, %v; want 0 and an error wrapping %v", n, err, errMTest)
	}
	w, st := h.states()
	if w != 1 || st[1] != StateWorking {
		t.Errorf("after a failed launch: working %d, states %v; want 1 working", w, st)
	}
	if s, ok := st[2]; ok && s != StateFailed {
		t.Errorf("generation that never started is %q", s)
	}
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}}) {
		t.Errorf("SetWorking calls %v; want [1]", sw)
	}
	if s := h.l.Proc(1).Signals(); len(s) != 0 || h.log.count(mRel(1)) != 0 {
		t.Errorf("working generation signalled %v or released", s)
	}
	// The next upgrade works (under a new number).
	r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err != nil || r.gen < 2 {
		t.Fatalf("Upgrade after a failed launch = %d, %v", r.gen, r.err)
	}
	if w, _ := h.m.Status(); w != r.gen {
		t.Errorf("working %d, want %d", w, r.gen)
	}
}

func TestUpgradeInProgress(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	entered := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, entered, "readiness of generation 2")

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			n, err := h.m.Upgrade(context.Background(), []string{"other"}, 0)
			if n != 0 {
				err = fmt.Errorf("generation %d: %w", n, err)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrUpgradeInProgress) {
			t.Errorf("concurrent Upgrade = %v; want ErrUpgradeInProgress", err)
		}
	}
	if c := h.l.Calls(); !slices.Equal(c, []uint32{1, 2}) {
		t.Errorf("launches %v; want [1 2]: a refused upgrade launched something", c)
	}
	h.wantStates(1, map[uint32]State{1: StateWorking, 2: StateStarting})

	h.r.Ready(2)
	if r := mRecv(t, res, "Upgrade"); r.err != nil || r.gen != 2 {
		t.Fatalf("Upgrade = %d, %v; want 2", r.gen, r.err)
	}
	// Once it finished, a new one is accepted.
	h.mustUpgrade(3)
}

func TestUpgradeAfterStop(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	if code := h.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("Stop = %d, want 0", code)
	}
	if n, err := h.m.Upgrade(context.Background(), nil, 0); n != 0 || !errors.Is(err, ErrNotRunning) {
		t.Errorf("Upgrade after Stop = %d, %v; want ErrNotRunning", n, err)
	}
	if c := h.l.Calls(); !slices.Equal(c, []uint32{1}) {
		t.Errorf("launches %v after Stop", c)
	}
	h.waitStates(1, map[uint32]State{1: StateExited})
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed by Stop")
	}
}

// --- drain and quiesce ----------------------------------------------------------

func TestDrainWaitsForLiveFlows(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 2, nil)
	h.mustUpgrade(2)
	h.wantStates(2, map[uint32]State{1: StateDraining, 2: StateWorking})
	for _, flows := range []int{2, 1} {
		h.s.SetFlows(1, flows, nil)
		polls := h.s.FlowPolls(1)
		mWaitFor(t, "the drain to count flows five more times", func() bool { return h.s.FlowPolls(1) >= polls+5 })
		h.wantStates(2, map[uint32]State{1: StateDraining, 2: StateWorking})
		if n, s := h.log.count(mRel(1)), h.l.Proc(1).Signals(); n != 0 || len(s) != 0 {
			t.Fatalf("generation 1 with %d live flows: released %d times, signalled %v", flows, n, s)
		}
	}
	h.s.SetFlows(1, 0, nil)
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.waitDrains()
	h.wantStoppedAfterRelease(1, false)
	if c := h.l.Proc(1).ExitCode(); c != 0 {
		t.Errorf("generation 1 exit code %d", c)
	}
	if n := h.log.ops("Release", 2) + h.log.ops("signal", 2); n != 0 {
		t.Errorf("working generation released or signalled; events: %v", h.log)
	}
}

func TestDrainWaitsForReceiveQueues(t *testing.T) {
	queuedCodes := func(h *mHarness, gen uint32) (codes []int, last int) {
		last = -1
		for i, e := range h.log.all() {
			if e.Op == "queued" && e.Gen == gen {
				codes, last = append(codes, e.Code), i
			}
		}
		return codes, last
	}
	t.Run("held until empty", func(t *testing.T) {
		h := newMHarness(t, func(c *Config) { c.QuiesceLimit = time.Minute })
		h.start()
		h.s.SetQueued(1, 4, 0)
		h.mustUpgrade(2)
		h.waitStates(2, map[uint32]State{1: StateStopping, 2: StateWorking})
		polls := h.s.QueuedPolls(1)
		mWaitFor(t, "five more polls of the queues", func() bool { return h.s.QueuedPolls(1) >= polls+5 })
		h.wantStates(2, map[uint32]State{1: StateStopping, 2: StateWorking})
		if s := h.l.Proc(1).Signals(); len(s) != 0 {
			t.Fatalf("generation 1 signalled %v with datagrams queued", s)
		}
		if n := h.log.count(mRel(1)); n != 1 {
			t.Fatalf("generation 1 released %d times before its queues emptied, want 1", n)
		}
		h.s.SetQueued(1, 0, 0)
		h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
		h.wantStoppedAfterRelease(1, false)
		codes, last := queuedCodes(h, 1)
		if codes[len(codes)-1] != 0 || last > h.log.index(mSig(1, syscall.SIGTERM)) {
			t.Errorf("stop signal not after the queues were seen empty; events: %v", h.log)
		}
	})
	t.Run("decreasing", func(t *testing.T) {
		h := newMHarness(t, func(c *Config) { c.QuiesceLimit = time.Minute })
		h.start()
		h.s.SetQueued(1, 3, 1)
		h.mustUpgrade(2)
		h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
		h.wantStoppedAfterRelease(1, false)
		codes, last := queuedCodes(h, 1)
		if !slices.Equal(codes, []int{3, 2, 1, 0}) || last > h.log.index(mSig(1, syscall.SIGTERM)) {
			t.Errorf("queue polls %v (last at %d); want [3 2 1 0] before the stop signal; events: %v", codes, last, h.log)
		}
	})
	t.Run("bounded by QuiesceLimit", func(t *testing.T) {
		h := newMHarness(t, func(c *Config) { c.QuiesceLimit = 30 * time.Millisecond })
		h.start()
		h.s.SetQueued(1, 4, 0)
		h.mustUpgrade(2)
		h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
		h.wantStoppedAfterRelease(1, false)
		if codes, _ := queuedCodes(h, 1); len(codes) == 0 || slices.Contains(codes, 0) {
			t.Errorf("queue polls %v; want some, all non-empty (stopped at the limit)", codes)
		}
	})
}

func TestDrainTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flows int
		err   error
	}{
		{"flows never end", 3, nil},
		{"counting flows fails", 0, errMTest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newMHarness(t, nil)
			h.start()
			h.s.SetFlows(1, tc.flows, tc.err)
			base := h.s.FlowPolls(1) // Status in start counted too
			// No Status calls until generation 1 is stopped: every LiveFlows
			// call is the drain's.
			if r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade"); r.err != nil || r.gen != 2 {
				t.Fatalf("Upgrade = %d, %v", r.gen, r.err)
			}
			mWaitFor(t, "generation 1 to be stopped", func() bool { return h.l.Proc(1).isDone() })
			if n := h.s.FlowPolls(1) - base; n < 2 {
				t.Errorf("flows counted %d times before the stop: the drain did not wait for the drain timeout", n)
			}
			h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
			h.wantStoppedAfterRelease(1, false)
		})
	}
	t.Run("ignores the stop signal", func(t *testing.T) {
		h := newMHarness(t, nil)
		h.l.Ignore(1)
		h.start()
		h.s.SetFlows(1, 3, nil)
		h.mustUpgrade(2)
		h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
		h.wantStoppedAfterRelease(1, true)
	})
}

func TestDrainCustomStopSignal(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.StopSignal = syscall.SIGQUIT })
	h.start()
	h.mustUpgrade(2)
	// mProc does not exit on SIGQUIT: it is killed after the signal.
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.wantStoppedAfterRelease(1, true)
	if n := h.log.count(mSig(1, syscall.SIGTERM)); n != 0 {
		t.Errorf("SIGTERM sent though the stop signal is SIGQUIT")
	}
}

func TestDrainNoFlowsQuiescesAtOnce(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.NoFlows = true; c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 5, nil) // would hold a flow-based drain for a minute
	h.s.SetFlows(2, 7, nil)
	h.mustUpgrade(2)
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.wantStoppedAfterRelease(1, false)
	if g := h.gen(2); g.Flows != 0 {
		t.Errorf("Status reports %d flows with the noop dissector", g.Flows)
	}
	if n := h.s.TotalFlowPolls(); n != 0 {
		t.Errorf("LiveFlows called %d times with the noop dissector", n)
	}
}

func TestDrainOldGenerationExitsOnItsOwn(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 2, nil)
	h.mustUpgrade(2)
	h.wantStates(2, map[uint32]State{1: StateDraining, 2: StateWorking})
	h.l.Proc(1).Exit(3)
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.waitDrains()
	if s, k := h.l.Proc(1).Signals(), h.l.Proc(1).Kills(); len(s) != 0 || k != 0 {
		t.Errorf("generation that exited on its own got signals %v and %d kills", s, k)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed when a draining generation exited")
	}
	h.wantStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
}

func TestDrainSeveralAtOnce(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	for gen := uint32(1); gen <= 3; gen++ {
		h.s.SetFlows(gen, 1, nil)
	}
	h.mustUpgrade(2)
	h.mustUpgrade(3)
	h.mustUpgrade(4)
	h.wantStates(4, map[uint32]State{1: StateDraining, 2: StateDraining, 3: StateDraining, 4: StateWorking})
	h.s.SetFlows(2, 0, nil)
	h.waitStates(4, map[uint32]State{1: StateDraining, 2: StateExited, 3: StateDraining, 4: StateWorking})
	h.s.SetFlows(1, 0, nil)
	h.s.SetFlows(3, 0, nil)
	h.waitStates(4, map[uint32]State{1: StateExited, 2: StateExited, 3: StateExited, 4: StateWorking})
	for gen := uint32(1); gen <= 3; gen++ {
		h.wantStoppedAfterRelease(gen, false)
	}
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}, {2, true}, {3, true}, {4, true}}) {
		t.Errorf("SetWorking calls %v", sw)
	}
}

// --- stop, exit, forward -----------------------------------------------------

func TestStopSignalsEveryLiveGeneration(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.mustUpgrade(2) // generation 1 drains and exits
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	h.s.SetFlows(2, 1, nil)
	h.s.SetFlows(3, 1, nil)
	h.l.Ignore(3)
	h.mustUpgrade(3)
	h.mustUpgrade(4)
	h.wantStates(4, map[uint32]State{1: StateExited, 2: StateDraining, 3: StateDraining, 4: StateWorking})

	if code := h.stop(syscall.SIGINT); code != 0 {
		t.Errorf("Stop = %d; want 0, the working generation's status", code)
	}
	for gen := uint32(2); gen <= 4; gen++ {
		p := h.l.Proc(gen)
		if !p.isDone() {
			t.Errorf("generation %d still runs after Stop", gen)
		}
		if n := h.log.count(mSig(gen, syscall.SIGINT)); n != 1 {
			t.Errorf("generation %d got SIGINT %d times, want 1", gen, n)
		}
	}
	if n := h.log.count(mSig(1, syscall.SIGINT)); n != 0 {
		t.Errorf("Stop signalled generation 1, which had exited")
	}
	if k, s := h.log.index(mKill(3)), h.log.index(mSig(3, syscall.SIGINT)); k < s {
		t.Errorf("generation 3 ignored SIGINT: kill at %d, signal at %d; events: %v", k, s, h.log)
	}
	if c := h.l.Proc(3).ExitCode(); c != 137 {
		t.Errorf("generation 3 exit code %d, want 137", c)
	}
	if k := h.l.Proc(2).Kills() + h.l.Proc(4).Kills(); k != 0 {
		t.Errorf("generations that obeyed SIGINT were killed")
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed by Stop")
	}
	h.waitStates(4, map[uint32]State{1: StateExited, 2: StateExited, 3: StateExited, 4: StateExited})
	if _, err := h.m.Upgrade(context.Background(), nil, 0); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Upgrade after Stop = %v; want ErrNotRunning", err)
	}
	h.waitDrains()
}

func TestStopKillsWorkingGenerationThatIgnoresTheSignal(t *testing.T) {
	h := newMHarness(t, nil)
	h.l.Ignore(1)
	h.start()
	if code := h.stop(syscall.SIGTERM); code != 137 {
		t.Errorf("Stop = %d; want 137 (killed)", code)
	}
	if s, k := h.log.count(mSig(1, syscall.SIGTERM)), h.log.count(mKill(1)); s != 1 || k != 1 {
		t.Errorf("%d signals and %d kills, want 1 and 1", s, k)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed by Stop")
	}
	h.waitStates(1, map[uint32]State{1: StateExited})
}

func TestManagerWorkingExitsOnItsOwn(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	h.mustUpgrade(2)
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateWorking})
	if mClosed(h.m.WorkingExited()) {
		t.Fatal("WorkingExited closed when a drained generation exited")
	}
	h.l.Proc(2).Exit(7)
	mRecv(t, h.m.WorkingExited(), "WorkingExited")
	if c := h.m.ExitCode(); c != 7 {
		t.Errorf("ExitCode = %d, want 7", c)
	}
	h.waitStates(2, map[uint32]State{1: StateExited, 2: StateExited})
	if code := h.stop(syscall.SIGTERM); code != 7 {
		t.Errorf("Stop = %d, want 7", code)
	}
	if s := h.l.Proc(2).Signals(); len(s) != 0 {
		t.Errorf("Stop signalled the exited working generation: %v", s)
	}
}

func TestStopDuringUpgradeReadiness(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	entered := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, entered, "readiness of generation 2")
	if code := h.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("Stop = %d, want 0", code)
	}
	if n := h.log.count(mSig(2, syscall.SIGTERM)); n < 1 || !h.l.Proc(2).isDone() {
		t.Errorf("the starting generation was not stopped by Stop; events: %v", h.log)
	}
	r := mRecv(t, res, "Upgrade")
	if r.err == nil || r.gen != 0 {
		t.Errorf("Upgrade = %d, %v; want a failure", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateExited, 2: StateFailed})
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}}) {
		t.Errorf("SetWorking calls %v", sw)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed by Stop")
	}
}

// TestStopWhileUpgradeBecomesReady: readiness says ready after Stop began;
// the upgrade must not flip, and rolls back with ErrNotRunning.
func TestStopWhileUpgradeBecomesReady(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.ReadyTimeout = time.Minute })
	h.start()
	h.l.Ignore(2)
	releaseKill := h.l.HoldKill(2) // killed, it exits only when the test says
	defer releaseKill()
	entered := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, entered, "readiness of generation 2")
	stopped := make(chan int, 1)
	go func() { stopped <- h.m.Stop(syscall.SIGTERM) }()
	mWaitFor(t, "Stop to kill generation 2", func() bool { return h.log.ops("kill", 2) > 0 })
	h.r.Ready(2)
	mWaitFor(t, "generation 2 to fail", func() bool { g, ok := h.lookup(2); return ok && g.State == StateFailed })
	releaseKill()
	if r := mRecv(t, res, "Upgrade"); r.gen != 0 || !errors.Is(r.err, ErrNotRunning) {
		t.Errorf("Upgrade = %d, %v; want ErrNotRunning", r.gen, r.err)
	}
	if code := mRecv(t, stopped, "Stop"); code != 0 {
		t.Errorf("Stop = %d, want 0 (generation 1's status)", code)
	}
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}}) {
		t.Errorf("SetWorking calls %v: flipped during Stop", sw)
	}
	if g := h.gen(2); g.Reason != ErrNotRunning.Error() {
		t.Errorf("reason %q, want %q", g.Reason, ErrNotRunning)
	}
	if n := h.log.count(mRel(2)); n != 1 {
		t.Errorf("generation 2 released %d times, want 1", n)
	}
}

func TestForwardGoesToTheWorkingGenerationOnly(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.s.SetFlows(2, 1, nil)
	h.mustUpgrade(2)
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1} {
		if err := h.m.Forward(sig); err != nil {
			t.Errorf("Forward(%v): %v", sig, err)
		}
	}
	if s := h.l.Proc(2).Signals(); !slices.Equal(s, []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1}) {
		t.Errorf("working generation got %v", s)
	}
	if s := h.l.Proc(1).Signals(); len(s) != 0 {
		t.Errorf("draining generation got %v", s)
	}
	h.mustUpgrade(3)
	if err := h.m.Forward(syscall.SIGHUP); err != nil {
		t.Errorf("Forward: %v", err)
	}
	if s := h.l.Proc(3).Signals(); !slices.Equal(s, []syscall.Signal{syscall.SIGHUP}) {
		t.Errorf("new working generation got %v", s)
	}
	if s := h.l.Proc(2).Signals(); len(s) != 2 {
		t.Errorf("old working generation got %v after it was replaced", s)
	}
	h.wantStates(3, map[uint32]State{1: StateDraining, 2: StateDraining, 3: StateWorking})
}

// --- history ---------------------------------------------------------------------

func TestManagerHistoryPruning(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.History = 2; c.NoFlows = true })
	h.start()
	h.r.Fail(2, errMTest)
	if _, err := h.m.Upgrade(context.Background(), nil, 0); !errors.Is(err, errMTest) {
		t.Fatalf("Upgrade = %v; want %v", err, errMTest)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
	steps := []map[uint32]State{
		3: {1: StateExited, 2: StateFailed, 3: StateWorking},
		4: {2: StateFailed, 3: StateExited, 4: StateWorking},
		5: {3: StateExited, 4: StateExited, 5: StateWorking},
		6: {4: StateExited, 5: StateExited, 6: StateWorking},
	}
	for gen := uint32(3); gen <= 6; gen++ {
		h.mustUpgrade(gen)
		h.waitStates(gen, steps[gen])
	}
}

// --- concurrency -----------------------------------------------------------------

func TestManagerConcurrentUpgradeStopStatusForward(t *testing.T) {
	h := newMHarness(t, nil)
	h.start()
	var (
		stopping  atomic.Bool
		upgrades  atomic.Int64
		wg        sync.WaitGroup
		errs      = make(chan error, 64)
		quit      = make(chan struct{})
		validSets = []State{StateStarting, StateWorking, StateDraining, StateStopping, StateExited, StateFailed}
	)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for range 3 {
		wg.Go(func() {
			for {
				n, err := h.m.Upgrade(context.Background(), nil, 0)
				switch {
				case err == nil:
					upgrades.Add(1)
					if n == 0 {
						report(errors.New("Upgrade succeeded with generation 0"))
					}
				case errors.Is(err, ErrNotRunning):
					return
				case errors.Is(err, ErrUpgradeInProgress), stopping.Load():
				default:
					report(fmt.Errorf("Upgrade: %w", err))
				}
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-quit:
					return
				default:
				}
				w, gens := h.m.Status()
				post := stopping.Load()
				working := 0
				for _, g := range gens {
					if !slices.Contains(validSets, g.State) {
						report(fmt.Errorf("generation %d in state %q", g.Generation, g.State))
					}
					if g.State == StateWorking {
						working++
						if g.Generation != w {
							report(fmt.Errorf("generation %d working but Status says %d", g.Generation, w))
						}
					}
				}
				if w == 0 || working > 1 || (!post && working != 1) {
					report(fmt.Errorf("Status: working %d, %d generations in state working: %+v", w, working, gens))
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-quit:
					return
				default:
				}
				// Forward signals the generation that was working when it
				// looked; a concurrent flip may have replaced it and its drain
				// stopped it since (os.ErrProcessDone).
				if err := h.m.Forward(syscall.SIGHUP); err != nil && !stopping.Load() && !errors.Is(err, os.ErrProcessDone) {
					report(fmt.Errorf("Forward: %w", err))
				}
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	mWaitFor(t, "ten upgrades", func() bool { return upgrades.Load() >= 10 })
	stopping.Store(true)
	code := h.stop(syscall.SIGTERM)
	close(quit)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	mRecv(t, done, "the racing goroutines")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if code != 0 {
		t.Errorf("Stop = %d, want 0", code)
	}
	if live, inFlight := h.l.Live(); len(live) != 0 || inFlight != 0 {
		t.Errorf("after Stop and every Upgrade returned: generations %v still run, %d launches in flight", live, inFlight)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed by Stop")
	}
	h.waitDrains()
}

// --- readiness -------------------------------------------------------------------

func TestBoundReadinessReady(t *testing.T) {
	a, b, c := mKey(5301), mKey(5302), mKey6(5303)
	for _, tc := range []struct {
		name          string
		working, next []GroupKey
	}{
		{"same groups", []GroupKey{a, b, c}, []GroupKey{c, b, a}},
		{"more groups than the working one", []GroupKey{a}, []GroupKey{a, c}},
		{"working generation bound nothing", nil, []GroupKey{a}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &mLog{}
			s := newMSockets(log)
			s.SetWorking(1)
			s.Bind(1, tc.working...)
			s.Bind(2, tc.next...)
			done := make(chan error, 1)
			go func() { done <- BoundReadiness{B: s}.Wait(context.Background(), 2, newMProc(2, log)) }()
			if err := mRecv(t, done, "BoundReadiness.Wait"); err != nil {
				t.Errorf("Wait = %v; want ready", err)
			}
		})
	}
}

func TestBoundReadinessWaitsForEveryGroup(t *testing.T) {
	a, b := mKey(5301), mKey6(5302)
	log := &mLog{}
	s := newMSockets(log)
	s.SetWorking(1)
	s.Bind(1, a, b)
	done := make(chan error, 1)
	go func() { done <- BoundReadiness{B: s}.Wait(context.Background(), 2, newMProc(2, log)) }()
	s.Bind(2, a)
	s.Bind(3, a, b) // another generation's binds do not count
	s.Bind(2, a, b)
	if err := mRecv(t, done, "BoundReadiness.Wait"); err != nil {
		t.Errorf("Wait = %v; want ready", err)
	}
	if b2 := s.Bound(2); len(b2) != 2 {
		t.Fatalf("fake: %v", b2)
	}
}

func TestBoundReadinessNotReady(t *testing.T) {
	a, b := mKey(5301), mKey6(5302)
	for _, tc := range []struct {
		name          string
		working, next []GroupKey
		cancel        bool // cancel instead of a deadline
		exit          bool // the process exits
		want          []string
		wantNot       string
	}{
		{name: "a group missing", working: []GroupKey{a, b}, next: []GroupKey{a}, want: []string{b.String()}, wantNot: a.String()},
		{name: "a group missing, cancelled", working: []GroupKey{a, b}, next: []GroupKey{b}, cancel: true, want: []string{a.String()}, wantNot: b.String()},
		{name: "nothing bound", working: []GroupKey{a}, want: []string{"bound no managed address"}},
		{name: "nothing bound anywhere", want: []string{"bound no managed address"}},
		{name: "process exits", working: []GroupKey{a, b}, next: []GroupKey{a}, exit: true, want: []string{"exited", "status 4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &mLog{}
			s := newMSockets(log)
			s.SetWorking(1)
			s.Bind(1, tc.working...)
			s.Bind(2, tc.next...)
			p := newMProc(2, log)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			switch {
			case tc.cancel:
				cancel()
			case tc.exit:
				cancel()
				ctx, cancel = context.WithCancel(context.Background())
				p.Exit(4)
			}
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- BoundReadiness{B: s}.Wait(ctx, 2, p) }()
			err := mRecv(t, done, "BoundReadiness.Wait")
			if err == nil {
				t.Fatal("Wait = nil; want not ready")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Wait = %q; want it to say %q", err, w)
				}
			}
			if tc.wantNot != "" && strings.Contains(err.Error(), tc.wantNot) {
				t.Errorf("Wait = %q names %q, which is bound", err, tc.wantNot)
			}
			var want error
			switch {
			case tc.cancel:
				want = context.Canceled
			case !tc.exit:
				want = context.DeadlineExceeded
			}
			if want != nil && !errors.Is(err, want) {
				t.Errorf("Wait = %q; want it to wrap %v", err, want)
			}
			if tc.exit && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
				t.Errorf("Wait = %q: a context error for an exited process", err)
			}
		})
	}
}

func TestDelayReadiness(t *testing.T) {
	wait := func(t *testing.T, r DelayReadiness, ctx context.Context, p Process) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- r.Wait(ctx, 2, p) }()
		return mRecv(t, done, "DelayReadiness.Wait")
	}
	t.Run("ready after the delay", func(t *testing.T) {
		d := 20 * time.Millisecond
		start := time.Now()
		if err := wait(t, DelayReadiness{D: d}, context.Background(), newMProc(2, &mLog{})); err != nil {
			t.Fatalf("Wait = %v", err)
		}
		// A lower bound only: timers never fire early.
		if e := time.Since(start); e < d {
			t.Errorf("ready after %v, before the delay %v", e, d)
		}
	})
	t.Run("deadline first", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := wait(t, DelayReadiness{D: time.Hour}, ctx, newMProc(2, &mLog{})); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait = %v; want DeadlineExceeded", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := wait(t, DelayReadiness{D: time.Hour}, ctx, newMProc(2, &mLog{})); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait = %v; want Canceled", err)
		}
	})
	t.Run("process exits", func(t *testing.T) {
		p := newMProc(2, &mLog{})
		p.Exit(2)
		err := wait(t, DelayReadiness{D: time.Hour}, context.Background(), p)
		if err == nil || !strings.Contains(err.Error(), "status 2") {
			t.Errorf("Wait = %v; want it to report the exit status 2", err)
		}
	})
}

// --- bugs ------------------------------------------------------------------------

// TestStopDuringUpgradeLaunchLeavesNoInstance: Stop begins while an Upgrade
// is inside Launch. When Stop returns (and the supervisor exits right after
// it, see cmd/grmwrap serve), no instance may run or still be starting.
func TestStopDuringUpgradeLaunchLeavesNoInstance(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.ReadyTimeout = time.Minute })
	h.start()
	launching, releaseLaunch := h.l.Hold(2)
	defer releaseLaunch()
	readying := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, launching, "Launch of generation 2")

	type stopResult struct {
		code     int
		live     []uint32
		inFlight int
	}
	stopped := make(chan stopResult, 1)
	go func() {
		code := h.m.Stop(syscall.SIGTERM)
		live, inFlight := h.l.Live()
		stopped <- stopResult{code, live, inFlight}
	}()
	mWaitFor(t, "Stop to signal generation 1", func() bool { return h.log.ops("signal", 1) > 0 })
	releaseLaunch()
	sr := mRecv(t, stopped, "Stop")
	if len(sr.live) > 0 || sr.inFlight > 0 {
		t.Errorf("BUG: Stop returned %d while generations %v still ran and %d Launch call(s) were in flight: "+
			"an instance launched by an Upgrade that was in Launch when Stop began outlives Stop", sr.code, sr.live, sr.inFlight)
	}
	var r mResult
	select {
	case r = <-res:
	case <-readying:
		t.Errorf("BUG: after Stop, the Upgrade waits for the readiness of generation 2 (up to ReadyTimeout) instead of giving up with ErrNotRunning")
		h.r.Fail(2, errors.New("test: end the upgrade"))
		r = mRecv(t, res, "Upgrade")
	case <-time.After(mHang):
		t.Fatal("Upgrade hung")
	}
	if r.err == nil || r.gen != 0 {
		t.Errorf("Upgrade during Stop = %d, %v; want a failure", r.gen, r.err)
	} else if !errors.Is(r.err, ErrNotRunning) {
		t.Errorf("Upgrade during Stop = %v; want ErrNotRunning", r.err)
	}
	if p := h.l.Proc(2); p != nil && !p.isDone() {
		t.Errorf("generation 2 still runs after the Upgrade returned")
	}
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}}) {
		t.Errorf("SetWorking calls %v", sw)
	}
}

// TestUpgradeAfterWorkingExitedKeepsItExited: the working generation exits
// on its own while an upgrade waits for readiness (and nobody called Stop
// yet). Whatever the upgrade does, the exited generation must stay
// "exited" in Status.
func TestUpgradeAfterWorkingExitedKeepsItExited(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.ReadyTimeout = time.Minute })
	h.start()
	entered := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, entered, "readiness of generation 2")
	h.l.Proc(1).Exit(7)
	mRecv(t, h.m.WorkingExited(), "WorkingExited")
	h.waitStates(1, map[uint32]State{1: StateExited, 2: StateStarting})
	h.r.Ready(2)
	r := mRecv(t, res, "Upgrade")
	h.waitDrains()
	w, st := h.states()
	if st[1] != StateExited {
		t.Errorf("BUG: generation 1 exited (status 7) before the upgrade flipped; Status now says %q (working %d, Upgrade = %d, %v); want exited",
			st[1], w, r.gen, r.err)
	}
}

// mIsChild reports whether this process is the child that mRunChild
// started for test t.
func mIsChild(t *testing.T) bool { return os.Getenv("GRMWRAP_MGR_CHILD") == t.Name() }

// mRunChild runs test t again in a child test process, for a scenario that
// crashes the process (a panic in a manager goroutine cannot be recovered
// by the test), and fails t with bug if the child fails.
func mRunChild(t *testing.T, bug string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a child test process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "GRMWRAP_MGR_CHILD="+t.Name())
	out, err := cmd.CombinedOutput()
	msg := string(out)
	if !strings.Contains(msg, "=== RUN   "+t.Name()) {
		t.Fatalf("the child did not run %s (%v):\n%s", t.Name(), err, msg)
	}
	if err != nil {
		if i := strings.Index(msg, "panic:"); i >= 0 {
			msg = msg[i:min(len(msg), i+600)]
		}
		t.Errorf("BUG: %s; the child test failed (%v):\n%s", bug, err, msg)
	}
}

// TestUpgradeAfterWorkingExitedThenNewExits: an upgrade is accepted, then
// the working generation exits on its own (WorkingExited is closed), then
// the new generation exits on its own too. An upgrade that starts after
// WorkingExited is refused (ErrNotRunning), so the only way to have a new
// generation exit after WorkingExited is one launched before: the test
// proves it got there (generation 2 was launched and waited for its
// readiness before generation 1 exited; it exited after WorkingExited) and
// that watch does not close workingExit a second time, the exit status
// stays generation 1's, and generation 2 is failed, never working.
func TestUpgradeAfterWorkingExitedThenNewExits(t *testing.T) {
	if !mIsChild(t) {
		mRunChild(t, "Manager.watch closes workingExit a second time (close of closed channel)")
		return
	}
	h := newMHarness(t, func(c *Config) { c.ReadyTimeout = time.Minute })
	h.start()
	entered := h.r.Hold(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, entered, "readiness of generation 2 (the upgrade was accepted)")
	h.l.Proc(1).Exit(7)
	mRecv(t, h.m.WorkingExited(), "WorkingExited")
	if r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "a second Upgrade"); !errors.Is(r.err, ErrNotRunning) {
		t.Errorf("Upgrade after WorkingExited = %d, %v; want ErrNotRunning", r.gen, r.err)
	}
	h.l.Proc(2).Exit(9)
	r := mRecv(t, res, "Upgrade")
	if r.err == nil {
		t.Fatalf("Upgrade = %d, nil; want an error (generation 2 exited before it was ready)", r.gen)
	}
	h.waitDrains()
	h.waitStates(1, map[uint32]State{1: StateExited, 2: StateFailed})
	exit1, exit2 := h.log.index(mEvent{Op: "exit", Gen: 1, Code: 7}), h.log.index(mEvent{Op: "exit", Gen: 2, Code: 9})
	if launch := h.log.index(mEvent{Op: "launch", Gen: 2}); launch < 0 || launch > exit1 || exit2 < exit1 {
		t.Errorf("events out of order (want launch(2) < exit(1) < exit(2)): %v", h.log)
	}
	if c := h.m.ExitCode(); c != 7 {
		t.Errorf("ExitCode = %d, want 7 (generation 1's)", c)
	}
}

// --- revive (uncommitted Manager.reviveLocked) -----------------------------------

// TestManagerRevivesDrainingGeneration: when the working generation dies
// while older ones still drain, the newest live draining one is made
// working again and WorkingExited stays open; once none is left, the next
// exit of the working generation closes it.
func TestManagerRevivesDrainingGeneration(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.s.SetFlows(2, 1, nil)
	h.mustUpgrade(2)
	h.mustUpgrade(3)
	h.wantStates(3, map[uint32]State{1: StateDraining, 2: StateDraining, 3: StateWorking})

	h.l.Proc(3).Exit(9)
	h.waitStates(2, map[uint32]State{1: StateDraining, 2: StateWorking, 3: StateExited})
	if mClosed(h.m.WorkingExited()) {
		t.Fatal("WorkingExited closed though a draining generation was revived")
	}
	if sw := h.s.SetWorkingCalls(); !slices.Equal(sw, []mSetWorking{{1, true}, {2, true}, {3, true}, {2, true}}) || h.s.Working() != 2 {
		t.Errorf("SetWorking calls %v, steering working %d; want [1 2 3 2], 2", sw, h.s.Working())
	}
	if err := h.m.Forward(syscall.SIGHUP); err != nil {
		t.Errorf("Forward: %v", err)
	}
	if s := h.l.Proc(2).Signals(); !slices.Equal(s, []syscall.Signal{syscall.SIGHUP}) || h.log.count(mRel(2)) != 0 {
		t.Errorf("revived generation got signals %v (want the forwarded SIGHUP only) or was released; events: %v", s, h.log)
	}
	// Revived, it is no longer drained: its flows ending does not stop it
	// (while generation 1's drain keeps counting).
	h.s.SetFlows(2, 0, nil)
	polls := h.s.FlowPolls(1)
	mWaitFor(t, "five more counts of generation 1's flows", func() bool { return h.s.FlowPolls(1) >= polls+5 })
	h.wantStates(2, map[uint32]State{1: StateDraining, 2: StateWorking, 3: StateExited})

	h.l.Proc(2).Exit(8)
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateExited, 3: StateExited})
	if mClosed(h.m.WorkingExited()) {
		t.Fatal("WorkingExited closed though generation 1 was revived")
	}
	h.l.Proc(1).Exit(7)
	mRecv(t, h.m.WorkingExited(), "WorkingExited")
	if c := h.m.ExitCode(); c != 7 {
		t.Errorf("ExitCode = %d, want 7", c)
	}
}

func TestManagerReviveFailsWhenSetWorkingFails(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.mustUpgrade(2)
	h.s.FailSetWorking(1, errMTest, false)
	h.l.Proc(2).Exit(9)
	mRecv(t, h.m.WorkingExited(), "WorkingExited")
	if c := h.m.ExitCode(); c != 9 {
		t.Errorf("ExitCode = %d, want 9", c)
	}
	h.waitStates(2, map[uint32]State{1: StateDraining, 2: StateExited})
}

// TestUpgradeSetWorkingFailsWhileWorkingDies: the flip to generation 3
// fails while the working generation 2 dies (generation 1 still drains).
// The restore must target a live generation and agree with the manager:
// steering and Status both say generation 1, never the dead 2. Run with
// -race: reading m.working after the unlock races with the revive.
func TestUpgradeSetWorkingFailsWhileWorkingDies(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.mustUpgrade(2)
	h.s.FailSetWorking(3, errMTest, true)
	revived := make(chan struct{})
	var once sync.Once
	h.s.OnSetWorking(func(gen uint32) {
		switch gen {
		case 3: // the flip: generation 2 dies meanwhile
			h.l.Proc(2).Exit(9)
		case 1: // the revive of generation 1
			once.Do(func() { close(revived) })
		case 2: // a restore to 2: let the revive run first (bounded)
			select {
			case <-revived:
			case <-time.After(time.Second):
			}
		}
	})
	r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err == nil || !errors.Is(r.err, errMTest) {
		t.Fatalf("Upgrade = %d, %v; want the SetWorking failure", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateExited, 3: StateFailed})
	if w := h.s.Working(); w != 1 {
		t.Errorf("BUG: steering points at generation %d, the manager at 1 (2 is dead); SetWorking calls %v\nevents: %v",
			w, h.s.SetWorkingCalls(), h.log)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed though generation 1 was alive to take over")
	}
}

// TestManagerRevivedGenerationDrainsWhenReplacedAgain: a revived generation
// that an upgrade replaces again must drain and stop like any other.
func TestManagerRevivedGenerationDrainsWhenReplacedAgain(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.mustUpgrade(2)
	h.l.Proc(2).Exit(9)
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateExited})

	polls := h.s.FlowPolls(1) // no Status calls from here: every count is the drain's
	if r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade"); r.err != nil || r.gen != 3 {
		t.Fatalf("Upgrade = %d, %v; want 3", r.gen, r.err)
	}
	mWaitFor(t, "the drain to count generation 1's flows", func() bool { return h.s.FlowPolls(1) > polls })
	h.s.SetFlows(1, 0, nil)
	h.waitDrains()
	_, st := h.states()
	if st[1] != StateExited || !h.l.Proc(1).isDone() {
		t.Errorf("BUG: every drain finished but generation 1 is %q and its process runs (%v): Manager.drain returns at once "+
			"on the revived channel, closed when it was revived, so a revived generation replaced again is never quiesced nor stopped",
			st[1], !h.l.Proc(1).isDone())
	}
}

// TestManagerRevivedTwice: generation 1 is revived, replaced again, and
// its successor dies too: it is revived a second time.
func TestManagerRevivedTwice(t *testing.T) {
	if !mIsChild(t) {
		mRunChild(t, "Manager.reviveLocked closes generation.revived a second time (close of closed channel)")
		return
	}
	h := newMHarness(t, func(c *Config) { c.DrainTimeout = time.Minute })
	h.start()
	h.s.SetFlows(1, 1, nil)
	h.mustUpgrade(2)
	h.l.Proc(2).Exit(9)
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateExited})
	h.mustUpgrade(3)
	h.l.Proc(3).Exit(8)
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateExited, 3: StateExited})
}

// mExitOnReady is ready at once and makes the process exit a moment later,
// racing the flip.
type mExitOnReady struct{ l *mLauncher }

func (r mExitOnReady) Wait(_ context.Context, gen uint32, _ Process) error {
	if gen > 1 {
		go func() {
			runtime.Gosched()
			r.l.Proc(gen).Exit(3)
		}()
	}
	return nil
}

// TestManagerStressNewGenerationExitsAtFlip: the new generation exits
// right after its readiness said ready. If it exits after Upgrade's
// non-blocking p.Done check but before the flip takes m.mu (and watch runs
// in between), the flip makes a dead generation working: Status says
// "working", WorkingExited is never closed, and the healthy previous
// generation is drained away. Rare (about once in 10^4 upgrades on two
// CPUs); the long run: GRMWRAP_MGR_STRESS=1 go test -run StressNewGeneration
// -cpu 2 ./generations
func TestManagerStressNewGenerationExitsAtFlip(t *testing.T) {
	rounds := 1000 // a short run always; GRMWRAP_MGR_STRESS=1 for the long one
	if os.Getenv("GRMWRAP_MGR_STRESS") != "" {
		rounds = 50000
	}
	for i := range rounds {
		log := &mLog{}
		l, s := newMLauncher(log), newMSockets(log)
		m := NewManager(slog.New(slog.DiscardHandler), mConfig(), l, s, mExitOnReady{l})
		if err := m.Start(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		n, err := m.Upgrade(context.Background(), nil, 0)
		if err == nil {
			<-l.Proc(n).Done()
			deadline := time.Now().Add(mHang)
			for {
				w, gens := m.Status()
				var st State
				for _, g := range gens {
					if g.Generation == n {
						st = g.State
					}
				}
				if mClosed(m.WorkingExited()) || w != n || st == StateExited {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("BUG (iteration %d): generation %d exited, yet it is the working generation in state %q and WorkingExited is open; events: %v",
						i, n, st, log)
				}
				time.Sleep(time.Millisecond)
			}
		}
		m.Stop(syscall.SIGKILL)
		m.Wait()
	}
}
