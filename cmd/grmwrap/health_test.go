package main

import (
	"os"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a ')' in it; state T (stopped).
	line := []byte("4242 (we) ird (x) T 1 4240 4240 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123 1000 10 18446744073709551615\n")
	st, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.state != 'T' || st.pgrp != 4240 || st.cpu != 12 {
		t.Errorf("parseProcStat = %+v; want state T, pgrp 4240, cpu 12", st)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) R 1", "1 (x) R 1 z 1 0 -1 0 0 0 0 0 1 1"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q): no error", bad)
		}
	}
}

// TestGenerationProcsOfThisProcess: the test binary's own group: it is
// read, running (not stopped), and counts some CPU time.
func TestGenerationProcsOfThisProcess(t *testing.T) {
	procs, err := generationProcs(os.Getpid())
	if err != nil || len(procs) == 0 {
		t.Fatalf("generationProcs = %v, %v", procs, err)
	}
	if stopped(procs) {
		t.Errorf("this process reads as stopped: %+v", procs)
	}
}

// BenchmarkGenerationProcs is the cost of one stopped/CPU reading (a walk
// of /proc), what the health monitor pays per live generation per second.
func BenchmarkGenerationProcs(b *testing.B) {
	for b.Loop() {
		if _, err := generationProcs(os.Getpid()); err != nil {
			b.Fatal(err)
		}
	}
}
