package main

import (
	"fmt"
	"net"
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

// waitStderr waits until the server's stderr (grmwrap's log) contains
// want: it reaches the test through a pipe, after the reply that caused it.
func waitStderr(t *testing.T, g *testbin.Server, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(g.Stderr(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never logged:\n%s", want, g.Stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// TestExitStatus: grmwrap exits with the server's status, 128+N when signal
// N killed it; it forwards signals but never SIGURG.
func TestExitStatus(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.EchoC(t)
	t.Run("exit code", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		g := grmwrap(t, "--", echo, strconv.Itoa(port))
		r := g.Ready(t, wait)
		testbin.Echo(t, addr(port), "exit 7", wait)
		if code := g.Wait(t, wait); code != 7 {
			t.Fatalf("grmwrap exited %d, want 7", code)
		}
		_ = r
	})
	t.Run("killed by signal", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		g := grmwrap(t, "--", echo, strconv.Itoa(port))
		r := g.Ready(t, wait)
		if err := syscall.Kill(r.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code := g.Wait(t, wait); code != 128+9 {
			t.Fatalf("grmwrap exited %d, want 137", code)
		}
	})
	t.Run("forwarded signals", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		g := grmwrap(t, "--", echo, strconv.Itoa(port))
		g.Ready(t, wait)
		// SIGURG first: if it were forwarded, the server would print
		// "signal 23" before the SIGUSR1 and SIGHUP lines.
		for _, sig := range []syscall.Signal{syscall.SIGURG, syscall.SIGUSR1, syscall.SIGHUP} {
			if err := g.Cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, want := range []string{"signal 10", "signal 1"} {
			if l := g.Line(t, wait); l != want {
				t.Fatalf("server said %q, want %q (SIGURG must not be forwarded)", l, want)
			}
		}
		if err := g.Cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if l := g.Line(t, wait); l != "signal 2" {
			t.Fatalf("server said %q after SIGINT", l)
		}
		if code := g.Wait(t, wait); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})
}

// TestReapsOrphans: a process the server leaves behind is re-parented to
// grmwrap (child subreaper) and reaped when it exits: no zombie remains.
func TestReapsOrphans(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	g := grmwrap(t, "--", "sh", "-c", `(sleep 0.3 &) ; exec "$0" "$1"`, testbin.EchoC(t), strconv.Itoa(port))
	g.Ready(t, wait)
	gpid := g.Cmd.Process.Pid
	// The orphaned sleep becomes grmwrap's child, then exits.
	sawOrphan := false
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		kids := children(t, gpid)
		zombies := 0
		for _, k := range kids {
			if k.state == "Z" {
				zombies++
			}
			if k.comm == "sleep" {
				sawOrphan = true
			}
		}
		if sawOrphan && zombies == 0 && len(kids) == 1 {
			return // only the server is left; the orphan was reaped
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("orphan seen=%v; children of grmwrap now: %+v", sawOrphan, children(t, gpid))
}

type proc struct {
	pid   int
	comm  string
	state string
}

// children lists the processes whose parent is ppid.
func children(t *testing.T, ppid int) []proc {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < 0 {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 2 {
			continue
		}
		if p, _ := strconv.Atoi(f[1]); p == ppid {
			out = append(out, proc{pid: pid, comm: s[open+1 : close], state: f[0]})
		}
	}
	return out
}

// TestSupervisorKilled: with the supervisor gone (SIGKILL) the server keeps
// serving, and its later trapped binds fail with ENOSYS instead of hanging.
func TestSupervisorKilled(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	g := grmwrap(t, "--", testbin.EchoC(t), strconv.Itoa(port))
	r := g.Ready(t, wait)
	// A bind while the supervisor lives is managed.
	other := testbin.FreeUDPPort(t)
	if got := testbin.Echo(t, addr(port), fmt.Sprintf("bind %d", other), wait); got != fmt.Sprintf("%d bind ret=0 errno=0", r.PID) {
		t.Fatalf("bind with the supervisor alive: %q", got)
	}
	if err := g.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	g.Wait(t, wait)
	defer syscall.Kill(r.PID, syscall.SIGKILL)
	if got := testbin.Echo(t, addr(port), "still there", wait); got != fmt.Sprintf("%d still there", r.PID) {
		t.Fatalf("server after supervisor death: %q", got)
	}
	third := testbin.FreeUDPPort(t)
	start := time.Now()
	got := testbin.Echo(t, addr(port), fmt.Sprintf("bind %d", third), wait)
	if want := fmt.Sprintf("%d bind ret=-1 errno=%d", r.PID, syscall.ENOSYS); got != want {
		t.Fatalf("bind after supervisor death: %q, want %q", got, want)
	}
	t.Logf("orphaned bind answered in %v", time.Since(start))
}

// TestSetsockoptOnManagedSocket: on a managed socket, SO_REUSEPORT stays on
// whatever the server asks, and attaching its own reuseport program
// succeeds without effect. On an unmanaged socket both act as usual.
func TestSetsockoptOnManagedSocket(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	g := grmwrap(t, "--", testbin.EchoC(t), strconv.Itoa(port))
	r := g.Ready(t, wait)
	for payload, want := range map[string]string{
		"reuseport 0": "reuseport ret=0 errno=0 now=1",
		"attach-cbpf": "attach ret=0 errno=0",
	} {
		if got := testbin.Echo(t, addr(port), payload, wait); got != fmt.Sprintf("%d %s", r.PID, want) {
			t.Fatalf("%s on a managed socket: %q, want %q", payload, got, want)
		}
	}
	waitStderr(t, g, "reuseport program is ignored")
	// Control: on unmanaged sockets (--listen names another port) the
	// kernel acts: SO_REUSEPORT goes to 0, and attaching a reuseport program
	// to a socket bound without SO_REUSEPORT fails with EINVAL.
	port2 := testbin.FreeUDPPort(t)
	g2 := grmwrap(t, "--listen", ":1", "--", testbin.EchoC(t), "--reuseport", strconv.Itoa(port2))
	r2 := g2.Ready(t, wait)
	if got := testbin.Echo(t, addr(port2), "reuseport 0", wait); got != fmt.Sprintf("%d reuseport ret=0 errno=0 now=0", r2.PID) {
		t.Fatalf("unmanaged socket: %q", got)
	}
	port3 := testbin.FreeUDPPort(t)
	g3 := grmwrap(t, "--listen", ":1", "--", testbin.EchoC(t), strconv.Itoa(port3))
	r3 := g3.Ready(t, wait)
	if got := testbin.Echo(t, addr(port3), "attach-cbpf", wait); got != fmt.Sprintf("%d attach ret=-1 errno=%d", r3.PID, syscall.EINVAL) {
		t.Fatalf("unmanaged attach: %q", got)
	}
}

// TestSignalStormBindThroughCLI: the server takes SIGALRM every millisecond
// while binding; the bind succeeds, and grmwrap binds it exactly once.
func TestSignalStormBindThroughCLI(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	g := grmwrap(t, "--", testbin.AlarmBind(t), strconv.Itoa(port))
	l := g.Line(t, wait)
	var ret, errno, alarms, reuse int
	if _, err := fmt.Sscanf(l, "bind ret=%d errno=%d alarms=%d reuseport=%d", &ret, &errno, &alarms, &reuse); err != nil {
		t.Fatalf("%q: %v", l, err)
	}
	if ret != 0 || errno != 0 || reuse != 1 {
		t.Fatalf("bind under signals: %q", l)
	}
	if got := testbin.Echo(t, addr(port), "x", wait); !strings.HasSuffix(got, " x") {
		t.Fatalf("echo %q", got)
	}
	// Stop grmwrap so that its whole log has arrived before counting.
	if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g.Wait(t, wait)
	if n := strings.Count(g.Stderr(), `msg="managed bind"`); n != 1 {
		t.Fatalf("%d managed binds logged, want exactly 1:\n%s", n, g.Stderr())
	}
}

// TestServerPriority: the init stage runs SCHED_IDLE so that a starting
// generation yields the CPU to the serving ones, but the server itself
// gets the supervisor's policy and nice value: under `nice -n 5 grmwrap`
// it runs SCHED_OTHER (0) at nice 5.
func TestServerPriority(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	nice := lookPath(t, "nice")
	g := testbin.Start(t, exec.Command(nice, "-n", "5", testbin.Grmwrap(t), "--", "sh", "-c",
		`awk '{print "nice", $19, "policy", $41}' /proc/self/stat`))
	if l := g.Line(t, wait); l != "nice 5 policy 0" {
		t.Fatalf("server said %q, want \"nice 5 policy 0\" (the supervisor's)", l)
	}
	if code := g.Wait(t, wait); code != 0 {
		t.Fatalf("grmwrap exited %d", code)
	}
}
