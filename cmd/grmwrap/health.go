package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
)

// procHealth is the generations.Health port read from /proc: whether a
// generation's processes are stopped, the CPU time they used, and the bytes
// waiting in its managed sockets.
type procHealth struct {
	dp *dataPlane
}

var _ generations.Health = procHealth{}

// procStat is what health reads of /proc/PID/stat.
type procStat struct {
	pid   int
	state byte // R, S, D, T (stopped), t (traced), Z, ...
	pgrp  int
}

// readProcStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may hold spaces or parentheses: fields are counted
// from the last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	st, err := parseProcStat(b)
	st.pid = pid
	return st, err
}

// threadsCPU is the CPU time the live threads of process pid ran, to the
// nanosecond: the first field of /proc/PID/task/TID/schedstat. (utime and
// stime come in clock ticks: a server that answers a few datagrams between
// two samples may use none.) A thread that exits takes its time with it,
// which only makes the sum change, as any run does.
func threadsCPU(pid int) time.Duration {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0 // it exited meanwhile
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited meanwhile
		}
		if f := bytes.Fields(b); len(f) > 0 {
			if ns, err := strconv.ParseUint(string(f[0]), 10, 64); err == nil {
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}

func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse stat: no command name")
	}
	// After ") ": state(3) ppid(4) pgrp(5).
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse stat: %d fields", len(f))
	}
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat pgrp: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp}, nil
}

// maxGenerationProcs bounds the processes one reading visits.
const maxGenerationProcs = 4096

// generationProcs returns the stat of every process of the generation
// whose main process is pid: the main process, its descendants, and the
// processes of its group that the supervisor adopted (as a subreaper) with
// their descendants. The one place that says what a generation's
// processes are: it can become the members of the generation's cgroup.
// It reads only the tree (/proc/PID/task/TID/children), not all of /proc.
func generationProcs(pid int) ([]procStat, error) {
	main, err := readProcStat(pid)
	if err != nil {
		return nil, err
	}
	out := []procStat{main}
	seen := map[int]bool{pid: true}
	queue := childrenOf(pid)
	if main.pgrp == pid {
		for _, c := range childrenOf(os.Getpid()) {
			if st, err := readProcStat(c); err == nil && st.pgrp == pid && !seen[c] {
				queue = append(queue, c)
			}
		}
	}
	for len(queue) > 0 && len(out) < maxGenerationProcs {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		st, err := readProcStat(p)
		if err != nil {
			continue // it exited meanwhile
		}
		out = append(out, st)
		queue = append(queue, childrenOf(p)...)
	}
	return out, nil
}

// childrenOf lists the children of every thread of process pid (none if it
// is gone).
func childrenOf(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil // it exited meanwhile
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, f := range bytes.Fields(b) {
			if c, err := strconv.Atoi(string(f)); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

func stopped(procs []procStat) bool {
	for _, p := range procs {
		if p.state == 'T' || p.state == 't' {
			return true
		}
	}
	return false
}

// procsOf reads the processes of the generation p: the members of its
// cgroup when it has one (exact: workers whose parent exited included),
// else its process tree (generationProcs).
func procsOf(p generations.Process) ([]procStat, error) {
	if c, ok := p.(interface{ cgroupMembers() ([]int, bool) }); ok {
		if pids, exact := c.cgroupMembers(); exact {
			if len(pids) == 0 {
				return nil, errors.New("no process left")
			}
			out := make([]procStat, 0, len(pids))
			for _, pid := range pids {
				if st, err := readProcStat(pid); err == nil {
					out = append(out, st)
				}
			}
			return out, nil
		}
	}
	return generationProcs(p.Pid())
}

// Stopped implements generations.Health.
func (h procHealth) Stopped(_ uint32, p generations.Process) (bool, error) {
	procs, err := procsOf(p)
	if err != nil {
		return false, fmt.Errorf("read generation processes: %w", err)
	}
	return stopped(procs), nil
}

// Sample implements generations.Health.
func (h procHealth) Sample(gen uint32, p generations.Process) (generations.Sample, error) {
	procs, err := procsOf(p)
	if err != nil {
		return generations.Sample{}, fmt.Errorf("read generation processes: %w", err)
	}
	var cpu time.Duration
	for _, st := range procs {
		cpu += threadsCPU(st.pid)
	}
	s := generations.Sample{Stopped: stopped(procs), CPU: cpu}
	if inodes := h.dp.Sockets(gen); len(inodes) > 0 {
		pid := p.Pid()
		if len(procs) > 0 {
			pid = procs[0].pid // the main process may be gone, its workers not
		}
		q, err := notify.QueuedBytes(pid, inodes)
		if err != nil {
			return generations.Sample{}, fmt.Errorf("read receive queues: %w", err)
		}
		s.Queued = int(q)
	}
	return s, nil
}
