package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/notify"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture grmwrap runs on (x86-64).
const clockTicks = 100

// procHealth is the generations.Health port read from /proc: whether a
// generation's processes are stopped, the CPU time they used, and the bytes
// waiting in its managed sockets.
type procHealth struct {
	dp *dataPlane
}

var _ generations.Health = procHealth{}

// procStat is what health reads of /proc/PID/stat.
type procStat struct {
	state byte // R, S, D, T (stopped), t (traced), Z, ...
	pgrp  int
	cpu   uint64 // utime + stime, in clock ticks
}

// readProcStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may hold spaces or parentheses: fields are counted
// from the last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse stat: no command name")
	}
	// After ") ": state(3) ppid(4) pgrp(5) ... utime(14) stime(15).
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse stat: %d fields", len(f))
	}
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat pgrp: %w", err)
	}
	utime, err := strconv.ParseUint(string(f[11]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat utime: %w", err)
	}
	stime, err := strconv.ParseUint(string(f[12]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat stime: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, cpu: utime + stime}, nil
}

// generationProcs returns the stat of every process of the generation
// whose main process is pid: the main process and the other members of
// its process group (every instance starts in a group of its own). The
// one place that says what a generation's processes are: it can become
// the members of the generation's cgroup.
func generationProcs(pid int) ([]procStat, error) {
	main, err := readProcStat(pid)
	if err != nil {
		return nil, err
	}
	out := []procStat{main}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue // not a process, or the main one (already read)
		}
		st, err := readProcStat(p)
		if err != nil {
			continue // it exited meanwhile
		}
		if st.pgrp == main.pgrp && main.pgrp == pid {
			out = append(out, st)
		}
	}
	return out, nil
}

func stopped(procs []procStat) bool {
	for _, p := range procs {
		if p.state == 'T' || p.state == 't' {
			return true
		}
	}
	return false
}

// Stopped implements generations.Health.
func (h procHealth) Stopped(_ uint32, p generations.Process) (bool, error) {
	procs, err := generationProcs(p.Pid())
	if err != nil {
		return false, fmt.Errorf("read generation processes: %w", err)
	}
	return stopped(procs), nil
}

// Sample implements generations.Health.
func (h procHealth) Sample(gen uint32, p generations.Process) (generations.Sample, error) {
	procs, err := generationProcs(p.Pid())
	if err != nil {
		return generations.Sample{}, fmt.Errorf("read generation processes: %w", err)
	}
	var ticks uint64
	for _, st := range procs {
		ticks += st.cpu
	}
	s := generations.Sample{Stopped: stopped(procs), CPU: time.Duration(ticks) * time.Second / clockTicks}
	if inodes := h.dp.Sockets(gen); len(inodes) > 0 {
		q, err := notify.QueuedBytes(p.Pid(), inodes)
		if err != nil {
			return generations.Sample{}, fmt.Errorf("read receive queues: %w", err)
		}
		s.Queued = int(q)
	}
	return s, nil
}
