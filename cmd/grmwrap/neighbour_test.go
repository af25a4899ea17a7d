package main

import (
	"bufio"
	"fmt"
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

// intruderPy binds 0.0.0.0:PORT with SO_REUSEPORT, attaches a classic BPF
// reuseport program that always picks index 1 (itself, after the server's
// socket), says "attached", and answers every datagram with "intruder".
// With a second argument "tcp" it binds and listens on TCP instead and
// says "listening".
const intruderPy = `import ctypes, socket, struct, sys
tcp = sys.argv[2:] == ["tcp"]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError as e:
    print("bind-error errno=%d" % e.errno, flush=True)
    sys.exit(3)
if tcp:
    s.listen(16)
    print("listening", flush=True)
    while True:
        s.accept()[0].close()
prog = (ctypes.c_uint64 * 1)(0x06 | (1 << 32))  # BPF_RET|BPF_K 1
s.setsockopt(socket.SOL_SOCKET, 51, struct.pack("HxxxxxxQ", 1, ctypes.addressof(prog)))  # SO_ATTACH_REUSEPORT_CBPF
print("attached", flush=True)
while True:
    _, peer = s.recvfrom(2048)
    s.sendto(b"intruder", peer)
`

// startIntruder runs intruderPy as nobody on port and returns its first line.
func startIntruder(t *testing.T, port int, args ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "grmwrap-intruder-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "intruder.py")
	if err := os.WriteFile(script, []byte(intruderPy), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", append([]string{script, strconv.Itoa(port)}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
	}()
	select {
	case l := <-line:
		return l
	case <-time.After(wait):
		t.Fatal("intruder said nothing")
	}
	return ""
}

// flows are client sockets, one per existing flow.
type clientFlows []*net.UDPConn

func openNeighbourFlows(t *testing.T, port, n int) clientFlows {
	t.Helper()
	var fs clientFlows
	for range n {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fs = append(fs, c)
	}
	return fs
}

// answers sends one datagram on every flow and counts the answers by their
// first word (the server's pid, or "intruder").
func (fs clientFlows) answers(t *testing.T) map[string]int {
	t.Helper()
	got := map[string]int{}
	buf := make([]byte, 256)
	for i, c := range fs {
		if _, err := c.Write([]byte("ping " + strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			got["none"]++
			continue
		}
		got[strings.Fields(string(buf[:n]))[0]]++
	}
	return got
}

func counterSum(st Status) uint64 {
	var n uint64
	for _, v := range st.Counters {
		n += v
	}
	return n
}

// TestNeighbourCannotJoinGroup: a process of the server's own user outside
// the service cannot bind into a managed group (EADDRINUSE, as without
// grmwrap), so it cannot attach a reuseport program that takes the flows
// over; existing flows stay with the server and steering keeps counting.
func TestNeighbourCannotJoinGroup(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.WorldExecutable(t, testbin.EchoC(t))

	// Control: without grmwrap, the same neighbour gets EADDRINUSE.
	port := testbin.FreeUDPPort(t)
	plain := exec.Command(echo, strconv.Itoa(port))
	plain.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	ps := testbin.Start(t, plain)
	ps.Ready(t, wait)
	if l := startIntruder(t, port); l != "bind-error errno=98" {
		t.Fatalf("control: the neighbour said %q without grmwrap, want bind-error errno=98 (EADDRINUSE)", l)
	}

	port = testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--user", "nobody", "--listen", ":" + strconv.Itoa(port)}, echo, strconv.Itoa(port))
	server := strconv.Itoa(s.first.PID)
	fs := openNeighbourFlows(t, port, 200)
	if got := fs.answers(t); got[server] != len(fs) {
		t.Fatalf("before the neighbour: answers %v, want all %d from the server %s", got, len(fs), server)
	}
	if uid := procNetUID(t, port); uid != "0" {
		t.Errorf("/proc/net/udp shows the managed socket with uid %s, want 0 (grmwrap's)", uid)
	}
	before := counterSum(s.status())
	l := startIntruder(t, port)
	got := fs.answers(t)
	t.Logf("neighbour said %q; answers of %d existing flows: %v", l, len(fs), got)
	if l != "bind-error errno=98" {
		t.Errorf("the neighbour said %q under grmwrap, want bind-error errno=98 (EADDRINUSE)", l)
	}
	if got[server] != len(fs) {
		t.Errorf("existing flows: answers %v, want all %d from the server %s", got, len(fs), server)
	}
	after := counterSum(s.status())
	if after < before+uint64(len(fs)) {
		t.Errorf("steering counters moved by %d for %d datagrams: the program no longer runs", after-before, len(fs))
	}

}

// procNetUID returns the uid column of the UDP socket bound to port in
// /proc/net/udp.
func procNetUID(t *testing.T, port int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf(":%04X", port)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 7 && strings.HasSuffix(f[1], local) {
			return f[7]
		}
	}
	t.Fatalf("no socket on port %d in /proc/net/udp", port)
	return ""
}

// TestNeighbourCannotJoinTCPGroup: with --tcp-reuseport the TCP listener's
// port is shared between generations, but not with a process of the
// server's user outside the service: its SO_REUSEPORT bind gets
// EADDRINUSE, as without grmwrap.
func TestNeighbourCannotJoinTCPGroup(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	echo := testbin.WorldExecutable(t, testbin.EchoC(t))
	port := testbin.FreeUDPPort(t)
	plain := exec.Command(echo, "--tcp", strconv.Itoa(port))
	plain.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	testbin.Start(t, plain).Ready(t, wait)
	if l := startIntruder(t, port, "tcp"); l != "bind-error errno=98" {
		t.Fatalf("control: the neighbour said %q without grmwrap, want bind-error errno=98 (EADDRINUSE)", l)
	}

	port = testbin.FreeUDPPort(t)
	s := startSvc(t, port, []string{"--user", "nobody", "--tcp-reuseport", "--listen", ":" + strconv.Itoa(port)},
		echo, "--tcp", strconv.Itoa(port))
	if s.first.TCPReuseport != 1 {
		t.Fatalf("generation 1: %+v, want its TCP socket with SO_REUSEPORT", s.first)
	}
	if l := startIntruder(t, port, "tcp"); l != "bind-error errno=98" {
		t.Fatalf("the neighbour said %q under grmwrap, want bind-error errno=98 (EADDRINUSE)", l)
	}
	if code := s.upgrade(nil).code; code != 0 {
		t.Fatalf("upgrade with the TCP port shared between generations: exit %d\n%s", code, s.g.Stderr())
	}
}
