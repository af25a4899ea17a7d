package generations

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestStalledPolicy(t *testing.T) {
	for _, c := range []struct {
		name      string
		prev, cur Sample
		quiet     time.Duration
		want      bool
		reason    string
	}{
		{"empty queue", Sample{CPU: 5}, Sample{CPU: 5}, time.Hour, false, ""},
		{"empty queue, stopped", Sample{}, Sample{Stopped: true}, 0, false, ""},
		{"queue shrinks without CPU", Sample{Queued: 900}, Sample{Queued: 300}, time.Hour, false, ""},
		{"queue grows, CPU used", Sample{Queued: 300, CPU: 1}, Sample{Queued: 900, CPU: 2}, 0, false, ""},
		{"queue grows, no CPU, once (a sleep between bursts)", Sample{Queued: 300, CPU: 7}, Sample{Queued: 900, CPU: 7}, time.Second, false, ""},
		{"queue stays, no CPU, under hangAfter", Sample{Queued: 832, CPU: 7}, Sample{Queued: 832, CPU: 7}, 2900 * time.Millisecond, false, ""},
		{"queue stays, no CPU for hangAfter (blocked)", Sample{Queued: 832, CPU: 7}, Sample{Queued: 832, CPU: 7}, 3 * time.Second, true, "has not run for 3s with 832 bytes"},
		{"queue grows, no CPU for long (blocked)", Sample{Queued: 832, CPU: 7}, Sample{Queued: 9000, CPU: 7}, time.Minute, true, "has not run for 1m0s"},
		{"queue stays, 1ns of CPU after long quiet (it runs)", Sample{Queued: 832, CPU: 7}, Sample{Queued: 832, CPU: 8}, time.Minute, false, ""},
		{"queue stays, stopped", Sample{Queued: 300, CPU: 7}, Sample{Queued: 300, CPU: 8, Stopped: true}, 0, true, "is stopped"},
	} {
		got, reason := Stalled(3, c.prev, c.cur, c.quiet, 3*time.Second)
		if got != c.want || !strings.Contains(reason, c.reason) || (got && !strings.Contains(reason, "generation 3")) {
			t.Errorf("%s: Stalled(%+v, %+v) = %v, %q; want %v, %q", c.name, c.prev, c.cur, got, reason, c.want, c.reason)
		}
	}
}

// TestUpgradeSettleWindowDeathRollsBack: a generation that dies in the
// settle window (after its readiness said ready) is never made working and
// is failed with the reason.
func TestUpgradeSettleWindowDeathRollsBack(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) { c.Settle, c.Health, c.ReadyTimeout = time.Minute, hl, time.Minute })
	h.start()
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, hl.AskedStopped(2), "the stopped check after readiness")
	h.l.Proc(2).Exit(1)
	r := mRecv(t, res, "Upgrade")
	if r.err == nil || !strings.Contains(r.err.Error(), "generation 2 exited with status 1 during the settle window") {
		t.Fatalf("Upgrade = %d, %v; want the settle-window death", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
	if g := h.gen(2); !strings.Contains(g.Reason, "settle window") {
		t.Errorf("generation 2 reason %q, want the settle window", g.Reason)
	}
	if n := h.log.count(mEvent{Op: "SetWorking", Gen: 2}); n != 0 {
		t.Errorf("generation 2 was made working %d times though it died before the flip; events: %v", n, h.log)
	}
}

// TestUpgradeConfirmDeathRollsBack: the new generation dies right after the
// flip, within MinDrain: Upgrade fails with the reason, the new generation
// is failed (not exited), its sockets left steering, the old one works
// again.
func TestUpgradeConfirmDeathRollsBack(t *testing.T) {
	h := newMHarness(t, func(c *Config) { c.DrainTimeout, c.MinDrain = time.Hour, time.Minute })
	h.start()
	h.s.Bind(1, mKey(53))
	h.s.Bind(2, mKey(53))
	h.s.OnSetWorking(func(gen uint32) {
		if gen == 2 {
			h.l.Proc(2).Exit(1)
		}
	})
	r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err == nil || !strings.Contains(r.err.Error(), "generation 2 exited with status 1") || !strings.Contains(r.err.Error(), "after it became working") {
		t.Fatalf("Upgrade = %d, %v; want an error: generation 2 exited after it became working", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
	if g := h.gen(2); g.Reason == "" {
		t.Error("generation 2 failed without a reason")
	}
	if h.log.count(mRel(2)) == 0 || h.s.Working() != 1 {
		t.Errorf("generation 2 released %d times, steering working %d; want released, 1; events: %v", h.log.count(mRel(2)), h.s.Working(), h.log)
	}
	if mClosed(h.m.WorkingExited()) {
		t.Error("WorkingExited closed though generation 1 took over")
	}
}

// TestUpgradeConfirmStallRollsBack: the new generation is alive but does
// not take datagrams off its sockets within MinDrain: its sockets leave
// steering before the old generation is working again, it is stopped,
// failed with the reason, and Upgrade fails.
func TestUpgradeConfirmStallRollsBack(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) {
		c.DrainTimeout, c.MinDrain, c.Health, c.HealthPoll = time.Hour, time.Minute, hl, 10*time.Millisecond
	})
	h.start()
	hl.Set(2, Sample{Queued: 4096, CPU: 3 * time.Millisecond, Stopped: true})
	r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err == nil || !strings.Contains(r.err.Error(), "generation 2 is stopped") {
		t.Fatalf("Upgrade = %d, %v; want the stall of generation 2", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
	rel := h.log.index(mRel(2))
	back := h.log.find(func(e mEvent) bool { return e.Op == "SetWorking" && e.Gen == 1 })
	if rel < 0 || len(back) != 2 || back[1] < rel {
		t.Errorf("want Release(2) before SetWorking(1) (the revive); events: %v", h.log)
	}
	if !h.l.Proc(2).isDone() {
		t.Error("the stalled generation 2 was not stopped")
	}
}

// TestUpgradeStoppedGenerationIsNotReady: a ready generation whose
// processes are stopped is not made working: the upgrade waits for it to
// run again, bounded by the readiness timeout, then fails.
func TestUpgradeStoppedGenerationIsNotReady(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) { c.Health, c.ReadyTimeout = hl, 100*time.Millisecond })
	h.start()
	hl.SetStopped(2, true)
	r := mRecv(t, h.upgradeAsync(context.Background(), nil, 0), "Upgrade")
	if r.err == nil || r.err.Error() != "generation 2 is stopped" {
		t.Fatalf("Upgrade = %d, %v; want: generation 2 is stopped", r.gen, r.err)
	}
	h.waitStates(1, map[uint32]State{1: StateWorking, 2: StateFailed})
	if n := h.log.count(mEvent{Op: "SetWorking", Gen: 2}); n != 0 {
		t.Errorf("a stopped generation was made working; events: %v", h.log)
	}
}

// TestUpgradeStoppedGenerationContinued: a generation stopped at its
// readiness that runs again within the readiness timeout is made working.
func TestUpgradeStoppedGenerationContinued(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) { c.Health, c.ReadyTimeout = hl, time.Minute })
	h.start()
	hl.SetStopped(3, true)
	h.mustUpgrade(2)
	res := h.upgradeAsync(context.Background(), nil, 0)
	mRecv(t, hl.AskedStopped(3), "the stopped check of generation 3")
	time.Sleep(30 * time.Millisecond) // let it see the stop a few times (not a timing assertion)
	if n := h.log.count(mEvent{Op: "SetWorking", Gen: 3}); n != 0 {
		t.Fatalf("a stopped generation was made working; events: %v", h.log)
	}
	hl.SetStopped(3, false)
	if r := mRecv(t, res, "Upgrade"); r.err != nil || r.gen != 3 {
		t.Fatalf("Upgrade = %d, %v; want 3 once it runs again", r.gen, r.err)
	}
}

// TestMonitorReportsStallAndRecovery: a working generation that stops
// taking datagrams is reported stalled in Status, and no longer once it
// does again.
func TestMonitorReportsStallAndRecovery(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) { c.Health, c.HealthPoll = hl, 5*time.Millisecond })
	h.start()
	hl.Set(1, Sample{Queued: 2048, CPU: time.Second, Stopped: true})
	mWaitFor(t, "generation 1 reported stalled", func() bool { return h.gen(1).Stalled })
	if g := h.gen(1); !strings.Contains(g.StalledReason, "generation 1 is stopped") || g.State != StateWorking {
		t.Errorf("status %+v; want working, stalled: stopped", g)
	}
	hl.Set(1, Sample{Queued: 0, CPU: 2 * time.Second})
	mWaitFor(t, "generation 1 reported recovered", func() bool { return !h.gen(1).Stalled })
	if g := h.gen(1); g.StalledReason != "" {
		t.Errorf("recovered generation keeps stalled_reason %q", g.StalledReason)
	}
}

// TestMonitorReleasesStalledDrainingGeneration: a draining generation that
// stalls leaves steering at once (its flows go to the working generation)
// instead of at the end of its drain.
func TestMonitorReleasesStalledDrainingGeneration(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) {
		c.Health, c.HealthPoll, c.DrainTimeout, c.MinDrain = hl, 5*time.Millisecond, time.Hour, 10*time.Millisecond
	})
	h.start()
	h.s.SetFlows(1, 3, nil)
	h.mustUpgrade(2)
	hl.Set(1, Sample{Queued: 2048, CPU: time.Second, Stopped: true})
	mWaitFor(t, "generation 1 released", func() bool { return h.log.count(mRel(1)) > 0 })
	if g := h.gen(1); g.State != StateDraining || !g.Stalled {
		t.Errorf("generation 1 %+v; want draining and stalled", g)
	}
	if h.s.Working() != 2 {
		t.Errorf("steering working %d, want 2", h.s.Working())
	}
	// Released, its sockets no longer count: it must not read as recovered.
	n, rounds := hl.Sampled(1), hl.Sampled(2)
	hl.Set(1, Sample{})
	mWaitFor(t, "three more monitor rounds", func() bool { return hl.Sampled(2) >= rounds+3 })
	if g := h.gen(1); !g.Stalled || hl.Sampled(1) != n {
		t.Errorf("released generation 1: %+v, sampled %d times more; want still stalled, not sampled", g, hl.Sampled(1)-n)
	}
}

// TestMonitorReportsHang: a working generation that is not stopped but does
// not run at all while datagrams wait is reported stalled once it has been
// quiet for HangAfter, not before, and recovered once it runs again.
func TestMonitorReportsHang(t *testing.T) {
	hl := newMHealth()
	h := newMHarness(t, func(c *Config) { c.Health, c.HealthPoll, c.HangAfter = hl, 5*time.Millisecond, 300*time.Millisecond })
	h.start()
	hl.Set(1, Sample{Queued: 2048, CPU: time.Second})
	rounds := hl.Sampled(1)
	mWaitFor(t, "a few quiet samples", func() bool { return hl.Sampled(1) >= rounds+3 })
	quietFrom := time.Now()
	if g := h.gen(1); g.Stalled {
		t.Fatalf("generation 1 %+v: reported stalled after a few quiet samples, before HangAfter", g)
	}
	mWaitFor(t, "generation 1 reported stalled", func() bool { return h.gen(1).Stalled })
	if g := h.gen(1); !strings.Contains(g.StalledReason, "generation 1 has not run for") || g.State != StateWorking {
		t.Errorf("status %+v; want working, stalled: has not run", g)
	}
	if d := time.Since(quietFrom); d < 200*time.Millisecond {
		t.Errorf("reported stalled %v after the quiet samples began, want HangAfter (300ms) or more", d)
	}
	hl.Set(1, Sample{Queued: 2048, CPU: time.Second + time.Nanosecond})
	mWaitFor(t, "generation 1 reported recovered", func() bool { return !h.gen(1).Stalled })
}
