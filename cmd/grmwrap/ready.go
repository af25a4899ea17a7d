package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/grmwrap/grmwrap/generations"
)

// readyMode is how --ready decides that a new generation is ready.
type readyMode int

const (
	readyBound readyMode = iota
	readyNotify
	readyDelay
	readyExec
)

type readySpec struct {
	mode  readyMode
	delay time.Duration
	cmd   string
}

// parseReady reads --ready: bound | notify | delay:DUR | exec:CMD.
func parseReady(s string) (readySpec, error) {
	switch {
	case s == "bound":
		return readySpec{mode: readyBound}, nil
	case s == "notify":
		return readySpec{mode: readyNotify}, nil
	case strings.HasPrefix(s, "delay:"):
		d, err := time.ParseDuration(strings.TrimPrefix(s, "delay:"))
		if err != nil || d < 0 {
			return readySpec{}, fmt.Errorf("ready %q: want delay:DURATION, as delay:2s", s)
		}
		return readySpec{mode: readyDelay, delay: d}, nil
	case strings.HasPrefix(s, "exec:") && len(s) > len("exec:"):
		return readySpec{mode: readyExec, cmd: strings.TrimPrefix(s, "exec:")}, nil
	}
	return readySpec{}, fmt.Errorf("ready %q: want bound, notify, delay:DUR or exec:CMD", s)
}

// readinessFor builds the readiness of spec.
func readinessFor(spec readySpec, dp *dataPlane, s *supervisor) generations.Readiness {
	switch spec.mode {
	case readyNotify:
		return s.notifier
	case readyDelay:
		return generations.DelayReadiness{D: spec.delay}
	case readyExec:
		return execReadiness{s: s, cmd: spec.cmd}
	}
	return generations.BoundReadiness{B: dp}
}

// execReadiness runs `sh -c CMD` until it exits 0. The probe sees
// GRMWRAP_GENERATION and GRMWRAP_PID.
type execReadiness struct {
	s   *supervisor
	cmd string
}

const probeEvery = 100 * time.Millisecond

func (r execReadiness) Wait(ctx context.Context, gen uint32, p generations.Process) error {
	env := append(os.Environ(), "GRMWRAP_GENERATION="+strconv.Itoa(int(gen)), "GRMWRAP_PID="+strconv.Itoa(p.Pid()))
	last := -1
	for {
		proc, status, err := r.s.spawn([]string{"/bin/sh", "-c", r.cmd}, env)
		if err != nil {
			return fmt.Errorf("readiness probe: %w", err)
		}
		// The pid, kept now: the handle is released once reaped.
		pid := proc.Pid
		select {
		case ws := <-status:
			if ws.Exited() && ws.ExitStatus() == 0 {
				return nil
			}
			last = ws.ExitStatus()
		case <-ctx.Done():
			select {
			case <-status: // already reaped: nothing to kill
			default:
				_ = syscall.Kill(-pid, syscall.SIGKILL) // the probe's group; reaped later
			}
			return fmt.Errorf("readiness probe %q did not succeed in time (last status %d): %w", r.cmd, last, ctx.Err())
		case <-p.Done():
			return fmt.Errorf("generation %d exited with status %d", gen, p.ExitCode())
		}
		select {
		case <-time.After(probeEvery):
		case <-ctx.Done():
			return fmt.Errorf("readiness probe %q did not succeed in time (last status %d): %w", r.cmd, last, ctx.Err())
		case <-p.Done():
			return fmt.Errorf("generation %d exited with status %d", gen, p.ExitCode())
		}
	}
}

// notifySockets gives every instance a private NOTIFY_SOCKET and records
// READY=1 from it: the sd_notify protocol, so an unmodified server that
// supports systemd's Type=notify tells grmwrap when it is ready.
type notifySockets struct {
	dir string

	mu    sync.Mutex
	ready map[uint32]chan struct{}
	conns map[uint32]*os.File
}

func newNotifySockets(runtimeDir string) (*notifySockets, error) {
	dir := filepath.Join(runtimeDir, fmt.Sprintf("notify-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	return &notifySockets{dir: dir, ready: make(map[uint32]chan struct{}), conns: make(map[uint32]*os.File)}, nil
}

// open creates generation gen's socket and returns its environment entry.
func (n *notifySockets) open(gen uint32) (string, error) {
	path := filepath.Join(n.dir, fmt.Sprintf("gen-%d.sock", gen))
	_ = os.Remove(path) // a stale socket from a crashed supervisor
	// Non-blocking, so that the runtime poller owns it and closing the
	// file ends the reader's Read (a blocking fd would stay open until the
	// next datagram).
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("notify socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return "", fmt.Errorf("bind notify socket: %w", err)
	}
	// Any user the instance runs as may send to it.
	if err := os.Chmod(path, 0o666); err != nil {
		syscall.Close(fd)
		return "", fmt.Errorf("notify socket mode: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	ch := make(chan struct{})
	n.mu.Lock()
	n.ready[gen] = ch
	n.conns[gen] = f
	n.mu.Unlock()
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := f.Read(buf)
			if err != nil {
				return // closed
			}
			for _, line := range strings.Split(string(buf[:k]), "\n") {
				if line == "READY=1" {
					n.mu.Lock()
					if c := n.ready[gen]; c != nil {
						select {
						case <-c:
						default:
							close(c)
						}
					}
					n.mu.Unlock()
				}
			}
		}
	}()
	return "NOTIFY_SOCKET=" + path, nil
}

// close removes generation gen's socket. Safe on a nil receiver.
func (n *notifySockets) close(gen uint32) {
	if n == nil {
		return
	}
	n.mu.Lock()
	f := n.conns[gen]
	delete(n.conns, gen)
	n.mu.Unlock()
	if f != nil {
		_ = os.Remove(f.Name()) // already gone is fine
		f.Close()
	}
}

// shutdown removes every socket and the directory.
func (n *notifySockets) shutdown() {
	n.mu.Lock()
	gens := make([]uint32, 0, len(n.conns))
	for g := range n.conns {
		gens = append(gens, g)
	}
	n.mu.Unlock()
	for _, g := range gens {
		n.close(g)
	}
	_ = os.Remove(n.dir) // not empty only if something else wrote there
}

// Wait implements generations.Readiness.
func (n *notifySockets) Wait(ctx context.Context, gen uint32, p generations.Process) error {
	n.mu.Lock()
	ch := n.ready[gen]
	n.mu.Unlock()
	if ch == nil {
		return errors.New("no notify socket for this generation")
	}
	select {
	case <-ch:
		return nil
	case <-p.Done():
		return fmt.Errorf("generation %d exited with status %d before READY=1", gen, p.ExitCode())
	case <-ctx.Done():
		return fmt.Errorf("generation %d sent no READY=1 in time: %w", gen, ctx.Err())
	}
}
