package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// waitControlSocket waits until the supervisor of s has its control socket.
func (s *svc) waitControlSocket() {
	s.t.Helper()
	sock := controlPath(s.dir, s.pid)
	guard := time.Now().Add(hang)
	for {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if s.g.Exited() || time.Now().After(guard) {
			s.t.Fatalf("no control socket %s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sigPipeIgnored reports whether process pid ignores SIGPIPE (SigIgn in
// /proc/PID/status).
func sigPipeIgnored(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:\t"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(uint(syscall.SIGPIPE)-1)) != 0
		}
	}
	t.Fatalf("no SigIgn in /proc/%d/status", pid)
	return false
}

// TestClosedStderrPipe (issue 10, case 7): grmwrap's stderr, which the
// servers inherit, is a pipe whose reader reads one line and goes away, as
// in `grmwrap -- server 2>&1 | head -1`. The supervisor stays up, an
// upgrade still works and the new generation's binds are still managed;
// the servers still get the default SIGPIPE. The servers' stdout stays a
// pipe the test reads: a server writing to a closed pipe dies of SIGPIPE,
// as it would without grmwrap, which is not what is tested here.
func TestClosedStderrPipe(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	dir := t.TempDir()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The reader: one line, then close, like head -1.
	first := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(pr).ReadString('\n') // whatever came: the line is only logged
		pr.Close()
		first <- l
	}()
	// sh sets grmwrap's stderr to the pipe and execs it: the pid is
	// grmwrap's, and testbin reads its stdout.
	cmd := exec.Command("sh", "-c", `exec "$0" "$@" 2>&3 3>&-`, testbin.Grmwrap(t),
		"--runtime-dir", dir, "--", testbin.EchoC(t), strconv.Itoa(port))
	cmd.ExtraFiles = []*os.File{pw}
	s := &svc{t: t, g: testbin.Start(t, cmd), dir: dir, port: port}
	pw.Close()
	s.pid = s.g.Cmd.Process.Pid
	s.first = s.g.Ready(t, wait)
	s.waitControlSocket()
	select {
	case l := <-first:
		t.Logf("the reader read %q and closed the pipe", l)
	case <-time.After(hang):
		t.Fatal("grmwrap never wrote a line to stderr (hang guard)")
	}
	if sigPipeIgnored(t, s.first.PID) {
		t.Errorf("generation 1 (pid %d) ignores SIGPIPE; want the default", s.first.PID)
	}

	// Every line grmwrap logs from now on meets the closed pipe.
	r := s.upgrade(nil)
	if s.g.Exited() {
		t.Fatalf("grmwrap died: %v; upgrade: %v", s.g.Cmd.ProcessState, r)
	}
	if r.code != 0 || r.stdout != "generation 2 working\n" {
		t.Fatalf("upgrade after the pipe closed: %v", r)
	}
	second := s.g.Ready(t, wait)
	if second.UDPReuseport != 1 || second.Port != port {
		t.Errorf("generation 2's bind is not managed: %+v", second)
	}
	if sigPipeIgnored(t, second.PID) {
		t.Errorf("generation 2 (pid %d) ignores SIGPIPE; want the default", second.PID)
	}
	st := s.status()
	if st.WorkingGeneration != 2 {
		t.Errorf("working generation %d, want 2", st.WorkingGeneration)
	}
	if s.g.Exited() {
		t.Fatalf("grmwrap died: %v", s.g.Cmd.ProcessState)
	}
}

// dialControl connects to the supervisor's control socket.
func (s *svc) dialControl() *net.UnixConn {
	s.t.Helper()
	c, err := net.DialTimeout("unix", controlPath(s.dir, s.pid), wait)
	if err != nil {
		s.t.Fatalf("connect to the control socket: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// answerOf reads one answer line from c (hang guard: hang).
func answerOf(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(hang)) // a failure shows in the read
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Errorf("read the answer: %v (read so far %q)", err, l)
	}
	return l
}

// procKiB reads a "Name:  N kB" field of /proc/PID/status.
func procKiB(t *testing.T, pid int, name string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}

// TestControlAcceptErrors (issue 10, case 8a): the supervisor runs out of
// fds (its RLIMIT_NOFILE lowered), so accepting a control connection fails
// with EMFILE. That is logged, and once fds are free again the control
// socket answers: it does not die for good.
func TestControlAcceptErrors(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, nil, testbin.EchoC(t), strconv.Itoa(port))
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	low := unix.Rlimit{Cur: uint64(len(fds)), Max: uint64(len(fds))}
	if err := unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	low.Max = old.Max
	if err := unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := unix.Prlimit(s.pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
			t.Errorf("restore the fd limit: %v", err)
		}
	}
	const logged = `msg="control socket: accept failed, retrying"`
	var conns []net.Conn
	for i := 0; i < 20 && !strings.Contains(s.g.Stderr(), logged); i++ {
		conns = append(conns, s.dialControl())
		guard := time.Now().Add(time.Second)
		for !strings.Contains(s.g.Stderr(), logged) && time.Now().Before(guard) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	restore()
	for _, c := range conns {
		c.Close()
	}
	t.Logf("%d connections opened with RLIMIT_NOFILE %d", len(conns), low.Cur)
	if r := runCLI(t, "status", "--runtime-dir", s.dir, strconv.Itoa(s.pid)); r.code != 0 {
		t.Errorf("status after the fds were free again: %v", r)
	}
	if l := s.g.Stderr(); !strings.Contains(l, logged) || !strings.Contains(l, "too many open files") {
		t.Errorf("no log line %s with EMFILE; grmwrap's log:\n%s", logged, l)
	}
}

// TestControlRequestTooLarge (issue 10, case 8b): a request of 16 MiB
// without an end gets the size error, and the supervisor's memory does not
// grow with it.
func TestControlRequestTooLarge(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, nil, testbin.EchoC(t), strconv.Itoa(port))
	_ = s.status() // the status path has run once before the measure
	before := procKiB(t, s.pid, "VmHWM")
	c := s.dialControl()
	big := append([]byte(`{"op":"upgrade","argv":["`), bytes.Repeat([]byte("a"), 16<<20)...)
	_ = c.SetWriteDeadline(time.Now().Add(hang)) // a hang shows as a write error, ignored like any other
	_, err := c.Write(big)
	t.Logf("write of %d bytes: %v", len(big), err) // EPIPE once the supervisor gave up is expected
	_ = c.CloseWrite()                             // ENOTCONN after EPIPE is fine
	oneLineWith(t, "answer to a 16 MiB request", answerOf(t, c), "request too large (limit 64 KiB)")
	after := procKiB(t, s.pid, "VmHWM")
	t.Logf("supervisor VmHWM %d kB before, %d kB after; VmRSS %d kB", before, after, procKiB(t, s.pid, "VmRSS"))
	if after-before > 4<<10 {
		t.Errorf("supervisor's peak RSS grew by %d kB for one request, want at most 4 MiB", after-before)
	}
	if st := s.status(); st.WorkingGeneration != 1 {
		t.Errorf("working generation %d, want 1", st.WorkingGeneration)
	}
}

// TestControlIdleClient (issue 10, case 8c): a client that connects and
// sends nothing is dropped after the request deadline (10s), and other
// requests are answered meanwhile.
func TestControlIdleClient(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	s := startSvc(t, port, nil, testbin.EchoC(t), strconv.Itoa(port))
	idle := s.dialControl()
	for range 3 {
		if st := s.status(); st.WorkingGeneration != 1 {
			t.Errorf("working generation %d, want 1", st.WorkingGeneration)
		}
	}
	oneLineWith(t, "answer to a client that sent nothing", answerOf(t, idle), "no request within 10s")
	_ = idle.SetReadDeadline(time.Now().Add(hang)) // a failure shows in the read
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("idle connection not closed after the answer: read %d, %v", n, err)
	}
}

// TestUpgradeClientBoundedWait (issue 10, case 8d): against a supervisor
// that accepts and never answers, `upgrade --timeout 1s` and `status` end
// with exit 2 and one line that says what they waited for.
func TestUpgradeClientBoundedWait(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sleeper.Process.Kill() // gone already is fine
		_ = sleeper.Wait()         // its status is of no interest
	})
	pid := sleeper.Process.Pid
	dir := t.TempDir()
	ln, err := net.Listen("unix", controlPath(dir, pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn // accepted and never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			held = append(held, c)
		}
	}()
	p := strconv.Itoa(pid)
	r := runCLI(t, "upgrade", "--runtime-dir", dir, "--timeout", "1s", p)
	if r.code != 2 {
		t.Errorf("upgrade against a silent supervisor: %v, want exit 2", r)
	}
	oneLineWith(t, "upgrade's error", r.stderr, "no answer from the grmwrap supervisor (pid "+p+") within 31s",
		"the upgrade may still be running: see `grmwrap status "+p+"`", "pass --timeout")
	r = runCLI(t, "status", "--runtime-dir", dir, p)
	if r.code != 2 {
		t.Errorf("status against a silent supervisor: %v, want exit 2", r)
	}
	oneLineWith(t, "status's error", r.stderr, "no answer from the grmwrap supervisor (pid "+p+") to a status request within 10s")
}
