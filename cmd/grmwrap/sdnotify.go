package main

import (
	"errors"
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
	// upgrades counts upgrade requests in flight. The manager runs one
	// and refuses the others at once, but each request is reported: only
	// the first opens the RELOADING=1 and only the last closes it with
	// READY=1, so that a refused request never tells systemd that the
	// running upgrade is over.
	upgrades int
	// lastErr is the outcome of the last upgrade that ran (refusals do not
	// count).
	lastErr error
	// stopped: STOPPING=1 was sent; no READY=1 or RELOADING=1 may follow.
	stopped bool
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
	n.sendLocked(lines...)
}

// sendLocked writes one notification with mu held. A write that fails
// (the manager's socket was replaced) is retried once on a new socket,
// as sd_notify, which opens a socket per message, would have succeeded.
func (n *sdNotifier) sendLocked(lines ...string) {
	msg := []byte(strings.Join(lines, "\n"))
	for attempt := 0; ; attempt++ {
		if n.conn == nil {
			c, err := net.DialUnix("unixgram", nil, n.addr)
			if err != nil {
				n.log.Warn("systemd notify socket", "err", err)
				return
			}
			n.conn = c
		}
		_, err := n.conn.Write(msg)
		if err == nil {
			return
		}
		n.conn.Close()
		n.conn = nil
		if attempt > 0 {
			n.log.Warn("systemd notify", "err", err)
			return
		}
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
		part := fmt.Sprintf("gen %d %s (pid %d, %d flows)", g.Generation, g.State, g.PID, g.Flows)
		if g.Stalled {
			part += " stalled"
		}
		parts = append(parts, part)
	}
	return fmt.Sprintf("STATUS=working generation %d; %s", working, strings.Join(parts, "; "))
}

func (n *sdNotifier) ready(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return
	}
	if err != nil {
		// Type=notify waits for READY=1: generation 1 serves anyway (it is
		// working), so say so rather than let the start time out.
		n.sendLocked("READY=1", "STATUS=generation 1 serving, not ready: "+err.Error())
		return
	}
	n.sendLocked("READY=1", n.status())
}

func (n *sdNotifier) upgradeStarted() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upgrades++
	if n.upgrades > 1 || n.stopped {
		return // systemd already knows that the service is reloading
	}
	n.sendLocked("RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", monotonicUsec()), "STATUS=upgrading")
}

func (n *sdNotifier) upgradeDone(_ uint32, err error, _ time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upgrades--
	if !errors.Is(err, generations.ErrUpgradeInProgress) {
		n.lastErr = err
	}
	if n.upgrades > 0 || n.stopped {
		return
	}
	st := n.status()
	if n.lastErr != nil {
		st += "; last upgrade failed: " + n.lastErr.Error()
	}
	n.sendLocked("READY=1", st)
}

func (n *sdNotifier) stopping() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return
	}
	n.stopped = true
	n.sendLocked("STOPPING=1")
}

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
