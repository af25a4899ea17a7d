package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/load"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// gatedNotifyServer is a UDP echo server that speaks sd_notify and starts
// late: it waits until the file GATE exists ("-": no wait), then binds
// 127.0.0.1:PORT, sends READY=1 to $NOTIFY_SOCKET from its own (main)
// process and prints echo.c's ready line.
//
// Usage: gated-notify-server.py PORT GATE
const gatedNotifyServer = `import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port, gate = int(sys.argv[1]), sys.argv[2]
end = time.monotonic() + 120
while gate != "-" and not os.path.exists(gate):
    if time.monotonic() > end:
        sys.exit(4)
    time.sleep(0.02)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
print("ready pid=%d udp_reuseport=0 tcp_reuseport=-1 port=%d" % (os.getpid(), port), flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(b"%d " % os.getpid() + data, peer)
`

// nobodySend is run as nobody: it tries to send READY=1 to argv[1] and
// prints "sent" or "error <errno>".
const nobodySend = `import socket, sys
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", sys.argv[1])
    print("sent")
except OSError as e:
    print("error %d" % e.errno)
`

// nobodyList is run as nobody: it lists argv[1] and prints "listed" or
// "error <errno>".
const nobodyList = `import os, sys
try:
    os.listdir(sys.argv[1])
    print("listed")
except OSError as e:
    print("error %d" % e.errno)
`

const nobodyUID = 65534

// systemPython is Debian's python3, which nobody may run (an interpreter
// under /root may not be).
func systemPython(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("python3 for nobody: %v", err)
	}
	return py
}

// scriptDir writes the test's scripts where nobody can read them (the
// test's private /run/grmwrap tmpfs, mode 0755).
func scriptDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run/grmwrap", "scripts-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // the tmpfs goes with the namespace anyway
	for name, body := range map[string]string{"gated.py": gatedNotifyServer, "send.py": nobodySend, "list.py": nobodyList} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// asNobody runs python3 SCRIPT ARGS... as nobody and returns its stdout.
func asNobody(t *testing.T, py, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(py, append([]string{script}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s as nobody: %v: %s", script, err, out)
	}
	return strings.TrimSpace(string(out))
}

// startSvcAt is startSvc with the runtime directory dir.
func startSvcAt(t *testing.T, dir string, port int, opts []string, argv ...string) *svc {
	t.Helper()
	args := append([]string{"--runtime-dir", dir}, opts...)
	args = append(append(args, "--"), argv...)
	s := &svc{t: t, g: grmwrap(t, args...), dir: dir, port: port}
	s.pid = s.g.Cmd.Process.Pid
	s.first = s.g.Ready(t, wait)
	sock := controlPath(dir, s.pid)
	guard := time.Now().Add(hang)
	for {
		if _, err := os.Stat(sock); err == nil {
			return s
		}
		if s.g.Exited() || time.Now().After(guard) {
			t.Fatalf("no control socket %s; grmwrap's log:\n%s", sock, s.g.Stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNotifySocketForeignReady (issue 10, case 4): with --ready notify, a
// READY=1 sent to generation 2's NOTIFY_SOCKET by a process outside
// generation 2 (root: the test itself; nobody) before generation 2 has
// bound does not make it ready: no flip until its own READY=1, and no
// datagram of the load is lost. Before the fix root's (and nobody's)
// READY=1 flipped to a generation without sockets.
func TestNotifySocketForeignReady(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	py := systemPython(t)
	scripts := scriptDir(t)
	gated := filepath.Join(scripts, "gated.py")
	port := testbin.FreeUDPPort(t)
	s := startSvcAt(t, "/run/grmwrap", port, []string{"--ready", "notify", "--ready-timeout", "60s"}, py, gated, strconv.Itoa(port), "-")

	l := startLoad(load.Config{Addr: fmt.Sprintf("127.0.0.1:%d", port), Flows: 30, Rate: 300, Duration: 6 * time.Second, Grace: time.Second})
	gate := filepath.Join(t.TempDir(), "gate")
	up := startCLI(t, s.upgradeArgs(s.pid, nil, []string{py, gated, strconv.Itoa(port), gate})...)
	s.waitGen(2, generations.StateStarting)
	sock := filepath.Join(s.dir, fmt.Sprintf("notify-%d", s.pid), "gen-2.sock")
	settle(t, "generation 2's notify socket", func() (bool, string) {
		_, err := os.Stat(sock)
		return err == nil, fmt.Sprint(err)
	})

	// Root, outside the generation.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	// A flood: one warning line, not one per datagram.
	for i := 0; i < 100; i++ {
		if err := syscall.Sendto(fd, []byte("READY=1"), 0, &syscall.SockaddrUnix{Name: sock}); err != nil {
			t.Fatalf("send READY=1 as root: %v", err)
		}
	}
	// Nobody, outside the generation: the directory keeps it out.
	t.Logf("READY=1 as nobody: %s", asNobody(t, py, filepath.Join(scripts, "send.py"), sock))

	// Either the datagram was dropped (logged) or it made generation 2
	// ready.
	var st Status
	settle(t, "root's READY=1 handled", func() (bool, string) {
		st = s.status()
		if strings.Contains(s.g.Stderr(), "dropped a datagram from a process outside the generation") {
			return true, ""
		}
		return st.WorkingGeneration != 1, fmt.Sprintf("%+v", st.Generations)
	})
	if st.WorkingGeneration != 1 || genOf(t, st, 2).State != generations.StateStarting {
		t.Fatalf("a READY=1 from outside generation 2 made it ready: working generation %d, generations %+v; log:\n%s", st.WorkingGeneration, st.Generations, s.g.Stderr())
	}
	oneLineWith(t, "the warning", grepLines(s.g.Stderr(), "outside the generation"), "sender_pid="+strconv.Itoa(os.Getpid()), "sender_uid=0", "generation=2")

	// Now generation 2 binds and says READY=1 itself.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := finish(t, up); r.code != 0 || r.stdout != "generation 2 working\n" {
		t.Fatalf("upgrade: %v; log:\n%s", r, s.g.Stderr())
	}
	noLoss(t, "load across the upgrade", l.wait(t))
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestNotifySocketDirectory (issue 10, case 4): the directory of the
// NOTIFY_SOCKETs is 0700 and the sockets 0600, owned by --user's user; a
// server run as nobody still makes itself ready, and nobody cannot enter
// the directory of a root server (before the fix: 0755, sockets 0666).
func TestNotifySocketDirectory(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	py := systemPython(t)
	scripts := scriptDir(t)
	gated := filepath.Join(scripts, "gated.py")

	t.Run("root server", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		s := startSvcAt(t, "/run/grmwrap", port, []string{"--ready", "notify"}, py, gated, strconv.Itoa(port), "-")
		dir := filepath.Join(s.dir, fmt.Sprintf("notify-%d", s.pid))
		wantOwner(t, dir, 0, 0o700|os.ModeDir)
		wantOwner(t, filepath.Join(dir, "gen-1.sock"), 0, 0o600|os.ModeSocket)
		if got := asNobody(t, py, filepath.Join(scripts, "list.py"), dir); got != fmt.Sprintf("error %d", syscall.EACCES) {
			t.Fatalf("nobody listing %s: %s, want error %d (EACCES)", dir, got, syscall.EACCES)
		}
		if got := asNobody(t, py, filepath.Join(scripts, "send.py"), filepath.Join(dir, "gen-1.sock")); got != fmt.Sprintf("error %d", syscall.EACCES) {
			t.Fatalf("nobody sending to generation 1: %s, want error %d (EACCES)", got, syscall.EACCES)
		}
	})

	t.Run("--user nobody", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		// Generation 1 ready means it sent READY=1 as nobody.
		s := startSvcAt(t, "/run/grmwrap", port, []string{"--ready", "notify", "--user", "nobody"}, py, gated, strconv.Itoa(port), "-")
		dir := filepath.Join(s.dir, fmt.Sprintf("notify-%d", s.pid))
		wantOwner(t, dir, nobodyUID, 0o700|os.ModeDir)
		wantOwner(t, filepath.Join(dir, "gen-1.sock"), nobodyUID, 0o600|os.ModeSocket)
		s.mustUpgrade(2, py, gated, strconv.Itoa(port), "-")
		wantOwner(t, filepath.Join(dir, "gen-2.sock"), nobodyUID, 0o600|os.ModeSocket)
	})
}

// wantOwner checks path's owner and mode.
func wantOwner(t *testing.T, path string, uid uint32, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != uid || fi.Mode() != mode {
		t.Fatalf("%s: owner %d mode %v, want owner %d mode %v", path, st.Uid, fi.Mode(), uid, mode)
	}
}

// TestNotifyReadyFromOrphanedWorker: generation 2's main process (sh, then
// sleep) starts its server through a subshell that exits at once (a double
// fork): the server, adopted by the supervisor, is no descendant of the
// main pid, but it is in generation 2's cgroup, so its READY=1 counts and
// the upgrade completes. Checked by process ancestry alone, it was dropped
// as foreign and the upgrade was rolled back at --ready-timeout.
func TestNotifyReadyFromOrphanedWorker(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	py := systemPython(t)
	gated := filepath.Join(scriptDir(t), "gated.py")
	port := testbin.FreeUDPPort(t)
	s := startSvcAt(t, "/run/grmwrap", port, []string{"--ready", "notify", "--ready-timeout", "20s"}, py, gated, strconv.Itoa(port), "-")
	gate := filepath.Join(t.TempDir(), "gate")
	up := startCLI(t, s.upgradeArgs(s.pid, nil, []string{"sh", "-c", `( "$0" "$1" "$2" "$3" & ); exec sleep infinity`, py, gated, strconv.Itoa(port), gate})...)
	st := s.waitGen(2, generations.StateStarting)
	main := genOf(t, st, 2).PID
	settle(t, "the subshell of generation 2 gone (its server orphaned)", func() (bool, string) {
		c := childrenOf(main)
		return len(c) == 0, fmt.Sprintf("children of %d: %v", main, c)
	})
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := finish(t, up); r.code != 0 || r.stdout != "generation 2 working\n" {
		t.Fatalf("upgrade: %v; log:\n%s", r, s.g.Stderr())
	}
	if strings.Contains(s.g.Stderr(), "outside the generation") {
		t.Errorf("the server's READY=1 was taken for a foreign one:\n%s", s.g.Stderr())
	}
}
