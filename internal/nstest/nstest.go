package nstest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

const envChild = "GRMWRAP_NSTEST_CHILD"

// RequirePrivileged fails (instead of skipping) a test that needs root when
// GRMWRAP_REQUIRE_PRIVILEGED=1: CI must never skip the privileged tests.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("GRMWRAP_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("this test needs root and GRMWRAP_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("needs root (namespaces, seccomp listeners, pidfd_getfd on other processes)")
}

// Enter reports whether the caller runs inside the test's own namespaces.
// In the parent it runs the test in a child and returns false: the caller
// returns at once. Use it as the first line of a top-level test:
//
//	if !nstest.Enter(t) { return }
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envChild) == t.Name() {
		setupOnce.Do(setupChild)
		if setupErr != nil {
			t.Fatalf("namespace setup: %v", setupErr)
		}
		return true
	}
	RequirePrivileged(t)
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("nstest.Enter works in top-level tests only, not %s", t.Name())
	}
	timeout := 10 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - 5*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1", "-test.v"}
	if f := flag.Lookup("test.timeout"); f != nil {
		args = append(args, "-test.timeout="+f.Value.String())
	}
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	// A -race child would sleep a second at exit to flush reports.
	cmd.Env = append(os.Environ(), envChild+"="+t.Name(), "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("test in its own namespaces failed: %v\n%s", err, text)
	}
	if !strings.Contains(text, "--- PASS: "+t.Name()) {
		t.Fatalf("test in its own namespaces did not pass:\n%s", text)
	}
	if strings.Contains(text, "--- SKIP: "+t.Name()) {
		t.Fatalf("test skipped in its own namespaces:\n%s", text)
	}
	if testing.Verbose() {
		t.Logf("child output:\n%s", text)
	}
	return false
}

var (
	setupOnce sync.Once
	setupErr  error
)

// setupChild makes the child's mounts private, mounts a /proc for its PID
// namespace and a tmpfs on /run/grmwrap, and brings loopback up.
func setupChild() {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		setupErr = fmt.Errorf("make mounts private: %w", err)
		return
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		setupErr = fmt.Errorf("mount /proc: %w", err)
		return
	}
	// A bpffs of the test's own: pinned maps vanish with the test, whatever
	// the host has mounted at /sys/fs/bpf.
	if err := syscall.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		setupErr = fmt.Errorf("mount bpffs: %w", err)
		return
	}
	// grmwrap's runtime directory (locks, control sockets) is private too.
	if err := os.MkdirAll("/run/grmwrap", 0o755); err != nil {
		setupErr = fmt.Errorf("create /run/grmwrap: %w", err)
		return
	}
	if err := syscall.Mount("tmpfs", "/run/grmwrap", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		setupErr = fmt.Errorf("mount /run/grmwrap: %w", err)
		return
	}
	setupErr = loopbackUp()
}

// loopbackUp sets IFF_UP on lo with SIOCGIFFLAGS/SIOCSIFFLAGS.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer syscall.Close(fd)
	var ifr struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(ifr.name[:], "lo")
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("get lo flags: %w", errno)
	}
	ifr.flags |= syscall.IFF_UP
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("set lo up: %w", errno)
	}
	return nil
}
