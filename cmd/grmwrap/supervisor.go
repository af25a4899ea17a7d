package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
)

// forwarded are the signals the supervisor passes on. SIGURG is never among
// them (the Go runtime preempts goroutines with it), nor SIGCHLD (the
// reaper's) nor SIGPIPE (grmwrap's own broken pipes).
var forwarded = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
	syscall.SIGTERM, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGCONT, syscall.SIGPWR,
}

// stopping are the signals that stop the whole service, every instance.
func stopping(sig os.Signal) bool {
	return sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGQUIT
}

// instance is one run of the server's command line: a generations.Process.
// A generation is every process it started (its cgroup, or in the fallback
// its process group): it is over, and Done closed, once the main process
// has been reaped and none of the others is left.
type instance struct {
	gen  uint32
	pid  int // kept: Release resets proc.Pid
	proc *os.Process
	tree *procGroup
	// mainDone is closed once the main process has been reaped; status is
	// valid then.
	mainDone chan struct{}
	// done is closed once every process of the generation has exited.
	done   chan struct{}
	status syscall.WaitStatus
}

func (i *instance) Pid() int              { return i.pid }
func (i *instance) Done() <-chan struct{} { return i.done }

// cgroupMembers lists the pids of the generation's live processes when it
// has a cgroup (the list is then exact, whatever they did); ok is false in
// the process-group fallback.
func (i *instance) cgroupMembers() (pids []int, ok bool) {
	if i.tree.dir == "" {
		return nil, false
	}
	return i.tree.pids(), true
}

// contains reports whether pid is a process of the generation.
func (i *instance) contains(pid int) bool { return i.tree.contains(pid) }

// Signal signals the main process, or, once it has exited, the processes
// of the generation still left. The main process's handle is a pidfd: a
// reaped one reports an error instead of signalling a recycled pid.
func (i *instance) Signal(sig syscall.Signal) error {
	select {
	case <-i.done:
		return nil
	case <-i.mainDone:
		i.tree.signal(sig)
		return nil
	default:
	}
	if err := i.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// Kill kills every process of the generation (cgroup.kill, or the process
// group in the fallback).
func (i *instance) Kill() error {
	select {
	case <-i.done:
		return nil
	default:
	}
	i.tree.kill()
	return nil
}

// ExitCode is the exit status, or 128+N when signal N killed it.
func (i *instance) ExitCode() int {
	switch {
	case i.status.Exited():
		return i.status.ExitStatus()
	case i.status.Signaled():
		return 128 + int(i.status.Signal())
	}
	return 1
}

// supervisor starts instances (a generations.Launcher), reaps every child
// and answers the instances' trapped syscalls.
//
// It owns wait: it reaps with wait4(-1), so nothing else in the process may
// start children through os/exec's Wait; children are started through
// spawn, which hands their status to a waiter.
type supervisor struct {
	ctx      context.Context
	log      *slog.Logger
	spec     notify.Spec
	handler  *notify.Handler
	steering *generations.Steering
	notifier *notifySockets // per-instance NOTIFY_SOCKET, nil unless --ready notify
	tree     *procTree      // how generations' processes are tracked
	// stopSignal and killTimeout stop what is left of a generation whose
	// main process exited.
	stopSignal  syscall.Signal
	killTimeout time.Duration

	mu      sync.Mutex
	waiters map[int]func(syscall.WaitStatus) // by pid: instances and probes
}

func newSupervisor(ctx context.Context, log *slog.Logger, spec notify.Spec, m notify.Matcher, st *generations.Steering) *supervisor {
	return &supervisor{
		ctx:      ctx,
		log:      log,
		spec:     spec,
		handler:  notify.NewHandler(log, m, st),
		steering: st,
		waiters:  make(map[int]func(syscall.WaitStatus)),
		tree:     &procTree{log: log},
		// The defaults of --stop-signal and --kill-timeout.
		stopSignal:  syscall.SIGTERM,
		killTimeout: 10 * time.Second,
	}
}

// Launch starts generation gen: the configured command line, or argv. The
// executable is looked up afresh, so a replaced binary is picked up.
func (s *supervisor) Launch(gen uint32, argv []string) (generations.Process, error) {
	spec := s.spec
	if len(argv) == 0 {
		argv = spec.Argv
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("command %q: %w", argv[0], err)
	}
	spec.Path, spec.Argv = path, argv
	// The instance may tell generations apart (a proxy that needs its own
	// upstream port per generation, say).
	spec.Env = append(withoutEnv(spec.Env, "GRMWRAP_GENERATION"), fmt.Sprintf("GRMWRAP_GENERATION=%d", gen))
	if s.notifier != nil {
		env, err := s.notifier.open(gen)
		if err != nil {
			return nil, err
		}
		spec.Env = append(withoutEnv(spec.Env, "NOTIFY_SOCKET"), env)
	}
	spec.Env = withoutEnv(spec.Env, noCgroupEnv)
	grp, err := s.tree.group(gen)
	if err != nil {
		s.notifier.close(gen)
		return nil, err
	}
	spec.Cgroup = grp.fd
	inst := &instance{gen: gen, tree: grp, mainDone: make(chan struct{}), done: make(chan struct{})}
	// Holding mu while starting keeps the reaper from seeing the pid
	// before its waiter is known.
	s.mu.Lock()
	child, err := notify.Start(spec)
	grp.closeFd()
	if err != nil {
		s.mu.Unlock()
		s.notifier.close(gen)
		// The init stage was killed; the reaper collects it, then the
		// cgroup is empty and can go.
		go s.discard(grp)
		return nil, err
	}
	inst.proc = child.Process
	inst.pid = child.Process.Pid
	grp.pgid = inst.pid
	s.notifier.started(gen, inst.pid, inst.contains)
	s.waiters[child.Process.Pid] = func(ws syscall.WaitStatus) {
		inst.status = ws
		close(inst.mainDone)
		go s.finish(inst)
	}
	s.mu.Unlock()
	if !child.Killable {
		s.log.Warn("kernel lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: a signal during a bind makes the kernel repeat it (handled)")
	}
	go func() {
		if err := s.handler.Serve(s.ctx, child.Listener, gen); err != nil {
			s.log.Error("notification loop ended", "generation", gen, "err", err)
		}
	}()
	s.log.Info("instance started", "generation", gen, "pid", child.Process.Pid, "command", argv)
	return inst, nil
}

// finish waits, once the main process of inst has exited, for the rest of
// its generation: they get the stop signal at once and SIGKILL after the
// kill timeout. Then the generation's sockets leave steering, its cgroup is
// removed and Done is closed.
func (s *supervisor) finish(inst *instance) {
	if inst.tree.populated() {
		s.log.Info("main process exited: stopping the rest of its generation",
			"generation", inst.gen, "pid", inst.pid, "pids", inst.tree.pids())
		inst.tree.signal(s.stopSignal)
		killAt := time.Now().Add(s.killTimeout)
		killed := false
		for inst.tree.populated() {
			now := time.Now()
			if !killed && now.After(killAt) {
				s.log.Warn("processes of the generation did not stop in time: killing",
					"generation", inst.gen, "pids", inst.tree.pids())
				inst.tree.kill()
				killed, killAt = true, now.Add(killWait)
			} else if killed && now.After(killAt) {
				s.log.Error("processes of the generation survive SIGKILL: giving up on them",
					"generation", inst.gen, "pids", inst.tree.pids())
				break
			}
			time.Sleep(pollEvery)
		}
	}
	inst.tree.remove()
	s.handler.Forget(inst.gen)
	if _, err := s.steering.ReleaseGeneration(inst.gen); err != nil {
		s.log.Error("release sockets of exited instance", "generation", inst.gen, "err", err)
	}
	s.notifier.close(inst.gen)
	// The handle's pidfd is not needed once the process is reaped.
	if err := inst.proc.Release(); err != nil {
		s.log.Debug("release process handle", "err", err)
	}
	close(inst.done)
}

// discard kills what a failed start left in grp and removes it.
func (s *supervisor) discard(grp *procGroup) {
	guard := time.Now().Add(killWait)
	for grp.populated() && time.Now().Before(guard) {
		grp.kill()
		time.Sleep(pollEvery)
	}
	grp.remove()
}

// spawn starts a helper process (a readiness probe) whose status the reaper
// hands to the returned channel.
func (s *supervisor) spawn(argv []string, env []string) (*os.Process, <-chan syscall.WaitStatus, error) {
	ch := make(chan syscall.WaitStatus, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, err
	}
	defer devnull.Close()
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{
		Env:   env,
		Files: []*os.File{devnull, os.Stderr, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return nil, nil, err
	}
	s.waiters[p.Pid] = func(ws syscall.WaitStatus) {
		// Reaped: its pidfd is not needed any more.
		_ = p.Release()
		ch <- ws
	}
	return p, ch, nil
}

// reap collects every child that has exited: instances, probes, and
// orphans that the kernel hands to grmwrap as a child subreaper.
func (s *supervisor) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none exited yet
		}
		s.mu.Lock()
		w := s.waiters[pid]
		delete(s.waiters, pid)
		s.mu.Unlock()
		if w != nil {
			w(ws)
		}
	}
}

// reapLoop reaps on every SIGCHLD until ctx ends.
func (s *supervisor) reapLoop(ctx context.Context, chld <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-chld:
			s.reap()
		}
	}
}

// reconcileEvery is how often closed sockets are looked for: the data plane
// already skips them at once (one retry, then the kernel's choice); this
// repacks the slots.
const reconcileEvery = 250 * time.Millisecond

// reconcile drops sockets the server closed until ctx ends.
func (s *supervisor) reconcile(ctx context.Context) {
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.steering.Reconcile(); err != nil {
				s.log.Error("reconcile steering", "err", err)
			}
		}
	}
}

// serve runs the command under supervision until the working instance
// exits or a stop signal arrives, and returns the working instance's status
// as an exitError.
func serve(ctx context.Context, cfg runConfig) error {
	spec, m, err := prepare(cfg)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if err := notify.Preflight(spec.Cred != nil); err != nil {
		return exitError{code: 2, err: err}
	}
	if err := setChildSubreaper(); err != nil {
		return exitError{code: 2, err: err}
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	defer signal.Stop(chld)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Everything an operator's mistake can make fail (the state lock, the
	// notify directory, the metrics address, the control socket in the
	// runtime directory) is done before generation 1 starts, and every
	// exit path undoes it through the defers: dp.close removes the pins
	// unless a live socket of another process still uses them.
	dp, err := openDataPlane(cfg)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	defer dp.close()
	s := newSupervisor(ctx, cfg.log, spec, m, dp.Steering)
	s.stopSignal, s.killTimeout = cfg.stopSignal, cfg.killTimeout
	s.tree = newProcTree(cfg.log)
	// Last: nothing of any generation outlives grmwrap, nor its cgroups.
	defer s.tree.close(s.reap)
	s.handler.TCPReuseport = cfg.tcpReuseport
	if cfg.ready.mode == readyNotify {
		if s.notifier, err = newNotifySockets(cfg.runtimeDir, cfg.log, spec.Cred); err != nil {
			return exitError{code: 2, err: err}
		}
		defer s.notifier.shutdown()
	}
	go s.reapLoop(ctx, chld)
	go s.reconcile(ctx)
	mgr := generations.NewManager(cfg.log, generations.Config{
		ReadyTimeout: cfg.readyTimeout,
		DrainTimeout: cfg.drainTimeout,
		KillTimeout:  cfg.killTimeout,
		StopSignal:   cfg.stopSignal,
		NoFlows:      cfg.dissector == generations.DissectorNoop,
		Settle:       cfg.settle,
		Health:       procHealth{dp: dp},
	}, s, dp, readinessFor(cfg.ready, dp, s))
	var obs observers
	if sd := newSDNotifier(cfg.log, mgr); sd != nil {
		obs = append(obs, sd)
		go sd.statusLoop(ctx.Done())
	}
	// --metrics-listen: the handler's hook is set before any instance
	// starts, and a listen error is a startup error.
	if cfg.metricsAddr != "" {
		met := newMetrics(mgr, dp)
		stop, err := met.serve(cfg.metricsAddr, cfg.log)
		if err != nil {
			return exitError{code: 2, err: err}
		}
		defer stop()
		s.handler.Observe = met.observe
		obs = append(obs, met)
	}
	// The control socket exists before generation 1 starts: a runtime
	// directory that cannot hold it is a startup error, not a stop of a
	// running service (an upgrade asked before Start gets "not running").
	ctl, err := listenControl(cfg.runtimeDir, cfg.log, mgr, dp, s.handler, obs)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	defer ctl.Close()
	ready := make(chan error, 1)
	if err := mgr.Start(ctx, ready); err != nil {
		return exitError{code: 2, err: fmt.Errorf("start %s: %w", cfg.command[0], err)}
	}
	for {
		select {
		case err := <-ready:
			if err != nil {
				s.log.Warn("generation 1 not ready", "err", err)
			} else {
				s.log.Info("generation 1 ready")
			}
			obs.ready(err)
		case sig := <-sigs:
			ssig := sig.(syscall.Signal)
			if stopping(sig) {
				s.log.Info("stopping: forwarding to every instance", "signal", sig)
				obs.stopping()
				code := mgr.Stop(ssig)
				mgr.Wait() // drains end before the data plane closes
				return exitError{code: code}
			}
			s.log.Info("forwarding signal to the working instance", "signal", sig)
			if err := mgr.Forward(ssig); err != nil {
				s.log.Warn("forward signal", "signal", sig, "err", err)
			}
		case <-mgr.WorkingExited():
			// The service is down with its working instance: stop the rest
			// and report the working instance's status.
			code := mgr.ExitCode()
			obs.stopping()
			mgr.Stop(syscall.SIGTERM)
			mgr.Wait()
			return exitError{code: code}
		}
	}
}

// setChildSubreaper makes orphaned descendants of instances grmwrap's
// children, so that it reaps them.
func setChildSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("become child subreaper: %w", errno)
	}
	return nil
}

// withoutEnv drops the variable name from env.
func withoutEnv(env []string, name string) []string {
	out := make([]string, 0, len(env))
	for _, e := range env {
		if len(e) > len(name) && e[:len(name)] == name && e[len(name)] == '=' {
			continue
		}
		out = append(out, e)
	}
	return out
}
