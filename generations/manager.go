package generations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"
)

// State is where a generation is in its life.
type State string

// The states of a generation. starting -> working -> draining -> stopping
// -> exited; starting -> failed (rolled back); any -> exited when the
// process ends.
const (
	StateStarting State = "starting"
	StateWorking  State = "working"
	StateDraining State = "draining"
	StateStopping State = "stopping"
	StateExited   State = "exited"
	StateFailed   State = "failed"
)

// Process is a started instance as the manager sees it.
type Process interface {
	Pid() int
	// Signal sends sig to the instance's main process.
	Signal(sig syscall.Signal) error
	// Kill sends SIGKILL to the instance's whole process group.
	Kill() error
	// Done is closed when the main process has exited.
	Done() <-chan struct{}
	// ExitCode is valid once Done is closed: the exit status, or 128+N
	// when signal N killed it.
	ExitCode() int
}

// Launcher starts generation gen of the server with argv (nil: the
// supervisor's own command line).
type Launcher interface {
	Launch(gen uint32, argv []string) (Process, error)
}

// Sockets is what the manager needs of the steering state.
type Sockets interface {
	// SetWorking makes gen receive every new flow (one write per group).
	SetWorking(gen uint32) error
	// Bound returns the addresses where gen has at least one socket.
	Bound(gen uint32) []GroupKey
	// Changed is closed (and replaced) whenever sockets come or go.
	Changed() <-chan struct{}
	// LiveFlows counts gen's flows seen within the flow timeout (it may
	// walk the whole flow table: for status, not for polling).
	LiveFlows(gen uint32) (int, error)
	// Active reports whether any flow of gen was seen within the flow
	// timeout; cheap, it is what a drain polls.
	Active(gen uint32) (bool, error)
	// SocketCount counts gen's sockets in steering.
	SocketCount(gen uint32) int
	// Release takes gen's sockets out of steering; queued then reports how
	// many datagrams still wait in them.
	Release(gen uint32) (queued func() (int, error), err error)
}

// Readiness decides when a starting generation is ready.
type Readiness interface {
	// Wait returns nil once gen is ready, or an error saying why not
	// (ctx's deadline included).
	Wait(ctx context.Context, gen uint32, p Process) error
}

// Health reads how a generation's processes are doing; the supervisor
// implements it from /proc. Every call is cheap enough to poll about once a
// second per generation.
type Health interface {
	// Stopped reports whether a process of generation gen is stopped
	// (SIGSTOP, a debugger): it does not run until it is continued.
	Stopped(gen uint32, p Process) (bool, error)
	// Sample reads gen's progress now.
	Sample(gen uint32, p Process) (Sample, error)
}

// Sample is one reading of a generation's progress.
type Sample struct {
	// Queued is the bytes waiting in the receive queues of gen's sockets
	// in steering.
	Queued int
	// CPU is the CPU time its threads used so far, to the nanosecond
	// (schedstat): any run between two samples changes it.
	CPU time.Duration
	// Stopped: a process of gen is stopped.
	Stopped bool
	// At is when the sample was taken (the manager sets it when zero).
	At time.Time
}

// Quiet reports whether between prev and cur a generation made no progress
// while datagrams waited for it: its queues are not empty, did not shrink,
// and none of its threads ran at all.
func Quiet(prev, cur Sample) bool {
	return cur.Queued > 0 && cur.Queued >= prev.Queued && cur.CPU == prev.CPU
}

// Stalled decides whether a generation does not take datagrams off its
// sockets, from two samples, prev then cur, and how long it has been Quiet
// without a break (quiet). It stalls when its queues are not empty and did
// not shrink, and either a process of it is stopped, or it has been quiet
// for hangAfter: blocked for good (a deadlock, a wait that never ends) while
// datagrams wait. A single quiet interval is not enough: a server may sleep
// between bursts (sipp) or on a slow upstream. A hang that keeps some
// thread running (a busy loop, a runtime's own threads) is not seen. The
// reason names gen.
func Stalled(gen uint32, prev, cur Sample, quiet, hangAfter time.Duration) (bool, string) {
	if cur.Queued == 0 || cur.Queued < prev.Queued {
		return false, ""
	}
	if cur.Stopped {
		return true, fmt.Sprintf("generation %d is stopped with %d bytes waiting in its sockets", gen, cur.Queued)
	}
	if Quiet(prev, cur) && hangAfter > 0 && quiet >= hangAfter {
		return true, fmt.Sprintf("generation %d has not run for %v with %d bytes waiting in its sockets",
			gen, quiet.Round(100*time.Millisecond), cur.Queued)
	}
	return false, ""
}

// ErrUpgradeInProgress refuses a second concurrent upgrade.
var ErrUpgradeInProgress = errors.New("an upgrade is already in progress")

// ErrNotRunning refuses an upgrade before the first generation runs or
// after the service stopped.
var ErrNotRunning = errors.New("the service is not running")

// Config tunes the manager.
type Config struct {
	ReadyTimeout time.Duration
	DrainTimeout time.Duration
	KillTimeout  time.Duration
	StopSignal   syscall.Signal
	// NoFlows is set for the noop dissector: a draining generation has no
	// flows to wait for and is stopped at once.
	NoFlows bool
	// DrainPoll is how often a draining generation's flows are counted.
	DrainPoll time.Duration
	// QuiesceLimit bounds the wait for a released generation's receive
	// queues to empty (default KillTimeout).
	QuiesceLimit time.Duration
	// History is how many ended generations status keeps (default 16).
	History int
	// MinDrain keeps an old generation at least this long after the flip
	// (default 1s, at most a quarter of DrainTimeout), even without flows: a new
	// generation that dies right after it became working is then replaced
	// by its predecessor instead of leaving the service down.
	MinDrain time.Duration
	// Settle is how long a new generation must stay alive and running
	// after its readiness said ready before the flip (0: no settle
	// window). One that dies in it never got a datagram.
	Settle time.Duration
	// Health, if set, is read to keep stopped generations from becoming
	// working, to confirm a new working generation within MinDrain, and
	// to report working or draining generations that stall.
	Health Health
	// HealthPoll is how often the working and draining generations are
	// sampled (default 1s).
	HealthPoll time.Duration
	// HangAfter is how long a generation may stay Quiet before it is
	// reported stalled (default 3s; negative: never).
	HangAfter time.Duration
}

// Manager runs the generations of one service: the first start, upgrades
// with readiness and rollback, drains and quiesces. Safe for concurrent
// use.
type Manager struct {
	log     *slog.Logger
	cfg     Config
	launch  Launcher
	sockets Sockets
	ready   Readiness

	mu        sync.Mutex
	gens      []*generation // in start order, live and recent
	working   *generation
	next      uint32
	upgrading bool
	stopping  bool
	// workingExit is closed when the working generation's process exits
	// (not during a stop).
	workingExit chan struct{}
	exited      bool // workingExit is closed
	exitCode    int
	drains      sync.WaitGroup
	// launching counts upgrades between their start and the moment their
	// new generation is in gens: Stop waits for them, so that nothing it
	// did not see survives it.
	launching sync.WaitGroup
	quit      chan struct{} // closed by Stop: ends the health monitor
	quitOnce  sync.Once
}

type generation struct {
	n       uint32
	proc    Process
	state   State
	started time.Time
	reason  string // why it failed
	// revived is closed when a draining generation becomes working again
	// because its successor died.
	revived chan struct{}
	// Health: the last sample (sampled says there is one), and whether the
	// generation stalls and why.
	last          Sample
	sampled       bool
	quietSince    time.Time // zero unless its last samples were Quiet
	stalled       bool
	stalledReason string
	// confirming: Upgrade samples it itself (the monitor leaves it alone).
	confirming bool
}

// NewManager returns a manager; call Start to run generation 1.
func NewManager(log *slog.Logger, cfg Config, l Launcher, s Sockets, r Readiness) *Manager {
	if cfg.DrainPoll == 0 {
		cfg.DrainPoll = time.Second
	}
	if cfg.QuiesceLimit == 0 {
		cfg.QuiesceLimit = cfg.KillTimeout
	}
	if cfg.History == 0 {
		cfg.History = 16
	}
	if cfg.StopSignal == 0 {
		cfg.StopSignal = syscall.SIGTERM
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = time.Minute
	}
	if cfg.KillTimeout == 0 {
		cfg.KillTimeout = 10 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 10 * time.Minute
	}
	if cfg.MinDrain == 0 {
		cfg.MinDrain = time.Second
	}
	cfg.MinDrain = min(cfg.MinDrain, cfg.DrainTimeout/4)
	if cfg.HealthPoll == 0 {
		cfg.HealthPoll = time.Second
	}
	if cfg.HangAfter == 0 {
		cfg.HangAfter = 3 * time.Second
	}
	return &Manager{log: log, cfg: cfg, launch: l, sockets: s, ready: r, next: 1, workingExit: make(chan struct{}), quit: make(chan struct{})}
}

// Start launches generation 1 and makes it working at once (it is the only
// one). ready, if not nil, receives the result of its readiness.
func (m *Manager) Start(ctx context.Context, ready chan<- error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.next != 1 {
		return errors.New("already started")
	}
	if err := m.sockets.SetWorking(1); err != nil {
		return fmt.Errorf("make generation 1 working: %w", err)
	}
	p, err := m.launch.Launch(1, nil)
	if err != nil {
		return err
	}
	g := &generation{n: 1, proc: p, state: StateWorking, started: time.Now(), revived: make(chan struct{})}
	m.next = 2
	m.gens = append(m.gens, g)
	m.working = g
	go m.watch(g)
	if m.cfg.Health != nil {
		go m.monitor()
	}
	if ready != nil {
		go func() {
			rctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
			defer cancel()
			ready <- m.ready.Wait(rctx, 1, p)
		}()
	}
	return nil
}

// watch marks g exited when its process ends.
func (m *Manager) watch(g *generation) {
	<-g.proc.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.state != StateFailed {
		g.state = StateExited
	}
	m.log.Info("generation exited", "generation", g.n, "pid", g.proc.Pid(), "status", g.proc.ExitCode())
	if g == m.working && !m.stopping {
		if prev := m.reviveLocked(); prev != nil {
			m.log.Error("working generation exited: the previous generation, still draining, is working again",
				"exited", g.n, "status", g.proc.ExitCode(), "generation", prev.n)
		} else if !m.exited {
			m.exitCode = g.proc.ExitCode()
			m.exited = true
			close(m.workingExit)
		}
	}
	m.pruneLocked()
}

// reviveLocked makes the newest draining generation working again, when
// the working one died: the service keeps a working generation as long as
// one is alive and not yet quiesced.
func (m *Manager) reviveLocked() *generation {
	for i := len(m.gens) - 1; i >= 0; i-- {
		g := m.gens[i]
		if g.state != StateDraining {
			continue
		}
		select {
		case <-g.proc.Done():
			continue
		default:
		}
		if err := m.sockets.SetWorking(g.n); err != nil {
			m.log.Error("revive previous generation", "generation", g.n, "err", err)
			return nil
		}
		g.state = StateWorking
		// Its drain ends; a later drain waits on a fresh channel.
		close(g.revived)
		g.revived = make(chan struct{})
		m.working = g
		return g
	}
	return nil
}

// restoreLocked points steering back at the working generation after a
// failed flip. If the working generation died meanwhile (its watch waits
// for the lock), the newest live draining one is revived instead, so the
// data plane never points at a dead generation while one is alive.
func (m *Manager) restoreLocked() error {
	w := m.working
	select {
	case <-w.proc.Done():
		if prev := m.reviveLocked(); prev != nil {
			m.log.Error("working generation exited during a failed flip: the previous generation, still draining, is working again",
				"exited", w.n, "status", w.proc.ExitCode(), "generation", prev.n)
			return nil
		}
		// None alive: watch(w) ends the service; steering still goes back
		// to w, the last generation the manager made working.
	default:
	}
	if err := m.sockets.SetWorking(w.n); err != nil {
		return fmt.Errorf("restore generation %d: %w", w.n, err)
	}
	return nil
}

// WorkingExited is closed when the working generation exits on its own:
// the service is down and the supervisor should stop.
func (m *Manager) WorkingExited() <-chan struct{} { return m.workingExit }

// Upgrade starts a new generation (argv nil: the same command line), waits
// for it to be ready within timeout (0: ReadyTimeout), then makes it
// working and drains the old one. On failure the new generation is stopped
// and removed and the old one stays working; the error says why.
func (m *Manager) Upgrade(ctx context.Context, argv []string, timeout time.Duration) (uint32, error) {
	m.mu.Lock()
	if m.working == nil || m.stopping || m.exited {
		m.mu.Unlock()
		return 0, ErrNotRunning
	}
	if m.upgrading {
		m.mu.Unlock()
		return 0, ErrUpgradeInProgress
	}
	m.upgrading = true
	n := m.next
	m.next++
	m.launching.Add(1)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.upgrading = false
		m.mu.Unlock()
	}()

	start := time.Now()
	m.log.Info("upgrade: starting generation", "generation", n)
	p, err := m.launch.Launch(n, argv)
	if err != nil {
		m.launching.Done()
		m.log.Error("upgrade failed: could not start generation", "generation", n, "err", err)
		return 0, fmt.Errorf("start generation %d: %w", n, err)
	}
	g := &generation{n: n, proc: p, state: StateStarting, started: start, revived: make(chan struct{})}
	m.mu.Lock()
	m.gens = append(m.gens, g)
	stopping := m.stopping
	m.mu.Unlock()
	m.launching.Done()
	go m.watch(g)
	if stopping {
		m.rollback(g, ErrNotRunning)
		return 0, ErrNotRunning
	}

	if timeout <= 0 || timeout > m.cfg.ReadyTimeout {
		timeout = m.cfg.ReadyTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	readyErr := make(chan error, 1)
	go func() { readyErr <- m.ready.Wait(rctx, n, p) }()
	var why error
	select {
	case err := <-readyErr:
		why = err
		select {
		case <-p.Done():
			if why == nil {
				why = fmt.Errorf("generation %d exited with status %d", n, p.ExitCode())
			}
		default:
		}
	case <-p.Done():
		cancel()
		why = fmt.Errorf("generation %d exited with status %d before it was ready", n, p.ExitCode())
	}
	if why == nil {
		why = m.waitRunning(rctx, g)
	}
	if why != nil {
		m.rollback(g, why)
		return 0, why
	}
	readyAt := time.Now()
	if why := m.settle(rctx, g, readyAt); why != nil {
		m.rollback(g, why)
		return 0, why
	}

	m.mu.Lock()
	if m.stopping || m.exited {
		m.mu.Unlock()
		m.rollback(g, ErrNotRunning)
		return 0, ErrNotRunning
	}
	select {
	case <-p.Done():
		// It died between its readiness and the flip: never make a dead
		// generation working.
		m.mu.Unlock()
		why := fmt.Errorf("generation %d exited with status %d as it became ready", n, p.ExitCode())
		m.rollback(g, why)
		return 0, why
	default:
	}
	flip := time.Now()
	if err := m.sockets.SetWorking(n); err != nil {
		// Some groups may already point at n: point them all back, still
		// under the lock (watch may revive meanwhile otherwise), and at a
		// live generation.
		err = fmt.Errorf("make generation %d working: %w", n, err)
		if berr := m.restoreLocked(); berr != nil {
			err = errors.Join(err, berr)
		}
		m.mu.Unlock()
		m.rollback(g, err)
		return 0, err
	}
	old := m.working
	g.state = StateWorking
	m.working = g
	drainOld := false
	select {
	case <-old.proc.Done(): // exited meanwhile: nothing to drain
	default:
		old.state = StateDraining
		drainOld = true
		m.drains.Add(1)
	}
	revived := old.revived
	g.confirming = true
	m.mu.Unlock()
	flipped := time.Now()
	m.log.Info("upgrade: generation working", "generation", n, "pid", p.Pid(), "previous", old.n,
		"ready_after_us", readyAt.Sub(start).Microseconds(),
		"ready_to_flip_us", flipped.Sub(readyAt).Microseconds(),
		"flip_us", flipped.Sub(flip).Microseconds(), "confirm_within", m.cfg.MinDrain)
	if err := m.confirm(g, flipped); err != nil {
		if drainOld {
			m.drains.Done()
		}
		return 0, err
	}
	m.log.Info("upgrade: generation confirmed working", "generation", n, "previous", old.n)
	if drainOld {
		go m.drain(old, revived, true)
	}
	return n, nil
}

// waitRunning returns nil once g's processes run (at once when Health is
// not set or cannot tell), or an error when g is still stopped at ctx's
// deadline or exits meanwhile. A stopped generation is not ready.
func (m *Manager) waitRunning(ctx context.Context, g *generation) error {
	if m.cfg.Health == nil {
		return nil
	}
	logged := false
	for {
		stopped, err := m.cfg.Health.Stopped(g.n, g.proc)
		if err != nil {
			m.log.Debug("read whether a generation is stopped", "generation", g.n, "err", err)
			return nil // cannot tell (it may have just exited): the caller's exit checks decide
		}
		if !stopped {
			if logged {
				m.log.Info("generation runs again", "generation", g.n)
			}
			return nil
		}
		if !logged {
			m.log.Warn("generation is stopped: not ready until it runs again", "generation", g.n)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("generation %d is stopped", g.n)
		case <-g.proc.Done():
			return fmt.Errorf("generation %d exited with status %d while it was stopped", g.n, g.proc.ExitCode())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settle keeps a ready generation out of steering for the settle window:
// it must stay alive (and running: a stopped one waits, bounded by ctx)
// until the window ends. A generation that fails here never got a
// datagram.
func (m *Manager) settle(ctx context.Context, g *generation, readyAt time.Time) error {
	if m.cfg.Settle <= 0 {
		return nil
	}
	end := readyAt.Add(m.cfg.Settle)
	for {
		left := time.Until(end)
		if left <= 0 {
			return m.waitRunning(ctx, g)
		}
		select {
		case <-g.proc.Done():
			return fmt.Errorf("generation %d exited with status %d during the settle window (%v after it was ready)",
				g.n, g.proc.ExitCode(), time.Since(readyAt).Round(time.Millisecond))
		case <-time.After(min(left, 50*time.Millisecond)):
		}
		if err := m.waitRunning(ctx, g); err != nil {
			return err
		}
	}
}

// confirm keeps watching a generation just made working for MinDrain (its
// predecessor is kept that long and can take over): it returns nil if g
// is still working then; if g dies or stalls within it, g is failed with
// the reason, its sockets leave steering, the predecessor is working
// again, and the error says why.
func (m *Manager) confirm(g *generation, flipped time.Time) error {
	window := time.NewTimer(m.cfg.MinDrain)
	defer window.Stop()
	var tick <-chan time.Time
	if m.cfg.Health != nil {
		every := min(max(m.cfg.MinDrain/4, 50*time.Millisecond), m.cfg.HealthPoll)
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
		m.sample(g) // the first sample, to compare the next ones with
	}
	defer func() {
		m.mu.Lock()
		g.confirming = false
		m.mu.Unlock()
	}()
	for {
		var why error
		select {
		case <-window.C:
			return nil
		case <-g.proc.Done():
			m.mu.Lock()
			stopping := m.stopping
			m.mu.Unlock()
			if stopping {
				return ErrNotRunning
			}
			why = fmt.Errorf("generation %d exited with status %d %v after it became working",
				g.n, g.proc.ExitCode(), time.Since(flipped).Round(time.Millisecond))
		case <-tick:
			stalled, reason := m.sample(g)
			if !stalled {
				continue
			}
			why = errors.New(reason)
		}
		if m.unflip(g, why) {
			return why
		}
		return nil // kept: nothing else can serve
	}
}

// unflip undoes a confirmed-too-early flip: g failed after it became
// working. Its sockets leave steering first, then the newest live draining
// generation is working again and g is stopped. It returns false (and
// changes nothing) when g is alive and no other generation can take over.
func (m *Manager) unflip(g *generation, why error) bool {
	m.mu.Lock()
	alive := !isDone(g.proc)
	if alive && m.working == g && !m.revivableLocked() {
		m.mu.Unlock()
		m.log.Error("new working generation fails but no previous generation can take over: keeping it", "generation", g.n, "reason", why)
		return false
	}
	g.state = StateFailed
	g.reason = why.Error()
	m.mu.Unlock()
	m.log.Error("upgrade failed after the flip: rolling back", "generation", g.n, "reason", why)
	if _, err := m.sockets.Release(g.n); err != nil {
		m.log.Error("rollback: release sockets", "generation", g.n, "err", err)
	}
	m.mu.Lock()
	if m.working == g && !m.stopping {
		if prev := m.reviveLocked(); prev != nil {
			m.log.Info("rollback: previous generation working again", "generation", prev.n, "failed", g.n)
		}
	}
	m.mu.Unlock()
	m.stop(g)
	return true
}

// revivableLocked reports whether reviveLocked would find a generation.
func (m *Manager) revivableLocked() bool {
	for _, g := range m.gens {
		if g.state == StateDraining && !isDone(g.proc) {
			return true
		}
	}
	return false
}

func isDone(p Process) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// sample reads g's health and updates its stalled state; it reports
// whether g stalls now, and why.
func (m *Manager) sample(g *generation) (bool, string) {
	cur, err := m.cfg.Health.Sample(g.n, g.proc)
	if err != nil {
		m.log.Debug("sample generation health", "generation", g.n, "err", err)
		return false, "" // cannot tell (it may have just exited)
	}
	if cur.At.IsZero() {
		cur.At = time.Now()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, had := g.last, g.sampled
	g.last, g.sampled = cur, true
	if !had {
		return false, ""
	}
	var quiet time.Duration
	if Quiet(prev, cur) {
		if g.quietSince.IsZero() {
			g.quietSince = prev.At
		}
		quiet = cur.At.Sub(g.quietSince)
	} else {
		g.quietSince = time.Time{}
	}
	stalled, reason := Stalled(g.n, prev, cur, quiet, m.cfg.HangAfter)
	switch {
	case stalled && !g.stalled:
		m.log.Warn("generation stalls: it does not take datagrams off its sockets", "generation", g.n, "state", g.state, "reason", reason)
	case !stalled && g.stalled:
		m.log.Info("generation recovered: it takes datagrams again", "generation", g.n, "state", g.state)
	}
	g.stalled = stalled
	if stalled {
		g.stalledReason = reason
	} else {
		g.stalledReason = ""
	}
	return stalled, reason
}

// monitor samples the working and draining generations every HealthPoll
// until Stop. A draining generation that stalls is released at once: its
// flows then go to the working generation instead of into queues nobody
// reads.
func (m *Manager) monitor() {
	t := time.NewTicker(m.cfg.HealthPoll)
	defer t.Stop()
	released := make(map[*generation]bool)
	for {
		select {
		case <-m.quit:
			return
		case <-t.C:
		}
		m.mu.Lock()
		var list []*generation
		for _, g := range m.gens {
			if (g.state == StateWorking || g.state == StateDraining) && !g.confirming && !isDone(g.proc) {
				list = append(list, g)
			}
		}
		m.mu.Unlock()
		for _, g := range list {
			if released[g] {
				// Out of steering: its queues are no longer read from
				// steering's sockets, so a sample would say it recovered.
				// It keeps its stalled report until it ends.
				continue
			}
			stalled, reason := m.sample(g)
			m.mu.Lock()
			draining := g.state == StateDraining
			m.mu.Unlock()
			if stalled && draining && !released[g] {
				released[g] = true
				m.log.Warn("draining generation stalls: its sockets leave steering, its flows go to the working generation",
					"generation", g.n, "reason", reason)
				if _, err := m.sockets.Release(g.n); err != nil {
					m.log.Error("release stalled generation", "generation", g.n, "err", err)
				}
			}
		}
		for g := range released {
			if isDone(g.proc) {
				delete(released, g)
			}
		}
	}
}

// rollback stops a generation that did not become working and takes its
// sockets out.
func (m *Manager) rollback(g *generation, why error) {
	m.log.Error("upgrade failed: rolling back", "generation", g.n, "reason", why)
	m.mu.Lock()
	g.state = StateFailed
	g.reason = why.Error()
	m.mu.Unlock()
	if _, err := m.sockets.Release(g.n); err != nil {
		m.log.Error("rollback: release sockets", "generation", g.n, "err", err)
	}
	m.stop(g)
	m.log.Info("rollback done: previous generation still working", "generation", g.n)
}

// drain waits until g's flows are idle (or the drain timeout), then
// quiesces and stops it.
// confirmed: the upgrade already kept g for MinDrain.
func (m *Manager) drain(g *generation, revived <-chan struct{}, confirmed bool) {
	defer m.drains.Done()
	deadline := time.Now().Add(m.cfg.DrainTimeout)
	minDrain := m.cfg.MinDrain
	if confirmed {
		minDrain = 0
	}
	select {
	case <-time.After(minDrain):
	case <-g.proc.Done():
	case <-revived:
		return
	}
	if !m.cfg.NoFlows {
		t := time.NewTicker(m.cfg.DrainPoll)
	wait:
		for {
			active, err := m.sockets.Active(g.n)
			switch {
			case err != nil:
				m.log.Error("drain: look for live flows", "generation", g.n, "err", err)
			case !active:
				m.log.Info("drain: no live flows left", "generation", g.n)
				break wait
			}
			if time.Now().After(deadline) {
				m.log.Warn("drain: timeout, stopping with live flows", "generation", g.n)
				break
			}
			select {
			case <-t.C:
			case <-g.proc.Done():
				break wait
			case <-revived:
				t.Stop()
				return
			}
		}
		t.Stop()
	}
	m.quiesce(g)
}

// quiesce takes g out of steering, lets its receive queues empty (bounded),
// then stops it.
func (m *Manager) quiesce(g *generation) {
	m.mu.Lock()
	if g.state != StateDraining {
		m.mu.Unlock()
		return // revived, or already gone
	}
	g.state = StateStopping
	m.mu.Unlock()
	queued, err := m.sockets.Release(g.n)
	if err != nil {
		m.log.Error("quiesce: release sockets", "generation", g.n, "err", err)
	}
	if queued != nil {
		limit := time.Now().Add(m.cfg.QuiesceLimit)
		for {
			n, err := queued()
			if err != nil || n == 0 {
				break
			}
			if time.Now().After(limit) {
				m.log.Warn("quiesce: receive queues not empty, stopping anyway", "generation", g.n, "queued", n)
				break
			}
			select {
			case <-g.proc.Done():
			case <-time.After(5 * time.Millisecond):
				continue
			}
			break
		}
	}
	m.log.Info("quiesce done: stopping generation", "generation", g.n, "signal", m.cfg.StopSignal)
	m.stop(g)
	// The drain ends with the generation exited (watch says so too, but
	// maybe later): whoever waits for the drains sees its final state.
	m.mu.Lock()
	if g.state == StateStopping {
		g.state = StateExited
	}
	m.mu.Unlock()
}

// stop sends the stop signal, then SIGKILL after the kill timeout, and
// returns once the process has exited.
func (m *Manager) stop(g *generation) {
	select {
	case <-g.proc.Done():
		return
	default:
	}
	if err := g.proc.Signal(m.cfg.StopSignal); err != nil {
		m.log.Debug("stop signal", "generation", g.n, "err", err)
	}
	select {
	case <-g.proc.Done():
	case <-time.After(m.cfg.KillTimeout):
		m.log.Warn("generation did not stop in time: killing", "generation", g.n, "pid", g.proc.Pid())
		_ = g.proc.Kill() // ESRCH: it just exited
		<-g.proc.Done()
	}
}

// Forward passes sig to the working generation.
func (m *Manager) Forward(sig syscall.Signal) error {
	m.mu.Lock()
	w := m.working
	m.mu.Unlock()
	if w == nil {
		return ErrNotRunning
	}
	return w.proc.Signal(sig)
}

// Stop stops every generation with sig (SIGKILL after the kill timeout) and
// returns the working generation's exit status.
func (m *Manager) Stop(sig syscall.Signal) int {
	m.quitOnce.Do(func() { close(m.quit) })
	m.mu.Lock()
	m.stopping = true
	w := m.working
	m.mu.Unlock()
	var wg sync.WaitGroup
	seen := make(map[*generation]bool)
	stopLive := func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, g := range m.gens {
			if seen[g] {
				continue
			}
			seen[g] = true
			select {
			case <-g.proc.Done():
				continue
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.proc.Signal(sig); err != nil {
					m.log.Debug("stop signal", "generation", g.n, "err", err)
				}
				select {
				case <-g.proc.Done():
				case <-time.After(m.cfg.KillTimeout):
					m.log.Warn("generation did not stop in time: killing", "generation", g.n)
					_ = g.proc.Kill()
					<-g.proc.Done()
				}
			}()
		}
	}
	stopLive()
	// An upgrade inside Launch adds its generation (and sees stopping)
	// before Done: once Wait returns every generation is in gens.
	m.launching.Wait()
	stopLive()
	wg.Wait()
	if w == nil {
		return 0
	}
	return w.proc.ExitCode()
}

// ExitCode is the working generation's status once WorkingExited is closed.
func (m *Manager) ExitCode() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exitCode
}

// pruneLocked forgets the oldest ended generations beyond the history.
func (m *Manager) pruneLocked() {
	ended := 0
	for _, g := range m.gens {
		if g.state == StateExited || g.state == StateFailed {
			ended++
		}
	}
	for i := 0; ended > m.cfg.History && i < len(m.gens); {
		g := m.gens[i]
		if g.state == StateExited || g.state == StateFailed {
			m.gens = slices.Delete(m.gens, i, i+1)
			ended--
			continue
		}
		i++
	}
}

// GenerationStatus is one generation in Status.
type GenerationStatus struct {
	Generation uint32 `json:"generation"`
	PID        int    `json:"pid"`
	State      State  `json:"state"`
	Sockets    int    `json:"sockets"`
	Flows      int    `json:"flows"`
	Reason     string `json:"reason,omitempty"`
	// Stalled: the generation does not take datagrams off its sockets
	// (see Stalled); StalledReason says what was seen.
	Stalled       bool   `json:"stalled,omitempty"`
	StalledReason string `json:"stalled_reason,omitempty"`
}

// Status reports every live and recent generation.
func (m *Manager) Status() (working uint32, gens []GenerationStatus) {
	m.mu.Lock()
	list := slices.Clone(m.gens)
	if m.working != nil {
		working = m.working.n
	}
	states := make([]State, len(list))
	reasons := make([]string, len(list))
	stalled := make([]string, len(list))
	for i, g := range list {
		states[i], reasons[i] = g.state, g.reason
		if g.stalled && g.state != StateExited && g.state != StateFailed {
			stalled[i] = g.stalledReason
		}
	}
	m.mu.Unlock()
	for i, g := range list {
		gs := GenerationStatus{Generation: g.n, PID: g.proc.Pid(), State: states[i], Reason: reasons[i],
			Stalled: stalled[i] != "", StalledReason: stalled[i]}
		if states[i] != StateExited && states[i] != StateFailed {
			gs.Sockets = m.sockets.SocketCount(g.n)
			if !m.cfg.NoFlows {
				gs.Flows, _ = m.sockets.LiveFlows(g.n) // best effort for status
			}
		}
		gens = append(gens, gs)
	}
	return working, gens
}

// Wait returns once every drain has finished.
func (m *Manager) Wait() { m.drains.Wait() }
