package bpf

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/nstest"
)

// mountBPFFS mounts a bpffs under the test's temporary directory with
// EnsureBPFFS. The test runs in its own private mount namespace, so the
// mount cannot leak; it is unmounted before the directory is removed.
func mountBPFFS(t *testing.T) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "bpffs")
	if err := EnsureBPFFS(mnt); err != nil {
		t.Fatalf("EnsureBPFFS: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Type != bpffsMagic {
		t.Fatalf("%s is not a bpffs after EnsureBPFFS (type %#x, %v)", mnt, st.Type, err)
	}
	// A second call finds the bpffs and mounts nothing more.
	if err := EnsureBPFFS(mnt); err != nil {
		t.Fatalf("EnsureBPFFS again: %v", err)
	}
	return mnt
}

// mountCount counts the mounts at dir.
func mountCount(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	return n
}

// TestPinnedStateSurvivesReload: a data plane loaded with PinDir, closed
// and loaded again finds its groups, counters and flows; the program left
// attached keeps steering with the reopened maps; LiveGroups reports a
// group while one of its sockets is open and forgets the closed ones.
func TestPinnedStateSurvivesReload(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	mnt := mountBPFFS(t)
	if n := mountCount(t, mnt); n != 1 {
		t.Errorf("%d mounts at %s, want 1", n, mnt)
	}
	dir := PinDir(mnt, "test")
	opts := Options{PinDir: dir, MaxFlows: 1024}
	e := newEnv(t, opts)
	const gid, n, flows = 5, 2, 40
	gen1 := e.addGen(gid, 1, n, lo4)
	dst := gen1[0].addr
	gen2 := e.addGen(gid, 2, n, dst)
	e.setGroup(gid, 1, n, flowDis, hour)
	old := e.clients(flows, dst)
	first := e.roundtrip(old, 2)
	wantAllIn(t, "before the reload", first, gen1, true)

	for _, name := range []string{"sockets", "epochs", "sock_seen", "socket_groups", "groups", "flows", "counters"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("map %s not pinned: %v", name, err)
		}
	}
	counters, err := e.d.Counters(gid)
	if err != nil {
		t.Fatal(err)
	}
	if counters["rx_processed_total"] != 2*flows {
		t.Fatalf("rx_processed_total = %d before the reload", counters["rx_processed_total"])
	}

	// The supervisor goes away and a new one opens the pins.
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := Load(opts)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	e.d = d2 // closed by the env's cleanup

	var g reuseportGrmGroup
	if err := d2.objs.Groups.Lookup(uint32(gid), &g); err != nil {
		t.Fatal(err)
	}
	if g.State != 1<<32|n || g.Dissector != uint32(flowDis) || g.FlowTimeoutSec != 3600 || g.BankGen != [banks]uint32{1, 2} {
		t.Errorf("group %d after reload: state %#x, dissector %d, timeout %d, banks %v; want %#x, %d, 3600, [1 2]",
			gid, g.State, g.Dissector, g.FlowTimeoutSec, g.BankGen, uint64(1<<32|n), flowDis)
	}
	after, err := d2.Counters(gid)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after, counters) {
		t.Errorf("counters after reload %v, before %v", after, counters)
	}
	e.wantFlowCounts(gid, hour, map[uint32]int{1: flows})

	// The first program, still attached to the group, steers with the
	// reopened maps; a flip through the new handle takes effect.
	e.setGroup(gid, 2, n, flowDis, hour)
	for c, ss := range e.roundtrip(old, 1) {
		if a, b := sole(t, c, first[c]), sole(t, c, ss); a != b {
			t.Errorf("flow %d moved from %s to %s across the reload", c.id, a, b)
		}
	}
	wantAllIn(t, "new flows after the reload and flip", e.roundtrip(e.clients(flows, dst), 1), gen2, true)
	e.wantCounters(gid, map[string]uint64{
		"rx_processed_total":                  4 * flows,
		"rx_dissected_ok_total":               4 * flows,
		"rx_flow_new_unseen":                  2 * flows,
		"rx_new_flow_total":                   2 * flows,
		"rx_new_flow_working_gen_dispatch_ok": 2 * flows,
		"rx_flow_ok":                          2 * flows,
	})
	e.wantFlowCounts(gid, hour, map[uint32]int{1: flows, 2: flows})

	wantLive := func(want map[uint32]bool, entries int) {
		t.Helper()
		live, err := d2.LiveGroups()
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(live, want) {
			t.Errorf("LiveGroups() = %v, want %v", live, want)
		}
		got := 0
		var (
			cookie uint64
			ref    reuseportGrmSocketRef
		)
		it := d2.objs.SocketGroups.Iterate()
		for it.Next(&cookie, &ref) {
			got++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		if got != entries {
			t.Errorf("socket_groups holds %d sockets, want %d", got, entries)
		}
	}
	wantLive(map[uint32]bool{gid: true}, 2*n)
	for _, s := range gen1 {
		e.close(s)
	}
	wantLive(map[uint32]bool{gid: true}, n) // the closed ones are forgotten
	for _, s := range gen2 {
		e.close(s)
	}
	wantLive(map[uint32]bool{}, 0)
}

// TestPinnedIncompatibleMaxFlows: maps pinned with one flow table size are
// refused by a Load with another, with an error that says what to do and
// wraps ebpf.ErrMapIncompatible; the pins are left as they were.
func TestPinnedIncompatibleMaxFlows(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dir := PinDir(mountBPFFS(t), "test")
	d, err := Load(Options{PinDir: dir, MaxFlows: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetGroup(1, groupState(1, 1)); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d, err = Load(Options{PinDir: dir, MaxFlows: 128})
	if err == nil {
		d.Close()
		t.Fatal("Load with another MaxFlows over the same pins succeeded")
	}
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Errorf("error does not wrap ErrMapIncompatible: %v", err)
	}
	for _, want := range []string{dir, "--max-flows"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Logf("error: %v", err)

	d, err = Load(Options{PinDir: dir, MaxFlows: 64})
	if err != nil {
		t.Fatalf("Load with the original MaxFlows after the refusal: %v", err)
	}
	defer d.Close()
	var g reuseportGrmGroup
	if err := d.objs.Groups.Lookup(uint32(1), &g); err != nil {
		t.Fatal(err)
	}
	if g.State>>32 != 1 || g.State&0xffff != 1 {
		t.Errorf("group 1 after the refusal: state %#x", g.State)
	}
}
