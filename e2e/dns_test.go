//go:build e2e

package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// The DNS scenarios: dnsmasq (one UDP socket) and unbound (one UDP socket
// per thread, each with its own SO_REUSEPORT, plus outgoing binds, so grmwrap
// manages only the --listen address) run as packaged and are driven by
// dnsperf at a steady rate. Three upgrades during the run must lose nothing;
// the negative control, the same run with three plain stop-and-start
// restarts of the bare server, must lose queries.

const (
	dnsQPS      = 2000            // dnsperf -Q: easy for a 2-core machine
	dnsClients  = 8               // dnsperf -c: eight client sockets, eight flows
	dnsRunFor   = 8 * time.Second // dnsperf -l
	dnsTimeout  = 2               // dnsperf -t, seconds: a query unanswered by then is lost
	dnsUpgrades = 3
)

// dnsRestartAt are the times, from dnsperf's start, of the three upgrades (or
// of the three restarts of the negative control).
var dnsRestartAt = [dnsUpgrades]time.Duration{1500 * time.Millisecond, 3500 * time.Millisecond, 5500 * time.Millisecond}

// grmwrap flags that let an old generation go quickly: dnsperf's client
// sockets are flows that never go idle, so with the flow dissector each old
// generation keeps them until --drain-timeout and is then quiesced.
var dnsDrainFlags = []string{"--flow-timeout", "1s", "--drain-timeout", "2s", "--kill-timeout", "5s"}

// dnsServer is a packaged DNS server as the tests run it.
type dnsServer struct {
	name string
	// sockets is how many UDP sockets one instance binds on the service address.
	sockets int
	// argv is the server's command line for the service port.
	argv func(t *testing.T, port int) []string
	// grmwrapFlags go before the dissector and drain flags.
	grmwrapFlags func(port int) []string
}

// dnsmasq answers every name under example.test itself (--address), reads no
// configuration, resolv.conf or hosts file, stays in the foreground, writes
// no pid file and logs to stderr. It binds one UDP socket, 127.0.0.1:PORT,
// and a TCP listener on the same address: --tcp-reuseport lets the next
// generation bind that TCP port while the old one still listens.
var dnsmasq = dnsServer{
	name:    "dnsmasq",
	sockets: 1,
	argv: func(t *testing.T, port int) []string {
		return []string{
			"dnsmasq",
			"--keep-in-foreground",
			"--conf-file=/dev/null",
			"--no-resolv",
			"--no-hosts",
			"--address=/example.test/127.0.0.1",
			"--listen-address=127.0.0.1",
			"--bind-interfaces",
			"--port=" + strconv.Itoa(port),
			"--pid-file=",
			"--log-facility=-",
		}
	},
	grmwrapFlags: func(int) []string { return []string{"--tcp-reuseport"} },
}

// unbound runs testdata/e2e/dns/unbound.conf: two threads, each with its own
// UDP socket on 127.0.0.1:PORT (so-reuseport), and a local zone that answers
// every name under example.test. grmwrap manages only the service address:
// unbound binds many outgoing ports too.
var unbound = dnsServer{
	name:    "unbound",
	sockets: 2,
	argv: func(t *testing.T, port int) []string {
		tmpl, err := os.ReadFile(filepath.Join(testbin.Root(t), "testdata", "e2e", "dns", "unbound.conf"))
		if err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(t.TempDir(), "unbound.conf")
		text := strings.ReplaceAll(string(tmpl), "@PORT@", strconv.Itoa(port))
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{"unbound", "-d", "-p", "-c", conf}
	},
	grmwrapFlags: func(port int) []string {
		return []string{"--listen", "127.0.0.1:" + strconv.Itoa(port)}
	},
}

func TestDNSDnsmasqUpgrades(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dnsUpgradeRun(t, dnsmasq, "flow")
}

func TestDNSDnsmasqNoopUpgrades(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dnsUpgradeRun(t, dnsmasq, "noop")
}

func TestDNSDnsmasqRestartLosesQueries(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dnsRestartRun(t, dnsmasq)
}

func TestDNSUnboundUpgrades(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dnsUpgradeRun(t, unbound, "flow")
}

func TestDNSUnboundRestartLosesQueries(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	dnsRestartRun(t, unbound)
}

// dnsUpgradeRun runs srv under grmwrap with the dissector, drives it with
// dnsperf and upgrades it three times during the run: dnsperf must lose no
// query and generation 4 must be the only one left.
func dnsUpgradeRun(t *testing.T, srv dnsServer, dissector string) {
	need(t, srv.name, "dnsperf")
	port := testbin.FreeUDPPort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	args := srv.grmwrapFlags(port)
	args = append(args, "--dissector", dissector)
	args = append(args, dnsDrainFlags...)
	args = append(args, "--")
	args = append(args, srv.argv(t, port)...)
	s := Start(t, args...)
	s.WaitSockets(t, srv.sockets)
	dnsWaitAnswer(t, addr, 10*time.Second)

	perf := startDNSPerf(t, port)
	upgraded := 0
	for i, at := range dnsRestartAt {
		time.Sleep(time.Until(perf.started.Add(at)))
		begin := time.Now()
		if code, out := s.Upgrade(t); code != 0 {
			// The supervisor's log is shown by the cleanup.
			t.Fatalf("upgrade %d exited %d: %s%s", i+1, code, out, dnsTCPHint(s.Stderr()))
		}
		upgraded++
		t.Logf("upgrade %d at %v took %v", i+1, begin.Sub(perf.started).Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
		if s.Exited() {
			t.Fatalf("grmwrap exited after upgrade %d%s", i+1, dnsTCPHint(s.Stderr()))
		}
	}
	res := perf.wait(t)
	t.Logf("%s under grmwrap (--dissector %s), %d upgrades: %s", srv.name, dissector, upgraded, res)

	if s.Exited() {
		t.Fatalf("grmwrap exited during the run (%s)%s", res, dnsTCPHint(s.Stderr()))
	}
	s.WaitDrained(t, 10*time.Second)
	st := s.Status(t)
	t.Logf("status: working generation %d, generations %+v, counters %v", st.WorkingGeneration, st.Generations, st.Counters)

	if upgraded != dnsUpgrades {
		t.Errorf("%d upgrades succeeded, want %d", upgraded, dnsUpgrades)
	}
	if st.WorkingGeneration != 1+dnsUpgrades {
		t.Errorf("working generation %d, want %d", st.WorkingGeneration, 1+dnsUpgrades)
	}
	if len(st.Generations) != 1+dnsUpgrades {
		t.Errorf("status lists %d generations, want %d: %+v", len(st.Generations), 1+dnsUpgrades, st.Generations)
	}
	for _, g := range st.Generations {
		switch {
		case g.Generation == st.WorkingGeneration:
			if g.State != "working" || g.Sockets != srv.sockets {
				t.Errorf("working generation %d: state %s with %d sockets, want working with %d",
					g.Generation, g.State, g.Sockets, srv.sockets)
			}
		case g.State != "exited":
			t.Errorf("old generation %d is %s, want exited", g.Generation, g.State)
		}
	}

	minSent := dnsQPS * int(dnsRunFor/time.Second) / 2
	if res.Sent < minSent {
		t.Errorf("dnsperf sent %d queries, want at least %d: the load did not run", res.Sent, minSent)
	}
	if res.Lost != 0 || res.Completed != res.Sent {
		t.Errorf("dnsperf lost %d queries (sent %d, completed %d), want none%s",
			res.Lost, res.Sent, res.Completed, dnsTCPHint(s.Stderr()))
	}
	if res.NoError != res.Completed {
		t.Errorf("%d of %d answers were not NOERROR: %s", res.Completed-res.NoError, res.Completed, res.Codes)
	}
}

// dnsRestartRun is the negative control: the same dnsperf run against the
// bare server, restarted by a plain stop and start at the upgrade times.
// dnsperf must report lost queries.
func dnsRestartRun(t *testing.T, srv dnsServer) {
	need(t, srv.name, "dnsperf")
	port := testbin.FreeUDPPort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	argv := srv.argv(t, port)

	cur := testbin.Start(t, exec.Command(argv[0], argv[1:]...))
	dnsWaitAnswer(t, addr, 10*time.Second)

	perf := startDNSPerf(t, port)
	for i, at := range dnsRestartAt {
		time.Sleep(time.Until(perf.started.Add(at)))
		begin := time.Now()
		if err := cur.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("stopping %s: %v", srv.name, err)
		}
		cur.Wait(t, 10*time.Second)
		stopped := time.Since(begin)
		cur = testbin.Start(t, exec.Command(argv[0], argv[1:]...))
		dnsWaitAnswer(t, addr, 10*time.Second)
		t.Logf("restart %d at %v: stopped after %v, answering again after %v", i+1,
			begin.Sub(perf.started).Round(time.Millisecond), stopped.Round(time.Microsecond), time.Since(begin).Round(time.Microsecond))
	}
	res := perf.wait(t)
	t.Logf("%s restarted by stop and start (negative control), %d restarts: %s", srv.name, dnsUpgrades, res)

	minSent := dnsQPS * int(dnsRunFor/time.Second) / 2
	if res.Sent < minSent {
		t.Errorf("dnsperf sent %d queries, want at least %d: the load did not run", res.Sent, minSent)
	}
	if res.Lost == 0 {
		t.Errorf("negative control: stop-and-start restarts lost no query (sent %d, completed %d): this run cannot show a loss", res.Sent, res.Completed)
	}
}

// dnsTCPHint explains the failure when a new dnsmasq generation died on
// its TCP listener.
func dnsTCPHint(log string) string {
	if strings.Contains(log, "failed to create listening socket") && strings.Contains(log, "Address already in use") {
		return "; a new generation exited at once: it could not bind its TCP listener on the service port" +
			" (grmwrap does not manage TCP binds) while the old generation held it; see the supervisor's log"
	}
	return ""
}

// dnsPerf is a running dnsperf.
type dnsPerf struct {
	cmd     *exec.Cmd
	out     *testbin.SyncBuffer
	started time.Time
	done    chan struct{}
	err     error
}

// startDNSPerf starts dnsperf against 127.0.0.1:port with the query file of
// testdata/e2e/dns and the rate, clients, run time and timeout above.
func startDNSPerf(t *testing.T, port int) *dnsPerf {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &dnsPerf{out: &testbin.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, "dnsperf",
		"-s", "127.0.0.1",
		"-p", strconv.Itoa(port),
		"-d", filepath.Join(testbin.Root(t), "testdata", "e2e", "dns", "queries.txt"),
		"-l", strconv.Itoa(int(dnsRunFor/time.Second)),
		"-Q", strconv.Itoa(dnsQPS),
		"-c", strconv.Itoa(dnsClients),
		"-t", strconv.Itoa(dnsTimeout),
	)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting dnsperf: %v", err)
	}
	p.started = time.Now()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	return p
}

// dnsPerfResult holds dnsperf's figures.
type dnsPerfResult struct {
	Sent, Completed, Lost int
	NoError               int    // answers with rcode NOERROR
	Codes                 string // the Response codes line
	QPS                   string
}

func (r dnsPerfResult) String() string {
	return fmt.Sprintf("sent=%d completed=%d lost=%d noerror=%d qps=%s", r.Sent, r.Completed, r.Lost, r.NoError, r.QPS)
}

// wait waits for dnsperf to finish and parses its statistics.
func (p *dnsPerf) wait(t *testing.T) dnsPerfResult {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(dnsRunFor + time.Duration(dnsTimeout)*time.Second + 20*time.Second):
		t.Fatalf("dnsperf still running; output:\n%s", p.out)
	}
	out := p.out.String()
	if p.err != nil {
		t.Fatalf("dnsperf: %v\n%s", p.err, out)
	}
	res, err := parseDNSPerf(out)
	if err != nil {
		t.Fatalf("%v; dnsperf output:\n%s", err, out)
	}
	return res
}

var (
	dnsperfSent      = regexp.MustCompile(`(?m)^\s*Queries sent:\s+(\d+)`)
	dnsperfCompleted = regexp.MustCompile(`(?m)^\s*Queries completed:\s+(\d+)`)
	dnsperfLost      = regexp.MustCompile(`(?m)^\s*Queries lost:\s+(\d+)`)
	dnsperfCodes     = regexp.MustCompile(`(?m)^\s*Response codes:\s+(.*)$`)
	dnsperfNoError   = regexp.MustCompile(`\bNOERROR (\d+)`)
	dnsperfQPS       = regexp.MustCompile(`(?m)^\s*Queries per second:\s+(\S+)`)
)

// parseDNSPerf reads the Statistics section of dnsperf's output.
func parseDNSPerf(out string) (dnsPerfResult, error) {
	var r dnsPerfResult
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *int
	}{{dnsperfSent, &r.Sent}, {dnsperfCompleted, &r.Completed}, {dnsperfLost, &r.Lost}} {
		m := f.re.FindStringSubmatch(out)
		if m == nil {
			return r, fmt.Errorf("dnsperf output has no %q", strings.Fields(f.re.String())[0])
		}
		*f.dst, _ = strconv.Atoi(m[1])
	}
	if m := dnsperfCodes.FindStringSubmatch(out); m != nil {
		r.Codes = strings.TrimSpace(m[1])
		if n := dnsperfNoError.FindStringSubmatch(r.Codes); n != nil {
			r.NoError, _ = strconv.Atoi(n[1])
		}
	}
	if m := dnsperfQPS.FindStringSubmatch(out); m != nil {
		r.QPS = m[1]
	}
	return r, nil
}

// dnsWaitAnswer waits until the server at addr answers an A query for a name
// under example.test with 127.0.0.1.
func dnsWaitAnswer(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for id := uint16(1); time.Now().Before(deadline); id++ {
		if err = dnsQuery(addr, "probe.example.test", id, 100*time.Millisecond); err == nil {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("no DNS answer from %s within %v: %v", addr, timeout, err)
}

// dnsQuery sends one A query for name to addr and checks that the answer is
// NOERROR with the A record 127.0.0.1.
func dnsQuery(addr, name string, id uint16, timeout time.Duration) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	q := binary.BigEndian.AppendUint16(nil, id)
	q = append(q, 0x01, 0x00) // RD
	q = binary.BigEndian.AppendUint16(q, 1)
	q = append(q, 0, 0, 0, 0, 0, 0) // no answer, authority, additional
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0, 0, 1, 0, 1) // root, type A, class IN
	if _, err := c.Write(q); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	return checkDNSAnswer(buf[:n], id, len(q)-12)
}

// checkDNSAnswer checks a reply to the query built by dnsQuery, whose
// question section is qlen bytes long.
func checkDNSAnswer(m []byte, id uint16, qlen int) error {
	if len(m) < 12+qlen {
		return fmt.Errorf("short reply (%d bytes)", len(m))
	}
	if binary.BigEndian.Uint16(m) != id {
		return errors.New("reply to another query")
	}
	if m[2]&0x80 == 0 {
		return errors.New("not a reply")
	}
	if rcode := m[3] & 0x0f; rcode != 0 {
		return fmt.Errorf("rcode %d", rcode)
	}
	if binary.BigEndian.Uint16(m[6:]) == 0 {
		return errors.New("no answer record")
	}
	p := 12 + qlen
	// The answer's owner name: a compression pointer or labels.
	for {
		if p >= len(m) {
			return errors.New("truncated answer")
		}
		l := int(m[p])
		if l&0xc0 == 0xc0 {
			p += 2
			break
		}
		p += 1 + l
		if l == 0 {
			break
		}
	}
	if p+10 > len(m) {
		return errors.New("truncated answer")
	}
	typ, rdlen := binary.BigEndian.Uint16(m[p:]), int(binary.BigEndian.Uint16(m[p+8:]))
	p += 10
	if typ != 1 || rdlen != 4 || p+4 > len(m) {
		return fmt.Errorf("answer is not an A record (type %d, %d bytes)", typ, rdlen)
	}
	if got := net.IP(m[p : p+4]); !got.Equal(net.IPv4(127, 0, 0, 1)) {
		return fmt.Errorf("answer %v, want 127.0.0.1", got)
	}
	return nil
}
