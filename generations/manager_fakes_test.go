package generations

// Fakes for the Manager's ports (Process, Launcher, Sockets, Readiness).
// They are small models of the real adapters, not stubs: a process exits
// once, on its stop signal or SIGKILL or when the test says so; sockets
// belong to generations and leave steering on Release; readiness is decided
// per generation by the test. Every call the manager makes is recorded, in
// order, in one shared mLog so that tests can assert what happened before
// what.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// mEvent is one call the manager made on a fake (or one thing a fake did).
type mEvent struct {
	Op   string // launch, SetWorking, Release, queued, signal, kill, exit, ready, not-ready
	Gen  uint32
	Sig  syscall.Signal // signal
	Code int            // queued: datagrams reported; exit: exit code
}

func (e mEvent) String() string {
	switch e.Op {
	case "signal":
		return fmt.Sprintf("signal(%d,%s)", e.Gen, e.Sig)
	case "queued", "exit":
		return fmt.Sprintf("%s(%d)=%d", e.Op, e.Gen, e.Code)
	}
	return fmt.Sprintf("%s(%d)", e.Op, e.Gen)
}

// mLog is the ordered record of every event, shared by all fakes of a test.
type mLog struct {
	mu     sync.Mutex
	events []mEvent
}

func (l *mLog) add(e mEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *mLog) all() []mEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// find returns the indexes of the events that match.
func (l *mLog) find(match func(mEvent) bool) []int {
	var out []int
	for i, e := range l.all() {
		if match(e) {
			out = append(out, i)
		}
	}
	return out
}

// index is the position of the first event equal to e, or -1.
func (l *mLog) index(e mEvent) int {
	if ix := l.find(func(x mEvent) bool { return x == e }); len(ix) > 0 {
		return ix[0]
	}
	return -1
}

// count is how many events equal e.
func (l *mLog) count(e mEvent) int {
	return len(l.find(func(x mEvent) bool { return x == e }))
}

// ops counts the events of generation gen with operation op.
func (l *mLog) ops(op string, gen uint32) int {
	return len(l.find(func(x mEvent) bool { return x.Op == op && x.Gen == gen }))
}

func (l *mLog) String() string {
	var b strings.Builder
	for i, e := range l.all() {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(e.String())
	}
	return b.String()
}

// mProc is a fake instance. It exits exactly once: with code 0 on a signal
// in its exit set (unless it ignores signals), with 137 on SIGKILL or Kill,
// or with any code when the test calls Exit. Signals after the exit are
// recorded and answered with os.ErrProcessDone, like os.Process.
type mProc struct {
	gen  uint32
	pid  int
	log  *mLog
	done chan struct{}

	mu      sync.Mutex
	exited  bool
	code    int
	ignore  bool                    // ignore every catchable signal
	exitOn  map[syscall.Signal]bool // signals that make it exit with 0
	signals []syscall.Signal
	kills   int
	// killGate, if set, delays the exit that Kill causes until it is
	// closed (SIGKILL is delivered asynchronously: the process is gone a
	// moment after kill(2) returned).
	killGate chan struct{}
}

func newMProc(gen uint32, log *mLog) *mProc {
	return &mProc{
		gen:    gen,
		pid:    10000 + int(gen),
		log:    log,
		done:   make(chan struct{}),
		code:   -1,
		exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true, syscall.SIGINT: true},
	}
}

func (p *mProc) Pid() int { return p.pid }

func (p *mProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signals = append(p.signals, sig)
	p.log.add(mEvent{Op: "signal", Gen: p.gen, Sig: sig})
	if p.exited {
		return os.ErrProcessDone
	}
	switch {
	case sig == syscall.SIGKILL:
		p.exitLocked(137)
	case !p.ignore && p.exitOn[sig]:
		p.exitLocked(0)
	}
	return nil
}

func (p *mProc) Kill() error {
	p.mu.Lock()
	p.kills++
	p.log.add(mEvent{Op: "kill", Gen: p.gen})
	if p.exited {
		p.mu.Unlock()
		return os.ErrProcessDone
	}
	gate := p.killGate
	if gate == nil {
		p.exitLocked(137)
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	go func() {
		<-gate
		p.Exit(137)
	}()
	return nil
}

// Exit makes the process exit on its own with code; false if it had
// already exited.
func (p *mProc) Exit(code int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return false
	}
	p.exitLocked(code)
	return true
}

func (p *mProc) exitLocked(code int) {
	p.exited = true
	p.code = code
	p.log.add(mEvent{Op: "exit", Gen: p.gen, Code: code})
	close(p.done)
}

func (p *mProc) Done() <-chan struct{} { return p.done }

// ExitCode is -1 until the process has exited.
func (p *mProc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code
}

func (p *mProc) isDone() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *mProc) Signals() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.signals)
}

func (p *mProc) Kills() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kills
}

// mLauncher starts mProcs. Per generation the test can make Launch fail,
// make the process exit at once, make it ignore signals, or hold Launch
// until released (a slow start).
type mLauncher struct {
	log *mLog

	mu       sync.Mutex
	procs    map[uint32]*mProc
	argv     map[uint32][]string
	calls    []uint32
	inFlight int
	fail     map[uint32]error
	exitNow  map[uint32]int
	ignore   map[uint32]bool
	killGate map[uint32]chan struct{}
	gate     map[uint32]chan struct{}
	entered  map[uint32]chan struct{}
}

func newMLauncher(log *mLog) *mLauncher {
	return &mLauncher{
		log:      log,
		procs:    make(map[uint32]*mProc),
		argv:     make(map[uint32][]string),
		fail:     make(map[uint32]error),
		exitNow:  make(map[uint32]int),
		ignore:   make(map[uint32]bool),
		killGate: make(map[uint32]chan struct{}),
		gate:     make(map[uint32]chan struct{}),
		entered:  make(map[uint32]chan struct{}),
	}
}

func (l *mLauncher) Launch(gen uint32, argv []string) (Process, error) {
	l.mu.Lock()
	l.calls = append(l.calls, gen)
	l.argv[gen] = slices.Clone(argv) // nil stays nil
	l.inFlight++
	gate, entered := l.gate[gen], l.entered[gen]
	l.mu.Unlock()
	l.log.add(mEvent{Op: "launch", Gen: gen})
	if entered != nil {
		close(entered)
	}
	if gate != nil {
		<-gate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	if err := l.fail[gen]; err != nil {
		return nil, err
	}
	p := newMProc(gen, l.log)
	p.ignore = l.ignore[gen]
	p.killGate = l.killGate[gen]
	l.procs[gen] = p
	if code, ok := l.exitNow[gen]; ok {
		p.Exit(code)
	}
	return p, nil
}

// Fail makes Launch of gen fail with err.
func (l *mLauncher) Fail(gen uint32, err error) {
	l.mu.Lock()
	l.fail[gen] = err
	l.mu.Unlock()
}

// ExitAtOnce makes gen's process exit with code as soon as it is launched.
func (l *mLauncher) ExitAtOnce(gen uint32, code int) {
	l.mu.Lock()
	l.exitNow[gen] = code
	l.mu.Unlock()
}

// Ignore makes gen's process ignore every catchable signal.
func (l *mLauncher) Ignore(gen uint32) {
	l.mu.Lock()
	l.ignore[gen] = true
	l.mu.Unlock()
}

// HoldKill makes gen's process exit only when release is called after a
// Kill.
func (l *mLauncher) HoldKill(gen uint32) (release func()) {
	ch := make(chan struct{})
	l.mu.Lock()
	l.killGate[gen] = ch
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// Hold makes Launch of gen block until release is called; entered is
// closed once Launch was called.
func (l *mLauncher) Hold(gen uint32) (entered <-chan struct{}, release func()) {
	g, e := make(chan struct{}), make(chan struct{})
	l.mu.Lock()
	l.gate[gen], l.entered[gen] = g, e
	l.mu.Unlock()
	var once sync.Once
	return e, func() { once.Do(func() { close(g) }) }
}

// Proc is gen's process, nil if it was not launched (or failed to).
func (l *mLauncher) Proc(gen uint32) *mProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[gen]
}

func (l *mLauncher) Argv(gen uint32) (argv []string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	argv, ok = l.argv[gen]
	return argv, ok
}

func (l *mLauncher) Calls() []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// Live lists the generations whose process runs, and how many Launch
// calls have not returned.
func (l *mLauncher) Live() (live []uint32, inFlight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for gen, p := range l.procs {
		if !p.isDone() {
			live = append(live, gen)
		}
	}
	slices.Sort(live)
	return live, l.inFlight
}

// mSetWorking is one SetWorking call and whether it succeeded.
type mSetWorking struct {
	Gen uint32
	OK  bool
}

// mSockets models the steering state: the working generation, the groups
// each generation is bound in, its live flows and, once released, its
// queued datagrams. It also satisfies Bindings for BoundReadiness.
type mSockets struct {
	log *mLog

	mu         sync.Mutex
	working    uint32
	setWorking []mSetWorking
	failSW     map[uint32]error
	partialSW  bool // a failing SetWorking has already pointed the groups at gen
	// onSetWorking, if set, runs at the start of every SetWorking call,
	// for a test to act at that moment. Set before the calls it sees start
	// and read without mu: taking mu for it would order the callers'
	// memory accesses and hide the races a -race test looks for.
	onSetWorking func(gen uint32)
	bound        map[uint32][]GroupKey
	changed      chan struct{}
	flows        map[uint32]int
	flowsErr     map[uint32]error
	flowPolls    map[uint32]int
	queued       map[uint32]int
	queuedStep   map[uint32]int
	queuedPolls  map[uint32]int
	released     map[uint32]bool
	releaseErr   map[uint32]error
}

func newMSockets(log *mLog) *mSockets {
	return &mSockets{
		log:         log,
		failSW:      make(map[uint32]error),
		bound:       make(map[uint32][]GroupKey),
		changed:     make(chan struct{}),
		flows:       make(map[uint32]int),
		flowsErr:    make(map[uint32]error),
		flowPolls:   make(map[uint32]int),
		queued:      make(map[uint32]int),
		queuedStep:  make(map[uint32]int),
		queuedPolls: make(map[uint32]int),
		released:    make(map[uint32]bool),
		releaseErr:  make(map[uint32]error),
	}
}

func (s *mSockets) SetWorking(gen uint32) error {
	if hook := s.onSetWorking; hook != nil {
		hook(gen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.failSW[gen]
	s.setWorking = append(s.setWorking, mSetWorking{Gen: gen, OK: err == nil})
	s.log.add(mEvent{Op: "SetWorking", Gen: gen})
	if err != nil {
		if s.partialSW {
			s.working = gen
		}
		return err
	}
	s.working = gen
	return nil
}

// Working implements Bindings.
func (s *mSockets) Working() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.working
}

func (s *mSockets) Bound(gen uint32) []GroupKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.bound[gen])
}

func (s *mSockets) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// changedLocked wakes every waiter on Changed.
func (s *mSockets) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Bind sets the groups where gen has sockets (as binds and closes do).
func (s *mSockets) Bind(gen uint32, keys ...GroupKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bound[gen] = slices.Clone(keys)
	s.changedLocked()
}

func (s *mSockets) LiveFlows(gen uint32) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flowPolls[gen]++
	return s.flows[gen], s.flowsErr[gen]
}

func (s *mSockets) Active(gen uint32) (bool, error) {
	n, err := s.LiveFlows(gen)
	return n > 0, err
}

// SetFlows sets gen's live flows (and the error counting them gives).
func (s *mSockets) SetFlows(gen uint32, n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flows[gen], s.flowsErr[gen] = n, err
}

func (s *mSockets) FlowPolls(gen uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flowPolls[gen]
}

func (s *mSockets) TotalFlowPolls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.flowPolls {
		n += c
	}
	return n
}

func (s *mSockets) SocketCount(gen uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bound[gen])
}

func (s *mSockets) Release(gen uint32) (func() (int, error), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.add(mEvent{Op: "Release", Gen: gen})
	s.released[gen] = true
	if len(s.bound[gen]) > 0 {
		delete(s.bound, gen)
		s.changedLocked()
	}
	queued := func() (int, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.queuedPolls[gen]++
		n := s.queued[gen]
		if step := s.queuedStep[gen]; step > 0 {
			s.queued[gen] = max(0, n-step)
		}
		s.log.add(mEvent{Op: "queued", Gen: gen, Code: n})
		return n, nil
	}
	return queued, s.releaseErr[gen]
}

// SetQueued sets the datagrams waiting in gen's released sockets; each
// poll after the first reports step fewer (0: it stays until set again).
func (s *mSockets) SetQueued(gen uint32, n, step int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued[gen], s.queuedStep[gen] = n, step
}

func (s *mSockets) QueuedPolls(gen uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queuedPolls[gen]
}

// FailSetWorking makes SetWorking(gen) fail with err; partial: the fake
// has already pointed the groups at gen when it fails.
func (s *mSockets) FailSetWorking(gen uint32, err error, partial bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failSW[gen] = err
	s.partialSW = partial
}

// OnSetWorking sets a hook run at the start of every SetWorking call;
// call it before the upgrade whose calls it should see starts.
func (s *mSockets) OnSetWorking(hook func(gen uint32)) { s.onSetWorking = hook }

func (s *mSockets) SetWorkingCalls() []mSetWorking {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.setWorking)
}

// mGate is the test's decision about one generation's readiness.
type mGate struct {
	entered chan struct{} // closed when Wait was first called
	decided chan struct{} // closed when the test decided
	err     error
	enter   sync.Once
	decide  sync.Once
}

func newMGate() *mGate {
	return &mGate{entered: make(chan struct{}), decided: make(chan struct{})}
}

// mReady is a Readiness decided by the test per generation. With auto set,
// a generation that the test did not Hold is ready at once. Wait honours
// ctx (the error wraps ctx.Err()) and the process's exit.
type mReady struct {
	log *mLog

	mu        sync.Mutex
	auto      bool
	gates     map[uint32]*mGate
	calls     map[uint32]int
	deadlines map[uint32]time.Time // zero: ctx had no deadline
}

func newMReady(log *mLog, auto bool) *mReady {
	return &mReady{log: log, auto: auto, gates: make(map[uint32]*mGate), calls: make(map[uint32]int), deadlines: make(map[uint32]time.Time)}
}

func (r *mReady) gateLocked(gen uint32) *mGate {
	g := r.gates[gen]
	if g == nil {
		g = newMGate()
		r.gates[gen] = g
	}
	return g
}

// Hold makes gen wait for the test's decision even in auto mode; entered
// is closed once the manager waits for it.
func (r *mReady) Hold(gen uint32) (entered <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gateLocked(gen).entered
}

// Ready makes gen ready.
func (r *mReady) Ready(gen uint32) { r.Fail(gen, nil) }

// Fail makes gen's readiness fail with err (nil: ready).
func (r *mReady) Fail(gen uint32, err error) {
	r.mu.Lock()
	g := r.gateLocked(gen)
	r.mu.Unlock()
	g.decide.Do(func() {
		g.err = err
		close(g.decided)
	})
}

func (r *mReady) SetAuto(auto bool) {
	r.mu.Lock()
	r.auto = auto
	r.mu.Unlock()
}

func (r *mReady) Calls(gen uint32) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[gen]
}

// Deadline is the deadline of the context gen's last Wait got.
func (r *mReady) Deadline(gen uint32) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deadlines[gen]
}

func (r *mReady) Wait(ctx context.Context, gen uint32, p Process) error {
	r.mu.Lock()
	r.calls[gen]++
	dl, _ := ctx.Deadline()
	r.deadlines[gen] = dl
	g := r.gates[gen]
	if g == nil && !r.auto {
		g = r.gateLocked(gen)
	}
	r.mu.Unlock()
	if g == nil {
		r.log.add(mEvent{Op: "ready", Gen: gen})
		return nil
	}
	g.enter.Do(func() { close(g.entered) })
	select {
	case <-g.decided:
		if g.err != nil {
			r.log.add(mEvent{Op: "not-ready", Gen: gen})
			return g.err
		}
		r.log.add(mEvent{Op: "ready", Gen: gen})
		return nil
	case <-p.Done():
		r.log.add(mEvent{Op: "not-ready", Gen: gen})
		return fmt.Errorf("mReady: generation %d exited with status %d", gen, p.ExitCode())
	case <-ctx.Done():
		r.log.add(mEvent{Op: "not-ready", Gen: gen})
		return fmt.Errorf("mReady: generation %d not ready: %w", gen, ctx.Err())
	}
}

// Compile-time checks that the fakes satisfy the ports.
var (
	_ Process   = (*mProc)(nil)
	_ Launcher  = (*mLauncher)(nil)
	_ Sockets   = (*mSockets)(nil)
	_ Bindings  = (*mSockets)(nil)
	_ Readiness = (*mReady)(nil)
)

var errMTest = errors.New("mtest: injected failure")

// mHealth is a Health decided by the test: per generation whether it is
// stopped and what a sample reads (CPU stays where the test left it, as
// for a process that does not run). askedStopped is closed at the first
// Stopped call for a generation.
type mHealth struct {
	mu      sync.Mutex
	stopped map[uint32]bool
	samples map[uint32]Sample
	asked   map[uint32]chan struct{}
	sampled map[uint32]int
}

func newMHealth() *mHealth {
	return &mHealth{stopped: make(map[uint32]bool), samples: make(map[uint32]Sample),
		asked: make(map[uint32]chan struct{}), sampled: make(map[uint32]int)}
}

func (h *mHealth) askedLocked(gen uint32) chan struct{} {
	ch := h.asked[gen]
	if ch == nil {
		ch = make(chan struct{})
		h.asked[gen] = ch
	}
	return ch
}

// AskedStopped is closed once the manager asked whether gen is stopped.
func (h *mHealth) AskedStopped(gen uint32) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.askedLocked(gen)
}

func (h *mHealth) Stopped(gen uint32, _ Process) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.askedLocked(gen)
	select {
	case <-ch:
	default:
		close(ch)
	}
	return h.stopped[gen], nil
}

func (h *mHealth) Sample(gen uint32, _ Process) (Sample, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sampled[gen]++
	s := h.samples[gen]
	s.Stopped = s.Stopped || h.stopped[gen]
	return s, nil
}

func (h *mHealth) SetStopped(gen uint32, stopped bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped[gen] = stopped
}

// Set sets what gen's samples read from now on.
func (h *mHealth) Set(gen uint32, s Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.samples[gen] = s
}

// Sampled counts gen's samples.
func (h *mHealth) Sampled(gen uint32) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sampled[gen]
}

var _ Health = (*mHealth)(nil)
