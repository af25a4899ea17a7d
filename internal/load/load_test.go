package load

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoServer answers every datagram with "<id> <payload>" until the test
// ends; drop, when set, says which datagrams (by their count) to ignore.
func echoServer(t *testing.T, id string, drop func(n int) bool) string {
	t.Helper()
	return echoServerGated(t, id, drop, nil)
}

// echoQueue is the receive buffer the echo server asks for: a datagram of
// these tests takes about 832 bytes of it (its truesize on loopback), so
// the kernel's doubled 8 MiB holds some 10,000, more than a test sends in
// one go. The default (net.core.rmem_default, 208 KiB) holds 256: 5 ms at
// 50,000/s, less than the echo goroutine may wait for a CPU on a busy
// machine, and the rest was dropped (RcvbufErrors) and counted as lost.
const echoQueue = 4 << 20

// echoServerGated is echoServer whose reading starts only when gate is
// closed (nil: at once): a server that is not run for a while.
func echoServerGated(t *testing.T, id string, drop func(n int) bool, gate <-chan struct{}) string {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if got := forceReadBuffer(t, c, echoQueue); got < 2*echoQueue {
		t.Fatalf("echo server's receive buffer is %d bytes, want %d: run as root (SO_RCVBUFFORCE) or raise net.core.rmem_max", got, 2*echoQueue)
	}
	go func() {
		if gate != nil {
			<-gate
		}
		buf := make([]byte, 65536)
		out := make([]byte, 0, 65536)
		for n := 0; ; n++ {
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if drop != nil && drop(n) {
				continue
			}
			out = append(append(append(out[:0], id...), ' '), buf[:k]...)
			_, _ = c.WriteToUDPAddrPort(out, from)
		}
	}()
	return c.LocalAddr().String()
}

// forceReadBuffer sets c's receive buffer to n bytes, above
// net.core.rmem_max when privileged, and returns what the kernel made of
// it (twice the request, for its own overhead).
func forceReadBuffer(t *testing.T, c *net.UDPConn, n int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	if err := rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
			// Unprivileged: the plain option, capped at rmem_max.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
		got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRunPerFlowSockets(t *testing.T) {
	addr := echoServer(t, "7", nil)
	r, err := Run(context.Background(), Config{Addr: addr, Flows: 8, Rate: 2000, Duration: 200 * time.Millisecond, Grace: 200 * time.Millisecond, Senders: 3})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 400 || r.Answered != 400 || r.Lost != 0 || r.Dups != 0 || r.Stray != 0 || r.By["7"] != 400 {
		t.Fatalf("result %+v", r)
	}
	if r.SendSeconds <= 0 || r.SendRate <= 0 {
		t.Errorf("send time %v, rate %v", r.SendSeconds, r.SendRate)
	}
	for _, f := range r.Flows {
		if f.Sent != 50 || f.Answered != 50 || len(f.Order) != 1 || f.Order[0] != "7" {
			t.Errorf("flow %+v", f)
		}
	}
}

// TestSessionSharedSockets: 3,000 flows over 7 sockets, each flow its own
// source address; two passes, every flow answered twice, on its own
// address.
func TestSessionSharedSockets(t *testing.T) {
	addr := echoServer(t, "42", nil)
	s, err := Open(Config{Addr: addr, Flows: 3000, Sockets: 7, Senders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for pass := range 2 {
		if got := s.Send(ctx, 50000, 3000); got != 3000 {
			t.Fatalf("pass %d sent %d", pass, got)
		}
		if !s.Settle(ctx, 5*time.Second) {
			t.Fatalf("pass %d: not every datagram answered: %+v", pass, s.Result().Lost)
		}
	}
	r := s.Close()
	if r.Sent != 6000 || r.Answered != 6000 || r.Stray != 0 || r.SendErrors != 0 {
		t.Fatalf("sent %d answered %d stray %d errors %d", r.Sent, r.Answered, r.Stray, r.SendErrors)
	}
	locals := make(map[string]bool)
	for i, f := range r.Flows {
		if f.Sent != 2 || f.Answered != 2 || s.AnsweredBy(i, 1) != "42" {
			t.Fatalf("flow %+v", f)
		}
		locals[f.Local] = true
	}
	if len(locals) != 3000 {
		t.Errorf("%d distinct local addresses for 3000 flows", len(locals))
	}
	if s.AnsweredBy(0, 2) != "" || s.AnsweredBy(-1, 0) != "" {
		t.Error("AnsweredBy of a datagram never sent")
	}
}

// TestSessionSharedSocketsServerStalled: the echo server is not run at
// all while a whole pass of TestSessionSharedSockets is sent (the worst
// case of its goroutine waiting for a CPU); its receive queue must hold
// the pass, so that every datagram is answered once it runs.
func TestSessionSharedSocketsServerStalled(t *testing.T) {
	gate := make(chan struct{})
	addr := echoServerGated(t, "42", nil, gate)
	s, err := Open(Config{Addr: addr, Flows: 3000, Sockets: 7, Senders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if got := s.Send(ctx, 50000, 3000); got != 3000 {
		t.Fatalf("sent %d", got)
	}
	close(gate)
	if !s.Settle(ctx, 5*time.Second) {
		r := s.Result()
		t.Fatalf("not every datagram answered: lost %d of %d", r.Lost, r.Sent)
	}
}

func TestLostCounted(t *testing.T) {
	addr := echoServer(t, "1", func(n int) bool { return n%10 == 0 })
	s, err := Open(Config{Addr: addr, Flows: 4})
	if err != nil {
		t.Fatal(err)
	}
	s.Send(context.Background(), 10000, 100)
	if s.Settle(context.Background(), 300*time.Millisecond) {
		t.Fatal("settled though a tenth was dropped")
	}
	r := s.Close()
	if r.Lost != 10 || r.Answered != 90 {
		t.Fatalf("lost %d answered %d", r.Lost, r.Answered)
	}
}

// TestSendToRetries: SendTo sends on the listed flows only, and their
// answers land where Answers shows them.
func TestSendToRetries(t *testing.T) {
	addr := echoServer(t, "5", nil)
	s, err := Open(Config{Addr: addr, Flows: 50, Sockets: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.Send(ctx, 10000, 50)
	if got := s.SendTo(ctx, 10000, []int{3, 7, 7, 99}); got != 3 {
		t.Fatalf("SendTo sent %d, want 3", got)
	}
	if !s.Settle(ctx, 5*time.Second) {
		t.Fatal("not every datagram answered")
	}
	if a := s.Answers(7); len(a) != 3 || a[0] != "5" || a[2] != "5" {
		t.Errorf("Answers(7) = %q", a)
	}
	if a := s.Answers(8); len(a) != 1 {
		t.Errorf("Answers(8) = %q", a)
	}
	if s.Answers(50) != nil {
		t.Error("Answers of a flow that does not exist")
	}
}

func TestSharedNeedsLoopbackV4(t *testing.T) {
	if _, err := Open(Config{Addr: "[::1]:53", Flows: 10, Sockets: 2}); err == nil {
		t.Error("IPv6 server accepted for shared sockets")
	}
}

func TestAnswerParse(t *testing.T) {
	b := []byte("1234 grm \x00\x00\x00\x00\x00\x00\x01\x02\x00\x00\x00\x05pad")
	who, seq, flow, ok := answer(b)
	if !ok || string(who) != "1234" || seq != 258 || flow != 5 {
		t.Errorf("answer = %q %d %d %v", who, seq, flow, ok)
	}
	for _, bad := range []string{"", "1234", "1234 xyz \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "1 grm \x00"} {
		if _, _, _, ok := answer([]byte(bad)); ok {
			t.Errorf("answer(%q) accepted", bad)
		}
	}
}

func TestSourceAddrDistinct(t *testing.T) {
	seen := make(map[[4]byte]bool)
	for i := range 200000 {
		a := SourceAddr(i)
		if a[0] != 127 || a[1] == 0 || a[3] == 0 || a[3] > 250 || seen[a] {
			t.Fatalf("SourceAddr(%d) = %v", i, a)
		}
		seen[a] = true
	}
}

// TestPacerSlips: a sender far behind its schedule moves the schedule on
// (to now) instead of catching up; with a negative MaxLag it never does.
func TestPacerSlips(t *testing.T) {
	ctx := context.Background()
	s := &Session{cfg: Config{MaxLag: time.Millisecond}}
	old := time.Now().Add(-time.Second)
	p := s.newPacer(old, float64(time.Millisecond))
	defer p.stop()
	before := time.Now()
	if !p.wait(ctx, 0) {
		t.Fatal("wait failed")
	}
	if s.slips.Load() != 1 || p.start.Before(before) {
		t.Errorf("slips %d, schedule start %v before %v", s.slips.Load(), p.start, before)
	}

	never := &Session{cfg: Config{MaxLag: -1}}
	q := never.newPacer(old, float64(time.Millisecond))
	defer q.stop()
	for i := range 10 {
		q.wait(ctx, i)
	}
	if never.slips.Load() != 0 || !q.start.Equal(old) {
		t.Errorf("MaxLag < 0 slipped: %d, start moved %v", never.slips.Load(), q.start.Sub(old))
	}
}

// TestRecvDropsCounted: answers the kernel drops at the load's own socket
// (its receive queue full, nobody reading) show in Result.RecvDrops, so
// that a loss of the load generator is not taken for the server's.
func TestRecvDropsCounted(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const sent = 2000 // more than the default queue holds (256 of these)
	for range sent {
		if _, err := w.Write([]byte("42 grm answer")); err != nil {
			t.Fatal(err)
		}
	}
	queued := 0
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if err := rc.Read(func(fd uintptr) bool {
		for {
			if _, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT); err != nil {
				return true
			}
			queued++
		}
	}); err != nil {
		t.Fatal(err)
	}
	s := &Session{socks: []*net.UDPConn{c}}
	if r := s.Result(); queued == 0 || queued == sent || r.RecvDrops != sent-queued {
		t.Fatalf("sent %d, queued %d, RecvDrops %d, want %d", sent, queued, r.RecvDrops, sent-queued)
	}
}
