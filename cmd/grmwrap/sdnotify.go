package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/grmwrap/grmwrap/generations"
)

// sdNotifier speaks systemd's notify protocol to $NOTIFY_SOCKET when it is
// set: READY=1 once generation 1 is ready, RELOADING=1 (with
// MONOTONIC_USEC) and READY=1 around each upgrade, STATUS= lines, and
// STOPPING=1. The instances never see grmwrap's NOTIFY_SOCKET: systemd
// hears about the service only from its main process.
type sdNotifier struct {
	log  *slog.Logger
	addr *net.UnixAddr
	mgr  *generations.Manager

	mu   sync.Mutex
	conn *net.UnixConn
}

// newSDNotifier returns nil when NOTIFY_SOCKET is not set.
func newSDNotifier(log *slog.Logger, mgr *generations.Manager) *sdNotifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // abstract namespace
	}
	return &sdNotifier{log: log, addr: &net.UnixAddr{Name: path, Net: "unixgram"}, mgr: mgr}
}

// send writes one notification; failures are logged, never fatal.
func (n *sdNotifier) send(lines ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		c, err := net.DialUnix("unixgram", nil, n.addr)
		if err != nil {
			n.log.Warn("systemd notify socket", "err", err)
			return
		}
		n.conn = c
	}
	if _, err := n.conn.Write([]byte(strings.Join(lines, "\n"))); err != nil {
		n.log.Warn("systemd notify", "err", err)
	}
}

// status describes the generations for STATUS=.
func (n *sdNotifier) status() string {
	working, gens := n.mgr.Status()
	var parts []string
	for _, g := range gens {
		switch g.State {
		case generations.StateExited, generations.StateFailed:
			continue
		}
		parts = append(parts, fmt.Sprintf("gen %d %s (pid %d, %d flows)", g.Generation, g.State, g.PID, g.Flows))
	}
	return fmt.Sprintf("STATUS=working generation %d; %s", working, strings.Join(parts, "; "))
}

func (n *sdNotifier) ready(err error) {
	if err != nil {
		// Type=notify waits for READY=1: generation 1 serves anyway (it is
		// working), so say so rather than let the start time out.
		n.send("READY=1", "STATUS=generation 1 serving, not ready: "+err.Error())
		return
	}
	n.send("READY=1", n.status())
}

func (n *sdNotifier) upgradeStarted() {
	n.send("RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", monotonicUsec()), "STATUS=upgrading")
}

func (n *sdNotifier) upgradeDone(_ uint32, err error, _ time.Duration) {
	st := n.status()
	if err != nil {
		st += "; last upgrade failed: " + err.Error()
	}
	n.send("READY=1", st)
}

func (n *sdNotifier) stopping() { n.send("STOPPING=1") }

// statusLoop refreshes STATUS= (flows drain) until done is closed.
func (n *sdNotifier) statusLoop(done <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			n.send(n.status())
		}
	}
}

// monotonicUsec reads CLOCK_MONOTONIC in microseconds, as RELOADING=1
// wants it.
func monotonicUsec() int64 {
	var ts syscall.Timespec
	// CLOCK_MONOTONIC is 1; the syscall cannot fail with a valid pointer.
	_, _, _ = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Sec*1e6 + ts.Nsec/1e3
}
