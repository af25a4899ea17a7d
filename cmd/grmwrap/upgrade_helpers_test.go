package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/load"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// hang bounds every wait of the upgrade tests. It is a guard against a
// hang, never a measurement: nothing asserts how long anything took.
const hang = 60 * time.Second

// svc is one grmwrap supervisor run through the real binary, with its own
// runtime directory.
type svc struct {
	t     *testing.T
	g     *testbin.Server
	dir   string        // --runtime-dir
	pid   int           // the supervisor
	port  int           // the managed UDP port
	first testbin.Ready // generation 1's ready line
}

// startSvc runs `grmwrap --runtime-dir DIR OPTS... -- ARGV...`, waits for
// generation 1's ready line and for the control socket.
func startSvc(t *testing.T, port int, opts []string, argv ...string) *svc {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"--runtime-dir", dir}, opts...)
	args = append(append(args, "--"), argv...)
	s := &svc{t: t, g: grmwrap(t, args...), dir: dir, port: port}
	s.pid = s.g.Cmd.Process.Pid
	s.first = s.g.Ready(t, wait)
	sock := controlPath(dir, s.pid)
	guard := time.Now().Add(hang)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if s.g.Exited() || time.Now().After(guard) {
			t.Fatalf("no control socket %s; grmwrap's log:\n%s", sock, s.g.Stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// cliResult is one finished grmwrap subcommand.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// runCLI runs the grmwrap binary with args to completion.
func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	return finish(t, startCLI(t, args...))
}

// runningCLI is a grmwrap subcommand that runs in the background.
type runningCLI struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
}

func startCLI(t *testing.T, args ...string) *runningCLI {
	t.Helper()
	r := &runningCLI{cmd: exec.Command(testbin.Grmwrap(t), args...), done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	r.cmd.WaitDelay = 5 * time.Second
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

func finish(t *testing.T, r *runningCLI) cliResult {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(hang):
		_ = r.cmd.Process.Kill()
		<-r.done
		t.Fatalf("grmwrap %s: no exit within %v (hang guard)", strings.Join(r.cmd.Args[1:], " "), hang)
	}
	return cliResult{code: r.cmd.ProcessState.ExitCode(), stdout: r.stdout.String(), stderr: r.stderr.String()}
}

// upgradeArgs builds `upgrade --runtime-dir DIR OPTS... PID [-- ARGV...]`.
func (s *svc) upgradeArgs(pid int, opts []string, argv []string) []string {
	args := append([]string{"upgrade", "--runtime-dir", s.dir}, opts...)
	args = append(args, strconv.Itoa(pid))
	if len(argv) > 0 {
		args = append(append(args, "--"), argv...)
	}
	return args
}

// upgrade runs `grmwrap upgrade` against the supervisor.
func (s *svc) upgrade(opts []string, argv ...string) cliResult {
	s.t.Helper()
	return runCLI(s.t, s.upgradeArgs(s.pid, opts, argv)...)
}

// mustUpgrade upgrades and checks exit 0 and the one line that names the
// new generation.
func (s *svc) mustUpgrade(want uint32, argv ...string) {
	s.t.Helper()
	r := s.upgrade(nil, argv...)
	if r.code != 0 || r.stdout != fmt.Sprintf("generation %d working\n", want) {
		s.t.Fatalf("upgrade to generation %d: %v; grmwrap's log:\n%s", want, r, s.g.Stderr())
	}
}

// statusRaw runs `grmwrap status --json PID` and returns its output.
func (s *svc) statusRaw() []byte {
	s.t.Helper()
	r := runCLI(s.t, "status", "--runtime-dir", s.dir, "--json", strconv.Itoa(s.pid))
	if r.code != 0 {
		s.t.Fatalf("status: %v", r)
	}
	return []byte(r.stdout)
}

// status decodes `grmwrap status --json PID`.
func (s *svc) status() Status {
	s.t.Helper()
	raw := s.statusRaw()
	var st Status
	if err := json.Unmarshal(raw, &st); err != nil {
		s.t.Fatalf("status --json: %v\n%s", err, raw)
	}
	return st
}

// genOf returns generation n in st, failing the test if it is missing.
func genOf(t *testing.T, st Status, n uint32) generations.GenerationStatus {
	t.Helper()
	for _, g := range st.Generations {
		if g.Generation == n {
			return g
		}
	}
	t.Fatalf("generation %d not in status: %+v", n, st)
	return generations.GenerationStatus{}
}

// ended reports whether a generation's process is over.
func ended(state generations.State) bool {
	return state == generations.StateExited || state == generations.StateFailed
}

// live lists the generations whose process still runs, by status.
func live(st Status) []uint32 {
	var out []uint32
	for _, g := range st.Generations {
		if !ended(g.State) {
			out = append(out, g.Generation)
		}
	}
	return out
}

// waitStatus polls status until ok accepts it.
func (s *svc) waitStatus(what string, ok func(Status) bool) Status {
	s.t.Helper()
	guard := time.Now().Add(hang)
	for {
		st := s.status()
		if ok(st) {
			return st
		}
		if time.Now().After(guard) {
			s.t.Fatalf("status never showed %s (hang guard %v); last: %+v", what, hang, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGen waits until generation n is in one of states.
func (s *svc) waitGen(n uint32, states ...generations.State) Status {
	s.t.Helper()
	return s.waitStatus(fmt.Sprintf("generation %d %v", n, states), func(st Status) bool {
		for _, g := range st.Generations {
			if g.Generation == n {
				return slices.Contains(states, g.State)
			}
		}
		return false
	})
}

// instancePID returns the pid grmwrap logged when it started generation
// gen: unlike status, the log names it also for an instance that failed
// before anyone could ask.
func (s *svc) instancePID(gen uint32) int {
	s.t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`msg="instance started" generation=%d pid=(\d+)`, gen))
	var pid int
	settle(s.t, fmt.Sprintf("generation %d was never logged as started", gen), func() (bool, string) {
		m := re.FindStringSubmatch(s.g.Stderr())
		if m == nil {
			return false, s.g.Stderr()
		}
		pid, _ = strconv.Atoi(m[1])
		return true, ""
	})
	return pid
}

// track adds the pids of st's live generations to gens (pid -> generation).
func track(gens map[string]uint32, st Status) {
	for _, g := range st.Generations {
		if !ended(g.State) && g.PID > 0 {
			gens[strconv.Itoa(g.PID)] = g.Generation
		}
	}
}

// loadRun is one load.Run in a goroutine.
type loadRun struct {
	cfg  load.Config
	done chan struct{}
	res  *load.Result
	err  error
}

func startLoad(cfg load.Config) *loadRun {
	l := &loadRun{cfg: cfg, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.res, l.err = load.Run(context.Background(), cfg)
	}()
	return l
}

// udpDrops describes how the UDP drop counters moved since before (nil:
// since the namespace was made): where
// a loss happened (RcvbufErrors: a full receive queue, of a server or of
// the load's own sockets; NoPorts: no socket at all).
func udpDrops(before map[string]int64) string {
	now := load.UDPCounters()
	var parts []string
	for _, k := range []string{"InErrors", "RcvbufErrors", "NoPorts", "MemErrors", "InCsumErrors"} {
		parts = append(parts, fmt.Sprintf("%s +%d", k, now[k]-before[k]))
	}
	return strings.Join(parts, ", ")
}

// startLoadOnCPU runs cfg with its sender pinned to one CPU: on loopback
// a datagram is received on the CPU that sent it, as a NIC's receive
// queues spread flows over CPUs.
func startLoadOnCPU(t *testing.T, cfg load.Config, cpu int) *loadRun {
	t.Helper()
	l := &loadRun{cfg: cfg, done: make(chan struct{})}
	pinned := make(chan error, 1)
	go func() {
		defer close(l.done)
		// The thread stays locked (and pinned) until the goroutine ends,
		// then the runtime discards it.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			pinned <- err
			return
		}
		pinned <- nil
		l.res, l.err = load.Run(context.Background(), cfg)
	}()
	if err := <-pinned; err != nil {
		t.Fatalf("pin the load to CPU %d: %v", cpu, err)
	}
	return l
}

// merge joins the results of runs over distinct flows.
func merge(rs ...*load.Result) *load.Result {
	out := &load.Result{By: make(map[string]int)}
	for _, r := range rs {
		out.Sent += r.Sent
		out.Answered += r.Answered
		out.Lost += r.Lost
		out.Dups += r.Dups
		for w, n := range r.By {
			out.By[w] += n
		}
		for _, f := range r.Flows {
			f.Flow = len(out.Flows)
			out.Flows = append(out.Flows, f)
		}
		out.Elapsed = r.Elapsed
	}
	return out
}

// wait returns the result of the run; it sent everything it should have.
func (l *loadRun) wait(t *testing.T) *load.Result {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(l.cfg.Duration + l.cfg.Grace + hang):
		t.Fatal("load run did not end (hang guard)")
	}
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	if want := int(l.cfg.Rate * l.cfg.Duration.Seconds()); l.res.Sent != want {
		t.Fatalf("load sent %d datagrams, want %d", l.res.Sent, want)
	}
	return l.res
}

// noLoss fails the test unless every datagram of r was answered exactly
// once.
func noLoss(t *testing.T, what string, r *load.Result) {
	t.Helper()
	t.Logf("%s: sent %d answered %d lost %d (dropped at the load's own sockets %d) duplicates %d by %v in %s; UDP drops in this test's namespace so far: %s",
		what, r.Sent, r.Answered, r.Lost, r.RecvDrops, r.Dups, r.By, r.Elapsed, udpDrops(nil))
	if r.Lost == 0 && r.Dups == 0 && r.Answered == r.Sent {
		return
	}
	var bad []string
	for _, f := range r.Flows {
		if f.Lost > 0 || f.Dups > 0 {
			bad = append(bad, fmt.Sprintf("flow %d (%s): sent %d lost %d dups %d order %v", f.Flow, f.Local, f.Sent, f.Lost, f.Dups, f.Order))
		}
	}
	t.Errorf("%s: %d of %d datagrams lost, %d duplicates, want none:\n%s", what, r.Lost, r.Sent, r.Dups, strings.Join(bad, "\n"))
}

// orders counts the flows of r by their order of answering instances.
func orders(r *load.Result) map[string]int {
	out := make(map[string]int)
	for _, f := range r.Flows {
		out[strings.Join(f.Order, " ")]++
	}
	return out
}

// fdTable is a snapshot of a process's open files.
type fdTable struct {
	links   []string // sorted "fd -> target"
	sockets int
}

func fdsOf(t *testing.T, pid int) fdTable {
	t.Helper()
	var ft fdTable
	for fd, link := range serverFDs(t, pid) {
		ft.links = append(ft.links, fmt.Sprintf("%d -> %s", fd, link))
		if strings.HasPrefix(link, "socket:") {
			ft.sockets++
		}
	}
	slices.Sort(ft.links)
	return ft
}

// kinds counts a table's files by kind (socket, anon_inode:[pidfd], ...),
// which, unlike fd numbers and inodes, compares across time.
func (ft fdTable) kinds() map[string]int {
	out := make(map[string]int)
	for _, l := range ft.links {
		_, target, _ := strings.Cut(l, " -> ")
		if i := strings.IndexByte(target, ':'); i > 0 && !strings.HasPrefix(target, "anon_inode:") {
			target = target[:i]
		}
		if strings.HasPrefix(target, "/") {
			target = "file " + target
		}
		out[target]++
	}
	return out
}

// procGone reports whether no process (not even a zombie) has pid.
func procGone(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return os.IsNotExist(err)
}

// waitGone waits until pid no longer exists at all (reaped).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	guard := time.Now().Add(hang)
	for !procGone(pid) {
		if time.Now().After(guard) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			t.Fatalf("process %d still exists (hang guard): %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// zombiesOf lists the zombie children of pid.
func zombiesOf(t *testing.T, pid int) []proc {
	t.Helper()
	var out []proc
	for _, c := range children(t, pid) {
		if c.state == "Z" {
			out = append(out, c)
		}
	}
	return out
}

// settleFor bounds the wait for a state that follows at once from what
// the test waited for (a reaped child, a closed connection).
const settleFor = 5 * time.Second

// settle polls f until it reports true, and fails the test with what
// describes the last state if it never does.
func settle(t *testing.T, what string, f func() (bool, string)) {
	t.Helper()
	guard := time.Now().Add(settleFor)
	for {
		ok, state := f()
		if ok {
			return
		}
		if time.Now().After(guard) {
			t.Fatalf("%s (waited %v): %s", what, settleFor, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// oneLineWith checks that s is exactly one line and contains each of want.
func oneLineWith(t *testing.T, what, s string, want ...string) {
	t.Helper()
	s = strings.TrimSuffix(s, "\n")
	if s == "" || strings.Contains(s, "\n") {
		t.Errorf("%s: want one line, got %q", what, s)
	}
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s: %q does not contain %q", what, s, w)
		}
	}
}
