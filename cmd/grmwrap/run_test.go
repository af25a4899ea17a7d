package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

const wait = 10 * time.Second

// grmwrap starts the grmwrap binary with args.
func grmwrap(t *testing.T, args ...string) *testbin.Server {
	t.Helper()
	return testbin.Start(t, exec.Command(testbin.Grmwrap(t), args...))
}

// servers are the unmodified test servers, one per language runtime.
func servers(t *testing.T) map[string][]string {
	return map[string][]string{
		"c":      {testbin.EchoC(t)},
		"go":     {testbin.EchoGo(t)},
		"python": {"python3", testbin.EchoPy(t)},
	}
}

// serverFDs lists the fds of process pid with what they point at.
func serverFDs(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list fds: %v", err)
	}
	out := make(map[int]string)
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		link, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out[n] = link
	}
	return out
}

// TestUnmodifiedServers runs a C, a Go and a Python server under grmwrap:
// the UDP socket ends with SO_REUSEPORT=1 (grmwrap bound it), the TCP socket
// with 0 (untouched), traffic echoes, and the server holds no grmwrap fd.
func TestUnmodifiedServers(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for name, argv := range servers(t) {
		t.Run(name, func(t *testing.T) {
			port := testbin.FreeUDPPort(t)
			g := grmwrap(t, append(append([]string{"--"}, argv...), "--tcp", strconv.Itoa(port))...)
			r := g.Ready(t, wait)
			if r.UDPReuseport != 1 || r.TCPReuseport != 0 {
				t.Fatalf("udp_reuseport=%d tcp_reuseport=%d, want 1 and 0", r.UDPReuseport, r.TCPReuseport)
			}
			if r.Port != port {
				t.Fatalf("bound port %d, asked %d", r.Port, port)
			}
			got := testbin.Echo(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), "hello", wait)
			if want := fmt.Sprintf("%d hello", r.PID); got != want {
				t.Fatalf("echo %q, want %q", got, want)
			}
			fds := serverFDs(t, r.PID)
			sockets := 0
			for fd, link := range fds {
				switch {
				case fd <= 2:
				case strings.HasPrefix(link, "socket:"):
					sockets++
				default:
					// python3 may hold its own files; grmwrap's would be
					// anon_inode:seccomp notify or a socketpair socket.
					if strings.Contains(link, "seccomp") {
						t.Fatalf("server holds grmwrap's listener: fd %d -> %s", fd, link)
					}
				}
			}
			if sockets != 2 {
				t.Fatalf("server has %d sockets, want its own 2 (no grmwrap socket): %v", sockets, fds)
			}
			waitStderr(t, g, `msg="managed bind"`)
			if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if l := g.Line(t, wait); l != "signal 15" {
				t.Fatalf("server said %q after SIGTERM, want the forwarded signal 15", l)
			}
			if code := g.Wait(t, wait); code != 0 {
				t.Fatalf("grmwrap exited %d, want the server's 0", code)
			}
		})
	}
}

// TestDualStack manages an IPv6 wildcard socket with IPV6_V6ONLY=0: IPv4
// and IPv6 clients both reach it.
func TestDualStack(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for _, name := range []string{"c", "go", "python"} {
		t.Run(name, func(t *testing.T) {
			port := testbin.FreeUDPPort(t)
			argv := servers(t)[name]
			g := grmwrap(t, append(append([]string{"--"}, argv...), "--addr", "::", strconv.Itoa(port))...)
			r := g.Ready(t, wait)
			if r.UDPReuseport != 1 {
				t.Fatalf("udp_reuseport=%d", r.UDPReuseport)
			}
			for _, host := range []string{"127.0.0.1", "::1"} {
				got := testbin.Echo(t, net.JoinHostPort(host, strconv.Itoa(port)), "v", wait)
				if want := fmt.Sprintf("%d v", r.PID); got != want {
					t.Fatalf("via %s: %q, want %q", host, got, want)
				}
			}
			waitStderr(t, g, "udp6 [::]:"+strconv.Itoa(port))
		})
	}
}

// TestListenSelectsBinds manages only the addresses --listen names.
func TestListenSelectsBinds(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	listed, other := testbin.FreeUDPPort(t), testbin.FreeUDPPort(t)
	for other == listed {
		other = testbin.FreeUDPPort(t)
	}
	g := grmwrap(t, "--listen", "127.0.0.1:"+strconv.Itoa(listed), "--", testbin.EchoC(t), "--addr", "127.0.0.1", strconv.Itoa(listed))
	if r := g.Ready(t, wait); r.UDPReuseport != 1 {
		t.Fatalf("listed address: udp_reuseport=%d, want 1", r.UDPReuseport)
	}
	g2 := grmwrap(t, "--listen", "127.0.0.1:"+strconv.Itoa(listed), "--", testbin.EchoC(t), "--addr", "127.0.0.1", strconv.Itoa(other))
	if r := g2.Ready(t, wait); r.UDPReuseport != 0 {
		t.Fatalf("unlisted port: udp_reuseport=%d, want 0 (untouched)", r.UDPReuseport)
	}
}

// TestTwoInstancesSteered runs two instances of one command under one
// supervisor: both bind the same port and are managed; the data plane sends
// every flow to the working generation, and after the flip existing flows
// stay on generation 1 while new ones go to generation 2. A reuseport
// program the server attaches changes nothing.
func TestTwoInstancesSteered(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	bin := testbin.EchoC(t)
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cfg := runConfig{
		command: []string{bin, strconv.Itoa(port)}, log: testLogger(t),
		flowTimeout: time.Minute, maxFlows: 1024, runtimeDir: t.TempDir(),
	}
	spec, m, err := prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	spec.Self = os.Args[0]
	spec.Files = [3]*os.File{os.Stdin, w, os.Stderr}
	dp, err := openDataPlane(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.close()
	steering := dp.Steering
	if err := steering.SetWorking(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newSupervisor(ctx, cfg.log, spec, m, steering)
	lines := lineReader(out)
	var pids []string
	for gen := uint32(1); gen <= 2; gen++ {
		p, err := s.Launch(gen, nil)
		if err != nil {
			t.Fatal(err)
		}
		inst := p.(*instance)
		t.Cleanup(func() { _ = inst.Kill(); _, _ = inst.proc.Wait() })
		r, err := testbin.ParseReady(nextLine(t, lines))
		if err != nil {
			t.Fatal(err)
		}
		if r.UDPReuseport != 1 || r.Port != port {
			t.Fatalf("instance %d: %+v", gen, r)
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", r.PID))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("GRMWRAP_GENERATION=%d", gen); !strings.Contains("\x00"+string(env)+"\x00", "\x00"+want+"\x00") {
			t.Fatalf("instance %d's environment lacks %s", gen, want)
		}
		pids = append(pids, strconv.Itoa(r.PID))
	}
	w.Close()
	if n1, n2 := len(steering.Sockets(1)), len(steering.Sockets(2)); n1 != 1 || n2 != 1 {
		t.Fatalf("steering holds %d and %d sockets, want one per generation", n1, n2)
	}
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	old := openFlows(t, server, 32)
	for i, c := range old {
		if got := c.ask(t, "before"); got != pids[0] {
			t.Fatalf("flow %d answered by %s before the flip, want generation 1 (%s)", i, got, pids[0])
		}
	}
	// The server's own reuseport program (every datagram to the group's
	// first socket) is accepted and ignored.
	if got := old[0].askRaw(t, "attach-cbpf"); !strings.HasSuffix(got, " attach ret=0 errno=0") {
		t.Fatalf("attach-cbpf: %q", got)
	}
	if err := steering.SetWorking(2); err != nil {
		t.Fatal(err)
	}
	for i, c := range old {
		if got := c.ask(t, "after"); got != pids[0] {
			t.Fatalf("old flow %d moved to %s after the flip, want generation 1 (%s)", i, got, pids[0])
		}
	}
	for i, c := range openFlows(t, server, 32) {
		if got := c.ask(t, "new"); got != pids[1] {
			t.Fatalf("new flow %d answered by %s, want generation 2 (%s)", i, got, pids[1])
		}
	}
}

// flow is one client socket: one 4-tuple.
type flow struct{ c *net.UDPConn }

func openFlows(t *testing.T, to *net.UDPAddr, n int) []flow {
	t.Helper()
	out := make([]flow, n)
	for i := range out {
		c, err := net.DialUDP("udp", nil, to)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out[i] = flow{c}
	}
	return out
}

// askRaw sends payload on the flow and returns the whole reply.
func (f flow) askRaw(t *testing.T, payload string) string {
	t.Helper()
	if err := f.c.SetDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Write([]byte(payload)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := f.c.Read(buf)
	if err != nil {
		t.Fatalf("no reply on flow %s: %v", f.c.LocalAddr(), err)
	}
	return string(buf[:n])
}

// ask returns the pid of the instance that answered.
func (f flow) ask(t *testing.T, payload string) string {
	t.Helper()
	pid, _, _ := strings.Cut(f.askRaw(t, payload), " ")
	return pid
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func lineReader(f *os.File) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 0, 4096)
		tmp := make([]byte, 4096)
		for {
			n, err := f.Read(tmp)
			buf = append(buf, tmp[:n]...)
			for {
				i := strings.IndexByte(string(buf), '\n')
				if i < 0 {
					break
				}
				ch <- string(buf[:i])
				buf = buf[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func nextLine(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-ch:
		if !ok {
			t.Fatal("server output closed")
		}
		return l
	case <-time.After(wait):
		t.Fatal("no line from the server")
	}
	return ""
}
