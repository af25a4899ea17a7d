package main

import (
	"strings"
	"testing"
	"time"
	"unsafe"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Errorf("median reordered its input: %v", in)
	}
}

func TestSpread(t *testing.T) {
	if got, want := spread([]float64{70.04, 90, 81.26}, 1), "81.3 (70.0-90.0)"; got != want {
		t.Errorf("spread = %q, want %q", got, want)
	}
	if got := spread(nil, 1); got != "n/a" {
		t.Errorf("spread(nil) = %q", got)
	}
}

func TestThousandsAndMiB(t *testing.T) {
	for in, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 100000: "100,000", 1234567: "1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%d) = %q, want %q", in, got, want)
		}
	}
	if got := mib(3 << 20); got != "3.0 MiB" {
		t.Errorf("mib = %q", got)
	}
}

// TestTuplesDistinct: every synthetic client of a million has its own
// source address and port, outside the server's address.
func TestTuplesDistinct(t *testing.T) {
	seen := make(map[[6]byte]bool)
	for i := range 1_100_000 {
		ip, port := tuple(i)
		if ip[0] != 127 || ip == serverIP || port < firstClientPort {
			t.Fatalf("client %d: %v:%d", i, ip, port)
		}
		k := [6]byte{ip[0], ip[1], ip[2], ip[3], byte(port >> 8), byte(port)}
		if seen[k] {
			t.Fatalf("client %d repeats %v:%d", i, ip, port)
		}
		seen[k] = true
	}
}

// TestFlowKeyLayout: the layout grm_flow_key and grm_flow have in
// bpf/grmwrap.h (the program checks it again at run time).
func TestFlowKeyLayout(t *testing.T) {
	if s := unsafe.Sizeof(flowKey{}); s != 40 {
		t.Errorf("flowKey is %d bytes, grm_flow_key 40", s)
	}
	if s := unsafe.Sizeof(flowValue{}); s != 24 {
		t.Errorf("flowValue is %d bytes, grm_flow 24", s)
	}
	k := keyOf(7, 60001, 5353) // 127.0.0.3:1025
	if k.Group != 7 || k.RemotePort != [2]byte{0x04, 0x01} || k.LocalPort != [2]byte{0x14, 0xe9} {
		t.Errorf("key header %+v", k)
	}
	wantRemote := [16]byte{10: 0xff, 11: 0xff, 12: 127, 13: 0, 14: 0, 15: 3}
	wantLocal := [16]byte{10: 0xff, 11: 0xff, 12: 127, 13: 0, 14: 0, 15: 1}
	if k.RemoteAddr != wantRemote || k.LocalAddr != wantLocal {
		t.Errorf("key addresses %v %v", k.RemoteAddr, k.LocalAddr)
	}
}

func TestMarkdown(t *testing.T) {
	r := &report{
		command: "bin/grmbench -out docs/BENCHMARKS.md",
		via:     "make bench",
		machine: machine{date: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), kernel: "6.18", cpu: "Xeon", cores: 2, goVer: "go1", revision: "abc"},
		sysctl:  "0", sysctlOff: "0",
		total:   90 * time.Second,
		costCfg: costConfig{rounds: 3, packets: 10, newFlows: 5, hot: 1000, maxFlows: 1 << 18},
		cost: []costRow{
			{path: pathExisting, live: 1000, ns: []float64{80, 85, 95}, sent: 30, runs: 30, counter: "rx_flow_ok", matched: 30},
			{path: pathNoop, live: 1000, ns: []float64{61, 70, 65}, sent: 30, runs: 30, counter: "rx_noop_total", matched: 30},
			{path: pathEmpty, ns: []float64{40}, sent: 10, runs: 10},
		},
		tableCfg: tableConfig{maxFlows: 1000000, samples: 2000},
		table:    &tableResult{maxEntries: 1000000, memlock: 128000000, entries: 999808, sampled: 2000, steeredRight: 2000},
		echoCfg:  echoConfig{pairs: 2, clients: 4, window: 4, payload: 64, round: 2 * time.Second, settle: time.Second},
		echo: &echoResult{plain: []float64{100, 110}, steered: []float64{97, 99}, ratios: []float64{0.97, 0.9},
			plainReplies: 1000, plainTime: 4 * time.Second, steeredReplies: 900, steeredTime: 4 * time.Second},
	}
	md := r.markdown()
	for _, want := range []string{
		"`make bench`, which ran `bin/grmbench -out docs/BENCHMARKS.md`",
		"| date | 2025-01-02 03:04:05 UTC |",
		"| CPU (/proc/cpuinfo) | Xeon |",
		"| cores | 2 |",
		"| flow, existing flows | 1,000 | 85.0 (80.0-95.0) (meets) | <= 90 | 45.0 | ~148 |",
		"| noop | 1,000 | 65.0 (61.0-70.0) (**above target**) | <= 60 | 25.0 | ~105 |",
		"| empty program (calibration) | - | 40.0 (40.0-40.0) | - | - | - |",
		"| bytes per entry (memlock / max_entries) | 128.0 |",
		"| **ratio with/without, median of 2 pairs** (min-max) | **0.935 (0.900-0.970)** |",
		"| ratio of the rates over all rounds (total replies / total time, with vs without) | 0.900 |",
		"**below the target of 0.95**",
		"`bin/grmbench -only echo -out /tmp/echo.md`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"bin/grmbench", "-via", "make bench", "-out", "docs/BENCHMARKS.md", "it's", ""})
	want := `bin/grmbench -via 'make bench' -out docs/BENCHMARKS.md 'it'\''s' ''`
	if got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}
