package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// runOnce runs grmwrap to completion and returns its exit code and stderr.
func runOnce(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		t.Fatalf("grmwrap did not exit within %v", wait)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// oneLine checks that s is exactly one line containing want.
func oneLine(t *testing.T, s, want string) {
	t.Helper()
	s = strings.TrimSuffix(s, "\n")
	if strings.Contains(s, "\n") || !strings.Contains(s, want) {
		t.Fatalf("want one line containing %q, got:\n%s", want, s)
	}
}

// TestUsageErrors: each mistake exits 2 with one line saying why, and never
// starts anything.
func TestUsageErrors(t *testing.T) {
	bin := testbin.Grmwrap(t)
	marker := filepath.Join(t.TempDir(), "ran")
	touch := []string{"sh", "-c", "touch " + marker}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "missing command"},
		{"dashes without command", []string{"--"}, "missing command"},
		{"missing dashes", touch, "missing -- before the command"},
		{"unknown flag", append([]string{"--no-such-flag", "--"}, touch...), "flag provided but not defined"},
		{"bad listen", append([]string{"--listen", "nowhere", "--"}, touch...), `listen "nowhere"`},
		{"bad log level", append([]string{"--log-level", "loud", "--"}, touch...), `log level "loud"`},
		{"negative settle", append([]string{"--settle", "-1s", "--"}, touch...), "settle -1s: want zero (off) or a positive duration"},
		{"command not found", []string{"--", "/no/such/server"}, `command "/no/such/server" not found`},
		{"unknown user", append([]string{"--user", "no-such-user-x", "--"}, touch...), `user "no-such-user-x" not found`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runOnce(t, exec.Command(bin, tc.args...))
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			oneLine(t, stderr, tc.want)
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran")
			}
		})
	}
}

// TestPreflightRefuses: without what grmwrap needs, it refuses to start and
// names the missing piece; the server never runs unmanaged.
func TestPreflightRefuses(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	bin := testbin.WorldExecutable(t, testbin.Grmwrap(t))
	// The marker must be writable by nobody too, or a server that ran as
	// nobody could not leave it and the check would prove nothing.
	mdir, err := os.MkdirTemp("", "grmwrap-marker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(mdir) })
	if err := os.Chmod(mdir, 0o777); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(mdir, "ran")
	args := []string{"--", "sh", "-c", "touch " + marker}
	for _, tc := range []struct {
		name  string
		deny  string // syscall failing with ENOSYS, as on an old kernel
		nobod bool   // run grmwrap as nobody
		want  string
	}{
		{name: "not root", nobod: true, want: "missing root or CAP_SYS_ADMIN"},
		{name: "no seccomp user notification", deny: "seccomp", want: "seccomp user notification"},
		{name: "no pidfd_getfd", deny: "pidfd_getfd", want: "pidfd_getfd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cmd *exec.Cmd
			if tc.deny != "" {
				cmd = exec.Command(os.Args[0], append([]string{bin}, args...)...)
				cmd.Env = append(os.Environ(), envDeny+"="+tc.deny)
			} else {
				cmd = exec.Command(bin, args...)
			}
			if tc.nobod {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			code, stderr := runOnce(t, cmd)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			oneLine(t, stderr, tc.want)
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the server ran although grmwrap refused")
			}
		})
	}
}

// TestPrivilegedPortNeedsPrivilege: a server run as nobody gets EACCES for a
// privileged port, as it would without grmwrap, unless the operator listed
// the address with --listen.
func TestPrivilegedPortNeedsPrivilege(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.WorldExecutable(t, testbin.EchoC(t))
	// Control: the same server as nobody without grmwrap.
	plain := exec.Command(echo, "53")
	plain.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := plain.Output()
	if !strings.HasPrefix(string(out), "bind-error errno=13") {
		t.Fatalf("control: nobody binding port 53 without grmwrap said %q, want EACCES", out)
	}

	g := grmwrap(t, "--user", "nobody", "--", echo, "53")
	if l := g.Line(t, wait); !strings.HasPrefix(l, "bind-error errno=13") {
		t.Fatalf("under grmwrap --user nobody: %q, want bind-error errno=13 (EACCES)", l)
	}
	if code := g.Wait(t, wait); code != 3 {
		t.Fatalf("grmwrap exited %d, want the server's 3", code)
	}

	g = grmwrap(t, "--user", "nobody", "--listen", ":53", "--", echo, "53")
	r := g.Ready(t, wait)
	if r.UDPReuseport != 1 || r.Port != 53 {
		t.Fatalf("listed privileged port: %+v", r)
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(r.PID) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), "Uid:\t65534") {
		t.Fatal("server does not run as nobody")
	}
}

// TestForeignPortHolder: a port held by a process grmwrap does not manage
// gets EADDRINUSE, even when that socket has SO_REUSEPORT and the same owner
// (where a plain bind with SO_REUSEPORT would have joined its group).
func TestForeignPortHolder(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for _, reuse := range []bool{false, true} {
		t.Run("foreign reuseport="+strconv.FormatBool(reuse), func(t *testing.T) {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					if reuse {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
					}
				})
				return errors.Join(err, serr)
			}}
			foreign, err := lc.ListenPacket(t.Context(), "udp4", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer foreign.Close()
			port := foreign.LocalAddr().(*net.UDPAddr).Port
			g := grmwrap(t, "--", testbin.EchoC(t), "--reuseport", strconv.Itoa(port))
			if l := g.Line(t, wait); !strings.HasPrefix(l, "bind-error errno=98") {
				t.Fatalf("server said %q, want bind-error errno=98 (EADDRINUSE)", l)
			}
			// The foreign socket still gets its traffic.
			c, err := net.Dial("udp4", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			_ = foreign.SetReadDeadline(time.Now().Add(wait))
			buf := make([]byte, 16)
			if _, _, err := foreign.ReadFrom(buf); err != nil {
				t.Fatalf("foreign socket lost its traffic: %v", err)
			}
		})
	}
}
