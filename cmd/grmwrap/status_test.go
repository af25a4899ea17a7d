package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/grmwrap/grmwrap/generations"
)

// TestPrintStatus: the human status names the supervisor and its working
// generation, has one row per generation (pid, state, sockets, flows, a
// failure's reason), one line per group with its sockets per generation,
// and the counters sorted by name.
func TestPrintStatus(t *testing.T) {
	st := Status{
		PID:               4242,
		WorkingGeneration: 2,
		Generations: []generations.GenerationStatus{
			{Generation: 1, PID: 100, State: generations.StateDraining, Sockets: 1, Flows: 7},
			{Generation: 2, PID: 200, State: generations.StateWorking, Sockets: 1, Flows: 3},
			{Generation: 3, PID: 300, State: generations.StateFailed, Reason: "generation 3 exited with status 3"},
		},
		Groups:   []GroupStatus{{Address: "udp4 0.0.0.0:53 netns:1", Dissector: "flow", Sockets: map[string]int{"2": 1, "1": 1}}},
		Counters: map[string]uint64{"rx_processed_total": 10, "rx_flow_ok": 8},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	out := b.String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if lines[0] != "supervisor 4242, working generation 2" {
		t.Fatalf("first line %q", lines[0])
	}
	fields := func(l string) string { return strings.Join(strings.Fields(l), " ") }
	want := []string{
		"GENERATION PID STATE SOCKETS FLOWS",
		"1 100 draining 1 7",
		"2 200 working 1 3",
		"3 300 failed 0 0 generation 3 exited with status 3",
		"group udp4 0.0.0.0:53 netns:1 (flow): gen 1: 1, gen 2: 1",
		"rx_flow_ok 8",
		"rx_processed_total 10",
	}
	if len(lines) != 1+len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), 1+len(want), out)
	}
	for i, w := range want {
		if got := fields(lines[i+1]); got != w {
			t.Errorf("line %d: %q, want %q", i+2, got, w)
		}
	}
}
