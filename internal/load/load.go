package load

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Config describes one run.
type Config struct {
	Addr     string        // server host:port
	Flows    int           // flows (4-tuples)
	Rate     float64       // datagrams per second, all flows together
	Duration time.Duration // how long to send
	Grace    time.Duration // how long to wait for late answers after sending
	// Payload pads each datagram to at least this many bytes.
	Payload int
	// Senders is how many goroutines send (0: one, the caller's). Each
	// owns every Senders-th flow and keeps to the same schedule for its
	// datagrams, so together they send at Rate when one could not.
	Senders int
	// Sockets is how many sockets carry the flows (0, or Flows or more: one
	// connected socket per flow). With fewer sockets than flows the flows
	// of one socket differ by source address: every flow sends from its own
	// address of 127.0.0.0/8 (IP_PKTINFO) and its answers are told apart by
	// the address they were sent to, so Addr must be IPv4 loopback; 100,000
	// flows then need 100,000 addresses, not 100,000 descriptors.
	Sockets int
	// MaxLag is how far a sender may fall behind its schedule (when its
	// goroutine was not run in time) before it moves the schedule on
	// instead of sending the backlog in one burst (0: 2 ms; negative:
	// never). A burst of a whole stall's datagrams would overflow the
	// server's receive queue and count as the server's loss. Every
	// datagram is still sent, later; SendRate shows the difference.
	MaxLag time.Duration
}

// defaultMaxLag is Config.MaxLag's default.
const defaultMaxLag = 2 * time.Millisecond

// Flow is the record of one flow.
type Flow struct {
	Flow     int            `json:"flow"`
	Local    string         `json:"local"`
	Sent     int            `json:"sent"`
	Answered int            `json:"answered"`
	Lost     int            `json:"lost"`
	Dups     int            `json:"duplicates"`
	By       map[string]int `json:"answered_by"`
	// Order lists the instances that answered, in the order of the
	// sequence numbers, with repeats collapsed: [A] never moved, [A B]
	// moved once from A to B.
	Order []string `json:"order"`
}

// Result is the record of a run.
type Result struct {
	Sent     int            `json:"sent"`
	Answered int            `json:"answered"`
	Lost     int            `json:"lost"`
	Dups     int            `json:"duplicates"`
	By       map[string]int `json:"answered_by"`
	Elapsed  string         `json:"elapsed"`
	// SendSeconds is the time spent sending; SendRate the datagrams sent
	// per second of it (what the pacing achieved, to compare with Rate).
	SendSeconds float64 `json:"send_seconds"`
	SendRate    float64 `json:"send_rate"`
	// SendErrors counts writes that failed (their datagrams are lost).
	SendErrors int `json:"send_errors"`
	// Slips counts the times a sender moved its schedule on (Config.MaxLag);
	// MaxLagMS is the furthest a sender found itself behind, ms.
	Slips    int     `json:"schedule_slips"`
	MaxLagMS float64 `json:"max_lag_ms"`
	// Stray counts answers that match no datagram of the flow they reached
	// (another flow's number, or an address the flow does not send from).
	Stray int `json:"stray"`
	// RecvDrops counts answers the kernel dropped at the load's own
	// sockets because their receive queues were full (SO_MEMINFO). They
	// are in Lost too, but that loss is the load generator's, not the
	// server's.
	RecvDrops int    `json:"recv_drops"`
	Flows     []Flow `json:"flows"`
}

// The payload of every datagram starts with "grm ", the sequence number
// (8 bytes) and the flow number (4 bytes), big endian.
const (
	magic     = "grm "
	headerLen = len(magic) + 8 + 4
)

type flowState struct {
	conn  *net.UDPConn
	oob   []byte     // shared socket: IP_PKTINFO choosing the source address
	src   [4]byte    // shared socket: the source address
	local string     // local address and port
	mu    sync.Mutex // guards what follows
	sent  int
	// who[seq] is the instance that answered datagram seq ("" if none yet).
	who  []string
	dups int
}

// Session is a set of open flows that send when told and record every
// answer until closed. Run is a Session that sends at Config.Rate for
// Config.Duration and then waits Config.Grace.
type Session struct {
	cfg     Config
	raddr   netip.AddrPort
	shared  bool
	socks   []*net.UDPConn
	flows   []*flowState
	opened  time.Time
	readers sync.WaitGroup

	mu     sync.Mutex // serializes Send and Close
	next   int        // index of the next datagram, round robin over flows
	closed bool

	sendTime atomic.Int64 // ns spent in Send

	sent       atomic.Int64
	answered   atomic.Int64 // first answers
	sendErrors atomic.Int64
	stray      atomic.Int64
	slips      atomic.Int64
	maxLag     atomic.Int64 // ns
	// finalDrops is the sockets' drops when they were closed, valid once
	// dropsFinal is set.
	finalDrops atomic.Int64
	dropsFinal atomic.Bool
}

// Run performs one run. It returns when the duration and the grace period
// are over, or ctx ends (then the result covers what was sent).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Flows <= 0 || cfg.Rate <= 0 {
		return nil, errors.New("flows and rate must be positive")
	}
	s, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	s.Send(ctx, cfg.Rate, int(cfg.Rate*cfg.Duration.Seconds()))
	select {
	case <-time.After(cfg.Grace):
	case <-ctx.Done():
	}
	return s.Close(), nil
}

// Open opens cfg.Flows flows to cfg.Addr and starts recording answers;
// Rate, Duration and Grace are not used.
func Open(cfg Config) (*Session, error) {
	if cfg.Flows <= 0 {
		return nil, errors.New("flows must be positive")
	}
	ua, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", cfg.Addr, err)
	}
	s := &Session{cfg: cfg, raddr: ua.AddrPort(), flows: make([]*flowState, cfg.Flows)}
	s.shared = cfg.Sockets > 0 && cfg.Sockets < cfg.Flows
	if s.shared {
		err = s.openShared()
	} else {
		err = s.openPerFlow(ua)
	}
	if err != nil {
		for _, c := range s.socks {
			c.Close()
		}
		return nil, err
	}
	s.opened = time.Now()
	return s, nil
}

func (s *Session) openPerFlow(raddr *net.UDPAddr) error {
	for i := range s.flows {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return fmt.Errorf("open flow %d: %w", i, err)
		}
		s.socks = append(s.socks, c)
		setReadBuffer(c, perFlowQueue)
		s.flows[i] = &flowState{conn: c, local: c.LocalAddr().String()}
	}
	for i, f := range s.flows {
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			s.readPerFlow(i, f)
		}()
	}
	return nil
}

// SourceAddr is the source address of flow index idx of a shared socket:
// 127.A.B.C with A from 1, C from 1 to 250, never 127.0.0.0/16.
func SourceAddr(idx int) [4]byte {
	return [4]byte{127, byte(1 + idx/62500), byte(idx / 250 % 250), byte(1 + idx%250)}
}

func (s *Session) openShared() error {
	a := s.raddr.Addr().Unmap()
	if !a.Is4() || !a.IsLoopback() {
		return fmt.Errorf("flows sharing sockets need an IPv4 loopback server address, not %s", s.raddr)
	}
	if s.cfg.Flows/s.cfg.Sockets >= 62500*254 {
		return fmt.Errorf("%d flows over %d sockets: more than 127.0.0.0/8 holds", s.cfg.Flows, s.cfg.Sockets)
	}
	s.raddr = netip.AddrPortFrom(a, s.raddr.Port())
	for k := 0; k < s.cfg.Sockets; k++ {
		// Bound to the wildcard address: the answers come back to many
		// addresses of 127.0.0.0/8.
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		if err != nil {
			return fmt.Errorf("open socket %d: %w", k, err)
		}
		s.socks = append(s.socks, c)
		setReadBuffer(c, sharedQueue)
		if err := setPktinfo(c); err != nil {
			return err
		}
	}
	for i := range s.flows {
		c := s.socks[i%len(s.socks)]
		src := SourceAddr(i / len(s.socks))
		port := c.LocalAddr().(*net.UDPAddr).Port
		s.flows[i] = &flowState{
			conn:  c,
			src:   src,
			oob:   unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src}),
			local: netip.AddrPortFrom(netip.AddrFrom4(src), uint16(port)).String(),
		}
	}
	for k, c := range s.socks {
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			s.readShared(k, c)
		}()
	}
	return nil
}

// The receive buffers the load's own sockets ask for. An answer takes
// about 832 bytes of it on loopback (its truesize), and the kernel doubles
// the request: a shared socket holds some 10,000 answers, a flow's own
// some 2,500, whatever net.core.rmem_max says when the load runs as root
// (as every upgrade test does). With SO_RCVBUF alone, rmem_max caps both
// at twice its value: 425,984 bytes by default, 512 answers, which a
// reader not run for a few milliseconds can overflow at high rates.
const (
	perFlowQueue = 1 << 20
	sharedQueue  = 4 << 20
)

// setReadBuffer sets c's receive buffer to n bytes: above rmem_max when
// privileged (SO_RCVBUFFORCE), else as far as rmem_max allows. Best
// effort: what a smaller buffer drops shows in Result.RecvDrops.
func setReadBuffer(c *net.UDPConn, n int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return // best effort, as said
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
			// Unprivileged: capped at rmem_max; its drops are counted.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
}

// socketDrops is how many datagrams the kernel dropped at c so far (its
// receive queue full), from SO_MEMINFO; 0 if c is closed.
func socketDrops(c *net.UDPConn) int64 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0 // closed: counted before closing (Close)
	}
	var mi [unix.SK_MEMINFO_VARS]uint32
	var drops int64
	_ = rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(mi))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mi)), uintptr(unsafe.Pointer(&l)), 0)
		if errno == 0 {
			drops = int64(mi[unix.SK_MEMINFO_DROPS])
		}
	}) // an error: the socket was closed meanwhile, and counted then
	return drops
}

// ownDrops is the drops of all the session's sockets.
func (s *Session) ownDrops() int64 {
	if s.dropsFinal.Load() {
		return s.finalDrops.Load()
	}
	var n int64
	for _, c := range s.socks {
		n += socketDrops(c)
	}
	return n
}

// setPktinfo asks for the destination address of every datagram c
// receives.
func setPktinfo(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("socket handle: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	}); err != nil {
		return fmt.Errorf("socket handle: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set IP_PKTINFO: %w", serr)
	}
	return nil
}

// Send sends n datagrams round robin over the flows, going on from where
// the previous Send stopped, at rate datagrams per second in total, with
// Config.Senders goroutines (the first is the caller's). It returns how
// many it sent: n, unless ctx ended first.
func (s *Session) Send(ctx context.Context, rate float64, n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || n <= 0 || rate <= 0 {
		return 0
	}
	first := s.next
	s.next += n
	senders := min(max(s.cfg.Senders, 1), len(s.flows))
	interval := float64(time.Second) / rate
	start := time.Now()
	var (
		wg    sync.WaitGroup
		total atomic.Int64
	)
	sender := func(j int) {
		total.Add(int64(s.sender(ctx, j, senders, first, n, start, interval)))
	}
	for j := 1; j < senders; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sender(j)
		}()
	}
	sender(0)
	wg.Wait()
	s.sendTime.Add(int64(time.Since(start)))
	return int(total.Load())
}

// sender sends the datagrams first..first+n-1 of the flows it owns (flow
// mod senders == j), datagram k at start + (k-first)*interval.
func (s *Session) sender(ctx context.Context, j, senders, first, n int, start time.Time, interval float64) int {
	buf := make([]byte, max(s.cfg.Payload, headerLen))
	copy(buf, magic)
	p := s.newPacer(start, interval)
	defer p.stop()
	sent := 0
	for k := first; k < first+n; k++ {
		fi := k % len(s.flows)
		if fi%senders != j {
			continue
		}
		if !p.wait(ctx, k-first) {
			return sent
		}
		s.sendOne(fi, buf)
		sent++
	}
	return sent
}

// pacer keeps a sender to its schedule: send i is due at start +
// i*interval. Behind schedule it sends at once, so jitter does not
// accumulate, unless it is more than maxLag behind: then the schedule
// moves on, so that a stall does not turn into a burst.
type pacer struct {
	s        *Session
	start    time.Time
	interval float64
	maxLag   time.Duration
	timer    *time.Timer
}

func (s *Session) newPacer(start time.Time, interval float64) *pacer {
	lag := s.cfg.MaxLag
	if lag == 0 {
		lag = defaultMaxLag
	}
	return &pacer{s: s, start: start, interval: interval, maxLag: lag, timer: time.NewTimer(time.Hour)}
}

// wait waits until send i is due; false if ctx ended.
func (p *pacer) wait(ctx context.Context, i int) bool {
	due := p.start.Add(time.Duration(float64(i) * p.interval))
	d := time.Until(due)
	if d <= 0 {
		for {
			m := p.s.maxLag.Load()
			if int64(-d) <= m || p.s.maxLag.CompareAndSwap(m, int64(-d)) {
				break
			}
		}
		if p.maxLag > 0 && -d > p.maxLag {
			p.start = p.start.Add(-d)
			p.s.slips.Add(1)
		}
		return ctx.Err() == nil
	}
	p.timer.Reset(d)
	select {
	case <-p.timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *pacer) stop() { p.timer.Stop() }

// SendTo sends one datagram on each of the given flows, in their order, at
// rate datagrams per second, from the caller's goroutine (a retry of the
// flows whose datagram went unanswered). It returns how many it sent.
func (s *Session) SendTo(ctx context.Context, rate float64, flows []int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || rate <= 0 {
		return 0
	}
	buf := make([]byte, max(s.cfg.Payload, headerLen))
	copy(buf, magic)
	start := time.Now()
	p := s.newPacer(start, float64(time.Second)/rate)
	defer p.stop()
	sent := 0
	for k, fi := range flows {
		if fi < 0 || fi >= len(s.flows) {
			continue
		}
		if !p.wait(ctx, k) {
			return sent
		}
		s.sendOne(fi, buf)
		sent++
	}
	s.sendTime.Add(int64(time.Since(start)))
	return sent
}

// sendOne sends the next datagram of flow fi; buf holds the magic.
func (s *Session) sendOne(fi int, buf []byte) {
	f := s.flows[fi]
	f.mu.Lock()
	seq := f.sent
	f.sent++
	f.who = append(f.who, "")
	f.mu.Unlock()
	binary.BigEndian.PutUint64(buf[4:12], uint64(seq))
	binary.BigEndian.PutUint32(buf[12:16], uint32(fi))
	var err error
	if s.shared {
		_, _, err = f.conn.WriteMsgUDPAddrPort(buf, f.oob, s.raddr)
	} else {
		// A send error (ECONNREFUSED from an earlier ICMP) is a loss the
		// count will show.
		_, err = f.conn.Write(buf)
	}
	if err != nil {
		s.sendErrors.Add(1)
	}
	s.sent.Add(1)
}

// answer parses "<instance> grm <seq><flow>...": the instance, the
// sequence number and the flow number.
func answer(b []byte) (who []byte, seq uint64, flow uint32, ok bool) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return nil, 0, 0, false
	}
	rest := b[i+1:]
	if len(rest) < headerLen || string(rest[:len(magic)]) != magic {
		return nil, 0, 0, false
	}
	return b[:i], binary.BigEndian.Uint64(rest[4:12]), binary.BigEndian.Uint32(rest[12:16]), true
}

// record notes that who answered datagram seq of flow f.
func (s *Session) record(f *flowState, who string, seq uint64) {
	f.mu.Lock()
	switch {
	case seq >= uint64(len(f.who)):
		s.stray.Add(1) // never sent
	case f.who[seq] == "":
		f.who[seq] = who
		s.answered.Add(1)
	default:
		f.dups++
	}
	f.mu.Unlock()
}

// interner keeps one string per instance id, so answers do not allocate.
type interner map[string]string

func (in interner) get(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	in[s] = s
	return s
}

// readPerFlow records the answers of flow fi's own socket until it
// closes.
func (s *Session) readPerFlow(fi int, f *flowState) {
	buf := make([]byte, 65536)
	names := interner{}
	for {
		n, err := f.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED while no server listened: keep reading
		}
		who, seq, flow, ok := answer(buf[:n])
		if !ok {
			continue
		}
		if flow != uint32(fi) {
			s.stray.Add(1)
			continue
		}
		s.record(f, names.get(who), seq)
	}
}

// readShared records the answers arriving on shared socket k until it
// closes: the flow number says whose answer it is, and the address it was
// sent to must be that flow's.
func (s *Session) readShared(k int, c *net.UDPConn) {
	buf := make([]byte, 65536)
	oob := make([]byte, 128)
	names := interner{}
	for {
		n, oobn, _, _, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		who, seq, flow, ok := answer(buf[:n])
		if !ok {
			continue
		}
		dst, okDst := pktinfoDst(oob[:oobn])
		if int(flow) >= len(s.flows) || int(flow)%len(s.socks) != k || !okDst || dst != s.flows[flow].src {
			s.stray.Add(1)
			continue
		}
		s.record(s.flows[flow], names.get(who), seq)
	}
}

// pktinfoDst returns the destination address from an IP_PKTINFO control
// message.
func pktinfoDst(oob []byte) ([4]byte, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return [4]byte{}, false
	}
	for _, m := range msgs {
		// struct in_pktinfo: ifindex (4), spec_dst (4), addr (4).
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12 {
			return [4]byte(m.Data[8:12]), true
		}
	}
	return [4]byte{}, false
}

// Settle waits until every datagram sent so far was answered, timeout
// passed or ctx ended, and reports whether all were answered.
func (s *Session) Settle(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for s.answered.Load() < s.sent.Load() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// AnsweredBy is the instance that answered datagram seq of flow fi, ""
// if none (yet).
func (s *Session) AnsweredBy(fi, seq int) string {
	if fi < 0 || fi >= len(s.flows) {
		return ""
	}
	f := s.flows[fi]
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq < 0 || seq >= len(f.who) {
		return ""
	}
	return f.who[seq]
}

// Answers lists, for every datagram flow fi sent so far, the instance
// that answered it ("" for none yet).
func (s *Session) Answers(fi int) []string {
	if fi < 0 || fi >= len(s.flows) {
		return nil
	}
	f := s.flows[fi]
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.who...)
}

// Result summarizes the session so far; datagrams not answered yet count
// as lost.
func (s *Session) Result() *Result {
	r := &Result{
		By:          make(map[string]int),
		Elapsed:     time.Since(s.opened).Round(time.Millisecond).String(),
		SendErrors:  int(s.sendErrors.Load()),
		Slips:       int(s.slips.Load()),
		MaxLagMS:    float64(s.maxLag.Load()) / 1e6,
		Stray:       int(s.stray.Load()),
		RecvDrops:   int(s.ownDrops()),
		SendSeconds: time.Duration(s.sendTime.Load()).Seconds(),
	}
	for i, f := range s.flows {
		f.mu.Lock()
		fl := Flow{Flow: i, Local: f.local, Sent: f.sent, Dups: f.dups, By: make(map[string]int)}
		for _, w := range f.who {
			if w == "" {
				fl.Lost++
				continue
			}
			fl.Answered++
			fl.By[w]++
			if len(fl.Order) == 0 || fl.Order[len(fl.Order)-1] != w {
				fl.Order = append(fl.Order, w)
			}
		}
		f.mu.Unlock()
		r.Sent += fl.Sent
		r.Answered += fl.Answered
		r.Lost += fl.Lost
		r.Dups += fl.Dups
		for w, n := range fl.By {
			r.By[w] += n
		}
		r.Flows = append(r.Flows, fl)
	}
	if r.SendSeconds > 0 {
		r.SendRate = float64(r.Sent) / r.SendSeconds
	}
	return r
}

// Close closes the flows (waiting for a Send in progress) and returns the
// final result. Closing twice returns the result again.
func (s *Session) Close() *Result {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.finalDrops.Store(s.ownDrops())
		s.dropsFinal.Store(true)
		for _, c := range s.socks {
			c.Close() // ends the readers
		}
	}
	s.mu.Unlock()
	s.readers.Wait()
	return s.Result()
}

// Instances returns the instance ids that answered, sorted numerically when
// they are numbers.
func (r *Result) Instances() []string {
	out := make([]string, 0, len(r.By))
	for w := range r.By {
		out = append(out, w)
	}
	sortIDs(out)
	return out
}

func sortIDs(ids []string) {
	less := func(a, b string) bool {
		x, errA := strconv.Atoi(a)
		y, errB := strconv.Atoi(b)
		if errA == nil && errB == nil {
			return x < y
		}
		return a < b
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && less(ids[j], ids[j-1]); j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}
