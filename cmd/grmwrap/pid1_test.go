package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// TestPID1 runs grmwrap as PID 1 of a PID namespace of its own, as a
// container's entry point, with unshare(1) standing in for the container
// runtime (a new PID and mount namespace, a /proc of its own). grmwrap
// reaps every orphan of the namespace: the server's own and one left by a
// process that entered the namespace from outside (docker exec); signals
// reach it from outside the namespace and from inside (the kernel delivers
// a signal to a namespace's init only if it has a handler) and are
// forwarded; `grmwrap upgrade 1` and `grmwrap status 1` work from inside;
// SIGTERM stops the server and grmwrap exits 0.
func TestPID1(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	unshare, nsenter := lookPath(t, "unshare"), lookPath(t, "nsenter")
	gw := testbin.Grmwrap(t)
	port := testbin.FreeUDPPort(t)
	g := testbin.Start(t, exec.Command(unshare, "--pid", "--fork", "--mount-proc", "--kill-child",
		gw, "--flow-timeout", "1s", "--",
		"sh", "-c", `(sleep 1 &); exec "$0" "$1"`, testbin.EchoC(t), strconv.Itoa(port)))
	r := g.Ready(t, wait)

	// grmwrap is unshare's only child; this test sees it under another pid.
	kids := children(t, g.Cmd.Process.Pid)
	if len(kids) != 1 || kids[0].comm != "grmwrap" {
		t.Fatalf("children of unshare: %+v, want grmwrap alone", kids)
	}
	host := kids[0].pid
	if ns := nsPIDs(t, host); ns[len(ns)-1] != 1 {
		t.Fatalf("grmwrap's pids (outer to inner namespace): %v, want 1 inside", ns)
	}
	// inside runs argv in grmwrap's PID and mount namespaces, as docker
	// exec does.
	inside := func(argv ...string) (string, error) {
		args := append([]string{"--target", strconv.Itoa(host), "--pid", "--mount", "--"}, argv...)
		out, err := exec.Command(nsenter, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	// Orphans: the sleep the server's shell left behind, and one left by a
	// process that entered the namespace from outside (whose parent is not
	// a descendant of grmwrap: the kernel hands its orphans to the
	// namespace's init). Both become grmwrap's children and are reaped.
	if out, err := inside("sh", "-c", "(sleep 1 >/dev/null 2>&1 &)"); err != nil {
		t.Fatalf("orphan from outside: %v: %s", err, out)
	}
	server := serverOf(t, host, r.PID)
	orphans := map[int]bool{}
	deadline := time.Now().Add(wait)
	for {
		kids := children(t, host)
		zombies := 0
		for _, k := range kids {
			if k.state == "Z" {
				zombies++
			}
			if k.comm == "sleep" {
				orphans[k.pid] = true
			}
		}
		if len(orphans) == 2 && zombies == 0 && len(kids) == 1 && kids[0].pid == server {
			break // only the server is left; both orphans were reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphans seen %v; children of grmwrap now: %+v", orphans, kids)
		}
		time.Sleep(10 * time.Millisecond)
	}

	if got, want := testbin.Echo(t, addr(port), "hello", wait), fmt.Sprintf("%d hello", r.PID); got != want {
		t.Fatalf("echo %q, want %q", got, want)
	}

	// Signals: from the parent namespace (docker kill) and from inside
	// (kill 1 in docker exec); both are forwarded to the server.
	if err := syscall.Kill(host, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l := g.Line(t, wait); l != "signal 10" {
		t.Fatalf("after SIGUSR1 from outside the server said %q", l)
	}
	if out, err := inside("sh", "-c", "kill -HUP 1"); err != nil {
		t.Fatalf("kill -HUP 1 inside: %v: %s", err, out)
	}
	if l := g.Line(t, wait); l != "signal 1" {
		t.Fatalf("after SIGHUP from inside the server said %q", l)
	}

	// An upgrade from inside the namespace names grmwrap by its pid there.
	out, err := inside(gw, "upgrade", "1")
	if err != nil || out != "generation 2 working" {
		t.Fatalf("grmwrap upgrade 1 inside: %v: %q", err, out)
	}
	r2 := g.Ready(t, wait)
	if got, want := testbin.Echo(t, addr(port), "again", wait), fmt.Sprintf("%d again", r2.PID); got != want {
		t.Fatalf("echo after the upgrade %q, want %q", got, want)
	}
	out, err = inside(gw, "status", "1", "--json")
	if err != nil {
		t.Fatalf("grmwrap status 1 inside: %v: %s", err, out)
	}
	var st Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.PID != 1 || st.WorkingGeneration != 2 {
		t.Fatalf("status inside: pid %d, working generation %d (%v), want 1 and 2:\n%s", st.PID, st.WorkingGeneration, err, out)
	}
	// Generation 1's flow goes idle (--flow-timeout 1s): it is stopped and
	// reaped.
	if l := g.Line(t, wait); l != "signal 15" {
		t.Fatalf("generation 1 said %q, want its stop signal", l)
	}
	server2 := serverOf(t, host, r2.PID)
	deadline = time.Now().Add(wait)
	for kids := children(t, host); len(kids) != 1 || kids[0].pid != server2; kids = children(t, host) {
		if time.Now().After(deadline) {
			t.Fatalf("children of grmwrap after the drain: %+v, want generation 2 (%d) alone", kids, server2)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// docker stop: SIGTERM to PID 1 stops the service.
	if err := syscall.Kill(host, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if l := g.Line(t, wait); l != "signal 15" {
		t.Fatalf("after SIGTERM the server said %q", l)
	}
	if code := g.Wait(t, wait); code != 0 {
		t.Fatalf("grmwrap as PID 1 exited %d, want 0", code)
	}
	if err := syscall.Kill(server2, 0); err != syscall.ESRCH {
		t.Fatalf("server %d after grmwrap exited: %v", server2, err)
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s (util-linux): %v", name, err)
	}
	return p
}

// nsPIDs are the pids of process pid in each PID namespace, from this
// test's to its own (the NSpid line of its status).
func nsPIDs(t *testing.T, pid int) []int {
	t.Helper()
	ns, err := readNSpid(pid)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// readNSpid reads the NSpid line of process pid; it fails when the process
// is gone.
func readNSpid(pid int) ([]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
			var out []int
			for _, s := range strings.Fields(f) {
				n, err := strconv.Atoi(s)
				if err != nil {
					return nil, fmt.Errorf("NSpid %q: %w", l, err)
				}
				out = append(out, n)
			}
			if len(out) > 0 {
				return out, nil
			}
		}
	}
	return nil, fmt.Errorf("process %d: no NSpid line", pid)
}

// serverOf returns the pid, as this test sees it, of grmwrap's child whose
// pid in grmwrap's namespace is inner.
func serverOf(t *testing.T, grmwrap, inner int) int {
	t.Helper()
	for _, k := range children(t, grmwrap) {
		// Other children (an orphaned sleep) may exit between the listing
		// and this read; they are not the one asked for.
		ns, err := readNSpid(k.pid)
		if err == nil && slices.Equal(ns[len(ns)-1:], []int{inner}) {
			return k.pid
		}
	}
	t.Fatalf("no child of grmwrap has pid %d in its namespace: %+v", inner, children(t, grmwrap))
	return 0
}
