// Command echo-go is an "unmodified" UDP echo server written in Go, used by
// grmwrap's integration tests. It follows the same contract as echo.c and
// echo.py:
//
//	echo-go [--addr ADDR] [--tcp] [--reuseport] PORT
//
// The sockets are created and bound with raw syscalls (socket, setsockopt,
// bind) on a goroutine other than main. The main goroutine is locked to the
// main OS thread, so the binding goroutine runs on another thread: the bind
// is issued by a thread that is not the thread-group leader, as it often is
// in real Go servers.
//
// stdout carries exactly these lines:
//
//	ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=<0|1|-1> port=<port>
//	bind-error errno=<n> <strerror text>   (then exit status 3)
//	signal <n>                             (SIGTERM/SIGINT: exit 0; SIGHUP/SIGUSR1: go on)
//
// Every datagram is answered with "<pid> " + payload; the payload "exit N" is
// answered and then the server exits with status N. Usage errors exit with
// status 2, other setup failures with status 1.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// soReuseport is SO_REUSEPORT, which the syscall package does not export on
// every architecture.
func soReuseport() int {
	switch runtime.GOARCH {
	case "mips", "mipsle", "mips64", "mips64le":
		return 0x200
	default:
		return 0xf
	}
}

var stdoutMu sync.Mutex

// say writes one line to stdout. os.Stdout is unbuffered, so the line is
// flushed when say returns.
func say(format string, args ...any) {
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "echo-go: %s\nusage: echo-go [--addr ADDR] [--tcp] [--reuseport] PORT\n", msg)
	os.Exit(2)
}

func fatal(what string, err error) {
	fmt.Fprintf(os.Stderr, "echo-go: %s: %v\n", what, err)
	os.Exit(1)
}

// strerror gives the C library's text for errno: Go's texts are the same
// words with a lower-case first letter.
func strerror(errno syscall.Errno) string {
	s := errno.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

func bindError(err error) {
	errno, ok := err.(syscall.Errno)
	if !ok {
		fatal("bind", err)
	}
	say("bind-error errno=%d %s", int(errno), strerror(errno))
	os.Exit(3)
}

// exitCode returns N if payload is exactly "exit N" (N: 1 to 9 decimal
// digits), and -1 otherwise.
func exitCode(p []byte) int {
	if len(p) < 6 || len(p) > 14 || string(p[:5]) != "exit " {
		return -1
	}
	n := 0
	for _, c := range p[5:] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

type config struct {
	addr      string
	tcp       bool
	reuseport bool
	port      int
}

func parseArgs(args []string) config {
	c := config{addr: "0.0.0.0"}
	havePort := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--addr":
			i++
			if i >= len(args) {
				usage("--addr needs an argument")
			}
			c.addr = args[i]
		case a == "--tcp":
			c.tcp = true
		case a == "--reuseport":
			c.reuseport = true
		case len(a) > 1 && a[0] == '-':
			usage("unknown option " + a)
		case !havePort:
			if a == "" || a[0] < '0' || a[0] > '9' {
				usage("PORT must be a decimal number")
			}
			p, err := strconv.ParseUint(a, 10, 16)
			if err != nil {
				usage("PORT must be a decimal number from 0 to 65535")
			}
			c.port = int(p)
			havePort = true
		default:
			usage("too many arguments")
		}
	}
	if !havePort {
		usage("missing PORT")
	}
	return c
}

type bound struct {
	udp   int // file descriptor of the bound UDP socket
	udpRP int
	tcpRP int
	port  int
}

func sockaddr(family int, ip net.IP, port int) syscall.Sockaddr {
	if family == syscall.AF_INET6 {
		sa := &syscall.SockaddrInet6{Port: port}
		copy(sa.Addr[:], ip.To16())
		return sa
	}
	sa := &syscall.SockaddrInet4{Port: port}
	copy(sa.Addr[:], ip.To4())
	return sa
}

// open creates and binds the sockets; it exits the process on failure.
func open(c config) bound {
	family := syscall.AF_INET
	ip := net.ParseIP(c.addr)
	if strings.Contains(c.addr, ":") {
		family = syscall.AF_INET6
		if ip == nil {
			usage("--addr is not an IPv6 literal")
		}
	} else if ip == nil || ip.To4() == nil {
		usage("--addr is not an IPv4 literal")
	}
	dualStack := family == syscall.AF_INET6 && ip.IsUnspecified()

	var b bound
	udp, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fatal("socket(SOCK_DGRAM)", err)
	}
	if dualStack {
		if err := syscall.SetsockoptInt(udp, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0); err != nil {
			fatal("setsockopt(IPV6_V6ONLY)", err)
		}
	}
	if c.reuseport {
		if err := syscall.SetsockoptInt(udp, syscall.SOL_SOCKET, soReuseport(), 1); err != nil {
			fatal("setsockopt(SO_REUSEPORT)", err)
		}
	}
	if err := syscall.Bind(udp, sockaddr(family, ip, c.port)); err != nil {
		bindError(err)
	}
	b.udp = udp
	sa, err := syscall.Getsockname(udp)
	if err != nil {
		fatal("getsockname", err)
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		b.port = sa.Port
	case *syscall.SockaddrInet6:
		b.port = sa.Port
	}

	b.tcpRP = -1
	if c.tcp {
		// Same address; with PORT 0 the TCP socket takes the UDP port.
		tcp, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			fatal("socket(SOCK_STREAM)", err)
		}
		if dualStack {
			if err := syscall.SetsockoptInt(tcp, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0); err != nil {
				fatal("setsockopt(IPV6_V6ONLY)", err)
			}
		}
		if err := syscall.Bind(tcp, sockaddr(family, ip, b.port)); err != nil {
			bindError(err)
		}
		if err := syscall.Listen(tcp, 16); err != nil {
			fatal("listen", err)
		}
		if b.tcpRP, err = syscall.GetsockoptInt(tcp, syscall.SOL_SOCKET, soReuseport()); err != nil {
			fatal("getsockopt(SO_REUSEPORT)", err)
		}
		// The listening descriptor stays open (and unused) until exit.
	}
	if b.udpRP, err = syscall.GetsockoptInt(udp, syscall.SOL_SOCKET, soReuseport()); err != nil {
		fatal("getsockopt(SO_REUSEPORT)", err)
	}
	b.udpRP = boolInt(b.udpRP != 0)
	if b.tcpRP > 0 {
		b.tcpRP = 1
	}
	return b
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

func init() {
	// Keep the main goroutine on the main thread, so that no other
	// goroutine (in particular the one that binds) can run there.
	runtime.LockOSThread()
}

func main() {
	c := parseArgs(os.Args[1:])

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)

	ready := make(chan bound)
	go func() { ready <- open(c) }()
	b := <-ready

	f := os.NewFile(uintptr(b.udp), "udp")
	pc, err := net.FilePacketConn(f)
	if err != nil {
		fatal("FilePacketConn", err)
	}
	f.Close() // pc holds its own descriptor of the same socket

	pid := os.Getpid()
	say("ready pid=%d udp_reuseport=%d tcp_reuseport=%d port=%d", pid, b.udpRP, b.tcpRP, b.port)

	go func() {
		for s := range sigs {
			n := int(s.(syscall.Signal))
			say("signal %d", n)
			if s == syscall.SIGTERM || s == syscall.SIGINT {
				os.Exit(0)
			}
		}
	}()

	prefix := strconv.Itoa(pid) + " "
	buf := make([]byte, len(prefix)+65536)
	copy(buf, prefix)
	for {
		n, from, err := pc.ReadFrom(buf[len(prefix):])
		if err != nil {
			fmt.Fprintf(os.Stderr, "echo-go: recvfrom: %v\n", err)
			continue
		}
		if _, err := pc.WriteTo(buf[:len(prefix)+n], from); err != nil {
			fmt.Fprintf(os.Stderr, "echo-go: sendto: %v\n", err)
		}
		if code := exitCode(buf[len(prefix) : len(prefix)+n]); code >= 0 {
			stdoutMu.Lock() // no exit in the middle of a signal line
			os.Exit(code)
		}
	}
}
