package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
)

// stopTimeout is how long an instance told to stop gets before SIGKILL.
const stopTimeout = 10 * time.Second

// forwarded are the signals the supervisor passes on. SIGURG is never among
// them (the Go runtime preempts goroutines with it), nor SIGCHLD (the
// reaper's) nor SIGPIPE (grmwrap's own broken pipes).
var forwarded = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
	syscall.SIGTERM, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGCONT, syscall.SIGPWR,
}

// stopping are the forwarded signals that go to every instance: they stop
// the service, not one instance.
func stopping(sig os.Signal) bool {
	return sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGQUIT
}

// instance is one run of the server's command line.
type instance struct {
	gen  uint32
	proc *os.Process
	// done is closed once the process has been reaped; status is valid then.
	done   chan struct{}
	status syscall.WaitStatus
	// served is closed when the notification loop has ended.
	served chan struct{}
}

// exitCode is the status the supervisor reports for an instance: its exit
// code, or 128+N when signal N killed it.
func (i *instance) exitCode() int {
	switch {
	case i.status.Exited():
		return i.status.ExitStatus()
	case i.status.Signaled():
		return 128 + int(i.status.Signal())
	}
	return 1
}

// supervisor starts instances, reaps every child, forwards signals and
// answers the instances' trapped syscalls.
//
// It owns wait: it reaps with wait4(-1), so nothing else in the process may
// start children through os/exec (their statuses would be taken).
type supervisor struct {
	log      *slog.Logger
	spec     notify.Spec
	handler  *notify.Handler
	steering *generations.Steering

	mu        sync.Mutex
	instances map[int]*instance // running, by pid
	nextGen   uint32
	working   *instance
}

func newSupervisor(log *slog.Logger, spec notify.Spec, m notify.Matcher, st *generations.Steering) *supervisor {
	return &supervisor{
		log:       log,
		spec:      spec,
		handler:   notify.NewHandler(log, m, st),
		steering:  st,
		instances: make(map[int]*instance),
		nextGen:   1,
	}
}

// start starts the next generation of the server. The first one started is
// the working instance.
func (s *supervisor) start(ctx context.Context) (*instance, error) {
	// Holding mu while starting keeps the reaper from seeing the pid before
	// it is known.
	s.mu.Lock()
	defer s.mu.Unlock()
	child, err := notify.Start(s.spec)
	if err != nil {
		return nil, err
	}
	inst := &instance{
		gen:    s.nextGen,
		proc:   child.Process,
		done:   make(chan struct{}),
		served: make(chan struct{}),
	}
	s.nextGen++
	s.instances[child.Process.Pid] = inst
	if s.working == nil {
		s.working = inst
	}
	if !child.Killable {
		s.log.Warn("kernel lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: a signal during a bind makes the kernel repeat it (handled)")
	}
	go func() {
		defer close(inst.served)
		if err := s.handler.Serve(ctx, child.Listener, inst.gen); err != nil {
			s.log.Error("notification loop ended", "generation", inst.gen, "err", err)
		}
	}()
	s.log.Info("instance started", "generation", inst.gen, "pid", child.Process.Pid, "command", s.spec.Argv)
	return inst, nil
}

// reap collects every child that has exited: instances, and orphans that
// the kernel hands to grmwrap as a child subreaper.
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
		inst := s.instances[pid]
		delete(s.instances, pid)
		s.mu.Unlock()
		if inst == nil {
			continue // an orphan of an instance
		}
		inst.status = ws
		close(inst.done)
		s.handler.Forget(inst.gen)
		if err := s.steering.ReleaseGeneration(inst.gen); err != nil {
			s.log.Error("release sockets of exited instance", "generation", inst.gen, "err", err)
		}
		s.log.Info("instance exited", "generation", inst.gen, "pid", pid, "status", inst.exitCode())
	}
}

// running returns the instances not yet reaped.
func (s *supervisor) running() []*instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*instance, 0, len(s.instances))
	for _, i := range s.instances {
		out = append(out, i)
	}
	return out
}

// forward passes sig on: stopping signals to every instance, the others to
// the working one.
func (s *supervisor) forward(sig os.Signal) {
	targets := s.running()
	if !stopping(sig) {
		s.mu.Lock()
		w := s.working
		s.mu.Unlock()
		targets = nil
		if w != nil {
			targets = []*instance{w}
		}
	}
	for _, i := range targets {
		// The process handle is a pidfd: a reaped instance reports an
		// error instead of signalling a recycled pid.
		if err := i.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.log.Warn("forward signal", "signal", sig, "generation", i.gen, "err", err)
		}
	}
}

// stopAll sends SIGTERM to every running instance and SIGKILL to those
// still running after stopTimeout. It returns once all were reaped.
func (s *supervisor) stopAll() {
	insts := s.running()
	for _, i := range insts {
		_ = i.proc.Signal(syscall.SIGTERM) // ErrProcessDone: already gone
	}
	deadline := time.After(stopTimeout)
	for _, i := range insts {
		select {
		case <-i.done:
		case <-deadline:
			s.log.Warn("instance did not stop in time: killing", "generation", i.gen, "pid", i.proc.Pid)
			_ = i.proc.Kill()
			<-i.done
		}
	}
}

// serve runs the command under supervision until the working instance
// exits, and returns its status as an exitError.
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
	steering, closeDP, err := openSteering(cfg)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	defer closeDP()
	// Generation 1 is working from the start: it is the only one.
	if err := steering.SetWorking(1); err != nil {
		return exitError{code: 2, err: err}
	}
	s := newSupervisor(cfg.log, spec, m, steering)
	go s.reconcile(ctx)
	working, err := s.start(ctx)
	if err != nil {
		return exitError{code: 2, err: fmt.Errorf("start %s: %w", cfg.command[0], err)}
	}
	for {
		select {
		case sig := <-sigs:
			s.log.Info("forwarding signal", "signal", sig)
			s.forward(sig)
		case <-chld:
			s.reap()
		case <-working.done:
			// The service is down with its working instance: stop the rest
			// and report the working instance's status.
			go func() {
				for range chld {
					s.reap()
				}
			}()
			s.stopAll()
			return exitError{code: working.exitCode()}
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

// setChildSubreaper makes orphaned descendants of instances grmwrap's
// children, so that it reaps them.
func setChildSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("become child subreaper: %w", errno)
	}
	return nil
}
