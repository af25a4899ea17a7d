package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config describes one run.
type Config struct {
	Addr     string        // server host:port
	Flows    int           // sockets, one flow each
	Rate     float64       // datagrams per second, all flows together
	Duration time.Duration // how long to send
	Grace    time.Duration // how long to wait for late answers after sending
	// Payload pads each datagram to at least this many bytes.
	Payload int
}

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
	Flows    []Flow         `json:"flows"`
}

type flowState struct {
	conn *net.UDPConn
	mu   sync.Mutex
	sent int
	// who[seq] is the instance that answered datagram seq ("" if none yet).
	who  []string
	dups int
}

// Run performs one run. It returns when the duration and the grace period
// are over, or ctx ends (then the result covers what was sent).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Flows <= 0 || cfg.Rate <= 0 {
		return nil, errors.New("flows and rate must be positive")
	}
	raddr, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", cfg.Addr, err)
	}
	flows := make([]*flowState, cfg.Flows)
	for i := range flows {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			for _, f := range flows[:i] {
				f.conn.Close()
			}
			return nil, fmt.Errorf("open flow %d: %w", i, err)
		}
		_ = c.SetReadBuffer(1 << 20) // best effort: a bigger buffer loses less on our side
		flows[i] = &flowState{conn: c}
	}
	var readers sync.WaitGroup
	for _, f := range flows {
		readers.Add(1)
		go func() {
			defer readers.Done()
			f.read()
		}()
	}
	start := time.Now()
	send(ctx, cfg, flows)
	select {
	case <-time.After(cfg.Grace):
	case <-ctx.Done():
	}
	for _, f := range flows {
		f.conn.Close() // ends the readers
	}
	readers.Wait()
	return summarize(flows, time.Since(start)), nil
}

// send paces datagrams over the flows round robin at cfg.Rate until the
// duration is over.
func send(ctx context.Context, cfg Config, flows []*flowState) {
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	total := int(cfg.Rate * cfg.Duration.Seconds())
	pad := max(cfg.Payload, 16)
	buf := make([]byte, pad)
	start := time.Now()
	for i := 0; i < total; i++ {
		// Pace by the schedule, not by sleeps, so that jitter does not
		// accumulate; send in bursts when behind.
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
		} else if ctx.Err() != nil {
			return
		}
		f := flows[i%len(flows)]
		f.mu.Lock()
		seq := f.sent
		f.sent++
		f.who = append(f.who, "")
		f.mu.Unlock()
		copy(buf, "grm ")
		binary.BigEndian.PutUint64(buf[4:12], uint64(seq))
		// A send error (ECONNREFUSED from an earlier ICMP) is a loss the
		// count will show; nothing else to do.
		_, _ = f.conn.Write(buf)
	}
}

// read records answers "<instance> grm <seq>..." until the socket closes.
func (f *flowState) read() {
	buf := make([]byte, 65536)
	for {
		n, err := f.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED while no server listened: keep reading
		}
		who, rest, ok := strings.Cut(string(buf[:n]), " ")
		if !ok || len(rest) < 12 || rest[:4] != "grm " {
			continue
		}
		seq := int(binary.BigEndian.Uint64([]byte(rest[4:12])))
		f.mu.Lock()
		if seq < len(f.who) {
			if f.who[seq] == "" {
				f.who[seq] = who
			} else {
				f.dups++
			}
		}
		f.mu.Unlock()
	}
}

func summarize(flows []*flowState, elapsed time.Duration) *Result {
	r := &Result{By: make(map[string]int), Elapsed: elapsed.Round(time.Millisecond).String()}
	for i, f := range flows {
		f.mu.Lock()
		fl := Flow{Flow: i, Local: f.conn.LocalAddr().String(), Sent: f.sent, Dups: f.dups, By: make(map[string]int)}
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
	return r
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
