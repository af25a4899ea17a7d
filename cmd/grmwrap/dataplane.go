package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
)

// bpffsMount is where grmwrap pins its maps (a bpffs is mounted there when
// none is).
const bpffsMount = "/sys/fs/bpf"

// stateName names a supervisor's pinned state: --name, or the command's
// base name and a hash of its argv, stable across restarts of one service.
func stateName(cfg runConfig) string {
	if cfg.name != "" {
		return cfg.name
	}
	h := sha256.Sum256([]byte(strings.Join(cfg.command, "\x00")))
	base := strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r < ' ' {
			return '_'
		}
		return r
	}, filepath.Base(cfg.command[0]))
	return base + "-" + hex.EncodeToString(h[:4])
}

// dataPlane joins the steering policy, the eBPF maps and the socket
// queues into the generations.Sockets the manager drives.
type dataPlane struct {
	*generations.Steering
	bpf    *bpf.DataPlane
	cfg    runConfig
	unlock func()
}

var _ generations.Sockets = (*dataPlane)(nil)

// openDataPlane loads the data plane with its maps pinned under the state
// name (reopening what a previous supervisor of the same service left),
// and the steering policy over it. Group ids that still have live sockets
// of a previous supervisor are left alone.
func openDataPlane(cfg runConfig) (*dataPlane, error) {
	name := stateName(cfg)
	if err := bpf.EnsureBPFFS(bpffsMount); err != nil {
		return nil, err
	}
	dir := bpf.PinDir(bpffsMount, name)
	unlock, err := lockState(dir, name)
	if err != nil {
		return nil, err
	}
	// A flow's last-seen time must be refreshed well within the flow
	// timeout, or live flows would look idle.
	refresh := min(time.Second, cfg.flowTimeout/8)
	dp, err := bpf.Load(bpf.Options{MaxFlows: cfg.maxFlows, PinDir: dir, Refresh: refresh})
	if err != nil {
		// Only an empty directory (made by lockState) goes: pins that do
		// not match this grmwrap may still steer another version's
		// instances.
		_ = os.Remove(dir)
		unlock()
		return nil, err
	}
	live, err := dp.LiveGroups()
	if err != nil {
		_ = dp.Close() // failing already; the first error is the one to report
		removePins(cfg, dir, map[uint32]bool{0: true})
		unlock()
		return nil, err
	}
	var reserved []uint32
	for id := range live {
		reserved = append(reserved, id)
	}
	if len(reserved) > 0 {
		cfg.log.Warn("a previous grmwrap of this service left live sockets; their groups are left as they are", "groups", len(reserved))
	}
	st := generations.NewSteering(cfg.log, dp, generations.SteeringConfig{
		MaxGroups:   bpf.MaxGroups,
		Dissector:   cfg.dissector,
		FlowTimeout: cfg.flowTimeout,
		Reserved:    reserved,
	})
	return &dataPlane{Steering: st, bpf: dp, cfg: cfg, unlock: unlock}, nil
}

// close releases the data plane on every exit path that runs (a crash
// runs none, and leaves everything to the orphans and the next
// supervisor): the pinned maps are removed unless a live socket still
// uses them (an orphan of a crashed supervisor, or an instance that could
// not be stopped), then the state lock is released. Unpinning before
// unlocking means no other supervisor can open the maps being removed.
func (d *dataPlane) close() {
	dir := bpf.PinDir(bpffsMount, stateName(d.cfg))
	live, err := d.bpf.LiveGroups()
	if err != nil {
		d.cfg.log.Warn("cannot tell whether a live socket uses the steering maps", "dir", dir, "err", err)
		live = map[uint32]bool{0: true}
	}
	_ = d.bpf.Close() // the maps stay or go with their pins below; nothing to do about a close error
	removePins(d.cfg, dir, live)
	d.unlock()
}

// removePins removes the pinned maps in dir, unless live names groups that
// still have open sockets: those keep steering, so the maps stay for them
// and for the next supervisor (one log line says so).
func removePins(cfg runConfig, dir string, live map[uint32]bool) {
	if len(live) > 0 {
		cfg.log.Info("steering maps kept: live sockets of another process still use them", "dir", dir, "groups", len(live))
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		cfg.log.Warn("unpin steering maps", "dir", dir, "err", err)
	}
}

// groupIDs returns the ids of this supervisor's groups.
func (d *dataPlane) groupIDs() map[uint32]bool {
	ids := make(map[uint32]bool)
	for _, g := range d.Groups() {
		ids[g.ID] = true
	}
	return ids
}

// LiveFlows counts gen's flows seen within the flow timeout.
func (d *dataPlane) LiveFlows(gen uint32) (int, error) {
	byGen, err := d.bpf.LiveFlows(d.groupIDs(), d.cfg.flowTimeout)
	if err != nil {
		return 0, err
	}
	return byGen[gen], nil
}

// Active reports whether any flow of gen was seen within the flow
// timeout, from the per-socket last-seen times (no walk of the flow table).
func (d *dataPlane) Active(gen uint32) (bool, error) {
	return d.bpf.Active(d.Cookies(gen), d.cfg.flowTimeout)
}

// Release takes gen's sockets out of steering; queued reports the bytes
// still waiting in them (0 once their processes are gone).
func (d *dataPlane) Release(gen uint32) (func() (int, error), error) {
	released, err := d.ReleaseGeneration(gen)
	byPID := make(map[int][]uint64)
	for _, r := range released {
		byPID[r.PID] = append(byPID[r.PID], r.Inode)
	}
	queued := func() (int, error) {
		total := 0
		for pid, inodes := range byPID {
			n, err := notify.QueuedBytes(pid, inodes)
			if err != nil {
				continue // the process is gone, and its queues with it
			}
			total += int(n)
		}
		return total, nil
	}
	return queued, err
}

// lockState creates the pin directory dir (in bpffs) and takes an
// exclusive flock on the directory itself: the lock lives with the state it
// guards, so two supervisors with one state name clash whatever their
// runtime directories, and it goes with the process (no lock file). A
// holder removes dir before it unlocks; a supervisor that locked a
// directory removed meanwhile sees another inode at dir and tries again.
func lockState(dir, name string) (func(), error) {
	for range 16 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed by its holder between MkdirAll and Open
			}
			return nil, fmt.Errorf("state directory: %w", err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			var st unix.Stat_t
			holder := ""
			if unix.Fstat(fd, &st) == nil {
				holder = lockHolder(st.Ino)
			}
			_ = unix.Close(fd) // read-only, nothing to flush
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("another grmwrap%s runs with state %q: give this one --name", holder, name)
			}
			return nil, fmt.Errorf("lock state %q: %w", name, err)
		}
		var locked, now unix.Stat_t
		if unix.Fstat(fd, &locked) == nil && unix.Stat(dir, &now) == nil && locked.Ino == now.Ino && locked.Dev == now.Dev {
			return func() { _ = unix.Close(fd) }, nil // closing drops the lock
		}
		_ = unix.Close(fd) // a directory its holder removed: try the new one
	}
	return nil, fmt.Errorf("lock state %q: its directory keeps being replaced", name)
}

// lockHolder names the process holding a flock on the inode ino, from
// /proc/locks (" (pid N)"), or "" when it cannot tell.
func lockHolder(ino uint64) string {
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return "" // the holder is only a hint
	}
	suffix := ":" + strconv.FormatUint(ino, 10)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		// "1: FLOCK  ADVISORY  WRITE 2825 00:2e:231800 0 EOF"
		if len(f) >= 6 && f[1] == "FLOCK" && strings.HasSuffix(f[5], suffix) {
			return " (pid " + f[4] + ")"
		}
	}
	return ""
}
