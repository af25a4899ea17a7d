package testbin

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

const timeout = 30 * time.Second

type variant struct {
	name string
	path func(testing.TB) string
}

var variants = []variant{
	{"c", EchoC},
	{"go", EchoGo},
	{"python", EchoPy},
}

func TestBuild(t *testing.T) {
	root := Root(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("Root %s: %v", root, err)
	}
	for _, b := range []struct {
		name  string
		build func(testing.TB) string
	}{
		{"echo-c", EchoC},
		{"echo-go", EchoGo},
		{"alrmbind", AlarmBind},
	} {
		p := b.build(t)
		if want := filepath.Join(root, "bin", "test", b.name); p != want {
			t.Errorf("%s built at %s, want %s", b.name, p, want)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o100 == 0 {
			t.Errorf("%s is not executable", p)
		}
		if again := b.build(t); again != p {
			t.Errorf("%s: second call gave %s", b.name, again)
		}
	}
	if p := EchoPy(t); !filepath.IsAbs(p) {
		t.Errorf("EchoPy: %s is not absolute", p)
	}
}

func TestParseReady(t *testing.T) {
	r, err := ParseReady("ready pid=42 udp_reuseport=1 tcp_reuseport=-1 port=5353")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Ready{PID: 42, UDPReuseport: 1, TCPReuseport: -1, Port: 5353}); r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	for _, bad := range []string{
		"",
		"ready",
		"ready pid=1 udp_reuseport=0 tcp_reuseport=0",
		"ready pid=1 tcp_reuseport=0 udp_reuseport=0 port=1",
		"ready pid=x udp_reuseport=0 tcp_reuseport=0 port=1",
		"bind-error errno=98 Address already in use",
	} {
		if _, err := ParseReady(bad); err == nil {
			t.Errorf("ParseReady(%q) succeeded", bad)
		}
	}
}

// start runs the server and returns it with its parsed ready line, checking
// the fields every ready line must have.
func start(t *testing.T, v variant, args ...string) (*Server, Ready) {
	t.Helper()
	s := Start(t, exec.Command(v.path(t), args...))
	r := s.Ready(t, timeout)
	if r.PID != s.Cmd.Process.Pid {
		t.Errorf("ready pid=%d, want %d", r.PID, s.Cmd.Process.Pid)
	}
	return s, r
}

func expectLine(t *testing.T, s *Server, want string) {
	t.Helper()
	if got := s.Line(t, timeout); got != want {
		t.Fatalf("stdout line %q, want %q", got, want)
	}
}

// expectEOF checks that the server wrote nothing more to stdout.
func expectEOF(t *testing.T, s *Server) {
	t.Helper()
	select {
	case l, ok := <-s.Lines:
		if ok {
			t.Errorf("unexpected stdout line %q", l)
		}
	case <-time.After(timeout):
		t.Errorf("stdout not closed")
	}
}

func expectEcho(t *testing.T, addr string, pid int, payload string) {
	t.Helper()
	want := strconv.Itoa(pid) + " " + payload
	if got := Echo(t, addr, payload, timeout); got != want {
		t.Errorf("echo from %s: %q, want %q", addr, got, want)
	}
}

func signal(t *testing.T, s *Server, sig syscall.Signal) {
	t.Helper()
	if err := s.Cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func ipv6Loopback() bool {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestEchoServers(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			v.path(t) // build once before the subtests race for it

			t.Run("signals", func(t *testing.T) {
				t.Parallel()
				port := FreeUDPPort(t)
				s, r := start(t, v, "--addr", "127.0.0.1", strconv.Itoa(port))
				if r.UDPReuseport != 0 || r.TCPReuseport != -1 || r.Port != port {
					t.Errorf("ready %+v, want udp_reuseport=0 tcp_reuseport=-1 port=%d", r, port)
				}
				addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
				expectEcho(t, addr, r.PID, "hello")
				signal(t, s, syscall.SIGHUP)
				expectLine(t, s, "signal 1")
				expectEcho(t, addr, r.PID, "after hup")
				signal(t, s, syscall.SIGUSR1)
				expectLine(t, s, "signal 10")
				expectEcho(t, addr, r.PID, "exit 7 but not exactly")
				signal(t, s, syscall.SIGTERM)
				expectLine(t, s, "signal 15")
				if code := s.Wait(t, timeout); code != 0 {
					t.Errorf("exit status %d after SIGTERM, want 0", code)
				}
				expectEOF(t, s)
			})

			t.Run("tcp-reuseport-port0-exit", func(t *testing.T) {
				t.Parallel()
				s, r := start(t, v, "--tcp", "--reuseport", "--addr", "127.0.0.1", "0")
				if r.UDPReuseport != 1 || r.TCPReuseport != 0 || r.Port == 0 {
					t.Errorf("ready %+v, want udp_reuseport=1 tcp_reuseport=0 and a port", r)
				}
				addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
				c, err := net.DialTimeout("tcp", addr, timeout)
				if err != nil {
					t.Errorf("TCP connect to %s: %v", addr, err)
				} else {
					c.Close()
				}
				expectEcho(t, addr, r.PID, "exit 7")
				if code := s.Wait(t, timeout); code != 7 {
					t.Errorf("exit status %d after \"exit 7\", want 7", code)
				}
				expectEOF(t, s)
			})

			t.Run("bind-error", func(t *testing.T) {
				t.Parallel()
				taken, err := net.ListenPacket("udp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer taken.Close()
				port := taken.LocalAddr().(*net.UDPAddr).Port
				s := Start(t, exec.Command(v.path(t), "--addr", "127.0.0.1", strconv.Itoa(port)))
				want := fmt.Sprintf("bind-error errno=%d Address already in use", int(syscall.EADDRINUSE))
				expectLine(t, s, want)
				if code := s.Wait(t, timeout); code != 3 {
					t.Errorf("exit status %d after bind error, want 3", code)
				}
				expectEOF(t, s)
			})

			t.Run("dual-stack", func(t *testing.T) {
				if !ipv6Loopback() {
					t.Skip("no IPv6 loopback")
				}
				t.Parallel()
				s, r := start(t, v, "--addr", "::", "--tcp", "0")
				if r.UDPReuseport != 0 || r.TCPReuseport != 0 || r.Port == 0 {
					t.Errorf("ready %+v, want udp_reuseport=0 tcp_reuseport=0 and a port", r)
				}
				p := strconv.Itoa(r.Port)
				expectEcho(t, net.JoinHostPort("::1", p), r.PID, "over v6")
				expectEcho(t, net.JoinHostPort("127.0.0.1", p), r.PID, "over v4")
				signal(t, s, syscall.SIGINT)
				expectLine(t, s, "signal 2")
				if code := s.Wait(t, timeout); code != 0 {
					t.Errorf("exit status %d after SIGINT, want 0", code)
				}
				expectEOF(t, s)
			})
		})
	}
}

func TestAlarmBind(t *testing.T) {
	port := FreeUDPPort(t)
	s := Start(t, exec.Command(AlarmBind(t), strconv.Itoa(port)))
	line := s.Line(t, timeout)
	if !regexp.MustCompile(`^bind ret=0 errno=0 alarms=[0-9]+ reuseport=0$`).MatchString(line) {
		t.Fatalf("bind line %q", line)
	}
	expectEcho(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), s.Cmd.Process.Pid, "tick")
	signal(t, s, syscall.SIGTERM)
	expectLine(t, s, "signal 15")
	if code := s.Wait(t, timeout); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	expectEOF(t, s)
}
