package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
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
//
// Only the generation itself may make it ready: the directory is mode 0700
// and each socket 0600, both owned by the server's user (--user) so only
// that user and root can reach them; the socket has SO_PASSCRED, and a
// datagram counts only when the kernel-given sender pid belongs to the
// generation (belongs). Anything else is dropped with a rate-limited warning.
type notifySockets struct {
	dir string
	log *slog.Logger
	// owner, when not nil, owns the directory and the sockets (--user).
	owner *notify.Credential
	// belongs says whether pid is a process of generation gen. It is the
	// one membership check (inGeneration unless a test replaces it).
	belongs func(gen uint32, pid int) bool

	mu    sync.Mutex
	ready map[uint32]chan struct{}
	conns map[uint32]*os.File
	// mains are the instances' main pids; known is closed once gen's is
	// set (a READY=1 can come before Launch has recorded the pid).
	mains map[uint32]int
	known map[uint32]chan struct{}
	// members say whether a pid is in a generation's cgroup or process
	// group: workers whose parent exited are still the generation's.
	members map[uint32]func(int) bool
	// Rate limit of the warning about foreign senders.
	lastWarn time.Time
	dropped  int
}

// foreignWarnEvery is the least time between two warnings about datagrams
// from outside a generation: a flood of them must not flood the log.
const foreignWarnEvery = 10 * time.Second

func newNotifySockets(runtimeDir string, log *slog.Logger, owner *notify.Credential) (*notifySockets, error) {
	dir := filepath.Join(runtimeDir, fmt.Sprintf("notify-%d", os.Getpid()))
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	// A leftover of a crashed supervisor with our pid gets the same
	// treatment; a non-directory there is refused.
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("notify socket directory %s: not a directory", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("notify socket directory mode: %w", err)
	}
	if owner != nil {
		if err := os.Lchown(dir, int(owner.UID), int(owner.GID)); err != nil {
			return nil, fmt.Errorf("notify socket directory owner: %w", err)
		}
	}
	n := &notifySockets{
		dir: dir, log: log, owner: owner,
		ready: make(map[uint32]chan struct{}), conns: make(map[uint32]*os.File),
		mains: make(map[uint32]int), known: make(map[uint32]chan struct{}),
		members: make(map[uint32]func(int) bool),
	}
	n.belongs = n.inGeneration
	return n, nil
}

// started records gen's main pid, and member, which says whether a pid is
// in gen's cgroup or process group (nil: the process tree alone decides).
// Safe on a nil receiver.
func (n *notifySockets) started(gen uint32, pid int, member func(pid int) bool) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.mains[gen]; ok {
		return
	}
	n.mains[gen] = pid
	if member != nil {
		n.members[gen] = member
	}
	if c := n.known[gen]; c != nil {
		close(c)
	}
}

// knownChan is closed once gen's main pid is recorded.
func (n *notifySockets) knownChan(gen uint32) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.known[gen]
	if c == nil {
		c = make(chan struct{})
		n.known[gen] = c
		if _, ok := n.mains[gen]; ok {
			close(c)
		}
	}
	return c
}

// inGeneration is the membership check: pid is gen's main pid or a
// descendant of it, or a member of gen's cgroup (or process group).
func (n *notifySockets) inGeneration(gen uint32, pid int) bool {
	if n.inProcessTree(gen, pid) {
		return true
	}
	n.mu.Lock()
	member := n.members[gen]
	n.mu.Unlock()
	return member != nil && member(pid)
}

// maxTreeDepth bounds the walk up the parent chain.
const maxTreeDepth = 64

// inProcessTree is the default membership check: pid is gen's main pid or
// a descendant of it (its parent chain in /proc reaches the main pid). A
// sender that exited and was reaped before the check is not found: send
// READY=1 from a process that lives on (the server itself).
func (n *notifySockets) inProcessTree(gen uint32, pid int) bool {
	n.mu.Lock()
	main := n.mains[gen]
	n.mu.Unlock()
	if main <= 0 {
		return false
	}
	for i := 0; i < maxTreeDepth && pid > 1; i++ {
		if pid == main {
			return true
		}
		ppid, err := parentPid(pid)
		if err != nil {
			return false
		}
		pid = ppid
	}
	return false
}

// parentPid reads the parent of pid from /proc/PID/stat.
func parentPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read parent of %d: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. Then: state, ppid.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.Atoi(f[1])
}

// foreign logs a dropped datagram, at most once per foreignWarnEvery.
func (n *notifySockets) foreign(gen uint32, pid int32, uid uint32) {
	n.mu.Lock()
	n.dropped++
	now := time.Now()
	if !n.lastWarn.IsZero() && now.Sub(n.lastWarn) < foreignWarnEvery {
		n.mu.Unlock()
		return
	}
	count := n.dropped
	n.dropped = 0
	n.lastWarn = now
	n.mu.Unlock()
	n.log.Warn("notify socket: dropped a datagram from a process outside the generation", "generation", gen, "sender_pid", pid, "sender_uid", uid, "dropped", count)
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
	// The kernel then attaches every sender's real pid, uid and gid.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1); err != nil {
		syscall.Close(fd)
		return "", fmt.Errorf("notify socket credentials: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return "", fmt.Errorf("bind notify socket: %w", err)
	}
	// Only the server's user (and root) may send to it.
	if err := os.Chmod(path, 0o600); err != nil {
		syscall.Close(fd)
		return "", fmt.Errorf("notify socket mode: %w", err)
	}
	if n.owner != nil {
		if err := os.Lchown(path, int(n.owner.UID), int(n.owner.GID)); err != nil {
			syscall.Close(fd)
			return "", fmt.Errorf("notify socket owner: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), path)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return "", fmt.Errorf("notify socket: %w", err)
	}
	ch := make(chan struct{})
	known := n.knownChan(gen)
	n.mu.Lock()
	n.ready[gen] = ch
	n.conns[gen] = f
	n.mu.Unlock()
	go func() {
		buf := make([]byte, 4096)
		oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
		for {
			var k, oobn int
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				k, oobn, _, _, rerr = syscall.Recvmsg(int(fd), buf, oob, 0)
				return rerr != syscall.EAGAIN
			})
			if err != nil {
				return // closed
			}
			if rerr != nil {
				n.log.Debug("notify socket receive", "generation", gen, "err", rerr)
				continue
			}
			cred := senderOf(oob[:oobn])
			if cred == nil {
				n.foreign(gen, 0, ^uint32(0))
				continue
			}
			// The main pid is recorded right after the start; a fast
			// READY=1 waits for it (the socket closes if the start fails).
			<-known
			n.mu.Lock()
			open := n.conns[gen] != nil
			n.mu.Unlock()
			if !open {
				return // closed while waiting
			}
			if !n.belongs(gen, int(cred.Pid)) {
				n.foreign(gen, cred.Pid, cred.Uid)
				continue
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

// senderOf returns the SCM_CREDENTIALS in oob, nil without them.
func senderOf(oob []byte) *syscall.Ucred {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil // malformed: treated as no credentials
	}
	for i := range msgs {
		if c, err := syscall.ParseUnixCredentials(&msgs[i]); err == nil {
			return c
		}
	}
	return nil
}

// close removes generation gen's socket. Safe on a nil receiver.
func (n *notifySockets) close(gen uint32) {
	if n == nil {
		return
	}
	n.mu.Lock()
	f := n.conns[gen]
	delete(n.conns, gen)
	// A reader waiting for the main pid wakes up and sees the socket gone.
	if c := n.known[gen]; c != nil {
		if _, ok := n.mains[gen]; !ok {
			close(c)
		}
	}
	delete(n.known, gen)
	delete(n.mains, gen)
	delete(n.members, gen)
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
