//go:build e2e

package e2e

// QUIC end to end: ngtcp2's example HTTP/3 server as Debian packages it
// (gtlsserver, driven by gtlsclient) and a small quic-go server
// (testdata/e2e/quic-go-server, driven by a quic-go client in this
// process). In both, a connection opened before `grmwrap upgrade` keeps
// completing requests after it, served by the old instance, while a
// connection opened after it is served by the new one; once the old
// connection ends, the old instance drains and stops. Each has a negative
// control: the same client across a plain stop-and-start restart of the
// server loses its connection, because the new process has no state for it.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
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

	"github.com/quic-go/quic-go"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// ---------------------------------------------------------------------------
// Shared helpers: certificate, quic-go server build, status checks.

// testCert writes a fresh self-signed ECDSA P-256 certificate for
// localhost and 127.0.0.1 (valid for an hour) and its PKCS#8 key into dir,
// and returns the two file names and a pool that trusts the certificate.
func testCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"grmwrap e2e"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

var (
	quicGoOnce sync.Once
	quicGoPath string
	quicGoErr  error
)

// quicGoServer builds testdata/e2e/quic-go-server into bin/test once per
// test process (through a private directory and a rename, as testbin does)
// and returns the binary's absolute path.
func quicGoServer(t *testing.T) string {
	t.Helper()
	root := testbin.Root(t)
	quicGoOnce.Do(func() {
		dir := filepath.Join(root, "bin", "test")
		if quicGoErr = os.MkdirAll(dir, 0o755); quicGoErr != nil {
			return
		}
		tmp, err := os.MkdirTemp(dir, ".build-quic-go-server-")
		if err != nil {
			quicGoErr = err
			return
		}
		defer os.RemoveAll(tmp)
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		out := filepath.Join(tmp, "quic-go-server")
		cmd := exec.Command(gobin, "build", "-o", out, "./testdata/e2e/quic-go-server")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			quicGoErr = fmt.Errorf("building quic-go-server: %v\n%s", err, b)
			return
		}
		quicGoPath = filepath.Join(dir, "quic-go-server")
		quicGoErr = os.Rename(out, quicGoPath)
	})
	if quicGoErr != nil {
		t.Fatal(quicGoErr)
	}
	return quicGoPath
}

// generation returns generation n of a status, failing the test if absent.
func generation(t *testing.T, st Status, n int) (pid int, state string, sockets, flows int) {
	t.Helper()
	for _, g := range st.Generations {
		if g.Generation == n {
			return g.PID, g.State, g.Sockets, g.Flows
		}
	}
	t.Fatalf("no generation %d in status %+v", n, st)
	return 0, "", 0, 0
}

// expectAfterUpgrade checks the state right after an upgrade from
// generation 1 to 2: 2 works, 1 drains and still holds a flow (the
// pre-upgrade connection) and its sockets.
func expectAfterUpgrade(t *testing.T, st Status, pid1, pid2 int) {
	t.Helper()
	if st.WorkingGeneration != 2 {
		t.Errorf("working generation %d after the upgrade, want 2", st.WorkingGeneration)
	}
	p1, s1, k1, f1 := generation(t, st, 1)
	p2, s2, k2, _ := generation(t, st, 2)
	if p1 != pid1 || p2 != pid2 {
		t.Errorf("status pids gen1=%d gen2=%d, the servers said %d and %d", p1, p2, pid1, pid2)
	}
	if s1 != "draining" || s2 != "working" {
		t.Errorf("states gen1=%s gen2=%s, want draining and working", s1, s2)
	}
	if k1 < 1 || k2 < 1 {
		t.Errorf("sockets gen1=%d gen2=%d, want at least 1 each", k1, k2)
	}
	if f1 < 1 {
		t.Errorf("generation 1 has %d flows, want the pre-upgrade connection's", f1)
	}
}

// expectDrained checks that generation 1 has exited and 2 still works.
func expectDrained(t *testing.T, st Status) {
	t.Helper()
	if _, s1, _, _ := generation(t, st, 1); s1 != "exited" {
		t.Errorf("generation 1 is %s after the drain, want exited", s1)
	}
	if _, s2, k2, _ := generation(t, st, 2); s2 != "working" || k2 < 1 {
		t.Errorf("generation 2 is %s with %d sockets after the drain, want working with sockets", s2, k2)
	}
}

// ---------------------------------------------------------------------------
// quic-go: a client in this process.

const quicALPN = "grmwrap-echo" // testdata/e2e/quic-go-server's protocol

// quicClientConfig is the client side of every quic-go connection in these
// tests: a short idle timeout, so that a connection whose server lost its
// state ends within seconds.
var quicClientConfig = &quic.Config{
	HandshakeIdleTimeout: 5 * time.Second,
	MaxIdleTimeout:       5 * time.Second,
}

func quicDial(t *testing.T, addr string, pool *x509.CertPool) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, &tls.Config{
		RootCAs:    pool,
		ServerName: "localhost",
		NextProtos: []string{quicALPN},
		MinVersion: tls.VersionTLS13,
	}, quicClientConfig)
	if err != nil {
		t.Fatalf("QUIC handshake with %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "test over") })
	return conn
}

// quicAsk sends payload on a new stream of conn and returns the pid that
// answered. The whole exchange must finish within timeout.
func quicAsk(conn *quic.Conn, payload string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, fmt.Errorf("open stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = st.SetDeadline(deadline)
	if _, err := io.WriteString(st, payload); err != nil {
		st.CancelRead(1)
		return 0, fmt.Errorf("write: %w", err)
	}
	if err := st.Close(); err != nil {
		st.CancelRead(1)
		return 0, fmt.Errorf("close: %w", err)
	}
	reply, err := io.ReadAll(io.LimitReader(st, 1<<16))
	if err != nil {
		st.CancelRead(1)
		return 0, fmt.Errorf("read: %w", err)
	}
	head, rest, ok := strings.Cut(string(reply), " ")
	pidText, isPid := strings.CutPrefix(head, "pid=")
	pid, perr := strconv.Atoi(pidText)
	if !ok || !isPid || perr != nil || rest != payload {
		return 0, fmt.Errorf("reply %q to %q", reply, payload)
	}
	return pid, nil
}

// mustAsk asks on conn and fails the test unless pid answers.
func mustAsk(t *testing.T, conn *quic.Conn, payload string, pid int) {
	t.Helper()
	got, err := quicAsk(conn, payload, 5*time.Second)
	if err != nil {
		t.Fatalf("request %q: %v", payload, err)
	}
	if got != pid {
		t.Fatalf("request %q answered by pid %d, want %d", payload, got, pid)
	}
}

// exchange is one request of a stream of requests on one connection.
type exchange struct {
	n     int
	start time.Time
	took  time.Duration
	pid   int
	err   error
}

// requester sends a request on a new stream of conn every period, one at
// a time, until stop is called; stop returns every exchange in order.
func requester(conn *quic.Conn, name string, period, timeout time.Duration) (stop func() []exchange) {
	var (
		mu   sync.Mutex
		log  []exchange
		quit = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for n := 0; ; n++ {
			start := time.Now()
			pid, err := quicAsk(conn, fmt.Sprintf("%s-%d", name, n), timeout)
			mu.Lock()
			log = append(log, exchange{n: n, start: start, took: time.Since(start), pid: pid, err: err})
			mu.Unlock()
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	return func() []exchange {
		close(quit)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return append([]exchange(nil), log...)
	}
}

// split counts the exchanges started before and after t0.
func split(log []exchange, t0 time.Time) (before, after []exchange) {
	for _, e := range log {
		if e.start.Before(t0) {
			before = append(before, e)
		} else {
			after = append(after, e)
		}
	}
	return before, after
}

// quicGoArgs is the quic-go server's command line, with a fresh certificate,
// and a pool that trusts the certificate.
func quicGoArgs(t *testing.T, port int) ([]string, *x509.CertPool) {
	t.Helper()
	cert, key, pool := testCert(t, t.TempDir())
	return []string{quicGoServer(t), "--cert", cert, "--key", key, "--addr", "127.0.0.1", strconv.Itoa(port)}, pool
}

// TestQUICGoUpgrade: a quic-go server under grmwrap. Connection A, opened
// before the upgrade, sends a request on a new stream every 200ms across
// the upgrade: every one succeeds and is answered by the old instance.
// Connection B, opened after the upgrade, is answered by the new one. When
// A closes, the old instance drains (flow timeout) and stops, and B goes on.
func TestQUICGoUpgrade(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	began := time.Now()
	port := testbin.FreeUDPPort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	server, pool := quicGoArgs(t, port)
	const flowTimeout = 3 * time.Second
	s := Start(t, append([]string{"--flow-timeout", flowTimeout.String(), "--drain-timeout", "45s", "--"}, server...)...)
	r1 := s.Ready(t, 30*time.Second)
	if r1.Port != port || r1.UDPReuseport != 1 {
		t.Fatalf("generation 1 ready line %+v, want port %d and udp_reuseport=1 (a managed socket)", r1, port)
	}
	s.WaitSockets(t, 1)

	a := quicDial(t, addr, pool)
	mustAsk(t, a, "A-hello", r1.PID)
	stopA := requester(a, "A", 200*time.Millisecond, 3*time.Second)
	time.Sleep(time.Second)

	t0 := time.Now()
	s.MustUpgrade(t)
	upgraded := time.Now()
	r2 := s.Ready(t, 30*time.Second)
	if r2.PID == r1.PID || r2.Port != port {
		t.Fatalf("generation 2 ready line %+v; generation 1 was %+v", r2, r1)
	}
	t.Logf("upgrade took %v; generation 1: %+v, generation 2: %+v", upgraded.Sub(t0).Round(time.Millisecond), r1, r2)

	b := quicDial(t, addr, pool)
	mustAsk(t, b, "B-hello", r2.PID)
	expectAfterUpgrade(t, s.Status(t), r1.PID, r2.PID)

	time.Sleep(2500 * time.Millisecond)
	log := stopA()
	before, after := split(log, upgraded)
	var slowest time.Duration
	byPid := make(map[int]int) // answered requests by pid
	for _, e := range log {
		slowest = max(slowest, e.took)
		if e.err != nil {
			t.Errorf("A request %d (started %v after the upgrade): %v",
				e.n, e.start.Sub(upgraded).Round(time.Millisecond), e.err)
			continue
		}
		byPid[e.pid]++
		if e.pid != r1.PID {
			t.Errorf("A request %d answered by pid %d, want the old instance %d", e.n, e.pid, r1.PID)
		}
	}
	if len(before) < 3 || len(after) < 8 {
		t.Errorf("connection A made %d requests before and %d after the upgrade, want at least 3 and 8", len(before), len(after))
	}
	t.Logf("connection A: %d requests before the upgrade, %d after; answered, by pid: %v (old instance %d); slowest %v",
		len(before), len(after), byPid, r1.PID, slowest.Round(time.Millisecond))
	for i := range 5 {
		mustAsk(t, b, fmt.Sprintf("B-%d", i), r2.PID)
	}
	if t.Failed() {
		t.FailNow()
	}

	// A ends: the old instance has no live flow left and drains.
	_ = a.CloseWithError(0, "done")
	closed := time.Now()
	s.WaitDrained(t, 30*time.Second)
	t.Logf("generation 1 stopped %v after connection A closed (flow timeout %v)", time.Since(closed).Round(time.Millisecond), flowTimeout)
	expectDrained(t, s.Status(t))
	mustAsk(t, b, "B-after-drain", r2.PID)
	mustAsk(t, quicDial(t, addr, pool), "C-hello", r2.PID)
	t.Logf("counters: %v", s.Status(t).Counters)
	t.Logf("runtime %v", time.Since(began).Round(time.Millisecond))
}

// TestQUICGoRestartControl is TestQUICGoUpgrade's negative control: the
// same server and client, but the server is restarted plainly (SIGTERM,
// then started again on the same port). Connection A's requests after the
// restart all fail, although the new server answers new connections.
func TestQUICGoRestartControl(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	began := time.Now()
	port := testbin.FreeUDPPort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	server, pool := quicGoArgs(t, port)
	s1 := testbin.Start(t, exec.Command(server[0], server[1:]...))
	r1 := s1.Ready(t, 30*time.Second)
	if r1.UDPReuseport != 0 {
		t.Fatalf("plain server's ready line %+v, want udp_reuseport=0", r1)
	}

	a := quicDial(t, addr, pool)
	mustAsk(t, a, "A-hello", r1.PID)
	stopA := requester(a, "A", 200*time.Millisecond, 3*time.Second)
	time.Sleep(time.Second)

	if err := s1.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s1.Wait(t, 10*time.Second)
	s2 := testbin.Start(t, exec.Command(server[0], server[1:]...))
	r2 := s2.Ready(t, 30*time.Second)
	restarted := time.Now()
	b := quicDial(t, addr, pool)
	mustAsk(t, b, "B-hello", r2.PID)

	time.Sleep(4 * time.Second)
	log := stopA()
	before, after := split(log, restarted)
	for _, e := range before {
		if e.err == nil && e.pid != r1.PID {
			t.Errorf("A request %d before the restart answered by pid %d, want %d", e.n, e.pid, r1.PID)
		}
	}
	failed := 0
	for _, e := range after {
		if e.err == nil {
			t.Errorf("A request %d after the restart succeeded (pid %d): the control cannot fail", e.n, e.pid)
			continue
		}
		failed++
	}
	if failed == 0 {
		t.Errorf("connection A made no request after the restart")
	}
	lastErr := error(nil)
	if len(after) > 0 {
		lastErr = after[len(after)-1].err
	}
	t.Logf("plain restart: connection A made %d requests before it, %d after: %d failed (last: %v); new connection B served by pid %d",
		len(before), len(after), failed, lastErr, r2.PID)
	t.Logf("runtime %v", time.Since(began).Round(time.Millisecond))
}

// ---------------------------------------------------------------------------
// ngtcp2: gtlsserver (Debian ngtcp2-server) and gtlsclient (ngtcp2-client).

// ngtcp2Files are the documents each client fetches.
var ngtcp2Files = []string{"a.txt", "b.txt", "c.txt"}

// ngtcp2Docroot makes a document root whose files say which instance
// served them: "<tag> <name>\n".
func ngtcp2Docroot(t *testing.T, tag string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), tag)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range ngtcp2Files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(tag+" "+f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ngtcp2Server is gtlsserver's command line: quiet, docroot, address, port,
// key, certificate. Nothing else.
func ngtcp2Server(port int, docroot, key, cert string) []string {
	srv, _ := exec.LookPath("gtlsserver")
	return []string{srv, "-q", "-d", docroot, "127.0.0.1", strconv.Itoa(port), key, cert}
}

// ngtcp2Client is a started gtlsclient fetching every ngtcp2File on one
// connection into its own download directory.
type ngtcp2Client struct {
	*testbin.Server
	dir string
}

// startNgtcp2Client starts gtlsclient. delay > 0 holds the requests back
// for that long after the handshake (--delay-stream): the connection is
// open, the requests come later. The client logs (not -q) so that the test
// can see the handshake; the dumps of frames and bodies are off.
func startNgtcp2Client(t *testing.T, port int, delay time.Duration) *ngtcp2Client {
	t.Helper()
	dir := t.TempDir()
	cli, _ := exec.LookPath("gtlsclient")
	args := []string{"--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
		"--timeout=5s", "--download", dir}
	if delay > 0 {
		args = append(args, fmt.Sprintf("--delay-stream=%dms", delay.Milliseconds()))
	}
	p := strconv.Itoa(port)
	args = append(args, "127.0.0.1", p)
	for _, f := range ngtcp2Files {
		args = append(args, "https://127.0.0.1:"+p+"/"+f)
	}
	return &ngtcp2Client{Server: testbin.Start(t, exec.Command(cli, args...)), dir: dir}
}

// waitHandshake waits until the client's QUIC handshake is confirmed.
func (c *ngtcp2Client) waitHandshake(t *testing.T, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(c.Stderr(), "QUIC handshake has been confirmed") {
		if c.Exited() || time.Now().After(deadline) {
			t.Fatalf("gtlsclient: no confirmed handshake (exited: %v); its log ends:\n%s", c.Exited(), tail(c.Stderr(), 30))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}

// bodies waits for the client to exit and returns what it downloaded, by
// file name ("" for a missing or empty file), and its exit status.
func (c *ngtcp2Client) bodies(t *testing.T, timeout time.Duration) (map[string]string, int) {
	t.Helper()
	code := c.Wait(t, timeout)
	got := make(map[string]string)
	for _, f := range ngtcp2Files {
		b, _ := os.ReadFile(filepath.Join(c.dir, f))
		got[f] = string(b)
	}
	return got, code
}

// expectBodies checks that every file came from the instance tagged tag.
func expectBodies(t *testing.T, who string, got map[string]string, code int, tag string, log string) {
	t.Helper()
	ok := code == 0
	for _, f := range ngtcp2Files {
		if got[f] != tag+" "+f+"\n" {
			ok = false
		}
	}
	if !ok {
		t.Errorf("%s: exit %d, bodies %q, want every file from %s; its log ends:\n%s", who, code, got, tag, tail(log, 30))
	}
}

// waitUDPBound waits until a UDP socket is bound to 127.0.0.1:port, as
// /proc/net/udp of the test's network namespace shows it (read only: a
// probing bind could take the port from the server).
func waitUDPBound(t *testing.T, s *testbin.Server, port int) {
	t.Helper()
	local := fmt.Sprintf("0100007F:%04X", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile("/proc/net/udp")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 1 && f[1] == local {
				return
			}
		}
		if s.Exited() || time.Now().After(deadline) {
			t.Fatalf("nothing bound 127.0.0.1:%d (server exited: %v); stderr:\n%s", port, s.Exited(), s.Stderr())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ngtcp2Delay is how long the pre-upgrade connection holds its requests
// back after its handshake: the upgrade (or the restart) happens within it.
const ngtcp2Delay = 3 * time.Second

// TestQUICNgtcp2Upgrade: ngtcp2's HTTP/3 example server under grmwrap.
// Client A completes its handshake with generation 1 and holds its three
// requests back; grmwrap upgrades to generation 2 (same server, another
// document root) meanwhile; A's requests, sent after the upgrade on the
// connection opened before it, all complete from generation 1's document
// root. Client B, after the upgrade, gets generation 2's. Then generation 1
// drains and stops.
func TestQUICNgtcp2Upgrade(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "gtlsserver", "gtlsclient")
	began := time.Now()
	cert, key, _ := testCert(t, t.TempDir())
	root1, root2 := ngtcp2Docroot(t, "gen1"), ngtcp2Docroot(t, "gen2")
	port := testbin.FreeUDPPort(t)
	const flowTimeout = 5 * time.Second // longer than A's silence before its requests
	s := Start(t, append([]string{"--flow-timeout", flowTimeout.String(), "--drain-timeout", "45s", "--"},
		ngtcp2Server(port, root1, key, cert)...)...)
	s.WaitSockets(t, 1)
	pid1, _, _, _ := generation(t, s.Status(t), 1)

	a := startNgtcp2Client(t, port, ngtcp2Delay)
	handshake := a.waitHandshake(t, 15*time.Second)
	s.MustUpgrade(t, append([]string{"--"}, ngtcp2Server(port, root2, key, cert)...)...)
	upgraded := time.Since(handshake)
	if upgraded > ngtcp2Delay-500*time.Millisecond {
		t.Fatalf("the upgrade ended %v after A's handshake, too close to A's requests (%v): inconclusive", upgraded, ngtcp2Delay)
	}
	st := s.Status(t)
	pid2, _, _, _ := generation(t, st, 2)
	expectAfterUpgrade(t, st, pid1, pid2)
	t.Logf("upgrade done %v after A's handshake; A sends its requests %v after it", upgraded.Round(time.Millisecond), ngtcp2Delay)

	b := startNgtcp2Client(t, port, 0)
	gotB, codeB := b.bodies(t, 20*time.Second)
	expectBodies(t, "client B (after the upgrade)", gotB, codeB, "gen2", b.Stderr())

	gotA, codeA := a.bodies(t, 20*time.Second)
	expectBodies(t, "client A (connected before the upgrade, requests after it)", gotA, codeA, "gen1", a.Stderr())
	aDone := time.Now()
	if time.Since(handshake) < ngtcp2Delay {
		t.Errorf("client A finished %v after its handshake, before its delayed requests", time.Since(handshake))
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("client A: %d requests sent after the upgrade on its pre-upgrade connection, all from gen1; client B: all from gen2", len(ngtcp2Files))

	s.WaitDrained(t, 30*time.Second)
	t.Logf("generation 1 (pid %d) stopped %v after client A finished (flow timeout %v)", pid1, time.Since(aDone).Round(time.Millisecond), flowTimeout)
	expectDrained(t, s.Status(t))
	c := startNgtcp2Client(t, port, 0)
	gotC, codeC := c.bodies(t, 20*time.Second)
	expectBodies(t, "client C (after the drain)", gotC, codeC, "gen2", c.Stderr())
	t.Logf("counters: %v", s.Status(t).Counters)
	t.Logf("runtime %v", time.Since(began).Round(time.Millisecond))
}

// TestQUICNgtcp2RestartControl is TestQUICNgtcp2Upgrade's negative
// control: the same clients, but gtlsserver is restarted plainly (SIGTERM,
// then started again with the second document root) while client A holds
// its requests back. None of A's requests completes, while client B, on a
// new connection, is served by the new server.
func TestQUICNgtcp2RestartControl(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	need(t, "gtlsserver", "gtlsclient")
	began := time.Now()
	cert, key, _ := testCert(t, t.TempDir())
	root1, root2 := ngtcp2Docroot(t, "gen1"), ngtcp2Docroot(t, "gen2")
	port := testbin.FreeUDPPort(t)

	argv1 := ngtcp2Server(port, root1, key, cert)
	s1 := testbin.Start(t, exec.Command(argv1[0], argv1[1:]...))
	waitUDPBound(t, s1, port)
	a := startNgtcp2Client(t, port, ngtcp2Delay)
	handshake := a.waitHandshake(t, 15*time.Second)

	if err := s1.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s1.Wait(t, 10*time.Second)
	argv2 := ngtcp2Server(port, root2, key, cert)
	s2 := testbin.Start(t, exec.Command(argv2[0], argv2[1:]...))
	waitUDPBound(t, s2, port)
	b := startNgtcp2Client(t, port, 0)
	gotB, codeB := b.bodies(t, 20*time.Second)
	expectBodies(t, "client B (after the restart)", gotB, codeB, "gen2", b.Stderr())
	restarted := time.Since(handshake)
	if restarted > ngtcp2Delay-500*time.Millisecond {
		t.Fatalf("the new server answered %v after A's handshake, too close to A's requests (%v): inconclusive", restarted, ngtcp2Delay)
	}

	gotA, codeA := a.bodies(t, 30*time.Second)
	served := 0
	for _, f := range ngtcp2Files {
		if gotA[f] != "" {
			served++
			t.Errorf("client A got %s = %q across a plain restart: the control cannot fail", f, gotA[f])
		}
	}
	t.Logf("plain restart: new server up %v after A's handshake; client A (exit %d) completed %d of %d requests, ended %v after its handshake; its log ends:\n%s",
		restarted.Round(time.Millisecond), codeA, served, len(ngtcp2Files), time.Since(handshake).Round(time.Millisecond), tail(a.Stderr(), 4))
	t.Logf("runtime %v", time.Since(began).Round(time.Millisecond))
}
