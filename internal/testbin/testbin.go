package testbin

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// Root returns the module root: the first directory at or above the working
// directory that holds a go.mod file.
func Root(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() { rootDir, rootErr = findRoot() })
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testbin: %w", err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("testbin: %w", err)
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && st.Mode().IsRegular() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testbin: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// A binary is built at most once per process.
type binary struct {
	name string
	// argv gives the build command line that writes the binary to out.
	argv func(out string) ([]string, error)

	once sync.Once
	path string
	err  error
}

func (b *binary) get(t testing.TB) string {
	t.Helper()
	root := Root(t)
	b.once.Do(func() { b.path, b.err = b.build(root) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func (b *binary) build(root string) (string, error) {
	dir := filepath.Join(root, "bin", "test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testbin: building %s: %w", b.name, err)
	}
	// Build into a private directory, then rename into place: the rename is
	// atomic, so a parallel test process sees the old file or the new one.
	tmp, err := os.MkdirTemp(dir, ".build-"+b.name+"-")
	if err != nil {
		return "", fmt.Errorf("testbin: building %s: %w", b.name, err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, b.name)
	argv, err := b.argv(out)
	if err != nil {
		return "", fmt.Errorf("testbin: building %s: %w", b.name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = root
	output, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("testbin: building %s: %s: %v\n%s", b.name, strings.Join(argv, " "), err, output)
	}
	final := filepath.Join(dir, b.name)
	if err := os.Rename(out, final); err != nil {
		return "", fmt.Errorf("testbin: building %s: %w", b.name, err)
	}
	return final, nil
}

func goBuild(pkg string) func(string) ([]string, error) {
	return func(out string) ([]string, error) {
		gobin, err := goTool()
		if err != nil {
			return nil, err
		}
		return []string{gobin, "build", "-o", out, pkg}, nil
	}
}

func gccBuild(src string) func(string) ([]string, error) {
	return func(out string) ([]string, error) {
		gcc, err := exec.LookPath("gcc")
		if err != nil {
			return nil, err
		}
		return []string{gcc, "-O2", "-Wall", "-o", out, src}, nil
	}
}

// goTool finds the go command: the one in PATH (go test puts the running
// toolchain's bin directory first), else $GOROOT/bin/go.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		p := filepath.Join(goroot, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("go command not found in PATH or $GOROOT/bin")
}

var (
	grmwrapBin = &binary{name: "grmwrap", argv: goBuild("./cmd/grmwrap")}
	echoCBin   = &binary{name: "echo-c", argv: gccBuild("testdata/servers/echo.c")}
	echoGoBin  = &binary{name: "echo-go", argv: goBuild("./testdata/servers/echo-go")}
	alarmBin   = &binary{name: "alrmbind", argv: gccBuild("testdata/servers/alrmbind.c")}
	uringBin   = &binary{name: "uringdetach", argv: gccBuild("testdata/servers/uringdetach.c")}
)

// Grmwrap builds cmd/grmwrap and returns the absolute path of the binary.
func Grmwrap(t testing.TB) string { t.Helper(); return grmwrapBin.get(t) }

// EchoC builds the C echo server (testdata/servers/echo.c).
func EchoC(t testing.TB) string { t.Helper(); return echoCBin.get(t) }

// EchoGo builds the Go echo server (testdata/servers/echo-go).
func EchoGo(t testing.TB) string { t.Helper(); return echoGoBin.get(t) }

// UringDetach builds testdata/servers/uringdetach.c.
func UringDetach(t testing.TB) string { t.Helper(); return uringBin.get(t) }

// AlarmBind builds testdata/servers/alrmbind.c.
func AlarmBind(t testing.TB) string { t.Helper(); return alarmBin.get(t) }

// EchoPy returns the absolute path of the Python echo server
// (testdata/servers/echo.py, run directly through its #! line). It fails
// the test if python3 is not in PATH.
func EchoPy(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("testbin: echo.py needs python3: %v", err)
	}
	p := filepath.Join(Root(t), "testdata", "servers", "echo.py")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	if st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("testbin: %s is not executable", p)
	}
	return p
}

// FreeUDPPort returns a UDP port that was free on 127.0.0.1 a moment ago.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	return port
}

// Server is a started test server whose stdout is read line by line.
type Server struct {
	Cmd *exec.Cmd
	// Lines carries the server's stdout, one line at a time without the
	// newline; it is closed when stdout reaches end of file.
	Lines <-chan string

	stderr  *SyncBuffer
	stop    chan struct{} // closed by cleanup: the line reader gives up
	done    chan struct{} // closed when Cmd.Wait has returned
	waitErr error
}

// Start starts cmd, whose Stdout and Stderr must be unset, and registers a
// cleanup that stops it (SIGTERM, then SIGKILL after 5s) if it is still running when the test ends (and logs
// its stderr if the test failed).
func Start(t testing.TB, cmd *exec.Cmd) *Server {
	t.Helper()
	if cmd.Stdout != nil || cmd.Stderr != nil {
		t.Fatal("testbin: Start: cmd.Stdout and cmd.Stderr must be nil")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	lines := make(chan string, 64)
	s := &Server{
		Cmd:    cmd,
		Lines:  lines,
		stderr: &SyncBuffer{},
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	cmd.Stdout = pw
	cmd.Stderr = s.stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatalf("testbin: starting %s: %v", cmd.Path, err)
	}
	pw.Close()

	go func() {
		defer close(lines)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-s.stop:
				return
			}
		}
	}()
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()

	t.Cleanup(func() {
		// SIGTERM first: grmwrap then stops its instances, which would
		// otherwise hold the output pipes open until WaitDelay.
		select {
		case <-s.done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-s.done
			}
		}
		close(s.stop)
		if t.Failed() {
			if e := s.Stderr(); e != "" {
				t.Logf("stderr of %s:\n%s", cmd.Path, e)
			}
		}
	})
	return s
}

// Line returns the next stdout line. It fails the test if none comes
// within timeout or stdout is closed.
func (s *Server) Line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-s.Lines:
		if !ok {
			t.Fatalf("testbin: %s closed stdout; stderr: %s", s.Cmd.Path, s.Stderr())
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("testbin: no line from %s within %v; stderr: %s", s.Cmd.Path, timeout, s.Stderr())
	}
	return ""
}

// Ready reads the next stdout line and parses it as a ready line.
func (s *Server) Ready(t testing.TB, timeout time.Duration) Ready {
	t.Helper()
	l := s.Line(t, timeout)
	r, err := ParseReady(l)
	if err != nil {
		t.Fatalf("testbin: %v; stderr: %s", err, s.Stderr())
	}
	return r
}

// Wait waits up to timeout for the server to exit and returns its exit
// status (-1 if a signal killed it).
func (s *Server) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("testbin: %s still running after %v", s.Cmd.Path, timeout)
	}
	if s.Cmd.ProcessState == nil {
		t.Fatalf("testbin: waiting for %s: %v", s.Cmd.Path, s.waitErr)
	}
	return s.Cmd.ProcessState.ExitCode()
}

// Exited reports whether the server has exited.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Stderr returns what the server has written to stderr so far.
func (s *Server) Stderr() string { return s.stderr.String() }

// Ready is a parsed ready line:
//
//	ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=<0|1|-1> port=<port>
type Ready struct {
	PID          int
	UDPReuseport int
	TCPReuseport int // -1: no TCP socket
	Port         int
}

// ParseReady parses a ready line.
func ParseReady(line string) (Ready, error) {
	var r Ready
	f := strings.Fields(line)
	want := []string{"pid", "udp_reuseport", "tcp_reuseport", "port"}
	dst := []*int{&r.PID, &r.UDPReuseport, &r.TCPReuseport, &r.Port}
	if len(f) != 1+len(want) || f[0] != "ready" {
		return r, fmt.Errorf("not a ready line: %q", line)
	}
	for i, key := range want {
		v, ok := strings.CutPrefix(f[1+i], key+"=")
		if !ok {
			return r, fmt.Errorf("ready line %q: field %d is not %s=", line, i+1, key)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return r, fmt.Errorf("ready line %q: %s: %v", line, key, err)
		}
		*dst[i] = n
	}
	return r, nil
}

// Echo sends payload to the UDP address addr (host:port) from a fresh
// socket and returns the first reply, failing the test if none comes
// within timeout.
func Echo(t testing.TB, addr, payload string, timeout time.Duration) string {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatalf("testbin: %v", err)
	}
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("testbin: sending to %s: %v", addr, err)
	}
	buf := make([]byte, 65536+32)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("testbin: no reply from %s: %v", addr, err)
	}
	return string(buf[:n])
}

// SyncBuffer is a bytes.Buffer that a process writes while a test may
// read it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// WorldExecutable returns a copy of the binary at path that any user can
// execute: tests run binaries as nobody, and the module may sit below a
// directory only root can enter (a mktemp -d clone, say).
func WorldExecutable(t testing.TB, path string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "grmwrap-exec-")
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testbin: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	out := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatalf("testbin: %v", err)
	}
	return out
}
