package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// noCgroupEnv, set to 1 in the supervisor's environment, makes it track
// generations by process group even where a writable cgroup2 exists. It is
// for tests of the fallback; the supervisor removes it from the instances'
// environment.
const noCgroupEnv = "GRMWRAP_TEST_NO_CGROUP"

// procTree says which processes belong to a generation. With a writable
// cgroup2 hierarchy every generation has its own cgroup below grmwrap's
// (<own>/grmwrap-<pid>/gen-N), which its init stage is started into:
// membership is inherited by every descendant, whatever it does (setsid,
// double fork). Without one, a generation is its main process's process
// group; a process that calls setsid() leaves it.
type procTree struct {
	log  *slog.Logger
	root string // the cgroup of this supervisor's generations; "" in the fallback
}

// newProcTree picks the mechanism and logs it once.
func newProcTree(log *slog.Logger) *procTree {
	t := &procTree{log: log}
	why := ""
	if os.Getenv(noCgroupEnv) == "1" {
		why = noCgroupEnv + "=1"
	} else if root, err := cgroupRoot(); err != nil {
		why = err.Error()
	} else if t.root, err = mkdirUnique(root); err != nil {
		why = fmt.Sprintf("create cgroup: %v", err)
	}
	if t.root != "" {
		log.Debug("generations are tracked by cgroup", "cgroup", t.root)
	} else {
		log.Warn("generations are tracked by process group (no writable cgroup2): a worker that calls setsid() escapes its generation until grmwrap stops",
			"reason", why)
	}
	return t
}

// cgroupRoot finds the cgroup2 mount in /proc/self/mountinfo and
// grmwrap's own cgroup in /proc/self/cgroup, and names the directory of
// this supervisor's generations below it.
func cgroupRoot() (string, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	mnt := ""
	for _, line := range strings.Split(string(mi), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) >= 5 && f[3] == "/" {
			mnt = f[4]
			break
		}
	}
	if mnt == "" {
		return "", errors.New("no cgroup2 mount")
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	own := ""
	for _, line := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own = p
		}
	}
	if own == "" {
		return "", errors.New("no cgroup2 entry in /proc/self/cgroup")
	}
	return filepath.Join(mnt, own, fmt.Sprintf("grmwrap-%d", os.Getpid())), nil
}

// mkdirUnique creates dir, or dir-2, dir-3, ... when it exists: a
// supervisor of the same pid in another PID namespace (a container) may
// share the parent cgroup.
func mkdirUnique(dir string) (string, error) {
	name := dir
	for n := 2; ; n++ {
		err := os.Mkdir(name, 0o755)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, os.ErrExist) || n > 100 {
			return "", err
		}
		name = fmt.Sprintf("%s-%d", dir, n)
	}
}

// group makes the cgroup of generation gen; in the fallback it returns an
// empty group whose process group is set once the main process exists.
func (t *procTree) group(gen uint32) (*procGroup, error) {
	g := &procGroup{}
	if t.root == "" {
		return g, nil
	}
	g.dir = filepath.Join(t.root, fmt.Sprintf("gen-%d", gen))
	if err := os.Mkdir(g.dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create cgroup of generation %d: %w", gen, err)
	}
	f, err := os.Open(g.dir)
	if err != nil {
		_ = os.Remove(g.dir) // empty: nothing was started in it
		return nil, fmt.Errorf("open cgroup of generation %d: %w", gen, err)
	}
	g.fd = f
	return g, nil
}

// close kills whatever is left (every generation has normally ended by
// then) and removes the cgroups; in the fallback it kills the orphans
// grmwrap inherited as subreaper (workers that left their process group).
// reap collects their exits.
func (t *procTree) close(reap func()) {
	var groups []*procGroup
	if t.root != "" {
		ents, err := os.ReadDir(t.root)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.log.Warn("list generation cgroups", "err", err)
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "gen-") {
				groups = append(groups, &procGroup{dir: filepath.Join(t.root, e.Name())})
			}
		}
	}
	for _, g := range groups {
		if g.populated() {
			t.log.Warn("processes left in a generation's cgroup at exit: killing", "cgroup", g.dir, "pids", g.pids())
			g.kill()
		}
	}
	self := os.Getpid()
	if left := scanProcs(func(_, ppid, _ int) bool { return ppid == self }); len(left) > 0 {
		t.log.Warn("processes left at exit: killing", "pids", left)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL) // ESRCH: it just exited
		}
	}
	guard := time.Now().Add(killWait)
	for {
		reap()
		busy := len(scanProcs(func(_, ppid, _ int) bool { return ppid == self })) > 0
		for _, g := range groups {
			busy = busy || g.populated()
		}
		if !busy || time.Now().After(guard) {
			break
		}
		time.Sleep(pollEvery)
	}
	for _, g := range groups {
		g.remove()
	}
	if t.root != "" {
		if err := os.Remove(t.root); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.log.Warn("remove cgroup", "cgroup", t.root, "err", err)
		}
	}
}

// pollEvery is how often a generation whose main process has exited is
// checked for remaining processes; killWait bounds the wait after SIGKILL
// (a process in uninterruptible sleep may take a moment).
const (
	pollEvery = 20 * time.Millisecond
	killWait  = 5 * time.Second
)

// procGroup is the processes of one generation: a cgroup, or (fallback)
// the process group of its main process.
type procGroup struct {
	dir  string   // cgroup directory; "" in the fallback
	fd   *os.File // the open cgroup until the init stage has started
	pgid int      // the main process's pid, its process group id
}

// closeFd drops the directory handle once the init stage is in the cgroup.
func (g *procGroup) closeFd() {
	if g.fd != nil {
		_ = g.fd.Close() // a directory: nothing to flush
		g.fd = nil
	}
}

// pids lists the group's processes (zombies of the fallback included).
func (g *procGroup) pids() []int {
	if g.dir == "" {
		if g.pgid <= 0 {
			return nil
		}
		return scanProcs(func(_, _, pgrp int) bool { return pgrp == g.pgid })
	}
	b, err := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
	if err != nil {
		return nil // removed: empty
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// contains reports whether pid is in the group: in its cgroup, or in the
// fallback in its process group.
func (g *procGroup) contains(pid int) bool {
	if g.dir == "" {
		st, err := readProcStat(pid)
		return err == nil && g.pgid > 0 && st.pgrp == g.pgid
	}
	for _, p := range g.pids() {
		if p == pid {
			return true
		}
	}
	return false
}

// populated reports whether any process of the group is left.
func (g *procGroup) populated() bool {
	if g.dir == "" {
		return len(g.pids()) > 0
	}
	b, err := os.ReadFile(filepath.Join(g.dir, "cgroup.events"))
	if err != nil {
		return false // removed: empty
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "populated "); ok {
			return v != "0"
		}
	}
	return false
}

// signal sends sig to every process of the group.
func (g *procGroup) signal(sig syscall.Signal) {
	if g.dir == "" {
		if g.pgid > 0 {
			_ = syscall.Kill(-g.pgid, sig) // ESRCH: the group is gone
		}
		return
	}
	for _, pid := range g.pids() {
		_ = syscall.Kill(pid, sig) // ESRCH: it just exited
	}
}

// kill kills every process of the group: cgroup.kill (5.14+) at once,
// else SIGKILL to each.
func (g *procGroup) kill() {
	if g.dir != "" {
		if err := writeFile(filepath.Join(g.dir, "cgroup.kill"), "1"); err == nil {
			return
		}
	}
	g.signal(syscall.SIGKILL)
}

// remove removes an empty cgroup.
func (g *procGroup) remove() {
	g.closeFd()
	if g.dir == "" {
		return
	}
	// EBUSY right after the last exit is possible while the kernel
	// finishes it: retry briefly.
	guard := time.Now().Add(killWait)
	for {
		err := os.Remove(g.dir)
		if err == nil || errors.Is(err, os.ErrNotExist) || time.Now().After(guard) {
			return
		}
		time.Sleep(pollEvery)
	}
}

// scanProcs lists the pids of /proc whose (ppid, pgrp) match keep.
func scanProcs(keep func(pid, ppid, pgrp int) bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		if keep(pid, ppid, pgrp) {
			out = append(out, pid)
		}
	}
	return out
}

// writeFile writes s to an existing file (a cgroup's control file).
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
