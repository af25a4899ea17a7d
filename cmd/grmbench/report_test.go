package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/load"
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

// TestRemoteOf: a client's address as the flow table shows it, IPv4
// v4-mapped.
func TestRemoteOf(t *testing.T) {
	got := remoteOf(60001)
	if want := netip.MustParseAddrPort("[::ffff:127.0.0.3]:1025"); got != want {
		t.Errorf("remoteOf(60001) = %s, want %s", got, want)
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
		altCfg:  altConfig{lives: []int{1}, rounds: 3, packets: 10},
		alt: []costRow{
			{path: altSelectHash, live: 1, ns: []float64{80, 90, 85}},
			{path: altSelectArray, live: 1, ns: []float64{60, 70, 65}},
			{path: altFlowLRU, live: 1, ns: []float64{110}},
			{path: altFlowSets, live: 1, ns: []float64{75.5}},
		},
		cost: []costRow{
			{path: pathExisting, live: 1000, ns: []float64{80, 85, 95}, sent: 30, runs: 30, counter: "rx_flow_ok", matched: 30},
			{path: pathNew, live: 1000, ns: []float64{300, 310, 320}, sent: 15, runs: 15, counter: "rx_flow_new_unseen", matched: 15},
			{path: pathNoop, live: 1000, ns: []float64{61, 70, 65}, sent: 30, runs: 30, counter: "rx_noop_total", matched: 30},
			{path: pathTouch, live: 1000, ns: []float64{70, 72, 71}, sent: 30, runs: 30},
			{path: pathTouchNew, live: 1000, ns: []float64{250, 260, 255}, sent: 15, runs: 15},
			{path: pathSelect, live: 1000, ns: []float64{50, 52, 51}, sent: 30, runs: 30},
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
		"| flow, existing flows | 1,000 | 85.0 (80.0-95.0) (meets) | <= 90 | 45.0 | 14.0 | ~148 |",
		"| noop | 1,000 | 65.0 (61.0-70.0) (**above target**) | <= 60 | 25.0 | 14.0 | ~105 |",
		"| flow, new flows | 1,000 | 310.0 (300.0-320.0) (**above target**) | <= 90 | 270.0 | 55.0 | ~155 |",
		"| one random entry of a table this size (calibration) | 1,000 | 71.0 (70.0-72.0) | - | 31.0 | - | - |",
		"| empty program (calibration) | - | 40.0 (40.0-40.0) | - | - | - | - |",
		"| bytes per entry (memlock / max_entries) | 128.0 |",
		"| select a socket: REUSEPORT_SOCKARRAY by index (grmwrap) | 1 | 65.0 (60.0-70.0) | -20.0 ns against the line above |",
		"| find a flow: 8-way set of an array at the reuseport hash (grmwrap) | 1 | 75.5 (75.5-75.5) | -34.5 ns against the line above |",
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

func TestAnsweredBy(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		who  string
		want int
	}{
		{nil, "", 0},
		{[]string{"", ""}, "", 0},
		{[]string{"", "7", "7"}, "7", 1},
		{[]string{"7", "8", "7", "9", "8"}, "7", 3},
	} {
		if who, n := answeredBy(tc.in); who != tc.who || n != tc.want {
			t.Errorf("answeredBy(%q) = %q, %d, want %q, %d", tc.in, who, n, tc.who, tc.want)
		}
	}
}

func TestJudgeFlow(t *testing.T) {
	for _, tc := range []struct {
		in    []string
		split int
		want  flowVerdict
	}{
		{[]string{"", "5"}, 0, flowNotEstablished},
		{[]string{"", "5"}, 1, flowNotEstablished},
		{[]string{"4", "5", "4"}, 2, flowSplitBefore},
		{[]string{"4", "4"}, 1, flowSame},
		{[]string{"", "4", "", "4"}, 2, flowSame},
		{[]string{"4", "5"}, 1, flowMisrouted},
		{[]string{"4", "4", "5"}, 1, flowMisrouted},
		{[]string{"4", ""}, 1, flowUnanswered},
		{[]string{"4"}, 1, flowUnanswered},
		{[]string{"4"}, 5, flowUnanswered}, // split beyond what was sent
	} {
		if got := judgeFlow(tc.in, tc.split); got != tc.want {
			t.Errorf("judgeFlow(%q, %d) = %d, want %d", tc.in, tc.split, got, tc.want)
		}
	}
}

func TestForwardOnly(t *testing.T) {
	gens := map[string]uint32{"10": 1, "20": 2, "30": 3}
	for _, tc := range []struct {
		order []string
		want  bool
	}{
		{nil, true},
		{[]string{"10", "20", "30"}, true},
		{[]string{"10", "30"}, true},
		{[]string{"20", "10"}, false},
		{[]string{"10", "99"}, false}, // not a generation's pid
	} {
		if got := forwardOnly(tc.order, gens); got != tc.want {
			t.Errorf("forwardOnly(%q) = %v, want %v", tc.order, got, tc.want)
		}
	}
}

func TestParseBindLine(t *testing.T) {
	r, err := parseBindLine("binds=2000 median_ns=494 p90_ns=558 p99_ns=672 min_ns=425 round_mean_ns=5037 reuseport_after_bind=3")
	if err != nil {
		t.Fatal(err)
	}
	if r.binds != 2000 || r.median != 494 || r.p90 != 558 || r.p99 != 672 || r.min != 425 || r.roundMean != 5037 || r.reuseport != 3 {
		t.Errorf("parsed %+v", r)
	}
	for _, bad := range []string{"", "binds=1", "binds=x median_ns=1 p90_ns=1 p99_ns=1 min_ns=1 round_mean_ns=1 reuseport_after_bind=1"} {
		if _, err := parseBindLine(bad); err == nil {
			t.Errorf("parseBindLine(%q) accepted", bad)
		}
	}
}

func TestParseUDPDrops(t *testing.T) {
	text := "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n" +
		" 1234: 0100007F:1D56 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1222429 2 0000000000000000 17        \n" +
		" 5678: 00000000:A1B2 0100007F:1D56 01 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0         \n" +
		"garbage\n"
	got := parseUDPDrops(text)
	want := []udpDropEntry{{port: 7510, inode: 1222429, drops: 17}, {port: 0xa1b2, inode: 99, drops: 0}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseUDPDrops = %+v, want %+v", got, want)
	}
}

func TestDropsNear(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	d := dropCount{samples: []dropSample{{at(0), 0}, {at(100), 5}, {at(200), 5}, {at(300), 9}, {at(400), 20}}}
	// One upgrade at 150 ms with a 100 ms window: the samples (100,200] and
	// (200,300] overlap [150,250].
	drops, share := d.near(t0, []time.Duration{150 * time.Millisecond}, 100*time.Millisecond)
	if drops != 4 || share != 0.5 {
		t.Errorf("near = %d, %v; want 4, 0.5", drops, share)
	}
}

// TestMarkdownNewSections renders the hot path, loss, scale and bind
// sections from made-up figures.
func TestMarkdownNewSections(t *testing.T) {
	r := &report{
		command:    "bin/grmbench",
		machine:    machine{date: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		hotpathCfg: hotpathConfig{src: "echo.c", clients: 4, window: 4, payload: 64, round: time.Second, settle: time.Second},
		hotpath: &hotpathResult{
			rates:  [3][]float64{{100, 100}, {99, 100}, {90, 96}},
			ratioB: []float64{0.99, 1}, ratioC: []float64{0.9, 0.96}, ratioCB: []float64{0.91, 0.96},
			replies: [3]uint64{200, 199, 186}, elapsed: [3]time.Duration{time.Second, time.Second, time.Second},
			runs: [3]uint64{0, 0, 190}, progID: 42, plainCmd: "echo-c 1", wrappedCmd: "grmwrap -- echo-c 2",
		},
		lossCfg: lossConfig{flows: 64, senders: 2, payload: 64, probe: 2 * time.Second, start: 20000, step: 20000,
			fraction: 0.75, minSent: 1000000, upgrades: 10, drain: time.Second},
		loss: &lossResult{
			steps:  []rateStep{{rate: 20000, achieved: 19999, sent: 40000, ok: true}, {rate: 40000, achieved: 39000, sent: 78000, lost: 3}},
			steady: 20000, rate: 15000, wrappedCmd: "grmwrap -- echo-c 3",
			runs: []lossRun{
				{name: "control 1, no upgrade", rate: 15000, duration: 67 * time.Second,
					res: &load.Result{Sent: 1005000, Answered: 1005000, SendRate: 15000, Flows: make([]load.Flow, 64)}, liveAfter: 1},
				{name: "upgrades", rate: 15000, upgrades: 10, duration: 67 * time.Second,
					res:       &load.Result{Sent: 1005000, Answered: 1004990, Lost: 10, SendRate: 15000, Flows: make([]load.Flow, 64)},
					upgradeMS: []float64{10, 12}, upgradeAt: []time.Duration{time.Second, 2 * time.Second},
					gens: []lossGen{{gen: 1, pid: 100, answered: 4}, {gen: 2, pid: 101, answered: 6}}, liveAfter: 1,
					serverDrop: 10, nearDrops: 4, nearShare: 0.16},
			},
		},
		scaleCfg: scaleConfig{flows: 100000, newFlows: 100000, rate: 50000},
		scale:    &scaleResult{wrappedCmd: "grmwrap -- echo-c 4", established: 100000, same: 100000, newByGen2: 100000, pid1: 7, pid2: 8},
		bindCfg:  bindConfig{src: "bindloop.c", binds: 10},
		bind: &bindResult{
			runs: [3][]bindRun{{{median: 500}}, {{median: 200500, reuseport: 10}}, {{median: 20500}}},
			cmds: [3]string{"bindloop", "grmwrap -- bindloop", "grmwrap -- bindloop x"}, procnetUS: []float64{180},
		},
	}
	md := r.markdown()
	for _, want := range []string{
		"| **B/A, median of 2 triples** (min-max) | **0.995 (0.990-1.000)** (meets) | >= 0.99 |",
		"| **C/A, median of 2 triples** (min-max) | **0.930 (0.900-0.960)** (**below target**) | >= 0.95 |",
		"| program runs counted over whole rounds (settling and closing included) A / B / C | 0 / 0 / 190 ",
		"| 40,000 | 39,000 | 78,000 | 3 |",
		"rate of the last upgrade run: **15,000 datagrams/s**",
		"| run | control 1, no upgrade | upgrades | target |",
		"| **lost** | **0** (control) | **10** (**above target**) | 0 |",
		"| 4 / 6 (16%) |",
		"| 2 | 101 | 6 |",
		"| **misrouted** (answered after the upgrade by another instance) | **0** (meets) | 0 |",
		"| trapped, managed (grmwrap binds it) | 200.50 |",
		"| 200.0 | 10 of 10 |",
		"`bin/grmbench -only bind -out /tmp/bind.md`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestParseSyscallLine(t *testing.T) {
	if ns, err := parseSyscallLine("syscalls=500000 mean_ns=153"); err != nil || ns != 153 {
		t.Errorf("parseSyscallLine = %v, %v", ns, err)
	}
	for _, bad := range []string{"", "syscalls=0 mean_ns=1", "mean_ns=5", "binds=1 median_ns=2"} {
		if _, err := parseSyscallLine(bad); err == nil {
			t.Errorf("parseSyscallLine(%q) accepted", bad)
		}
	}
}
