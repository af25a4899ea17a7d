package main

// Acceptance tests of `grmwrap upgrade`: the real binary supervises the
// unmodified echo servers, `grmwrap upgrade` and `grmwrap status --json`
// run as subprocesses, and internal/load drives traffic and counts every
// datagram. The tests assert counts and orders; their timeouts are hang
// guards only.

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/load"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// TestUpgradeUnderLoad upgrades a C, a Go and a Python server once in the
// middle of steady traffic on 32 flows. No datagram is lost. Every flow of
// the first run starts on the old instance and moves to the new one exactly
// once, when the drain timeout stops the old instance in the middle of the
// run (its flows never idle); none ever goes back. Every flow of a second
// run, started after the upgrade, is answered by the new instance only.
func TestUpgradeUnderLoad(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for _, tc := range []struct {
		name, server string
		opts         []string
		// spread sends the flows from every CPU, not from one: the
		// receiving CPU then varies as with a NIC's receive queues.
		spread bool
	}{
		{name: "c", server: "c"},
		{name: "go", server: "go"},
		{name: "python", server: "python"},
		// A server that takes its time to stop (here: it ignores the stop
		// signal and is killed after --kill-timeout) keeps its released
		// socket open for a while after the quiesce; no datagram may
		// reach it then, whichever CPU receives it.
		{name: "c stops slowly, flows on every CPU", server: "c", spread: true,
			opts: []string{"--stop-signal", "SIGUSR1", "--kill-timeout", "2s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := testbin.FreeUDPPort(t)
			argv := append(slices.Clone(servers(t)[tc.server]), strconv.Itoa(port))
			s := startSvc(t, port, append([]string{"--flow-timeout", "2s", "--drain-timeout", "2s"}, tc.opts...), argv...)
			oldPID := strconv.Itoa(s.first.PID)

			cfg1 := load.Config{Addr: addr(port), Flows: 32, Rate: 800, Duration: 6 * time.Second, Grace: 2 * time.Second}
			first := startLoads(t, cfg1, tc.spread)
			start := time.Now()
			time.Sleep(time.Second) // mid-stream: every flow is on generation 1 by now
			s.mustUpgrade(2)
			st := s.status()
			if st.WorkingGeneration != 2 || genOf(t, st, 2).State != generations.StateWorking {
				t.Fatalf("after the upgrade: %+v", st)
			}
			newPID := strconv.Itoa(genOf(t, st, 2).PID)
			second := startLoads(t, load.Config{Addr: addr(port), Flows: 32, Rate: 400, Duration: 2 * time.Second, Grace: 2 * time.Second}, tc.spread)

			// The old instance keeps its busy flows until the drain
			// timeout, then is quiesced (out of steering) and stopped.
			s.waitGen(1, generations.StateStopping, generations.StateExited)
			stoppedMidRun := time.Since(start) < cfg1.Duration
			s.waitGen(1, generations.StateExited)
			waitGone(t, s.first.PID)

			r1, r2 := first(t), second(t)
			noLoss(t, "run across the upgrade", r1)
			noLoss(t, "run after the upgrade", r2)
			t.Logf("first run orders %v; second run orders %v", orders(r1), orders(r2))
			t.Logf("data plane counters: %v", s.status().Counters)
			for _, f := range r1.Flows {
				moved := slices.Equal(f.Order, []string{oldPID, newPID})
				stayed := slices.Equal(f.Order, []string{oldPID})
				switch {
				case !moved && !stayed:
					t.Errorf("flow %d answered by %v, want [%s] or [%s %s] (old, then new, never back)", f.Flow, f.Order, oldPID, oldPID, newPID)
				case stayed && stoppedMidRun:
					t.Errorf("flow %d never moved to the new instance although the old one stopped while it sent: %v", f.Flow, f.Order)
				}
			}
			if !stoppedMidRun {
				t.Errorf("the old instance outlived the run (--drain-timeout 2s): the run did not cover its stop")
			}
			for _, f := range r2.Flows {
				if !slices.Equal(f.Order, []string{newPID}) {
					t.Errorf("new flow %d answered by %v, want only the new instance %s", f.Flow, f.Order, newPID)
				}
			}
		})
	}
}

// startLoads starts cfg, or with spread one run per CPU that share its
// flows and rate, and returns what waits for the (merged) result.
func startLoads(t *testing.T, cfg load.Config, spread bool) func(*testing.T) *load.Result {
	t.Helper()
	if !spread {
		l := startLoad(cfg)
		return l.wait
	}
	n := min(runtime.NumCPU(), cfg.Flows)
	if n < 2 {
		t.Fatalf("spreading flows over CPUs needs at least 2 CPUs, have %d", n)
	}
	var runs []*loadRun
	for cpu := range n {
		part := cfg
		part.Flows = cfg.Flows / n
		part.Rate = cfg.Rate / float64(n)
		runs = append(runs, startLoadOnCPU(t, part, cpu))
	}
	return func(t *testing.T) *load.Result {
		t.Helper()
		var rs []*load.Result
		for _, l := range runs {
			rs = append(rs, l.wait(t))
		}
		return merge(rs...)
	}
}

// snapshot is what the supervisor holds at one moment.
type snapshot struct {
	fds      fdTable
	children []proc
}

func (s *svc) snapshot() snapshot {
	s.t.Helper()
	return snapshot{fds: fdsOf(s.t, s.pid), children: children(s.t, s.pid)}
}

func (sn snapshot) String() string {
	return fmt.Sprintf("%d fds (%d sockets) %v; children %+v", len(sn.fds.links), sn.fds.sockets, sn.fds.kinds(), sn.children)
}

// steady takes snapshots until two in a row have the same files and
// children, so that a passing control connection is not counted.
func (s *svc) steady() snapshot {
	s.t.Helper()
	var last snapshot
	settle(s.t, "the supervisor's files and children never held still", func() (bool, string) {
		sn := s.snapshot()
		same := slices.Equal(sn.fds.links, last.fds.links) && slices.Equal(sn.children, last.children) && len(zombiesOf(s.t, s.pid)) == 0
		last = sn
		return same, sn.String()
	})
	return last
}

// sameResources waits until the supervisor holds as many files, sockets and
// live children, of the same kinds, as in base, and no zombie.
func (s *svc) sameResources(what string, base snapshot) {
	s.t.Helper()
	settle(s.t, what+": the supervisor leaks", func() (bool, string) {
		now := s.snapshot()
		ok := len(now.fds.links) == len(base.fds.links) && now.fds.sockets == base.fds.sockets &&
			maps.Equal(now.fds.kinds(), base.fds.kinds()) && len(now.children) == len(base.children) &&
			len(zombiesOf(s.t, s.pid)) == 0
		return ok, fmt.Sprintf("now %v\nbefore %v\nfiles now:\n%s\nfiles before:\n%s",
			now, base, strings.Join(now.fds.links, "\n"), strings.Join(base.fds.links, "\n"))
	})
}

// forwardOnly checks that each flow of r was answered by generations in
// increasing order: a flow moves forward, never back.
func forwardOnly(t *testing.T, r *load.Result, gen map[string]uint32) {
	t.Helper()
	for _, f := range r.Flows {
		prev := uint32(0)
		for _, pid := range f.Order {
			g, ok := gen[pid]
			if !ok || g <= prev {
				t.Errorf("flow %d answered by %v (generations %v): not forward only", f.Flow, f.Order, gen)
				break
			}
			prev = g
		}
	}
}

// maxLiveDuringTen is the most generations TestTenUpgrades may see alive
// right after an upgrade. A draining generation whose flows never idle is
// stopped at the first drain poll after --drain-timeout 1s; the polls are
// 1s apart and start at most a quarter of the drain timeout after the flip
// (the manager's minimum drain), so it is stopped about 1s to 1.25s after
// its flip, plus the quiesce. Upgrades are at least 0.5s apart, so at most
// three old generations (flipped about 0s, 0.5s and 1s ago) overlap, plus
// the working one.
const maxLiveDuringTen = 4

// TestTenUpgrades upgrades ten times in a row under steady load, each
// upgrade 0.5s after the previous one returned, so drains overlap. No
// datagram is lost and flows only move forward; never more than
// maxLiveDuringTen generations are alive; once every drain is done the
// supervisor holds exactly the files, sockets and children it held after
// the first upgrade had drained, and no zombie.
func TestTenUpgrades(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--drain-timeout", "1s"}, testbin.EchoC(t), strconv.Itoa(port))
	l := startLoad(load.Config{Addr: addr(port), Flows: 32, Rate: 1000, Duration: 10 * time.Second, Grace: 2 * time.Second})
	time.Sleep(500 * time.Millisecond)
	s.mustUpgrade(2)
	s.waitGen(1, generations.StateExited)
	base := s.steady()
	t.Logf("after the first drain: %v", base)
	if len(base.children) != 1 {
		t.Fatalf("after the first drain the supervisor has children %+v, want generation 2 only", base.children)
	}

	gens := map[string]uint32{strconv.Itoa(s.first.PID): 1}
	track(gens, s.status())
	most := 0
	for n := uint32(3); n <= 11; n++ {
		time.Sleep(500 * time.Millisecond)
		s.mustUpgrade(n)
		st := s.status()
		track(gens, st)
		lv := live(st)
		most = max(most, len(lv))
		if st.WorkingGeneration != n {
			t.Errorf("after upgrade %d: working generation %d", n, st.WorkingGeneration)
		}
		if len(lv) > maxLiveDuringTen {
			t.Errorf("after upgrade to %d: %d live generations %v, want at most %d: %+v", n, len(lv), lv, maxLiveDuringTen, st.Generations)
		}
	}
	t.Logf("at most %d live generations right after an upgrade", most)

	r := l.wait(t)
	noLoss(t, "ten upgrades", r)
	st := s.waitStatus("generation 11 alone alive", func(st Status) bool {
		return slices.Equal(live(st), []uint32{11})
	})
	forwardOnly(t, r, gens)
	for _, g := range st.Generations {
		if g.Generation < 11 && g.State != generations.StateExited {
			t.Errorf("generation %d ended %q, want exited", g.Generation, g.State)
		}
	}
	for pid, n := range gens {
		if p, _ := strconv.Atoi(pid); n < 11 && !procGone(p) {
			t.Errorf("generation %d (pid %d) is still there", n, p)
		}
	}
	s.sameResources("after ten upgrades", base)
	if kids := children(t, s.pid); len(kids) != 1 || kids[0].pid != genOf(t, st, 11).PID {
		t.Errorf("children of the supervisor %+v, want generation 11 (pid %d) only", kids, genOf(t, st, 11).PID)
	}
}

// TestUpgradeKeepsFlows: existing flows stay on their instance through ten
// upgrades in a row at a high rate (10000 datagrams/s on 64 flows). The
// flows never idle and the drain timeout is long, so generation 1 keeps
// every one of them: any datagram answered by a later generation was
// steered past the flow table, for instance while a new generation's
// socket joins the group.
func TestUpgradeKeepsFlows(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--flow-timeout", "60s", "--drain-timeout", "60s"}, testbin.EchoC(t), strconv.Itoa(port))
	oldPID := strconv.Itoa(s.first.PID)
	l := startLoad(load.Config{Addr: addr(port), Flows: 64, Rate: 10000, Duration: 6 * time.Second, Grace: 2 * time.Second})
	time.Sleep(500 * time.Millisecond)
	for n := uint32(2); n <= 11; n++ {
		s.mustUpgrade(n)
		time.Sleep(300 * time.Millisecond)
	}
	r := l.wait(t)
	noLoss(t, "ten upgrades, flows kept", r)
	t.Logf("data plane counters: %v", s.status().Counters)
	strays := 0
	for _, f := range r.Flows {
		if !slices.Equal(f.Order, []string{oldPID}) {
			strays++
			t.Errorf("flow %d answered by %v (%v), want generation 1 (%s) only", f.Flow, f.Order, f.By, oldPID)
		}
	}
	if strays > 0 {
		t.Errorf("%d of %d flows were answered by a generation they never belonged to", strays, len(r.Flows))
	}
	if st := s.status(); genOf(t, st, 1).State != generations.StateDraining {
		t.Errorf("generation 1 is %q, want still draining its live flows", genOf(t, st, 1).State)
	}
}

// TestUpgradeRollback: a new instance that exits at once, one that never
// binds, one that never sends READY=1 and one whose readiness probe never
// succeeds are each rolled back. `grmwrap upgrade` exits 1 with one line
// naming the failure; traffic during the attempt loses nothing and stays
// on the old instance; status shows the old
// generation working and the new one failed with no socket; the failed
// instance is gone and the supervisor holds what it held before (files,
// sockets, children); and the next upgrade works.
func TestUpgradeRollback(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.EchoC(t)
	for _, tc := range []struct {
		name    string
		svcOpts []string // of the supervisor
		upOpts  []string // of `grmwrap upgrade`
		argv    []string // the new command line, if any
		reason  []string
	}{
		{name: "exits at once", argv: []string{"sh", "-c", "exit 3"},
			reason: []string{"generation 2", "exited with status 3"}},
		{name: "never binds", upOpts: []string{"--timeout", "2s"}, argv: []string{"sleep", "30"},
			reason: []string{"generation 2", "bound no managed address"}},
		{name: "never ready", svcOpts: []string{"--ready", "notify", "--ready-timeout", "2s"},
			reason: []string{"generation 2", "READY=1"}},
		{name: "probe never succeeds", svcOpts: []string{"--ready", "exec:false", "--ready-timeout", "2s"},
			reason: []string{"readiness probe", "did not succeed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := testbin.FreeUDPPort(t)
			s := startSvc(t, port, tc.svcOpts, echo, strconv.Itoa(port))
			if len(tc.svcOpts) > 0 {
				// Generation 1 never gets ready either (it works
				// regardless): measure after its readiness gave up.
				waitStderr(t, s.g, "generation 1 not ready")
			}
			before := s.steady()
			oldPID := strconv.Itoa(s.first.PID)

			l := startLoad(load.Config{Addr: addr(port), Flows: 32, Rate: 500, Duration: 4 * time.Second, Grace: 2 * time.Second})
			time.Sleep(500 * time.Millisecond)
			r := s.upgrade(tc.upOpts, tc.argv...)
			if r.code != 1 || r.stdout != "" {
				t.Errorf("upgrade: %v, want exit 1 and nothing on stdout", r)
			}
			oneLineWith(t, "upgrade's error", r.stderr, append([]string{"upgrade failed"}, tc.reason...)...)

			st := s.status()
			g1, g2 := genOf(t, st, 1), genOf(t, st, 2)
			if st.WorkingGeneration != 1 || g1.State != generations.StateWorking {
				t.Errorf("after the rollback: working generation %d, generation 1 %q; want 1 working", st.WorkingGeneration, g1.State)
			}
			if g2.State != generations.StateFailed || g2.Sockets != 0 {
				t.Errorf("generation 2 after the rollback: %+v, want failed with no socket", g2)
			}
			for _, g := range st.Groups {
				if want := map[string]int{"1": 1}; !maps.Equal(g.Sockets, want) {
					t.Errorf("group %s sockets %v after the rollback, want %v", g.Address, g.Sockets, want)
				}
			}
			waitGone(t, s.instancePID(2))

			res := l.wait(t)
			noLoss(t, "load during the failed upgrade", res)
			for _, f := range res.Flows {
				if !slices.Equal(f.Order, []string{oldPID}) {
					t.Errorf("flow %d answered by %v, want the old instance %s only", f.Flow, f.Order, oldPID)
				}
			}
			s.sameResources("after the rollback", before)

			// Nothing is left half done: the next upgrade works (where the
			// readiness mode lets the echo server be ready at all).
			if len(tc.svcOpts) == 0 {
				s.mustUpgrade(3)
			}
		})
	}
}

// TestNoopQuiesce: with the noop dissector an old generation has no flows
// to wait for and is stopped soon after the flip, while traffic goes on;
// the quiesce (out of steering, queues emptied, then SIGTERM, on which the
// C server exits at once, unread datagrams and all) loses nothing at 5000
// datagrams/s over three upgrades. The negative control shows that the
// same load sees a plain stop and start of the same server.
func TestNoopQuiesce(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.EchoC(t)
	loadOn := func(port int) load.Config {
		return load.Config{Addr: addr(port), Flows: 16, Rate: 5000, Duration: 4 * time.Second, Grace: 2 * time.Second}
	}
	t.Run("grmwrap", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		s := startSvc(t, port, []string{"--dissector", "noop"}, echo, strconv.Itoa(port))
		// Each upgrade returns after the settle window and the
		// confirmation (about 1.5s): the load must outlast three of them.
		cfg := loadOn(port)
		cfg.Duration = 9 * time.Second
		l := startLoad(cfg)
		gens := map[string]uint32{strconv.Itoa(s.first.PID): 1}
		for n := uint32(2); n <= 4; n++ {
			time.Sleep(800 * time.Millisecond)
			s.mustUpgrade(n)
			track(gens, s.status())
		}
		r := l.wait(t)
		noLoss(t, "three noop upgrades", r)
		st := s.waitStatus("generation 4 alone alive", func(st Status) bool {
			return slices.Equal(live(st), []uint32{4})
		})
		if len(st.Groups) != 1 || st.Groups[0].Dissector != "noop" {
			t.Errorf("groups %+v, want one noop group", st.Groups)
		}
		if len(r.By) != 4 {
			t.Errorf("answered by %v, want all four generations", r.By)
		}
		forwardOnly(t, r, gens)
	})
	t.Run("negative control: stop and start without grmwrap", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		srv := testbin.Start(t, exec.Command(echo, strconv.Itoa(port)))
		srv.Ready(t, wait)
		l := startLoad(loadOn(port))
		for range 3 {
			time.Sleep(800 * time.Millisecond)
			if err := srv.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := srv.Wait(t, wait); code != 0 {
				t.Fatalf("server exited %d on SIGTERM", code)
			}
			srv = testbin.Start(t, exec.Command(echo, strconv.Itoa(port)))
			srv.Ready(t, wait)
		}
		r := l.wait(t)
		t.Logf("plain restarts: sent %d answered %d lost %d", r.Sent, r.Answered, r.Lost)
		if r.Lost == 0 {
			t.Fatal("three plain restarts lost no datagram: the load cannot see a restart, so the grmwrap subtest proves nothing")
		}
	})
}

// keepAlive sends on a flow every 100ms, reading and dropping the answers,
// until stop is called; the flow stays live for any --flow-timeout of 1s
// or more.
func keepAlive(t *testing.T, c *net.UDPConn) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_, _ = c.Write([]byte("keepalive"))
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			if _, err := c.Read(buf); err != nil && isClosed(err) {
				return
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(done)
			c.Close()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }

// TestStatusJSON: `grmwrap status --json` reflects each step of an upgrade
// with the field names DESIGN.md lists: after the start, during the drain
// (a flow keeps the old generation draining) and after it.
func TestStatusJSON(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--flow-timeout", "2s", "--drain-timeout", "60s"}, testbin.EchoC(t), strconv.Itoa(port))

	// The exact field names, from the raw JSON.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(s.statusRaw(), &raw); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(raw)); !slices.Equal(keys, []string{"counters", "generations", "groups", "pid", "working_generation"}) {
		t.Fatalf("status --json has fields %v", keys)
	}
	var gens, groups []map[string]any
	var counters map[string]uint64
	for field, dst := range map[string]any{"generations": &gens, "groups": &groups, "counters": &counters} {
		if err := json.Unmarshal(raw[field], dst); err != nil {
			t.Fatalf("%s: %v: %s", field, err, raw[field])
		}
	}
	for _, g := range gens {
		for _, k := range []string{"generation", "pid", "state", "sockets", "flows"} {
			if _, ok := g[k]; !ok {
				t.Errorf("generations[] entry %v lacks %q", g, k)
			}
		}
	}
	for _, g := range groups {
		if keys := slices.Sorted(maps.Keys(g)); !slices.Equal(keys, []string{"address", "dissector", "sockets"}) {
			t.Errorf("groups[] entry has fields %v", keys)
		}
	}

	// After the start.
	st := s.status()
	if st.PID != s.pid || st.WorkingGeneration != 1 {
		t.Errorf("after start: pid %d working %d, want %d and 1", st.PID, st.WorkingGeneration, s.pid)
	}
	if len(st.Generations) != 1 {
		t.Fatalf("after start: generations %+v, want one", st.Generations)
	}
	if g := st.Generations[0]; g.Generation != 1 || g.PID != s.first.PID || g.State != generations.StateWorking || g.Sockets != 1 {
		t.Errorf("after start: generation %+v, want 1, pid %d, working, 1 socket", g, s.first.PID)
	}
	if len(st.Groups) != 1 {
		t.Fatalf("after start: groups %+v, want one", st.Groups)
	}
	g := st.Groups[0]
	if !strings.Contains(g.Address, ":"+strconv.Itoa(port)) || g.Dissector != "flow" || !maps.Equal(g.Sockets, map[string]int{"1": 1}) {
		t.Errorf("after start: group %+v, want address with :%d, dissector flow, sockets {1:1}", g, port)
	}
	if n := st.Counters["trapped_bind_managed"]; n != 1 {
		t.Errorf("after start: counters %v, want trapped_bind_managed 1", st.Counters)
	}

	// A flow on generation 1, kept alive through the upgrade.
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	old := flow{c}
	if got := old.ask(t, "hello"); got != strconv.Itoa(s.first.PID) {
		t.Fatalf("flow answered by %s, want generation 1 (%d)", got, s.first.PID)
	}
	stop := keepAlive(t, c)
	st = s.waitGen(1, generations.StateWorking)
	if f := genOf(t, st, 1).Flows; f != 1 {
		t.Errorf("before the upgrade: generation 1 has %d flows, want 1", f)
	}

	// During the drain.
	s.mustUpgrade(2)
	st = s.status()
	g1, g2 := genOf(t, st, 1), genOf(t, st, 2)
	if st.WorkingGeneration != 2 {
		t.Errorf("during the drain: working generation %d, want 2", st.WorkingGeneration)
	}
	if g1.State != generations.StateDraining || g1.Sockets != 1 || g1.Flows != 1 {
		t.Errorf("during the drain: generation 1 %+v, want draining with 1 socket and 1 flow", g1)
	}
	if g2.State != generations.StateWorking || g2.Sockets != 1 || g2.Flows != 0 {
		t.Errorf("during the drain: generation 2 %+v, want working with 1 socket and no flow", g2)
	}
	if len(st.Groups) != 1 || !maps.Equal(st.Groups[0].Sockets, map[string]int{"1": 1, "2": 1}) {
		t.Errorf("during the drain: groups %+v, want one group with sockets {1:1, 2:1}", st.Groups)
	}
	if n := st.Counters["trapped_bind_managed"]; n != 2 {
		t.Errorf("during the drain: counters %v, want trapped_bind_managed 2", st.Counters)
	}
	newFlow := openFlows(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, 1)[0]
	if got := newFlow.ask(t, "new"); got != strconv.Itoa(g2.PID) {
		t.Errorf("a new flow during the drain answered by %s, want generation 2 (%d)", got, g2.PID)
	}

	// After the drain: the old flow idles, generation 1 is stopped.
	stop()
	st = s.waitGen(1, generations.StateExited)
	g1, g2 = genOf(t, st, 1), genOf(t, st, 2)
	if g1.PID != s.first.PID || g1.Sockets != 0 || g1.Flows != 0 {
		t.Errorf("after the drain: generation 1 %+v, want exited, pid still %d, no socket and no flow", g1, s.first.PID)
	}
	if st.WorkingGeneration != 2 || g2.State != generations.StateWorking || g2.Sockets != 1 {
		t.Errorf("after the drain: working %d, generation 2 %+v", st.WorkingGeneration, g2)
	}
	if len(st.Groups) != 1 || !maps.Equal(st.Groups[0].Sockets, map[string]int{"2": 1}) {
		t.Errorf("after the drain: groups %+v, want sockets {2:1}", st.Groups)
	}

	// Without a PID: every supervisor of the runtime directory, as a list.
	r := runCLI(t, "status", "--runtime-dir", s.dir, "--json")
	var all []Status
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil || len(all) != 1 || all[0].PID != s.pid {
		t.Errorf("status --json without PID: %v (%v), want a list of this supervisor", r, err)
	}
}

// TestUpgradeCLIErrors: usage and connection errors exit 2 with one line;
// an instance's pid reaches its supervisor; a second upgrade during one in
// progress is refused with exit 1.
func TestUpgradeCLIErrors(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.EchoC(t)
	t.Run("not a supervisor", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		s := startSvc(t, port, nil, echo, strconv.Itoa(port))
		other := exec.Command("sleep", "30")
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"no PID", nil, "usage"},
			{"two PIDs", []string{strconv.Itoa(s.pid), strconv.Itoa(s.pid)}, "usage"},
			{"not a number", []string{"abc"}, `"abc" is not a process id`},
			{"zero", []string{"0"}, "not a process id"},
			{"pid 1", []string{"1"}, "neither a grmwrap supervisor nor one of its instances"},
			{"the test itself", []string{strconv.Itoa(os.Getpid())}, "neither a grmwrap supervisor nor one of its instances"},
			{"another process", []string{strconv.Itoa(other.Process.Pid)}, "neither a grmwrap supervisor nor one of its instances"},
			{"no such process", []string{"4194304"}, "no such process"},
			{"dashes without command", []string{strconv.Itoa(s.pid), "--"}, "missing command"},
		} {
			r := runCLI(t, append([]string{"upgrade", "--runtime-dir", s.dir}, tc.args...)...)
			if r.code != 2 || r.stdout != "" {
				t.Errorf("%s: %v, want exit 2", tc.name, r)
			}
			oneLineWith(t, tc.name, r.stderr, tc.want)
		}
		// None of them started anything.
		if st := s.status(); len(st.Generations) != 1 || st.WorkingGeneration != 1 {
			t.Errorf("after the refused requests: %+v, want generation 1 alone", st)
		}
	})
	t.Run("instance pid", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		s := startSvc(t, port, nil, echo, strconv.Itoa(port))
		r := runCLI(t, s.upgradeArgs(s.first.PID, nil, nil)...)
		if r.code != 0 || r.stdout != "generation 2 working\n" {
			t.Fatalf("upgrade with the instance's pid: %v, want exit 0 and generation 2 working", r)
		}
		st := s.status()
		r = runCLI(t, s.upgradeArgs(genOf(t, st, 2).PID, nil, nil)...)
		if r.code != 0 || r.stdout != "generation 3 working\n" {
			t.Fatalf("upgrade with the new instance's pid: %v, want exit 0 and generation 3 working", r)
		}
	})
	t.Run("flags after PID as documented", func(t *testing.T) {
		// DESIGN.md: `grmwrap upgrade PID [--timeout DUR] [-- COMMAND
		// [ARG...]]` and `grmwrap status [PID] [--json]`.
		port := testbin.FreeUDPPort(t)
		s := startSvc(t, port, nil, echo, strconv.Itoa(port))
		r := runCLI(t, "upgrade", "--runtime-dir", s.dir, strconv.Itoa(s.pid), "--timeout", "30s")
		if r.code != 0 || r.stdout != "generation 2 working\n" {
			t.Errorf("grmwrap upgrade PID --timeout 30s: %v, want exit 0", r)
		}
		r = runCLI(t, "status", "--runtime-dir", s.dir, strconv.Itoa(s.pid), "--json")
		var st Status
		if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil || st.PID != s.pid {
			t.Errorf("grmwrap status PID --json: %v, want exit 0 and this supervisor's JSON", r)
		}
	})
	t.Run("one upgrade at a time", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		s := startSvc(t, port, []string{"--ready", "delay:3s"}, echo, strconv.Itoa(port))
		slow := startCLI(t, s.upgradeArgs(s.pid, nil, nil)...)
		s.waitGen(2, generations.StateStarting)
		r := s.upgrade(nil)
		if r.code != 1 || r.stdout != "" {
			t.Errorf("second upgrade during one in progress: %v, want exit 1", r)
		}
		oneLineWith(t, "second upgrade", r.stderr, "already in progress")
		if first := finish(t, slow); first.code != 0 || first.stdout != "generation 2 working\n" {
			t.Errorf("the upgrade in progress: %v, want exit 0 and generation 2 working", first)
		}
		st := s.status()
		if st.WorkingGeneration != 2 || len(st.Generations) != 2 {
			t.Errorf("after both: %+v, want generations 1 and 2 only, 2 working", st)
		}
	})
}

// TestSignals: during a drain, SIGHUP to the supervisor reaches the working
// instance only, and SIGTERM stops every instance, old and new, after
// which grmwrap exits with the working instance's status. Generation 2
// writes its stdout to a file of its own so that the two can be told apart.
func TestSignals(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.EchoC(t)
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--flow-timeout", "60s", "--drain-timeout", "60s"}, echo, strconv.Itoa(port))
	// A flow keeps generation 1 draining for the rest of the test.
	if got := testbin.Echo(t, addr(port), "x", wait); got != fmt.Sprintf("%d x", s.first.PID) {
		t.Fatalf("echo %q", got)
	}
	out2 := filepath.Join(t.TempDir(), "gen2.out")
	s.mustUpgrade(2, "sh", "-c", `exec "$0" "$1" >"$2"`, echo, strconv.Itoa(port), out2)
	st := s.status()
	g1, g2 := genOf(t, st, 1), genOf(t, st, 2)
	if g1.State != generations.StateDraining || g2.State != generations.StateWorking {
		t.Fatalf("before the signals: %+v, want 1 draining and 2 working", st.Generations)
	}

	if err := s.g.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	readOut2 := func() string { b, _ := os.ReadFile(out2); return string(b) }
	settle(t, "generation 2 never got SIGHUP", func() (bool, string) {
		return strings.Contains(readOut2(), "signal 1\n"), readOut2()
	})
	if err := s.g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.g.Wait(t, hang); code != 0 {
		t.Errorf("grmwrap exited %d after SIGTERM, want the working instance's 0", code)
	}
	// Generation 1 wrote to grmwrap's stdout: after its ready line, only
	// the stop.
	var lines1 []string
	guard := time.After(hang)
read:
	for {
		select {
		case l, ok := <-s.g.Lines:
			if !ok {
				break read
			}
			lines1 = append(lines1, l)
		case <-guard:
			t.Fatalf("grmwrap's stdout never closed (hang guard); so far %q", lines1)
		}
	}
	if !slices.Equal(lines1, []string{"signal 15"}) {
		t.Errorf("generation 1 said %q after its ready line, want only \"signal 15\" (no SIGHUP)", lines1)
	}
	lines2 := strings.Split(strings.TrimSuffix(readOut2(), "\n"), "\n")
	if len(lines2) != 3 || !strings.HasPrefix(lines2[0], "ready ") || lines2[1] != "signal 1" || lines2[2] != "signal 15" {
		t.Errorf("generation 2 said %q, want its ready line, \"signal 1\", \"signal 15\"", lines2)
	}
	for _, pid := range []int{g1.PID, g2.PID} {
		if !procGone(pid) {
			t.Errorf("instance %d outlived grmwrap", pid)
		}
	}
}
