package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// pinsLeft lists what is pinned under /sys/fs/bpf/grmwrap (the nstest
// child's private bpffs).
func pinsLeft(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(bpffsMount, "grmwrap"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// filesIn lists the entries of dir.
func filesIn(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestFailedStartLeavesNothing: a start that fails for an operator's
// reason after the data plane is open exits 2 with one line, and leaves no
// pinned maps and no file in the runtime directory.
func TestFailedStartLeavesNothing(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	t.Run("metrics-listen garbage", func(t *testing.T) {
		rt := t.TempDir()
		cmd := exec.Command(testbin.Grmwrap(t), "--runtime-dir", rt, "--metrics-listen", "garbage", "--",
			testbin.EchoC(t), strconv.Itoa(port))
		code, stderr := runOnce(t, cmd)
		if code != 2 {
			t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
		}
		oneLine(t, stderr, "garbage")
		if p := pinsLeft(t); len(p) != 0 {
			t.Fatalf("pinned state left after a failed start: %v", p)
		}
		if f := filesIn(t, rt); len(f) != 0 {
			t.Fatalf("files left in the runtime directory: %v", f)
		}
	})
	t.Run("runtime dir out of inodes", func(t *testing.T) {
		// A tmpfs with two inodes: its root and one more, which the notify
		// directory takes, so the control socket cannot be created.
		rt := filepath.Join(t.TempDir(), "rt")
		if err := os.Mkdir(rt, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", rt, "tmpfs", 0, "nr_inodes=2,mode=0755"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(rt, syscall.MNT_DETACH) }) // the namespace goes anyway
		cmd := exec.Command(testbin.Grmwrap(t), "--runtime-dir", rt, "--ready", "notify", "--",
			testbin.EchoC(t), strconv.Itoa(port))
		code, stderr := runOnce(t, cmd)
		if code != 2 {
			t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
		}
		oneLine(t, stderr, "no space left on device")
		if p := pinsLeft(t); len(p) != 0 {
			t.Fatalf("pinned state left after a failed start: %v", p)
		}
		if f := filesIn(t, rt); len(f) != 0 {
			t.Fatalf("files left in the runtime directory: %v", f)
		}
	})
}

// TestCleanStopsLeaveNothing: several runs in one runtime directory, each
// stopped cleanly, leave no file there (no lock files pile up) and nothing
// pinned.
func TestCleanStopsLeaveNothing(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	rt := t.TempDir()
	for i := range 3 {
		port := testbin.FreeUDPPort(t)
		g := grmwrap(t, "--runtime-dir", rt, "--", testbin.EchoC(t), strconv.Itoa(port))
		g.Ready(t, wait)
		testbin.Echo(t, addr(port), "x", wait)
		if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := g.Wait(t, wait); code != 0 {
			t.Fatalf("run %d: exit %d after SIGTERM; stderr:\n%s", i, code, g.Stderr())
		}
		if f := filesIn(t, rt); len(f) != 0 {
			t.Fatalf("run %d: files left in the runtime directory: %v", i, f)
		}
		if p := pinsLeft(t); len(p) != 0 {
			t.Fatalf("run %d: pinned state left after a clean stop: %v", i, p)
		}
	}
}

// processedBy reopens the pinned maps of state name, as the next
// supervisor would, and sums rx_processed_total over its live groups.
func processedBy(t *testing.T, name string) uint64 {
	t.Helper()
	dir := bpf.PinDir(bpffsMount, name)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("pinned state of %q: %v", name, err)
	}
	dp, err := bpf.Load(bpf.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	live, err := dp.LiveGroups()
	if err != nil {
		t.Fatal(err)
	}
	if len(live) == 0 {
		t.Fatalf("no live group in the pinned state of %q", name)
	}
	var n uint64
	for gid := range live {
		c, err := dp.Counters(gid)
		if err != nil {
			t.Fatal(err)
		}
		n += c["rx_processed_total"]
	}
	return n
}

// TestOrphanKeepsItsPins: a supervisor is SIGKILLed while its server runs;
// a new grmwrap with the same --name fails to start (its server's bind gets
// EADDRINUSE from the orphan's group) and exits without removing the pins
// the orphan's steering uses: the orphan still answers and its counters
// still move.
func TestOrphanKeepsItsPins(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	first := startSvc(t, port, []string{"--name", "svc"}, testbin.EchoC(t), strconv.Itoa(port))
	orphan := first.first.PID
	testbin.Echo(t, addr(port), "before", wait)
	if err := first.g.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.g.Wait(t, wait)
	t.Cleanup(func() { _ = syscall.Kill(orphan, syscall.SIGKILL) }) // the namespace's end kills it too
	before := processedBy(t, "svc")

	g := grmwrap(t, "--name", "svc", "--runtime-dir", t.TempDir(), "--", testbin.EchoC(t), strconv.Itoa(port))
	if l := g.Line(t, wait); !strings.HasPrefix(l, "bind-error errno=98") {
		t.Fatalf("new server said %q, want bind-error errno=98 (EADDRINUSE)", l)
	}
	g.Wait(t, wait)
	if p := pinsLeft(t); len(p) != 1 || p[0] != "svc" {
		t.Fatalf("pins after the failed start: %v, want [svc]", p)
	}
	if !strings.Contains(g.Stderr(), "steering maps kept") {
		t.Fatalf("no log line saying the pins are kept; stderr:\n%s", g.Stderr())
	}
	for i := range 20 {
		if r := testbin.Echo(t, addr(port), "after"+strconv.Itoa(i), wait); !strings.HasPrefix(r, strconv.Itoa(orphan)+" ") {
			t.Fatalf("answer %q, want one from the orphan %d", r, orphan)
		}
	}
	if after := processedBy(t, "svc"); after < before+20 {
		t.Fatalf("rx_processed_total went from %d to %d over 20 datagrams", before, after)
	}
}

// TestNameClash: a second supervisor with the same --name and another
// runtime directory is refused with one line and exit 2; the first keeps
// serving.
func TestNameClash(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	first := startSvc(t, port, []string{"--name", "dns"}, testbin.EchoC(t), strconv.Itoa(port))
	other := testbin.FreeUDPPort(t)
	cmd := exec.Command(testbin.Grmwrap(t), "--name", "dns", "--runtime-dir", t.TempDir(), "--",
		testbin.EchoC(t), strconv.Itoa(other))
	code, stderr := runOnce(t, cmd)
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
	}
	oneLine(t, stderr, `another grmwrap (pid `+strconv.Itoa(first.pid)+`) runs with state "dns": give this one --name`)
	if r := testbin.Echo(t, addr(port), "still", wait); !strings.HasPrefix(r, strconv.Itoa(first.first.PID)+" ") {
		t.Fatalf("answer %q, want one from generation 1 (pid %d)", r, first.first.PID)
	}
	first.mustUpgrade(2)
	if p := pinsLeft(t); len(p) != 1 || p[0] != "dns" {
		t.Fatalf("pins: %v, want [dns]", p)
	}
}
