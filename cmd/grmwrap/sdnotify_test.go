package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// sdNote is one datagram that reached the service manager.
type sdNote struct {
	lines []string
	pid   int32 // the sender, from SCM_CREDENTIALS, as systemd sees it
	at    time.Time
}

func (n sdNote) has(line string) bool {
	for _, l := range n.lines {
		if l == line {
			return true
		}
	}
	return false
}

// value returns the value of KEY= in n, and whether it is there.
func (n sdNote) value(key string) (string, bool) {
	for _, l := range n.lines {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// statusOnly: a STATUS= refresh, which may come at any time.
func (n sdNote) statusOnly() bool {
	for _, l := range n.lines {
		if !strings.HasPrefix(l, "STATUS=") {
			return false
		}
	}
	return true
}

func (n sdNote) String() string { return strings.Join(n.lines, " | ") }

// serviceManager plays systemd's side of NOTIFY_SOCKET: a unixgram socket
// with SO_PASSCRED, so that every datagram carries its sender's pid.
type serviceManager struct {
	path  string
	conn  *net.UnixConn
	notes chan sdNote

	mu  sync.Mutex
	all []sdNote
}

func newServiceManager(t *testing.T) *serviceManager {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	m := &serviceManager{path: path, conn: conn, notes: make(chan sdNote, 256)}
	t.Cleanup(func() { conn.Close() })
	go m.read()
	return m
}

func (m *serviceManager) read() {
	defer close(m.notes)
	buf := make([]byte, 8192)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := m.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed
		}
		note := sdNote{lines: strings.Split(strings.TrimRight(string(buf[:n]), "\n"), "\n"), pid: -1, at: time.Now()}
		if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, c := range cmsgs {
				if cred, err := unix.ParseUnixCredentials(&c); err == nil {
					note.pid = cred.Pid
				}
			}
		}
		m.mu.Lock()
		m.all = append(m.all, note)
		m.mu.Unlock()
		m.notes <- note
	}
}

// next returns the next datagram that is not a mere STATUS= refresh.
func (m *serviceManager) next(t *testing.T, what string) sdNote {
	t.Helper()
	deadline := time.After(wait + 5*time.Second)
	for {
		select {
		case n, ok := <-m.notes:
			if !ok {
				t.Fatalf("%s: the notify socket was closed", what)
			}
			if n.statusOnly() {
				continue
			}
			return n
		case <-deadline:
			t.Fatalf("%s: no notification; so far:\n%s", what, m.log())
		}
	}
}

// quiet fails the test if anything but STATUS= refreshes arrives within d.
func (m *serviceManager) quiet(t *testing.T, d time.Duration, after string) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n, ok := <-m.notes:
			if !ok {
				return
			}
			if !n.statusOnly() {
				t.Fatalf("%q after %s; all:\n%s", n, after, m.log())
			}
		case <-deadline:
			return
		}
	}
}

// log lists everything received, one datagram a line.
func (m *serviceManager) log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, n := range m.all {
		fmt.Fprintf(&b, "  pid %d: %s\n", n.pid, n)
	}
	return b.String()
}

// sequence is what was received without the STATUS= refreshes: READY,
// RELOADING, STOPPING or the raw datagram.
func (m *serviceManager) sequence() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var seq []string
	for _, n := range m.all {
		switch {
		case n.statusOnly():
		case n.has("READY=1"):
			seq = append(seq, "READY")
		case n.has("RELOADING=1"):
			seq = append(seq, "RELOADING")
		case n.has("STOPPING=1"):
			seq = append(seq, "STOPPING")
		default:
			seq = append(seq, n.String())
		}
	}
	return seq
}

// senders are the pids that sent to the manager.
func (m *serviceManager) senders() map[int32]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[int32]int)
	for _, n := range m.all {
		out[n.pid]++
	}
	return out
}

// monotonicNow reads CLOCK_MONOTONIC in microseconds, the clock of
// MONOTONIC_USEC.
func monotonicNow(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// startUnderManager starts grmwrap with NOTIFY_SOCKET pointing at m.
func startUnderManager(t *testing.T, m *serviceManager, args ...string) *testbin.Server {
	t.Helper()
	cmd := exec.Command(testbin.Grmwrap(t), args...)
	cmd.Env = append(withoutEnv(os.Environ(), "NOTIFY_SOCKET"), "NOTIFY_SOCKET="+m.path)
	return testbin.Start(t, cmd)
}

// environ reads the environment of process pid.
func environ(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := make(map[string]string)
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

// sdUpgrade runs `grmwrap upgrade` and returns its exit status, output and
// duration.
func sdUpgrade(t *testing.T, args ...string) (int, string, time.Duration) {
	t.Helper()
	cmd := exec.Command(testbin.Grmwrap(t), append([]string{"upgrade"}, args...)...)
	cmd.Env = withoutEnv(os.Environ(), "NOTIFY_SOCKET")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out), took
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out), took
	}
	t.Fatalf("grmwrap upgrade: %v", err)
	return 0, "", 0
}

// nextReady skips the servers' other stdout lines (a stopped generation
// says "signal 15") up to the next ready line.
func nextReady(t *testing.T, g *testbin.Server) testbin.Ready {
	t.Helper()
	for {
		l := g.Line(t, wait)
		if strings.HasPrefix(l, "ready ") {
			r, err := testbin.ParseReady(l)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
}

// wantReady checks a READY=1 whose STATUS= names gen as the working
// generation, with pid.
func wantReady(t *testing.T, n sdNote, gen uint32, pid int, what string) {
	t.Helper()
	st, ok := n.value("STATUS")
	if !n.has("READY=1") || !ok {
		t.Fatalf("%s: got %q, want READY=1 with STATUS=", what, n)
	}
	for _, want := range []string{
		fmt.Sprintf("working generation %d;", gen),
		fmt.Sprintf("gen %d working (pid %d,", gen, pid),
	} {
		if !strings.Contains(st, want) {
			t.Fatalf("%s: STATUS=%q does not say %q", what, st, want)
		}
	}
}

// wantReloading checks RELOADING=1 with a MONOTONIC_USEC= taken while the
// upgrade ran: after before, before after (both CLOCK_MONOTONIC, µs).
func wantReloading(t *testing.T, n sdNote, before, after int64, what string) {
	t.Helper()
	v, ok := n.value("MONOTONIC_USEC")
	if !n.has("RELOADING=1") || !ok {
		t.Fatalf("%s: got %q, want RELOADING=1 with MONOTONIC_USEC=", what, n)
	}
	usec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("%s: MONOTONIC_USEC=%q: %v", what, v, err)
	}
	if usec < before || usec > after {
		t.Fatalf("%s: MONOTONIC_USEC=%d not within the upgrade [%d, %d]", what, usec, before, after)
	}
}

// TestSystemdNotify plays systemd: grmwrap runs with NOTIFY_SOCKET set
// and the test checks the exact notification sequence across two
// upgrades and a stop, that every message comes from grmwrap's own pid
// (NotifyAccess=main) and that no instance sees the manager's socket.
func TestSystemdNotify(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	t.Run("ready bound", func(t *testing.T) {
		m := newServiceManager(t)
		runtime := t.TempDir()
		port := testbin.FreeUDPPort(t)
		g := startUnderManager(t, m, "--runtime-dir", runtime, "--", testbin.EchoC(t), strconv.Itoa(port))
		gpid := g.Cmd.Process.Pid
		r := g.Ready(t, wait)
		wantReady(t, m.next(t, "start"), 1, r.PID, "start")
		testbin.Echo(t, addr(port), "hello", wait)

		pids := []int{r.PID}
		for gen := uint32(2); gen <= 3; gen++ {
			before := monotonicNow(t)
			code, out, _ := sdUpgrade(t, "--runtime-dir", runtime, strconv.Itoa(gpid))
			after := monotonicNow(t)
			if code != 0 || !strings.Contains(out, fmt.Sprintf("generation %d working", gen)) {
				t.Fatalf("upgrade to %d: exit %d: %s", gen, code, out)
			}
			r := nextReady(t, g)
			pids = append(pids, r.PID)
			what := fmt.Sprintf("upgrade to %d", gen)
			wantReloading(t, m.next(t, what), before, after, what)
			wantReady(t, m.next(t, what), gen, r.PID, what)
			if got := testbin.Echo(t, addr(port), "new flow", wait); !strings.HasPrefix(got, strconv.Itoa(r.PID)+" ") {
				t.Fatalf("a new flow after upgrade %d was answered by %q, want pid %d", gen, got, r.PID)
			}
		}
		// No instance, old or new, sees the manager's socket.
		for i, pid := range pids {
			if procGoneSD(pid) {
				continue // a drained generation may be gone already
			}
			env := environ(t, pid)
			if v, ok := env["NOTIFY_SOCKET"]; ok {
				t.Fatalf("generation %d (pid %d) sees NOTIFY_SOCKET=%s", i+1, pid, v)
			}
			if env["GRMWRAP_GENERATION"] != strconv.Itoa(i+1) {
				t.Fatalf("generation %d (pid %d): GRMWRAP_GENERATION=%q", i+1, pid, env["GRMWRAP_GENERATION"])
			}
		}

		if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if n := m.next(t, "stop"); n.String() != "STOPPING=1" {
			t.Fatalf("stop: got %q, want STOPPING=1", n)
		}
		if code := g.Wait(t, wait); code != 0 {
			t.Fatalf("grmwrap exited %d after SIGTERM, want 0", code)
		}
		m.quiet(t, 300*time.Millisecond, "STOPPING=1")

		want := []string{"READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"}
		if got := m.sequence(); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("sequence %v, want %v; all:\n%s", got, want, m.log())
		}
		if s := m.senders(); len(s) != 1 || s[int32(gpid)] == 0 {
			t.Fatalf("senders %v, want only grmwrap (pid %d); all:\n%s", s, gpid, m.log())
		}
		t.Logf("service manager received:\n%s", m.log())
	})

	t.Run("ready notify", func(t *testing.T) {
		m := newServiceManager(t)
		runtime := t.TempDir()
		port := testbin.FreeUDPPort(t)
		srv := filepath.Join(t.TempDir(), "notify-server.py")
		if err := os.WriteFile(srv, []byte(notifyServer), 0o644); err != nil {
			t.Fatal(err)
		}
		py := pythonExecutable(t)
		const readyTimeout = 4 * time.Second
		g := startUnderManager(t, m, "--runtime-dir", runtime, "--ready", "notify",
			"--ready-timeout", readyTimeout.String(), "--", py, srv, strconv.Itoa(port), "0")
		gpid := g.Cmd.Process.Pid
		up := nextUp(t, g)
		wantReady(t, m.next(t, "start"), 1, up.pid, "start")
		// The instance's NOTIFY_SOCKET is its own, in grmwrap's runtime
		// directory, never the manager's.
		wantSock := filepath.Join(runtime, fmt.Sprintf("notify-%d", gpid), "gen-1.sock")
		if up.sock != wantSock {
			t.Fatalf("generation 1 NOTIFY_SOCKET=%q, want %q", up.sock, wantSock)
		}
		if got := environ(t, up.pid)["NOTIFY_SOCKET"]; got != wantSock {
			t.Fatalf("/proc/%d/environ: NOTIFY_SOCKET=%q, want %q", up.pid, got, wantSock)
		}

		// Generation 2 binds at once and says READY=1 a second later: the
		// upgrade waits for it.
		const delay = time.Second
		before := monotonicNow(t)
		code, out, took := sdUpgrade(t, "--runtime-dir", runtime, strconv.Itoa(gpid),
			"--", py, srv, strconv.Itoa(port), strconv.FormatFloat(delay.Seconds(), 'f', -1, 64))
		after := monotonicNow(t)
		if code != 0 || !strings.Contains(out, "generation 2 working") {
			t.Fatalf("upgrade to 2: exit %d: %s", code, out)
		}
		if took < delay {
			t.Fatalf("upgrade to 2 took %v, less than the %v before the instance's READY=1", took, delay)
		}
		up2 := nextUp(t, g)
		wantReloading(t, m.next(t, "upgrade to 2"), before, after, "upgrade to 2")
		wantReady(t, m.next(t, "upgrade to 2"), 2, up2.pid, "upgrade to 2")

		// Generation 3 never says READY=1: rolled back after --ready-timeout.
		before = monotonicNow(t)
		code, out, took = sdUpgrade(t, "--runtime-dir", runtime, strconv.Itoa(gpid),
			"--", py, srv, strconv.Itoa(port), "never")
		after = monotonicNow(t)
		if code != 1 || !strings.Contains(out, "READY=1") {
			t.Fatalf("upgrade to 3: exit %d, want 1 (no READY=1): %s", code, out)
		}
		if took < readyTimeout-100*time.Millisecond || took > readyTimeout+wait {
			t.Fatalf("upgrade to 3 failed after %v, want about --ready-timeout %v", took, readyTimeout)
		}
		wantReloading(t, m.next(t, "failed upgrade"), before, after, "failed upgrade")
		n := m.next(t, "failed upgrade")
		wantReady(t, n, 2, up2.pid, "failed upgrade")
		if st, _ := n.value("STATUS"); !strings.Contains(st, "last upgrade failed: ") {
			t.Fatalf("failed upgrade: STATUS=%q does not say it failed", st)
		}

		if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if n := m.next(t, "stop"); n.String() != "STOPPING=1" {
			t.Fatalf("stop: got %q, want STOPPING=1", n)
		}
		if code := g.Wait(t, wait); code != 0 {
			t.Fatalf("grmwrap exited %d after SIGTERM, want 0", code)
		}
		m.quiet(t, 300*time.Millisecond, "STOPPING=1")

		// Three instances sent READY=1 (or would have): the manager heard
		// three READY=1, each grmwrap's own, and none of the instances'
		// STATUS= lines.
		want := []string{"READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"}
		if got := m.sequence(); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("sequence %v, want %v; all:\n%s", got, want, m.log())
		}
		if s := m.senders(); len(s) != 1 || s[int32(gpid)] == 0 {
			t.Fatalf("senders %v, want only grmwrap (pid %d); all:\n%s", s, gpid, m.log())
		}
		if l := m.log(); strings.Contains(l, "instance ready") {
			t.Fatalf("an instance's notification reached the manager:\n%s", l)
		}
		t.Logf("service manager received:\n%s", m.log())
	})
}

// notifyServer is a UDP echo server that speaks sd_notify: it binds,
// then (after DELAY seconds, or never) sends READY=1 to $NOTIFY_SOCKET,
// and prints "up pid=<pid> gen=<n> sock=<NOTIFY_SOCKET>".
//
// Usage: notify-server.py PORT DELAY|never
const notifyServer = `import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port, delay = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
path = os.environ.get("NOTIFY_SOCKET", "")
if delay != "never":
    time.sleep(float(delay))
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1\nSTATUS=instance ready", "\0" + path[1:] if path.startswith("@") else path)
print("up pid=%d gen=%s sock=%s" % (os.getpid(), os.environ.get("GRMWRAP_GENERATION"), path), flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(b"%d " % os.getpid() + data, peer)
`

// pythonExecutable is the interpreter itself, not a wrapper in PATH (a
// pyenv shim takes a while to start, and the instances must be ready
// within --ready-timeout).
func pythonExecutable(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	return strings.TrimSpace(string(out))
}

type upLine struct {
	pid  int
	gen  int
	sock string
}

// nextUp reads the next "up" line of notifyServer.
func nextUp(t *testing.T, g *testbin.Server) upLine {
	t.Helper()
	for {
		l := g.Line(t, wait+5*time.Second)
		if !strings.HasPrefix(l, "up ") {
			continue
		}
		var u upLine
		for _, f := range strings.Fields(l)[1:] {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "pid":
				u.pid, _ = strconv.Atoi(v)
			case "gen":
				u.gen, _ = strconv.Atoi(v)
			case "sock":
				u.sock = v
			}
		}
		if u.pid == 0 {
			t.Fatalf("bad up line %q", l)
		}
		return u
	}
}

// procGoneSD reports whether pid has exited (or is a zombie).
func procGoneSD(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}

// TestSystemdOverlappingUpgrades: upgrade requests that overlap (the
// manager refuses all but one) make one RELOADING=1 and one READY=1, the
// READY=1 after the upgrade that ran, with its outcome; nothing but
// STATUS= follows STOPPING=1.
func TestSystemdOverlappingUpgrades(t *testing.T) {
	m := newServiceManager(t)
	t.Setenv("NOTIFY_SOCKET", m.path)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr := generations.NewManager(log, generations.Config{}, nil, nil, nil)
	sd := newSDNotifier(log, mgr)
	if sd == nil {
		t.Fatal("no notifier with NOTIFY_SOCKET set")
	}
	failed := errors.New("generation 2 exited with status 1")

	sd.ready(nil)
	sd.upgradeStarted() // runs
	sd.upgradeStarted() // refused
	sd.upgradeDone(0, generations.ErrUpgradeInProgress, 0)
	sd.upgradeDone(0, failed, time.Second)
	// The refusal may also be reported after the upgrade that ran.
	sd.upgradeStarted()
	sd.upgradeStarted()
	sd.upgradeDone(3, nil, time.Second)
	sd.upgradeDone(0, generations.ErrUpgradeInProgress, 0)
	sd.stopping()
	sd.upgradeStarted()
	sd.upgradeDone(0, generations.ErrNotRunning, 0)
	sd.ready(nil)
	sd.stopping()
	sd.send(sd.status())

	want := []string{"READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"}
	deadline := time.Now().Add(wait)
	for len(m.sequence()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // anything more would show now
	if got := m.sequence(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("sequence %v, want %v; all:\n%s", got, want, m.log())
	}
	m.mu.Lock()
	var readies []sdNote
	for _, n := range m.all {
		if n.has("READY=1") {
			readies = append(readies, n)
		}
	}
	m.mu.Unlock()
	if st, _ := readies[1].value("STATUS"); !strings.HasSuffix(st, "last upgrade failed: "+failed.Error()) {
		t.Fatalf("READY=1 after the failed upgrade: STATUS=%q", st)
	}
	if st, _ := readies[2].value("STATUS"); strings.Contains(st, "failed") {
		t.Fatalf("READY=1 after the upgrade that worked: STATUS=%q", st)
	}
}
