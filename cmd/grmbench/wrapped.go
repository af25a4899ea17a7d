package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// buildC compiles a C source file into dir/name with gcc -O2.
func buildC(src, dir, name string) (string, error) {
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("compile %s: %w\n%s", src, err, out)
	}
	return bin, nil
}

// buildInTemp compiles the C program src as name in a new temporary
// directory for section; the caller removes dir.
func buildInTemp(section, src, name string) (dir, bin string, err error) {
	if dir, err = os.MkdirTemp("", "grmbench-"+section+"-"); err != nil {
		return "", "", err
	}
	if bin, err = buildC(src, dir, name); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return dir, bin, nil
}

// readyPort reads the echo server's ready line ("ready pid=... port=N")
// and returns the port.
func readyPort(r io.Reader) (uint16, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("echo server did not report ready: %w", err)
	}
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil || p == 0 {
				return 0, fmt.Errorf("echo server ready line %q: bad port", line)
			}
			return uint16(p), nil
		}
	}
	return 0, fmt.Errorf("echo server ready line without port: %q", line)
}

// supervisor is a grmwrap run the benchmark started.
type supervisor struct {
	bin     string // the grmwrap binary
	rt      string // its --runtime-dir
	cmd     *exec.Cmd
	pid     int
	logPath string   // its stderr
	args    []string // its arguments, for the report
	exited  chan struct{}
	waitErr error
}

// startSupervisor runs `grmwrap --runtime-dir DIR/run ARGS...` (ARGS end
// with -- COMMAND ...) and waits until its working generation has bound
// wantSockets managed sockets.
func startSupervisor(bin, dir string, args []string, wantSockets int) (*supervisor, error) {
	s := &supervisor{bin: bin, rt: filepath.Join(dir, "run"), args: args, exited: make(chan struct{})}
	s.logPath = filepath.Join(dir, "grmwrap.log")
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	s.cmd = exec.Command(bin, append([]string{"--runtime-dir", s.rt}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = io.Discard, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s.pid = s.cmd.Process.Pid
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := s.status()
		if err == nil && st.Working != 0 {
			if g := st.gen(st.Working); g != nil && g.Sockets >= wantSockets {
				return s, nil
			}
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("grmwrap exited at start (%v): %s", s.waitErr, s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("grmwrap's server did not bind %d managed sockets in 15s (last status error: %v): %s", wantSockets, err, s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// commandLine is the supervisor's command line for the report, with the
// temporary runtime directory and binaries shortened to their names.
func (s *supervisor) commandLine() string {
	args := []string{"grmwrap"}
	for _, a := range s.args {
		if filepath.IsAbs(a) {
			a = filepath.Base(a)
		}
		args = append(args, a)
	}
	return shellQuote(args)
}

// logTail is the end of the supervisor's log, for errors.
func (s *supervisor) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// supStatus is `grmwrap status --json`.
type supStatus struct {
	Pid         int         `json:"pid"`
	Working     uint32      `json:"working_generation"`
	Generations []genStatus `json:"generations"`
	Counters    counters    `json:"counters"`
}

type genStatus struct {
	Generation uint32 `json:"generation"`
	Pid        int    `json:"pid"`
	State      string `json:"state"`
	Sockets    int    `json:"sockets"`
	Flows      int    `json:"flows"`
}

// counters are the data plane's and the trapped syscalls' counters.
type counters map[string]uint64

// sub returns c - before, counter by counter.
func (c counters) sub(before counters) counters {
	out := make(counters, len(c))
	for k, v := range c {
		out[k] = v - before[k]
	}
	return out
}

func (st *supStatus) gen(g uint32) *genStatus {
	for i := range st.Generations {
		if st.Generations[i].Generation == g {
			return &st.Generations[i]
		}
	}
	return nil
}

// live counts the generations that have not ended.
func (st *supStatus) live() int {
	n := 0
	for _, g := range st.Generations {
		if g.State != "exited" && g.State != "failed" {
			n++
		}
	}
	return n
}

func (s *supervisor) status() (*supStatus, error) {
	out, err := exec.Command(s.bin, "status", "--runtime-dir", s.rt, "--json", strconv.Itoa(s.pid)).Output()
	if err != nil {
		return nil, fmt.Errorf("grmwrap status: %w", err)
	}
	var st supStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("grmwrap status: %w", err)
	}
	return &st, nil
}

// upgrade runs `grmwrap upgrade PID` and returns its wall time.
func (s *supervisor) upgrade() (time.Duration, error) {
	start := time.Now()
	out, err := exec.Command(s.bin, "upgrade", "--runtime-dir", s.rt, "--timeout", "30s", strconv.Itoa(s.pid)).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("grmwrap upgrade: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return time.Since(start), nil
}

// waitLive waits until n generations are live.
func (s *supervisor) waitLive(n int, timeout time.Duration) (*supStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.status()
		if err == nil && st.live() == n {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("supervisor did not come to %d live generations in %s", n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the supervisor (SIGINT stops every instance) and waits for it;
// after 15 s it is killed.
func (s *supervisor) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// supervisorProgram returns a handle on the SK_REUSEPORT program the
// supervisor pid holds: a copy of its descriptor (pidfd_getfd), checked to
// be grmwrap's steering program. A supervisor with one group holds one such
// program (bpf.DataPlane keeps one copy per group); more than one is an
// error, as which is attached to the group could not be told.
func supervisorProgram(pid int) (*ebpf.Program, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open supervisor: %w", err)
	}
	defer unix.Close(pidfd)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var found []*ebpf.Program
	for _, ent := range ents {
		link, err := os.Readlink(filepath.Join(dir, ent.Name()))
		if err != nil || link != "anon_inode:bpf-prog" {
			continue
		}
		target, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		if err != nil {
			return nil, fmt.Errorf("pidfd_getfd supervisor fd %d: %w", target, err)
		}
		p, err := ebpf.NewProgramFromFD(fd)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("program of supervisor fd %d: %w", target, err)
		}
		info, err := p.Info()
		if err != nil || info.Type != ebpf.SkReuseport || info.Name != "grm_reuseport" {
			p.Close()
			continue
		}
		found = append(found, p)
	}
	if len(found) != 1 {
		for _, p := range found {
			p.Close()
		}
		return nil, fmt.Errorf("supervisor %d holds %d grm_reuseport programs, want exactly 1", pid, len(found))
	}
	return found[0], nil
}

// udpDrops formats how the kernel's UDP drop counters moved between two
// readings.
func udpDrops(before, after map[string]int64) string {
	var parts []string
	for _, k := range []string{"RcvbufErrors", "InErrors", "NoPorts", "SndbufErrors"} {
		parts = append(parts, fmt.Sprintf("%s +%d", k, after[k]-before[k]))
	}
	return strings.Join(parts, ", ")
}

// genPid returns the pid of generation g.
func (st *supStatus) genPid(g uint32) (int, error) {
	if gs := st.gen(g); gs != nil {
		return gs.Pid, nil
	}
	return 0, fmt.Errorf("no generation %d in the supervisor's status", g)
}
