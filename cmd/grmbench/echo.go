package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
)

// echoConfig sizes the echo throughput comparison.
type echoConfig struct {
	src     string        // echo.c
	pairs   int           // rounds per mode
	round   time.Duration // measured time of a round
	settle  time.Duration // unmeasured time after switching mode
	clients int
	window  int // datagrams in flight per client
	payload int
	pin     bool // server on CPU serverCPU, clients on CPU clientCPU
}

// With pin, the echo server and the clients keep to their own CPU in every
// round. It is off by default: on the shared 2-CPU machine it did not tame
// the swings of the rate (other workloads cause them) and took away the
// scheduler's room to dodge them.
const (
	clientCPU = 0
	serverCPU = 1
)

// pinTo binds thread (or process) tid, 0 for the calling thread, to cpu.
func pinTo(tid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	return nil
}

// echoResult holds the replies per second of every round.
type echoResult struct {
	plain, steered []float64 // rounds without and with the program
	ratios         []float64 // steered/plain of each pair
	plainRuns      uint64    // program runs counted in rounds without it (must be 0)
	steeredRuns    uint64    // program runs counted in rounds with it
	steeredReplies uint64
	plainReplies   uint64
	steeredTime    time.Duration // measured time with the program, all rounds
	plainTime      time.Duration
	serverCmd      string
}

// aggregate is the rate over all rounds with the program divided by the
// rate over all rounds without it.
func (e *echoResult) aggregate() float64 {
	if e.plainReplies == 0 || e.steeredTime == 0 {
		return 0
	}
	return (float64(e.steeredReplies) / e.steeredTime.Seconds()) / (float64(e.plainReplies) / e.plainTime.Seconds())
}

// attachProgram attaches an SK_REUSEPORT program to the group of fd.
func attachProgram(fd, progFD int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, progFD); err != nil {
		return fmt.Errorf("attach reuseport program: %w", err)
	}
	return nil
}

// detachProgram takes the program off the group of fd: the kernel's hash
// selects again (a group of one socket: that socket). A group without a
// program (ENOENT) is what was asked for.
func detachProgram(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach reuseport program: %w", err)
	}
	return nil
}

// echoServer is the C echo server, running.
type echoServer struct {
	cmd  *exec.Cmd
	pid  int
	port uint16
	sock *os.File // a copy of its UDP socket (pidfd_getfd)
}

// startEcho compiles echo.c into dir and starts it on 127.0.0.1 with
// SO_REUSEPORT.
func startEcho(src, dir string) (*echoServer, error) {
	bin := filepath.Join(dir, "echo-c")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, src).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("compile %s: %w\n%s", src, err, out)
	}
	cmd := exec.Command(bin, "--addr", "127.0.0.1", "--reuseport", "0")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("echo server stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start echo server: %w", err)
	}
	e := &echoServer{cmd: cmd, pid: cmd.Process.Pid}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		e.stop()
		return nil, fmt.Errorf("echo server did not report ready: %w", err)
	}
	// ready pid=<pid> udp_reuseport=1 tcp_reuseport=-1 port=<port>
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				e.stop()
				return nil, fmt.Errorf("echo server ready line %q: %w", line, err)
			}
			e.port = uint16(p)
		}
	}
	if e.port == 0 {
		e.stop()
		return nil, fmt.Errorf("echo server ready line without port: %q", line)
	}
	if e.sock, err = takeSocket(e.pid, e.port); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// takeSocket copies the UDP socket bound to port out of process pid.
func takeSocket(pid int, port uint16) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list fds of the echo server: %w", err)
	}
	for _, ent := range ents {
		link, err := os.Readlink(filepath.Join(dir, ent.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue // gone or not a socket
		}
		target, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		if err != nil {
			return nil, fmt.Errorf("pidfd_getfd: %w", err)
		}
		sa, err := unix.Getsockname(fd)
		if in4, ok := sa.(*unix.SockaddrInet4); err == nil && ok && in4.Port == int(port) {
			return os.NewFile(uintptr(fd), "echo-server-socket"), nil
		}
		unix.Close(fd)
	}
	return nil, fmt.Errorf("no socket on port %d in the echo server", port)
}

func (e *echoServer) stop() {
	if e.sock != nil {
		e.sock.Close()
	}
	// The server exits on SIGTERM; Wait reaps it (an error means it was
	// killed, which is what was asked).
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	_ = e.cmd.Wait()
}

// echoClients keep window datagrams in flight each, closed loop, and
// count replies.
type echoClients struct {
	pinErr  atomic.Value
	replies atomic.Uint64
	stop    atomic.Bool
	wg      sync.WaitGroup
	fds     []int
}

func startClients(cfg echoConfig, port uint16) (*echoClients, error) {
	c := &echoClients{}
	for range cfg.clients {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("client socket: %w", err)
		}
		c.fds = append(c.fds, fd)
		tv := unix.Timeval{Usec: 20_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			c.close()
			return nil, fmt.Errorf("set SO_RCVTIMEO: %w", err)
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: serverIP, Port: int(port)}); err != nil {
			c.close()
			return nil, fmt.Errorf("connect client: %w", err)
		}
	}
	for _, fd := range c.fds {
		c.wg.Add(1)
		go c.run(fd, cfg)
	}
	return c, nil
}

// run is one client: it sends window datagrams, then one more for every
// reply; a datagram lost (no reply within the receive timeout) is
// replaced so the window stays full.
func (c *echoClients) run(fd int, cfg echoConfig) {
	defer c.wg.Done()
	if cfg.pin {
		// The thread stays locked (and pinned) until the goroutine ends;
		// the runtime then discards it.
		runtime.LockOSThread()
		if err := pinTo(0, clientCPU); err != nil {
			c.pinErr.Store(err)
		}
	}
	msg := make([]byte, cfg.payload)
	for k := range msg {
		msg[k] = byte('a' + k%26)
	}
	buf := make([]byte, 2048)
	send := func() {
		// A failed send is replaced after the receive timeout.
		_, _ = unix.Write(fd, msg)
	}
	for range cfg.window {
		send()
	}
	for !c.stop.Load() {
		if _, err := unix.Read(fd, buf); err != nil {
			if errors.Is(err, unix.EAGAIN) {
				send()
			}
			continue
		}
		c.replies.Add(1)
		send()
	}
}

func (c *echoClients) close() {
	c.stop.Store(true)
	c.wg.Wait()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
}

// runEcho compares the echo rate of one server without and with the
// program, in alternating rounds (AB, BA, AB, ...) of one run.
func runEcho(cfg echoConfig, logf func(string, ...any)) (echoResult, error) {
	var res echoResult
	dir, err := os.MkdirTemp("", "grmbench-")
	if err != nil {
		return res, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	srv, err := startEcho(cfg.src, dir)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	if cfg.pin {
		if err := pinTo(srv.pid, serverCPU); err != nil {
			return res, err
		}
	}
	res.serverCmd = fmt.Sprintf("gcc -O2 -Wall -o echo-c %s; echo-c --addr 127.0.0.1 --reuseport 0", cfg.src)

	dp, err := bpf.Load(bpf.Options{})
	if err != nil {
		return res, err
	}
	defer dp.Close()
	if err := dp.SetGroup(benchGroup, flowGroup(generations.DissectorFlow, 1)); err != nil {
		return res, err
	}
	if _, err := dp.AddSocket(benchGroup, 1, 0, srv.sock); err != nil {
		return res, err
	}
	sockFD := int(srv.sock.Fd())
	processed := func() (uint64, error) {
		c, err := dp.Counters(benchGroup)
		if err != nil {
			return 0, err
		}
		return c["rx_processed_total"], nil
	}

	clients, err := startClients(cfg, srv.port)
	if err != nil {
		return res, err
	}
	defer clients.close()
	time.Sleep(cfg.settle) // warm up
	if err, ok := clients.pinErr.Load().(error); ok {
		return res, err
	}

	// round measures one mode and returns replies per second.
	round := func(withProgram bool) (float64, error) {
		var err error
		if withProgram {
			var prog *ebpf.Program
			if prog, err = dp.Program(benchGroup); err == nil {
				err = attachProgram(sockFD, prog.FD())
			}
		} else {
			err = detachProgram(sockFD)
		}
		if err != nil {
			return 0, err
		}
		time.Sleep(cfg.settle)
		p0, err := processed()
		if err != nil {
			return 0, err
		}
		r0, t0 := clients.replies.Load(), time.Now()
		time.Sleep(cfg.round)
		r1, t1 := clients.replies.Load(), time.Now()
		p1, err := processed()
		if err != nil {
			return 0, err
		}
		if withProgram {
			res.steeredRuns += p1 - p0
			res.steeredReplies += r1 - r0
			res.steeredTime += t1.Sub(t0)
		} else {
			res.plainRuns += p1 - p0
			res.plainReplies += r1 - r0
			res.plainTime += t1.Sub(t0)
		}
		return float64(r1-r0) / t1.Sub(t0).Seconds(), nil
	}
	for p := range cfg.pairs {
		var a, b float64
		if p%2 == 0 {
			if a, err = round(false); err == nil {
				b, err = round(true)
			}
		} else {
			if b, err = round(true); err == nil {
				a, err = round(false)
			}
		}
		if err != nil {
			return res, err
		}
		res.plain = append(res.plain, a)
		res.steered = append(res.steered, b)
		res.ratios = append(res.ratios, b/a)
		if (p+1)%10 == 0 {
			logf("  %d pairs: ratio so far, median %.3f", p+1, median(res.ratios))
		}
	}
	return res, nil
}
