package notify

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// envSockState makes the test binary play a server that sets socket options
// before bind and reports them after (see sockStateServer).
const envSockState = "GRMWRAP_TEST_SOCKSTATE"

// sockStateServer creates two AF_INET6 UDP sockets, sets options on them
// before bind, binds [::]:PORT and [::1]:PORT+1 and prints one line per
// socket with the state it has after bind. The second socket has a socket
// filter attached, which grmwrap cannot copy: it keeps its own bind.
func sockStateServer(port int) error {
	var lines []string
	for i, filter := range []bool{false, true} {
		s, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return err
		}
		for _, o := range []struct{ level, name, v int }{
			{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0},
			{unix.SOL_SOCKET, unix.SO_RCVBUF, 300000},
			{unix.SOL_SOCKET, unix.SO_SNDBUF, 100000},
			{unix.SOL_SOCKET, unix.SO_BROADCAST, 1},
			{unix.SOL_SOCKET, unix.SO_PRIORITY, 3},
			{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1},
			{unix.IPPROTO_IP, unix.IP_PKTINFO, 1},
			{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1},
			{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0x20},
			{unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 9},
		} {
			if err := unix.SetsockoptInt(s, o.level, o.name, o.v); err != nil {
				return fmt.Errorf("setsockopt %d/%d: %w", o.level, o.name, err)
			}
		}
		if filter {
			accept := []unix.SockFilter{{Code: 0x06, K: 0xffff}} // BPF_RET|BPF_K
			prog := unix.SockFprog{Len: 1, Filter: &accept[0]}
			if err := unix.SetsockoptSockFprog(s, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
				return fmt.Errorf("attach filter: %w", err)
			}
		}
		var before unix.Stat_t
		if err := unix.Fstat(s, &before); err != nil {
			return err
		}
		sa := &unix.SockaddrInet6{Port: port + i}
		if filter {
			sa.Addr = [16]byte{15: 1}
		}
		if err := unix.Bind(s, sa); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		var after unix.Stat_t
		if err := unix.Fstat(s, &after); err != nil {
			return err
		}
		var b strings.Builder
		for _, o := range []struct {
			name         string
			level, name2 int
		}{
			{"v6only", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY},
			{"rcvbuf", unix.SOL_SOCKET, unix.SO_RCVBUF},
			{"sndbuf", unix.SOL_SOCKET, unix.SO_SNDBUF},
			{"broadcast", unix.SOL_SOCKET, unix.SO_BROADCAST},
			{"priority", unix.SOL_SOCKET, unix.SO_PRIORITY},
			{"timestampns", unix.SOL_SOCKET, unix.SO_TIMESTAMPNS},
			{"pktinfo", unix.IPPROTO_IP, unix.IP_PKTINFO},
			{"recvpktinfo", unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO},
			{"tclass", unix.IPPROTO_IPV6, unix.IPV6_TCLASS},
			{"hops", unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS},
			{"reuseaddr", unix.SOL_SOCKET, unix.SO_REUSEADDR},
			{"mark", unix.SOL_SOCKET, unix.SO_MARK},
		} {
			v, err := unix.GetsockoptInt(s, o.level, o.name2)
			if err != nil {
				return fmt.Errorf("getsockopt %s: %w", o.name, err)
			}
			fmt.Fprintf(&b, "%s=%d ", o.name, v)
		}
		filterLen, _ := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_GET_FILTER)
		fl, err := unix.FcntlInt(uintptr(s), unix.F_GETFL, 0)
		if err != nil {
			return err
		}
		fdfl, err := unix.FcntlInt(uintptr(s), unix.F_GETFD, 0)
		if err != nil {
			return err
		}
		name, err := unix.Getsockname(s)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "filter=%d nonblock=%v cloexec=%v port=%d fd=%d replaced=%v",
			filterLen, fl&unix.O_NONBLOCK != 0, fdfl&unix.FD_CLOEXEC != 0,
			name.(*unix.SockaddrInet6).Port-i, s, before.Ino != after.Ino)
		lines = append(lines, b.String())
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

// TestSocketStateCopied: the socket grmwrap puts in place of the server's
// has the state the server set before bind (IPV6_V6ONLY=0 on [::], buffer
// sizes, O_NONBLOCK, FD_CLOEXEC, IP_PKTINFO, ...), exactly as the server's
// own socket has it without grmwrap, at the same fd number. A socket with a
// filter attached keeps its own bind (the fallback) and works too.
func TestSocketStateCopied(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	args := []string{envSockState + "=" + strconv.Itoa(port)}

	plain := exec.Command(os.Args[0])
	plain.Env = append(os.Environ(), args...)
	out, err := plain.Output()
	if err != nil {
		t.Fatalf("server without grmwrap: %v", err)
	}
	want := strings.Split(strings.TrimSpace(string(out)), "\n")

	sink := &slowSink{}
	h := NewHandler(testLogger(t), Matcher{}, sink)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	child, err := Start(Spec{
		Self:  os.Args[0],
		Path:  os.Args[0],
		Argv:  []string{os.Args[0]},
		Env:   append(os.Environ(), args...),
		Files: [3]*os.File{os.Stdin, w, os.Stderr},
	})
	w.Close()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(ctx, child.Listener, 1) }()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		_, _ = child.Process.Wait()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Errorf("notification loop did not end after the server exited")
		}
		cancel()
	})
	lines := make(chan []string, 1)
	go func() {
		var ls []string
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ls = append(ls, sc.Text())
		}
		lines <- ls
	}()
	var got []string
	select {
	case got = <-lines:
	case <-time.After(20 * time.Second):
		t.Fatal("no report from the server in 20s")
	}
	if len(got) != 2 || len(want) != 2 {
		t.Fatalf("reports: without grmwrap %q, under grmwrap %q", want, got)
	}
	for i, what := range []string{"copied socket", "socket with a filter (fallback)"} {
		w := strings.Replace(want[i], "replaced=false", "", 1)
		g := got[i]
		t.Logf("%s:\n  without grmwrap %s\n  under grmwrap   %s", what, want[i], g)
		replaced := i == 0
		g, ok := strings.CutSuffix(g, "replaced="+strconv.FormatBool(replaced))
		if !ok {
			t.Errorf("%s: want replaced=%v, got %q", what, replaced, got[i])
			continue
		}
		if g != w {
			t.Errorf("%s: state after bind differs:\n  without grmwrap %s\n  under grmwrap   %s", what, want[i], got[i])
		}
	}
	if c := h.Counters(); c["bind_managed"] != 2 {
		t.Errorf("bind_managed = %d, want 2", c["bind_managed"])
	}
}
