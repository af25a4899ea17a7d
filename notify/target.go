package notify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// capNetBindService is CAP_NET_BIND_SERVICE's bit number.
const capNetBindService = 10

// openTarget returns a pidfd for the thread tid that sent a notification
// (PIDFD_THREAD, Linux 6.9+) or, on older kernels, for its thread group.
func openTarget(tid int) (int, error) {
	fd, err := unix.PidfdOpen(tid, unix.PIDFD_THREAD)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return -1, fmt.Errorf("pidfd_open %d: %w", tid, err)
	}
	tgid, err := threadGroup(tid)
	if err != nil {
		return -1, err
	}
	fd, err = unix.PidfdOpen(tgid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", tgid, err)
	}
	return fd, nil
}

// procStatus returns the value of field key in /proc/<tid>/status.
func procStatus(tid int, key string) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return "", fmt.Errorf("read status of %d: %w", tid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("status of %d has no %s", tid, key)
}

// threadGroup returns the process id of thread tid.
func threadGroup(tid int) (int, error) {
	v, err := procStatus(tid, "Tgid")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("tgid of %d: %w", tid, err)
	}
	return n, nil
}

// readTarget copies len(buf) bytes at addr from the memory of tid.
func readTarget(tid int, addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(tid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("read memory of %d: %w", tid, err)
	}
	if n != len(buf) {
		return fmt.Errorf("read memory of %d: %d of %d bytes", tid, n, len(buf))
	}
	return nil
}

// canBindPrivileged reports whether thread tid holds CAP_NET_BIND_SERVICE in
// grmwrap's own user namespace. A capability held only inside a nested user
// namespace is not counted: grmwrap must never grant more than the kernel
// would.
func canBindPrivileged(tid int) (bool, error) {
	v, err := procStatus(tid, "CapEff")
	if err != nil {
		return false, err
	}
	caps, err := strconv.ParseUint(v, 16, 64)
	if err != nil {
		return false, fmt.Errorf("capabilities of %d: %w", tid, err)
	}
	if caps&(1<<capNetBindService) == 0 {
		return false, nil
	}
	mine, err := os.Readlink("/proc/self/ns/user")
	if err != nil {
		return false, fmt.Errorf("own user namespace: %w", err)
	}
	theirs, err := os.Readlink("/proc/" + strconv.Itoa(tid) + "/ns/user")
	if err != nil {
		return false, fmt.Errorf("user namespace of %d: %w", tid, err)
	}
	return mine == theirs, nil
}

// socketNetNS returns an fd for the network namespace of socket fd, and the
// namespace's inode number.
func socketNetNS(fd int) (int, uint64, error) {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return -1, 0, fmt.Errorf("socket network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		unix.Close(nsfd)
		return -1, 0, fmt.Errorf("stat network namespace: %w", err)
	}
	return nsfd, st.Ino, nil
}

// inNetNS runs fn on an OS thread moved into the network namespace nsfd:
// files under /proc/thread-self/net and /proc/sys/net show the namespace of
// the thread that reads them.
func inNetNS(nsfd int, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter socket network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: Go ends a locked thread when its
			// goroutine exits, so the foreign namespace dies with it.
			ch <- fmt.Errorf("return to own network namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// unprivilegedPortStart reads net.ipv4.ip_unprivileged_port_start as seen
// from the current thread's network namespace.
func unprivilegedPortStart() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 0, fmt.Errorf("read ip_unprivileged_port_start: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse ip_unprivileged_port_start: %w", err)
	}
	return n, nil
}
