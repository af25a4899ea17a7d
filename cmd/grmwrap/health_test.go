package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a ')' in it; state T (stopped).
	line := []byte("4242 (we) ird (x) T 1 4240 4240 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123 1000 10 18446744073709551615\n")
	st, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.state != 'T' || st.pgrp != 4240 {
		t.Errorf("parseProcStat = %+v; want state T, pgrp 4240", st)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) R 1", "1 (x) R 1 z", "1 (x) RR 1 1"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q): no error", bad)
		}
	}
}

// TestGenerationProcsSeesAStoppedChild: a process tree (sh and its sleep
// child) reads as running, and as stopped once the child is SIGSTOPped.
func TestGenerationProcsSeesAStoppedChild(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the whole group; ESRCH if gone
		_ = cmd.Wait()                                      // killed: its status says so
	})
	var child int
	if _, err := fmt.Fscan(out, &child); err != nil {
		t.Fatalf("read the child's pid: %v", err)
	}
	procs, err := generationProcs(cmd.Process.Pid)
	if err != nil || len(procs) != 2 || stopped(procs) {
		t.Fatalf("generationProcs = %+v, %v; want sh and sleep, running", procs, err)
	}
	if err := syscall.Kill(child, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second) // hang guard
	for {
		procs, err = generationProcs(cmd.Process.Pid)
		if err == nil && stopped(procs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a SIGSTOPped child never read as stopped: %+v, %v", procs, err)
		}
		time.Sleep(5 * time.Millisecond)
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
