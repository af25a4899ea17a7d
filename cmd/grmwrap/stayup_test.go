package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
