package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	unlock, err := lockState(cfg.runtimeDir, name)
	if err != nil {
		return nil, err
	}
	if err := bpf.EnsureBPFFS(bpffsMount); err != nil {
		unlock()
		return nil, err
	}
	// A flow's last-seen time must be refreshed well within the flow
	// timeout, or live flows would look idle.
	refresh := min(time.Second, cfg.flowTimeout/8)
	dp, err := bpf.Load(bpf.Options{MaxFlows: cfg.maxFlows, PinDir: bpf.PinDir(bpffsMount, name), Refresh: refresh})
	if err != nil {
		unlock()
		return nil, err
	}
	live, err := dp.LiveGroups()
	if err != nil {
		dp.Close()
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

func (d *dataPlane) close() {
	d.bpf.Close()
	d.unlock()
}

// unpin removes the pinned maps after a clean stop: every instance is
// gone, so no group needs them, and a flow table holds kernel memory until
// it is unpinned. After a crash they stay, for the next supervisor.
func (d *dataPlane) unpin() {
	dir := bpf.PinDir(bpffsMount, stateName(d.cfg))
	if err := os.RemoveAll(dir); err != nil {
		d.cfg.log.Warn("unpin steering maps", "dir", dir, "err", err)
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

// lockState takes an exclusive lock on <runtime-dir>/<name>.lock: two
// supervisors must not share pinned state.
func lockState(dir, name string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("runtime directory: %w", err)
	}
	path := filepath.Join(dir, name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another grmwrap runs with state %q (give this one --name): %w", name, err)
	}
	return func() { f.Close() }, nil
}
