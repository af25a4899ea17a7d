package main

import (
	"fmt"
	"sync/atomic"
	"time"
)

// tableConfig sizes the large flow table check.
type tableConfig struct {
	maxFlows int // table size, and clients that fill it by traffic
	samples  int // filled flows re-pointed and checked one by one
	existing int // datagrams over filled flows
	fresh    int // new flows sent to the full table
}

// tableResult is what the large flow table check found.
type tableResult struct {
	maxEntries, memlock uint64
	fillSent            int
	fillTime            time.Duration
	fillNS              float64 // ns/packet of the program while filling
	entries             int     // entries present after the fill
	createErrors        uint64  // flow creations that failed during the fill
	samples, sampled    int     // re-pointed flows checked; found in the table
	steeredRight        int     // of those, datagrams that reached the re-pointed socket
	existingNS          float64 // ns/packet over existing flows of the full table
	existingSent        int
	existingHits        uint64  // of those, datagrams that found their flow
	freshNS             float64 // ns/packet of new flows into the full table
	freshSent           int
	freshOK             uint64 // new flows dispatched to the working generation
	freshCreateErrors   uint64
	fillEvicted         uint64 // live flows evicted while filling
	freshEvicted        uint64 // flows evicted by the new flows into the full table
}

// runTable fills a table of cfg.maxFlows entries by traffic and checks
// that steering still follows it.
func runTable(cfg tableConfig, tx *rawSender, logf func(string, ...any)) (tableResult, error) {
	var res tableResult
	// got[k] is 1 + the index of the socket that received sample k.
	got := make([]atomic.Int32, cfg.samples)
	s, err := newSteered(uint32(cfg.maxFlows), 2, func(idx int, tag uint64) {
		if tag < uint64(len(got)) {
			got[tag].Store(int32(idx + 1))
		}
	})
	if err != nil {
		return res, err
	}
	defer s.close()
	prog, err := s.dp.Program(benchGroup)
	if err != nil {
		return res, err
	}
	if res.memlock, res.maxEntries, err = s.ft.memlock(); err != nil {
		return res, err
	}

	ce0, err := s.counter("rx_flow_create_error")
	if err != nil {
		return res, err
	}
	start := time.Now()
	res.fillSent = cfg.maxFlows
	if res.fillNS, _, err = measure(prog, cfg.maxFlows, func() error { return tx.sendRange(0, cfg.maxFlows, s.port) }); err != nil {
		return res, err
	}
	res.fillTime = time.Since(start)
	ce1, err := s.counter("rx_flow_create_error")
	if err != nil {
		return res, err
	}
	res.createErrors = ce1 - ce0
	if res.fillEvicted, err = s.counter("rx_flow_evicted"); err != nil {
		return res, err
	}
	if res.entries, err = s.ft.count(benchGroup, s.port); err != nil {
		return res, err
	}
	logf("  filled: %d entries after %d new flows in %s", res.entries, cfg.maxFlows, res.fillTime.Round(time.Millisecond))

	// Re-point sampled flows at the socket that does not serve them now:
	// their next datagram must arrive there, which only the table can do.
	res.samples = cfg.samples
	stride := cfg.maxFlows / cfg.samples
	want := make([]int32, cfg.samples)
	filled, err := s.ft.live(benchGroup, s.port)
	if err != nil {
		return res, err
	}
	i0, _, _ := s.dp.SocketRef(s.cookies[0])
	for k := range cfg.samples {
		f, ok := filled[remoteOf(k*stride)]
		if !ok {
			continue // evicted
		}
		res.sampled++
		other := 0
		if f.Index == i0 {
			other = 1
		}
		if err := s.dp.PointFlow(f.Pos, s.cookies[other]); err != nil {
			return res, fmt.Errorf("re-point flow: %w", err)
		}
		want[k] = int32(other + 1)
	}
	for k := range cfg.samples {
		if want[k] != 0 {
			if err := tx.send(k*stride, s.port, uint64(k)); err != nil {
				return res, err
			}
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		right, arrived := 0, 0
		for k := range cfg.samples {
			if g := got[k].Load(); g != 0 {
				arrived++
				if g == want[k] {
					right++
				}
			}
		}
		res.steeredRight = right
		if arrived >= res.sampled || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Existing flows spread over the whole table, then new flows into it.
	ok0, err := s.counter("rx_flow_ok")
	if err != nil {
		return res, err
	}
	res.existingSent = cfg.existing
	spread := func() error {
		for k := range cfg.existing {
			if err := tx.send(int((uint64(k)*7919)%uint64(cfg.maxFlows)), s.port, noTag); err != nil {
				return err
			}
		}
		return nil
	}
	if res.existingNS, _, err = measure(prog, cfg.existing, spread); err != nil {
		return res, err
	}
	ok1, err := s.counter("rx_flow_ok")
	if err != nil {
		return res, err
	}
	res.existingHits = ok1 - ok0

	d0, err := s.counter("rx_new_flow_working_gen_dispatch_ok")
	if err != nil {
		return res, err
	}
	if ce0, err = s.counter("rx_flow_create_error"); err != nil {
		return res, err
	}
	ev0, err := s.counter("rx_flow_evicted")
	if err != nil {
		return res, err
	}
	res.freshSent = cfg.fresh
	if res.freshNS, _, err = measure(prog, cfg.fresh, func() error {
		return tx.sendRange(cfg.maxFlows, cfg.maxFlows+cfg.fresh, s.port)
	}); err != nil {
		return res, err
	}
	d1, err := s.counter("rx_new_flow_working_gen_dispatch_ok")
	if err != nil {
		return res, err
	}
	if ce1, err = s.counter("rx_flow_create_error"); err != nil {
		return res, err
	}
	ev1, err := s.counter("rx_flow_evicted")
	if err != nil {
		return res, err
	}
	res.freshOK, res.freshCreateErrors, res.freshEvicted = d1-d0, ce1-ce0, ev1-ev0
	return res, nil
}
