package main

import (
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// TestTCPReuseport: a server that listens on TCP next to its UDP port
// (dnsmasq does) cannot be upgraded while the old generation holds the TCP
// port, unless --tcp-reuseport gives its TCP binds SO_REUSEPORT; a TCP
// port held by a foreign listener still gets EADDRINUSE.
func TestTCPReuseport(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	upgrade := func(t *testing.T, rt string, pid int) (int, string) {
		out, err := exec.Command(testbin.Grmwrap(t), "upgrade", "--runtime-dir", rt, strconv.Itoa(pid)).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	t.Run("without the flag the new generation dies", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		rt := t.TempDir()
		g := grmwrap(t, "--runtime-dir", rt, "--", testbin.EchoC(t), "--tcp", strconv.Itoa(port))
		r := g.Ready(t, wait)
		if r.TCPReuseport != 0 {
			t.Fatalf("without the flag TCP must stay untouched: %+v", r)
		}
		// The new generation is ready once its UDP socket is bound (the
		// upgrade may report success), then dies on its TCP bind: the old
		// generation must keep serving as the working one.
		upgrade(t, rt, g.Cmd.Process.Pid)
		if l := g.Line(t, wait); !strings.HasPrefix(l, "bind-error errno=98") {
			t.Fatalf("new generation said %q, want its TCP bind refused", l)
		}
		waitStderr(t, g, "generation exited")
		if got := testbin.Echo(t, addr(port), "still", wait); got != strconv.Itoa(r.PID)+" still" {
			t.Fatalf("after the failed generation: %q, want generation 1 (%d) serving", got, r.PID)
		}
		if g.Exited() {
			t.Fatal("grmwrap exited although generation 1 still serves")
		}
	})
	t.Run("with the flag the upgrade works", func(t *testing.T) {
		port := testbin.FreeUDPPort(t)
		rt := t.TempDir()
		g := grmwrap(t, "--runtime-dir", rt, "--tcp-reuseport", "--", testbin.EchoC(t), "--tcp", strconv.Itoa(port))
		r := g.Ready(t, wait)
		if r.UDPReuseport != 1 || r.TCPReuseport != 1 {
			t.Fatalf("with --tcp-reuseport: %+v", r)
		}
		if code, out := upgrade(t, rt, g.Cmd.Process.Pid); code != 0 {
			t.Fatalf("upgrade exit %d: %s\n%s", code, out, g.Stderr())
		}
		// Generation 1 (no flows to drain) may say "signal 15" first.
		var r2 testbin.Ready
		for {
			l := g.Line(t, wait)
			if strings.HasPrefix(l, "ready ") {
				var err error
				if r2, err = testbin.ParseReady(l); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		if r2.TCPReuseport != 1 || r2.PID == r.PID {
			t.Fatalf("generation 2: %+v", r2)
		}
		c, err := net.Dial("tcp", addr(port))
		if err != nil {
			t.Fatalf("tcp connect during the drain: %v", err)
		}
		c.Close()
	})
	t.Run("a foreign TCP listener still wins", func(t *testing.T) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		g := grmwrap(t, "--runtime-dir", t.TempDir(), "--tcp-reuseport", "--", testbin.EchoC(t), "--tcp", "--addr", "127.0.0.1", strconv.Itoa(port))
		if l := g.Line(t, wait); !strings.HasPrefix(l, "bind-error errno=98") {
			t.Fatalf("server said %q, want its TCP bind refused (EADDRINUSE)", l)
		}
	})
}
