package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// Helpers for the data plane's integration tests. Every test runs in its
// own network namespace (nstest), so the only traffic the sockets see is
// the test's own. Steering cannot be run with BPF_PROG_RUN: the tests bind
// real SO_REUSEPORT sockets, send real datagrams from real client sockets
// (one client socket = one flow) and look at which socket received each.
//
// Nothing here asserts on time: a deadline only turns a lost datagram into
// a failure instead of a hang.

// TestMain lets the re-executed test binaries of a -race run exit at once:
// every privileged test runs in a child (nstest), and the race runtime
// sleeps a second at exit by default (atexit_sleep_ms), 20s over the suite.
func TestMain(m *testing.M) {
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// lossDeadline is how long collect waits for datagrams that were sent
// before it calls them lost.
const lossDeadline = 10 * time.Second

// batch is how many datagrams are in flight at most before they are
// collected, far below what a default receive buffer holds.
const batch = 64

// hour is the flow timeout of tests that do not test expiry.
const hour = time.Hour

// server is one listening socket. The test holds the only reference to it
// (f), so closing f closes the socket.
type server struct {
	name   string
	f      *os.File
	fd     int
	addr   netip.AddrPort // bound address, port filled in
	gid    uint32
	gen    uint32
	slot   uint32
	cookie uint64
	closed bool
}

func (s *server) String() string { return s.name }

// client is one flow: a connected UDP socket. Payloads carry its id and a
// sequence number.
type client struct {
	id     uint32
	fd     int
	local  netip.AddrPort
	remote netip.AddrPort
	seq    uint32
}

// env is one test's data plane and sockets.
type env struct {
	t       *testing.T
	d       *DataPlane
	servers []*server
	byID    map[uint32]*client
	nextID  uint32
}

// newEnv loads a data plane with opts; everything is released at the end
// of the test.
func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	d, err := Load(opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	e := &env{t: t, d: d, byID: make(map[uint32]*client)}
	t.Cleanup(func() {
		e.assertQuiet()
		for _, s := range e.servers {
			if !s.closed {
				s.closed = true
				s.f.Close()
			}
		}
		for _, c := range e.byID {
			unix.Close(c.fd)
		}
		e.d.Close()
	})
	return e
}

// listen binds a UDP socket with SO_REUSEPORT to ap. An unspecified IPv6
// address ([::]) gets a dual-stack socket (IPV6_V6ONLY=0); any other IPv6
// address an IPv6-only one.
func (e *env) listen(ap netip.AddrPort) *server {
	e.t.Helper()
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		e.t.Fatalf("socket: %v", err)
	}
	fail := func(what string, err error) {
		unix.Close(fd)
		e.t.Fatalf("%s %s: %v", what, ap, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		fail("SO_REUSEPORT", err)
	}
	if family == unix.AF_INET6 {
		v6only := 1
		if ap.Addr() == netip.IPv6Unspecified() {
			v6only = 0
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			fail("IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		fail("getsockname", err)
	}
	s := &server{fd: fd, addr: addrPort(sa)}
	s.name = fmt.Sprintf("socket#%d(%s)", len(e.servers), s.addr)
	// A blocking fd: os.NewFile leaves it out of the runtime poller, and
	// Close closes it at once.
	s.f = os.NewFile(uintptr(fd), s.name)
	e.servers = append(e.servers, s)
	return s
}

// addGen binds n sockets to ap (the first one picks the port when ap has
// none) and puts them into group gid as generation gen, slots 0..n-1.
func (e *env) addGen(gid, gen uint32, n int, ap netip.AddrPort) []*server {
	e.t.Helper()
	var out []*server
	for i := range n {
		s := e.listen(ap)
		ap = s.addr
		e.add(s, gid, gen, uint32(i))
		out = append(out, s)
	}
	return out
}

// add puts s into group gid as (gen, slot).
func (e *env) add(s *server, gid, gen, slot uint32) {
	e.t.Helper()
	cookie, err := e.d.AddSocket(gid, gen, slot, s.f)
	if err != nil {
		e.t.Fatalf("AddSocket(%d, %d, %d, %s): %v", gid, gen, slot, s, err)
	}
	s.gid, s.gen, s.slot, s.cookie = gid, gen, slot, cookie
	s.name = fmt.Sprintf("%s[g%d gen%d slot%d]", s.name, gid, gen, slot)
}

// close closes s: the test holds no other copy, so the socket is gone.
func (e *env) close(s *server) {
	e.t.Helper()
	if s.closed {
		return
	}
	s.closed = true
	if err := s.f.Close(); err != nil {
		e.t.Fatalf("close %s: %v", s, err)
	}
}

// setGroup writes group gid's state.
func (e *env) setGroup(gid, gen uint32, count int, dis generations.Dissector, timeout time.Duration) {
	e.t.Helper()
	st := generations.GroupState{WorkingGen: gen, Count: uint32(count), Dissector: dis, FlowTimeout: timeout}
	if err := e.d.SetGroup(gid, st); err != nil {
		e.t.Fatalf("SetGroup(%d, %+v): %v", gid, st, err)
	}
}

// clients opens n flows to dst.
func (e *env) clients(n int, dst netip.AddrPort) []*client {
	e.t.Helper()
	family := unix.AF_INET
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}
	out := make([]*client, 0, n)
	for range n {
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			e.t.Fatalf("client socket (%d open): %v", len(e.byID), err)
		}
		if err := unix.Connect(fd, sockaddr(dst)); err != nil {
			unix.Close(fd)
			e.t.Fatalf("connect %s: %v", dst, err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			e.t.Fatalf("getsockname: %v", err)
		}
		e.nextID++
		c := &client{id: e.nextID, fd: fd, local: addrPort(sa), remote: dst}
		e.byID[c.id] = c
		out = append(out, c)
	}
	return out
}

// dgram names one datagram.
type dgram struct{ id, seq uint32 }

// roundtrip sends per datagrams from every client and returns, per client,
// the socket that received each of them, in sending order. Every datagram
// must be received exactly once by one of the test's open sockets.
func (e *env) roundtrip(cls []*client, per int) map[*client][]*server {
	e.t.Helper()
	out := make(map[*client][]*server, len(cls))
	want := make(map[dgram]*server) // filled in by collect
	var order []dgram
	base := make(map[*client]uint32, len(cls))
	for _, c := range cls {
		out[c] = make([]*server, per)
		base[c] = c.seq
		for range per {
			d := dgram{c.id, c.seq}
			c.seq++
			var p [8]byte
			binary.BigEndian.PutUint32(p[0:], d.id)
			binary.BigEndian.PutUint32(p[4:], d.seq)
			if _, err := unix.Write(c.fd, p[:]); err != nil {
				e.t.Fatalf("send flow %d seq %d from %s: %v", d.id, d.seq, c.local, err)
			}
			want[d] = nil
			order = append(order, d)
			if len(order) >= batch {
				e.collect(want, order)
				order = order[:0]
			}
		}
	}
	e.collect(want, order)
	for d, s := range want {
		c := e.byID[d.id]
		out[c][d.seq-base[c]] = s
	}
	return out
}

// collect receives the datagrams in pending from the open sockets and
// records in want which socket got each.
func (e *env) collect(want map[dgram]*server, pending []dgram) {
	e.t.Helper()
	left := make(map[dgram]bool, len(pending))
	for _, d := range pending {
		left[d] = true
	}
	deadline := time.Now().Add(lossDeadline)
	buf := make([]byte, 64)
	for len(left) > 0 {
		var open []*server
		var pfds []unix.PollFd
		for _, s := range e.servers {
			if !s.closed {
				open = append(open, s)
				pfds = append(pfds, unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN})
			}
		}
		if len(open) == 0 {
			e.t.Fatalf("%d datagrams sent but no socket is open", len(left))
		}
		if _, err := unix.Poll(pfds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			e.t.Fatalf("poll: %v", err)
		}
		for i, s := range open {
			if pfds[i].Revents&unix.POLLIN == 0 {
				continue
			}
			for {
				n, _, err := unix.Recvfrom(s.fd, buf, unix.MSG_DONTWAIT)
				if errors.Is(err, unix.EAGAIN) {
					break
				}
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					e.t.Fatalf("receive on %s: %v", s, err)
				}
				if n != 8 {
					e.t.Fatalf("%s received a %d-byte datagram", s, n)
				}
				d := dgram{binary.BigEndian.Uint32(buf[0:]), binary.BigEndian.Uint32(buf[4:])}
				if !left[d] {
					e.t.Fatalf("%s received unexpected datagram flow %d seq %d (duplicate or stray)", s, d.id, d.seq)
				}
				delete(left, d)
				want[d] = s
			}
		}
		if len(left) > 0 && time.Now().After(deadline) {
			e.t.Fatalf("%d of %d datagrams never arrived at any socket (lost)", len(left), len(pending))
		}
	}
}

// assertQuiet reports datagrams that no roundtrip expected.
func (e *env) assertQuiet() {
	var pfds []unix.PollFd
	var open []*server
	for _, s := range e.servers {
		if !s.closed {
			open = append(open, s)
			pfds = append(pfds, unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN})
		}
	}
	if len(pfds) == 0 {
		return
	}
	if _, err := unix.Poll(pfds, 0); err != nil {
		return
	}
	for i, s := range open {
		if pfds[i].Revents&unix.POLLIN != 0 {
			e.t.Errorf("%s has datagrams nobody sent to it in a roundtrip", s)
		}
	}
}

// wantCounters checks every counter of group gid: those not in want must
// be zero.
func (e *env) wantCounters(gid uint32, want map[string]uint64) {
	e.t.Helper()
	names := CounterNames()
	for n := range want {
		if !slices.Contains(names, n) {
			e.t.Fatalf("test bug: no counter named %q", n)
		}
	}
	got, err := e.d.Counters(gid)
	if err != nil {
		e.t.Fatalf("Counters(%d): %v", gid, err)
	}
	if len(got) != len(names) {
		e.t.Errorf("Counters(%d) has %d names, CounterNames %d", gid, len(got), len(names))
	}
	for _, n := range names {
		if got[n] != want[n] {
			e.t.Errorf("group %d: %s = %d, want %d", gid, n, got[n], want[n])
		}
	}
}

// counter returns one counter of group gid.
func (e *env) counter(gid uint32, name string) uint64 {
	e.t.Helper()
	got, err := e.d.Counters(gid)
	if err != nil {
		e.t.Fatalf("Counters(%d): %v", gid, err)
	}
	v, ok := got[name]
	if !ok {
		e.t.Fatalf("no counter %q", name)
	}
	return v
}

// wantFlowCounts checks FlowCounts(gid, timeout) exactly.
func (e *env) wantFlowCounts(gid uint32, timeout time.Duration, want map[uint32]int) {
	e.t.Helper()
	got, err := e.d.FlowCounts(gid, timeout)
	if err != nil {
		e.t.Fatalf("FlowCounts(%d): %v", gid, err)
	}
	for gen, n := range want {
		if n == 0 {
			delete(want, gen)
		}
	}
	if len(got) != len(want) {
		e.t.Errorf("FlowCounts(%d, %v) = %v, want %v", gid, timeout, got, want)
		return
	}
	for gen, n := range want {
		if got[gen] != n {
			e.t.Errorf("FlowCounts(%d, %v) = %v, want %v", gid, timeout, got, want)
			return
		}
	}
}

// flowEntry is one decoded entry of the flow table.
type flowEntry struct {
	Flow
	remote, local netip.AddrPort
}

// flowTable returns the flow table's entries of group gid.
func (e *env) flowTable(gid uint32) []flowEntry {
	e.t.Helper()
	all, err := e.d.Flows()
	if err != nil {
		e.t.Fatalf("read flows: %v", err)
	}
	var out []flowEntry
	for _, f := range all {
		if f.Group == gid {
			out = append(out, flowEntry{Flow: f, remote: f.Remote, local: f.Local})
		}
	}
	return out
}

// flowEntries counts the entries of the flow table, all groups.
func (e *env) flowEntries() int {
	e.t.Helper()
	all, err := e.d.Flows()
	if err != nil {
		e.t.Fatalf("read flows: %v", err)
	}
	return len(all)
}

// sole returns the socket that received all of a flow's datagrams, failing
// if they were spread over several.
func sole(t *testing.T, c *client, got []*server) *server {
	t.Helper()
	if len(got) == 0 || got[0] == nil {
		t.Fatalf("flow %d (%s): nothing received", c.id, c.local)
	}
	for i, s := range got {
		if s != got[0] {
			t.Fatalf("flow %d (%s): datagram %d on %s, datagram 0 on %s", c.id, c.local, i, s, got[0])
		}
	}
	return got[0]
}

// perSocket counts how many flows each socket received.
func perSocket(t *testing.T, got map[*client][]*server) map[*server]int {
	t.Helper()
	out := make(map[*server]int)
	for c, ss := range got {
		out[sole(t, c, ss)]++
	}
	return out
}

// wantAllIn checks that every flow of got landed, whole, on one socket of
// set, and that each socket of set got at least one flow when spread is
// true.
func wantAllIn(t *testing.T, what string, got map[*client][]*server, set []*server, spread bool) {
	t.Helper()
	counts := perSocket(t, got)
	for s, n := range counts {
		if !slices.Contains(set, s) {
			t.Errorf("%s: %d flows landed on %s, outside the expected sockets", what, n, s)
		}
	}
	if spread {
		for _, s := range set {
			if counts[s] == 0 {
				t.Errorf("%s: %s got none of %d flows (counts %v)", what, s, len(got), counts)
			}
		}
	}
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	panic(fmt.Sprintf("unexpected sockaddr %T", sa))
}

// Addresses the tests listen on (port 0: the first socket picks one).
var (
	lo4     = netip.MustParseAddrPort("127.0.0.1:0")
	lo4b    = netip.MustParseAddrPort("127.0.0.2:0")
	lo6     = netip.MustParseAddrPort("[::1]:0")
	any6    = netip.MustParseAddrPort("[::]:0")
	flowDis = generations.DissectorFlow
	noopDis = generations.DissectorNoop
)

// withPort returns ap's address with port.
func withPort(ap netip.AddrPort, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr(), port)
}

// groupState is a flow group's state with gen working with count sockets.
func groupState(gen uint32, count int) generations.GroupState {
	return generations.GroupState{WorkingGen: gen, Count: uint32(count), Dissector: flowDis, FlowTimeout: hour}
}
