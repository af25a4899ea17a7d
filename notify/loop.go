package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	seccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// DefaultHandlerTimeout bounds the handling of one notification: the server
// waits in bind() meanwhile, and must never wait forever.
const DefaultHandlerTimeout = 5 * time.Second

// Handler answers the trapped syscalls of every instance of one supervisor.
// It is safe for concurrent use by one Serve per instance.
type Handler struct {
	log     *slog.Logger
	match   Matcher
	sink    generations.SocketSink
	timeout time.Duration

	// bindLock serializes managed binds (check, bind, register), so that two
	// binds to one address cannot both believe they create the group.
	bindLock chan struct{}

	// Observe, when set before Serve, is told of every answered
	// notification: the syscall ("bind", "setsockopt"), the result
	// ("managed", "repeated", "continued", "refused", "kept", "stale") and
	// how long the handling took.
	Observe func(syscall, result string, took time.Duration)

	// TCPReuseport makes TCP binds to managed addresses share their port
	// with later generations (SO_REUSEPORT); set it before Serve.
	TCPReuseport bool

	mu       sync.Mutex
	owned    map[uint64]owned // socket inode -> managed socket
	ownedTCP map[uint64]owned // TCP sockets given SO_REUSEPORT
	// warned remembers generations already told that their reuseport
	// programs are ignored.
	warned map[uint32]bool

	counters counters
}

// owned is what the handler remembers of a socket it bound.
type owned struct {
	group generations.GroupKey
	gen   uint32
}

// NewHandler returns a handler that manages the binds m matches and reports
// each managed socket to sink.
func NewHandler(log *slog.Logger, m Matcher, sink generations.SocketSink) *Handler {
	return &Handler{
		log:      log,
		match:    m,
		sink:     sink,
		timeout:  DefaultHandlerTimeout,
		bindLock: make(chan struct{}, 1),
		owned:    make(map[uint64]owned),
		ownedTCP: make(map[uint64]owned),
		warned:   make(map[uint32]bool),
	}
}

// Forget drops what the handler knows of generation gen's sockets; call it
// once the instance has exited.
func (h *Handler) Forget(gen uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ino, o := range h.owned {
		if o.gen == gen {
			delete(h.owned, ino)
		}
	}
	for ino, o := range h.ownedTCP {
		if o.gen == gen {
			delete(h.ownedTCP, ino)
		}
	}
	delete(h.warned, gen)
}

// Serve answers the notifications of one instance (generation gen) arriving
// on listener until every process of the instance has exited (POLLHUP) or
// ctx ends. It closes listener before returning. It never spins: it sleeps
// in poll between notifications.
func (h *Handler) Serve(ctx context.Context, listener int, gen uint32) error {
	defer unix.Close(listener)
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(wake)
	stop := context.AfterFunc(ctx, func() {
		var one [8]byte
		one[0] = 1
		// A full counter still wakes poll; nothing to do on error.
		_, _ = unix.Write(wake, one[:])
	})
	defer stop()

	fds := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll seccomp listener: %w", err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			req, err := seccomp.NotifReceive(seccomp.ScmpFd(listener))
			switch {
			case errors.Is(err, unix.ENOENT):
				// The notification was cancelled (the thread took a
				// signal or died) before we read it.
				continue
			case err != nil:
				return fmt.Errorf("receive notification: %w", err)
			}
			h.handle(ctx, listener, gen, req)
			continue
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			return nil
		}
	}
}

// reply is the answer to one notification.
type reply struct {
	errno unix.Errno
	cont  bool
	// repeated marks a re-delivered bind answered from the first result.
	repeated bool
}

var (
	replyContinue = reply{cont: true}
	replyOK       = reply{}
)

func replyErr(e unix.Errno) reply { return reply{errno: e} }

func (h *Handler) handle(ctx context.Context, listener int, gen uint32, req *seccomp.ScmpNotifReq) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	kind, result := "other", "continued"
	if h.Observe != nil {
		defer func() { h.Observe(kind, result, time.Since(start)) }()
	}
	n := notification{
		fd:  seccomp.ScmpFd(listener),
		id:  req.ID,
		tid: int(req.Pid),
		gen: gen,
	}
	copy(n.args[:], req.Data.Args)
	var r reply
	var stale bool
	c := &h.counters
	switch int(req.Data.Syscall) {
	case unix.SYS_BIND:
		kind = "bind"
		c.bindTrapped.Add(1)
		r, stale = h.bind(ctx, n)
		switch {
		case stale:
		case r.cont:
			c.bindContinued.Add(1)
		case r.errno != 0:
			c.bindRefused.Add(1)
			result = "refused"
		case r.repeated:
			c.bindRepeated.Add(1)
			result = "repeated"
		default:
			result = "managed"
		}
	case unix.SYS_SETSOCKOPT:
		kind = "setsockopt"
		c.setsockoptTrapped.Add(1)
		r, stale = h.setsockopt(n)
		if !stale && !r.cont {
			c.setsockoptKept.Add(1)
			result = "kept"
		}
	default:
		r = replyContinue // the filter traps nothing else
	}
	if stale {
		c.stale.Add(1)
		result = "stale"
		return
	}
	resp := &seccomp.ScmpNotifResp{ID: req.ID, Error: int32(r.errno)}
	if r.cont {
		resp.Flags = seccomp.NotifRespFlagContinue
	}
	if err := seccomp.NotifRespond(n.fd, resp); err != nil {
		if errors.Is(err, unix.ENOENT) {
			// Interrupted or gone while we worked: a bind the kernel
			// repeats is answered from what grmwrap already did.
			c.stale.Add(1)
			result = "stale"
			return
		}
		h.log.Warn("answer trapped syscall", "pid", n.tid, "err", err)
	}
}

// notification is one trapped syscall.
type notification struct {
	fd   seccomp.ScmpFd
	id   uint64
	tid  int
	gen  uint32
	args [6]uint64
}

// valid reports whether the notification is still pending: the thread has
// not died or been interrupted, so what was read from it is its own.
func (n notification) valid() bool {
	return seccomp.NotifIDValid(n.fd, n.id) == nil
}
