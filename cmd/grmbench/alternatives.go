package main

import (
	"fmt"
	"math"
	"strconv"

	"golang.org/x/sys/unix"
)

// The alternatives section's rows.
const (
	altSelectHash  = "select a socket: SOCKHASH by cookie"
	altSelectArray = "select a socket: REUSEPORT_SOCKARRAY by index (grmwrap)"
	altFlowLRU     = "find a flow: LRU hash, exact 4-tuple key"
	altFlowSets    = "find a flow: 8-way set of an array at the reuseport hash (grmwrap)"
	altNoopSplit   = "noop path: group state, then its slot in an array of slots"
	altNoopLine    = "noop path: group state and first slots in one cache line (grmwrap)"
)

// altConfig sizes the alternatives section.
type altConfig struct {
	lives   []int // live flows for the flow rows
	rounds  int
	packets int
}

// altSetEntries is the size of alt_sets in alternatives.c.
const altSetEntries = 131072

// runAlternatives measures the programs of alternatives.c side by side:
// each has a group of two sockets of its own, and every round sends the
// same clients to each group in rotated order.
func runAlternatives(cfg altConfig, tx *rawSender, logf func(string, ...any)) ([]costRow, error) {
	groups := make([][]*server, 6)
	defer func() {
		for _, g := range groups {
			closeServers(g)
		}
	}()
	for i := range groups {
		g, err := newServerGroup(2, nil)
		if err != nil {
			return nil, err
		}
		groups[i] = g
	}
	hashed, arrayed, lru, sets, split, line := groups[0], groups[1], groups[2], groups[3], groups[4], groups[5]
	cookie, err := unix.GetsockoptUint64(hashed[0].fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return nil, fmt.Errorf("socket cookie: %w", err)
	}

	spec, err := loadAlternatives()
	if err != nil {
		return nil, fmt.Errorf("load alternatives spec: %w", err)
	}
	if err := spec.Variables["alt_cookie"].Set(cookie); err != nil {
		return nil, err
	}
	if err := spec.Variables["alt_index"].Set(uint32(0)); err != nil {
		return nil, err
	}
	if err := spec.Variables["alt_set_mask"].Set(uint32(altSetEntries/8 - 1)); err != nil {
		return nil, err
	}
	var objs alternativesObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load alternatives: %w", err)
	}
	defer objs.Close()
	for i, s := range hashed {
		c, err := unix.GetsockoptUint64(s.fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			return nil, fmt.Errorf("socket cookie: %w", err)
		}
		if err := objs.AltSockhash.Update(c, uint64(s.fd), 0); err != nil {
			return nil, fmt.Errorf("sockhash socket %d: %w", i, err)
		}
	}
	for i, s := range arrayed {
		if err := objs.AltSockarray.Update(uint32(i), uint64(s.fd), 0); err != nil {
			return nil, fmt.Errorf("sockarray socket %d: %w", i, err)
		}
	}
	if err := fillNoopLayouts(&objs, split, line); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		g  []*server
		fd int
	}{{hashed, objs.AltSelectSockhash.FD()}, {arrayed, objs.AltSelectSockarray.FD()}, {lru, objs.AltFlowLru.FD()}, {sets, objs.AltFlowSets.FD()},
		{split, objs.AltNoopSplit.FD()}, {line, objs.AltNoopLine.FD()}} {
		if err := attachProgram(a.g[0].fd, a.fd); err != nil {
			return nil, err
		}
	}

	var rows []costRow
	for _, live := range cfg.lives {
		// The flows: one datagram from each client creates its entry.
		for _, g := range []*server{lru[0], sets[0]} {
			if err := tx.sendRange(0, live, g.port); err != nil {
				return nil, err
			}
		}
		type scenario struct {
			row  *costRow
			prog func() (float64, uint64, error)
		}
		mk := func(path string) *costRow { return &costRow{path: path, live: live} }
		var scen []scenario
		add := func(row *costRow, g []*server, measureProg func(send func() error) (float64, uint64, error)) {
			port := g[0].port
			scen = append(scen, scenario{row, func() (float64, uint64, error) {
				return measureProg(func() error { return tx.sendCycle(0, live, cfg.packets, port) })
			}})
		}
		flowLRU, flowSets := mk(altFlowLRU), mk(altFlowSets)
		add(flowLRU, lru, func(send func() error) (float64, uint64, error) { return measure(objs.AltFlowLru, cfg.packets, send) })
		add(flowSets, sets, func(send func() error) (float64, uint64, error) { return measure(objs.AltFlowSets, cfg.packets, send) })
		var selHash, selArray, noopSplit, noopLine *costRow
		if live == cfg.lives[0] {
			selHash, selArray = mk(altSelectHash), mk(altSelectArray)
			noopSplit, noopLine = mk(altNoopSplit), mk(altNoopLine)
			add(selHash, hashed, func(send func() error) (float64, uint64, error) {
				return measure(objs.AltSelectSockhash, cfg.packets, send)
			})
			add(selArray, arrayed, func(send func() error) (float64, uint64, error) {
				return measure(objs.AltSelectSockarray, cfg.packets, send)
			})
			add(noopSplit, split, func(send func() error) (float64, uint64, error) {
				return measure(objs.AltNoopSplit, cfg.packets, send)
			})
			add(noopLine, line, func(send func() error) (float64, uint64, error) {
				return measure(objs.AltNoopLine, cfg.packets, send)
			})
		}
		for r := range cfg.rounds {
			for k := range scen {
				sc := scen[(k+r)%len(scen)]
				ns, runs, err := sc.prog()
				if err != nil {
					return nil, fmt.Errorf("%s: %w", sc.row.path, err)
				}
				sc.row.ns = append(sc.row.ns, ns)
				sc.row.runs += runs
				sc.row.sent += uint64(cfg.packets)
			}
		}
		if selHash != nil {
			rows = append(rows, *selHash, *selArray, *noopSplit, *noopLine)
		}
		rows = append(rows, *flowLRU, *flowSets)
		logf("  %d live flows: LRU %.1f ns, sets %.1f ns", live, median(flowLRU.ns), median(flowSets.ns))
	}
	return rows, nil
}

// fillNoopLayouts gives group 1 of both noop layouts a working generation
// of two sockets: split's sockets at indices 0 and 1 of alt_noop_sockets,
// line's at 2 and 3.
func fillNoopLayouts(objs *alternativesObjects, split, line []*server) error {
	const gid = 1
	state := uint64(1)<<32 | uint64(len(split))
	if err := objs.AltSplitGroups.Update(uint32(gid), alternativesAltSplitGroup{State: state, Dissector: 1}, 0); err != nil {
		return fmt.Errorf("split group: %w", err)
	}
	g := alternativesGrmGroup{State: uint64(1)<<32 | uint64(len(line)), Dissector: 1}
	for i, s := range split {
		if err := objs.AltNoopSockets.Update(uint32(i), uint64(s.fd), 0); err != nil {
			return fmt.Errorf("split socket %d: %w", i, err)
		}
		if err := objs.AltSplitSlots.Update(uint32(gid*2*256+i), alternativesGrmSlot{Index: uint32(i), Epoch: 1}, 0); err != nil {
			return fmt.Errorf("split slot %d: %w", i, err)
		}
	}
	for i, s := range line {
		index := uint32(len(split) + i)
		if err := objs.AltNoopSockets.Update(index, uint64(s.fd), 0); err != nil {
			return fmt.Errorf("line socket %d: %w", i, err)
		}
		g.Slots[i][0] = alternativesGrmSlot{Index: index, Epoch: 1}
	}
	if err := objs.AltGroups.Update(uint32(gid), &g, 0); err != nil {
		return fmt.Errorf("line group: %w", err)
	}
	return nil
}

// altSection writes the alternatives section.
func (r *report) altSection(w func(string, ...any)) {
	c := r.altCfg
	w("## The data plane's design choices, side by side\n\n")
	w("%s\n\n", r.sectionCmd("alternatives"))
	w("How: the programs of `cmd/grmbench/alternatives.c`, each attached to a group of two sockets of\n")
	w("its own and measured like the steering program above (BPF run-time statistics; %d rounds of %s\n", c.rounds, thousands(uint64(c.packets)))
	w("datagrams per program, order rotated each round, the same clients cycling). Each does one thing\n")
	w("the steering program does, in the way a first design did it and in the way grmwrap does it\n")
	w("(`docs/dataplane.md`):\n")
	w("- *select a socket*: `bpf_sk_select_reuseport` with a SOCKHASH keyed by socket cookie (a hash\n")
	w("  lookup inside the helper), or with a REUSEPORT_SOCKARRAY by index (an array index);\n")
	w("- *find a flow*: build the exact 4-tuple key (as the steering program does), then look it up in\n")
	w("  an LRU hash of 65,536 entries (the key is hashed, a bucket walked; a miss inserts), or scan the\n")
	w("  set of 8 one-cache-line entries that the kernel's reuseport hash picks in an array of %s\n", thousands(altSetEntries))
	w("  entries, reading each entry's sequence number before and after (a miss claims a never-used\n")
	w("  entry by compare-and-swap);\n")
	w("- *noop path*: the steering program's noop path (group state, one slot, the selection, its\n")
	w("  counters) with the group's data in the first design's layout (state in one array, slots in\n")
	w("  another: two lookups, two cache lines) or in grmwrap's (state and the first slots of both\n")
	w("  banks in the first cache line of the group's element of an mmapable array).\n\n")
	w("| operation | live flows | ns/packet, median (min-max) | difference of the medians |\n|---|---|---|---|\n")
	byKey := make(map[string]float64)
	for _, row := range r.alt {
		byKey[row.path+"/"+strconv.Itoa(row.live)] = median(row.ns)
	}
	for _, row := range r.alt {
		diff := "-"
		var other string
		switch row.path {
		case altSelectArray:
			other = altSelectHash
		case altFlowSets:
			other = altFlowLRU
		case altNoopLine:
			other = altNoopSplit
		}
		if o, ok := byKey[other+"/"+strconv.Itoa(row.live)]; ok && !math.IsNaN(o) {
			diff = fmt.Sprintf("%+.1f ns against the line above", median(row.ns)-o)
		}
		w("| %s | %s | %s | %s |\n", row.path, thousands(uint64(row.live)), spread(row.ns, 1), diff)
	}
	w("\n")
}
