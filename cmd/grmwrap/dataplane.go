package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
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

// openSteering loads the data plane with its maps pinned under the state
// name (reopening what a previous supervisor of the same service left),
// and returns the steering policy over it. Group ids that still have live
// sockets of a previous supervisor are left alone.
func openSteering(cfg runConfig) (*generations.Steering, func(), error) {
	name := stateName(cfg)
	unlock, err := lockState(cfg.runtimeDir, name)
	if err != nil {
		return nil, nil, err
	}
	if err := bpf.EnsureBPFFS(bpffsMount); err != nil {
		unlock()
		return nil, nil, err
	}
	dp, err := bpf.Load(bpf.Options{MaxFlows: cfg.maxFlows, PinDir: bpf.PinDir(bpffsMount, name)})
	if err != nil {
		unlock()
		return nil, nil, err
	}
	live, err := dp.LiveGroups()
	if err != nil {
		dp.Close()
		unlock()
		return nil, nil, err
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
	return st, func() { dp.Close(); unlock() }, nil
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
