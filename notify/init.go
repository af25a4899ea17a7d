package notify

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitArg is the hidden first argument that makes a grmwrap binary (or a
// test binary) run the init stage instead of its main program.
const InitArg = "init"

// initFD is where the init stage finds its end of the handshake socketpair.
const initFD = 3

// The seccomp filter applies to the thread that installs it. Go gives no
// code between fork and exec, so the init stage is a re-execution of the
// binary, and its main goroutine must stay on the main thread from the start:
// without the lock the exec'd server could run on a thread without the filter.
func init() {
	if IsInit() {
		runtime.LockOSThread()
	}
}

// IsInit reports whether this process was started as the init stage.
func IsInit() bool {
	return len(os.Args) > 1 && os.Args[1] == InitArg
}

// Credential is the identity an instance runs as (--user).
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

func (c *Credential) encode() string {
	if c == nil {
		return "-"
	}
	gs := make([]string, len(c.Groups))
	for i, g := range c.Groups {
		gs[i] = strconv.FormatUint(uint64(g), 10)
	}
	return fmt.Sprintf("%d:%d:%s", c.UID, c.GID, strings.Join(gs, ","))
}

func decodeCredential(s string) (*Credential, error) {
	if s == "-" {
		return nil, nil
	}
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("credential %q: want uid:gid:groups", s)
	}
	uid, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("credential uid: %w", err)
	}
	gid, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("credential gid: %w", err)
	}
	c := &Credential{UID: uint32(uid), GID: uint32(gid)}
	if parts[2] != "" {
		for _, g := range strings.Split(parts[2], ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("credential group: %w", err)
			}
			c.Groups = append(c.Groups, uint32(n))
		}
	}
	return c, nil
}

// RunInit is the init stage: os.Args is [self, InitArg, credential, mode,
// path, argv...], mode "killable" or "plain" (see Spec.NoWaitKillable), followed by ",io_uring" with Spec.AllowIOUring. It installs the filter on this (locked) thread, hands the
// listener to the supervisor, drops privileges and execs the server. It
// returns only on failure, after telling the supervisor why; the caller
// exits non-zero.
func RunInit() error {
	if len(os.Args) < 6 {
		return fmt.Errorf("init stage: want credential, mode, path and argv")
	}
	// The socketpair end must not reach the server: close it on exec.
	unix.CloseOnExec(initFD)
	mode, flags, _ := strings.Cut(os.Args[3], ",")
	err := runInit(os.Args[2], mode == "killable", flags == "io_uring", os.Args[4], os.Args[5:])
	// Tell the supervisor; if it is gone there is no one to tell.
	_, _ = unix.Write(initFD, []byte("error:"+err.Error()))
	return err
}

func runInit(credArg string, wantKillable, allowIOUring bool, path string, argv []string) error {
	cred, err := decodeCredential(credArg)
	if err != nil {
		return err
	}
	prog, err := FilterProgramWith(FilterOptions{AllowIOUring: allowIOUring})
	if err != nil {
		return err
	}
	listener, killable, err := installFilter(prog, wantKillable)
	if err != nil {
		return err
	}
	msg := "ok killable=0"
	if killable {
		msg = "ok killable=1"
	}
	err = unix.Sendmsg(initFD, []byte(msg), unix.UnixRights(listener), nil, 0)
	// The server must never hold its own listener: it could answer its own
	// notifications.
	unix.Close(listener)
	if err != nil {
		return fmt.Errorf("send listener to supervisor: %w", err)
	}
	// The supervisor started this stage SCHED_IDLE; the server gets the
	// supervisor's policy and nice value (while still privileged to raise
	// them). This thread is the one that execs.
	if err := restorePriority(); err != nil {
		return err
	}
	if cred != nil {
		if err := dropPrivileges(cred); err != nil {
			return err
		}
	}
	err = syscall.Exec(path, argv, os.Environ())
	return fmt.Errorf("exec %s: %w", path, err)
}

// restorePriority gives the calling thread the scheduling policy and nice
// value of the supervisor (its parent's main thread).
func restorePriority() error {
	attr, err := unix.SchedGetAttr(os.Getppid(), 0)
	if err != nil {
		return fmt.Errorf("read the supervisor's scheduling: %w", err)
	}
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		return fmt.Errorf("restore the server's scheduling: %w", err)
	}
	return nil
}

// dropPrivileges switches every thread to cred (Go's setuid family applies to
// all threads).
func dropPrivileges(cred *Credential) error {
	groups := make([]int, len(cred.Groups))
	for i, g := range cred.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(int(cred.GID)); err != nil {
		return fmt.Errorf("setgid %d: %w", cred.GID, err)
	}
	if err := syscall.Setuid(int(cred.UID)); err != nil {
		return fmt.Errorf("setuid %d: %w", cred.UID, err)
	}
	return nil
}
