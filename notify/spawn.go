package notify

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// handshakeTimeout bounds the init stage: installing a filter and exec'ing
// take milliseconds.
const handshakeTimeout = 10 * time.Second

// Spec says how to start one instance of the server.
type Spec struct {
	Self string   // the grmwrap binary to re-execute for the init stage
	Path string   // the server's executable, already resolved
	Argv []string // the server's argv, argv[0] included
	Env  []string
	Cred *Credential // nil: run as grmwrap's own user
	// NoWaitKillable installs the filter without WAIT_KILLABLE_RECV even
	// where the kernel has it, as kernels before 5.19 do: tests use it to
	// exercise the re-delivered bind.
	NoWaitKillable bool
	// AllowIOUring leaves io_uring to the server (see FilterOptions).
	AllowIOUring bool
	// Files are the server's stdin, stdout and stderr.
	Files [3]*os.File
	// Cgroup, when not nil, is an open cgroup2 directory: the init stage
	// starts in it (clone3 CLONE_INTO_CGROUP), so no process of the
	// instance ever runs outside it.
	Cgroup *os.File
}

// Child is a started instance: its process and its seccomp listener.
type Child struct {
	Process *os.Process
	// Listener is the seccomp listener fd (close-on-exec, owned by the
	// caller).
	Listener int
	// Killable says whether the filter has WAIT_KILLABLE_RECV: when false,
	// a signal can make the kernel re-deliver a bind being handled.
	Killable bool
}

// startIdle runs start on an OS thread of its own scheduled SCHED_IDLE:
// the process it forks inherits the policy, so the init stage of a new
// generation (grmwrap's own start, the filter, the handshake) runs only on
// CPU time the serving generations leave, and an upgrade on a busy machine
// does not stall them. The init stage puts the server back on the
// supervisor's policy and nice value before exec. The thread is never
// unlocked, so it ends with the goroutine and nothing else runs on it.
func startIdle(start func() (*os.Process, error)) (*os.Process, error) {
	type result struct {
		p   *os.Process
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// On failure the init stage runs at the supervisor's priority:
		// slower to yield, nothing worse.
		_ = unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0)
		p, err := start()
		done <- result{p, err}
	}()
	r := <-done
	return r.p, r.err
}

// Start starts one instance through the init stage and returns once the
// server program has been exec'd under the filter. The caller reaps the
// process. On error no listener is left open.
func Start(spec Spec) (*Child, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("handshake socketpair: %w", err)
	}
	parent := fds[0]
	defer unix.Close(parent)
	childEnd := os.NewFile(uintptr(fds[1]), "grmwrap-handshake")
	mode := "killable"
	if spec.NoWaitKillable {
		mode = "plain"
	}
	if spec.AllowIOUring {
		mode += ",io_uring"
	}
	args := append([]string{spec.Self, InitArg, spec.Cred.encode(), mode, spec.Path}, spec.Argv...)
	// Its own process group: a terminal's ^C reaches grmwrap, which
	// decides what each instance gets.
	sys := &syscall.SysProcAttr{Setpgid: true}
	if spec.Cgroup != nil {
		sys.UseCgroupFD = true
		sys.CgroupFD = int(spec.Cgroup.Fd())
	}
	proc, err := startIdle(func() (*os.Process, error) {
		return os.StartProcess(spec.Self, args, &os.ProcAttr{
			Env:   spec.Env,
			Files: []*os.File{spec.Files[0], spec.Files[1], spec.Files[2], childEnd},
			Sys:   sys,
		})
	})
	childEnd.Close()
	if err != nil {
		return nil, fmt.Errorf("start init stage: %w", err)
	}
	child := &Child{Process: proc, Listener: -1}
	fail := func(err error) (*Child, error) {
		if child.Listener >= 0 {
			unix.Close(child.Listener)
		}
		// The init stage may still be running; it must not exec the server
		// unmanaged. It is reaped by the caller's reaper.
		_ = proc.Kill()
		return nil, err
	}
	deadline := time.Now().Add(handshakeTimeout)
	msg, fd, err := recvHandshake(parent, deadline)
	if err != nil {
		return fail(err)
	}
	if rest, ok := strings.CutPrefix(msg, "error:"); ok {
		return fail(errors.New(rest))
	}
	if msg == "" && fd < 0 {
		return fail(errors.New("init stage exited before handing over its listener"))
	}
	if fd < 0 || !strings.HasPrefix(msg, "ok ") {
		if fd >= 0 {
			unix.Close(fd)
		}
		return fail(fmt.Errorf("init stage sent %q without a listener", msg))
	}
	child.Listener = fd
	child.Killable = msg == "ok killable=1"
	// Second message: EOF when exec succeeded (the socket end is
	// close-on-exec), an error otherwise.
	msg, fd, err = recvHandshake(parent, deadline)
	if fd >= 0 {
		unix.Close(fd)
	}
	if err != nil {
		return fail(err)
	}
	if msg != "" {
		return fail(errors.New(strings.TrimPrefix(msg, "error:")))
	}
	return child, nil
}

// recvHandshake receives one message, with any fd it carries (received
// close-on-exec so that it never leaks into a later instance). An empty
// message with no error means the peer closed its end.
func recvHandshake(fd int, deadline time.Time) (string, int, error) {
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return "", -1, errors.New("init stage did not answer in time")
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("poll handshake: %w", err)
		}
		if n == 0 {
			continue
		}
		break
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
	if err != nil {
		return "", -1, fmt.Errorf("receive handshake: %w", err)
	}
	recvd := -1
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return "", -1, fmt.Errorf("parse handshake control message: %w", err)
		}
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue // not SCM_RIGHTS
			}
			for _, f := range fds {
				if recvd < 0 {
					recvd = f
				} else {
					unix.Close(f)
				}
			}
		}
	}
	return string(buf[:n]), recvd, nil
}
