// Command quic-go-server is a small QUIC server built on quic-go, used by
// grmwrap's end-to-end tests to play an unmodified Go-runtime QUIC server:
//
//	quic-go-server --cert FILE --key FILE [--addr ADDR] PORT
//
// It listens on ADDR:PORT (default 127.0.0.1) with the ALPN protocol
// "grmwrap-echo". Every bidirectional stream a client opens is read to its
// end and answered with "pid=<pid> <payload>", then closed: the reply names
// the process, so a test can tell which instance served a connection.
//
// stdout carries one line, once the socket is bound and the listener runs:
//
//	ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=-1 port=<port>
//
// (the ready line of the servers in testdata/servers). Connections are
// logged to stderr. The server handles no signal: SIGTERM ends it the way
// it ends most servers, without a goodbye to its clients. Usage errors exit
// with status 2, setup failures with status 1.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// ALPN is the application protocol clients must offer.
const ALPN = "grmwrap-echo"

// maxPayload bounds what one stream may carry.
const maxPayload = 64 << 10

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "quic-go-server: %s\nusage: quic-go-server --cert FILE --key FILE [--addr ADDR] PORT\n", msg)
	os.Exit(2)
}

func fatal(what string, err error) {
	fmt.Fprintf(os.Stderr, "quic-go-server: %s: %v\n", what, err)
	os.Exit(1)
}

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

// reuseport reports the socket's SO_REUSEPORT as the server sees it.
func reuseport(c *net.UDPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		fatal("syscall conn", err)
	}
	v := -1
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, soReuseport())
	}); err != nil {
		fatal("control", err)
	}
	if serr != nil {
		fatal("getsockopt SO_REUSEPORT", serr)
	}
	if v != 0 {
		return 1
	}
	return 0
}

func main() {
	fs := flag.NewFlagSet("quic-go-server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "127.0.0.1", "address to listen on")
	certFile := fs.String("cert", "", "PEM certificate file")
	keyFile := fs.String("key", "", "PEM private key file")
	if err := fs.Parse(os.Args[1:]); err != nil {
		usage(err.Error())
	}
	if *certFile == "" || *keyFile == "" {
		usage("--cert and --key are required")
	}
	if fs.NArg() != 1 {
		usage("exactly one PORT is required")
	}
	port, err := strconv.Atoi(fs.Arg(0))
	if err != nil || port < 0 || port > 65535 {
		usage(fmt.Sprintf("bad port %q", fs.Arg(0)))
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fatal("loading certificate", err)
	}
	ip := net.ParseIP(*addr)
	if ip == nil {
		usage(fmt.Sprintf("bad address %q", *addr))
	}

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		fatal("listen", err)
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		MinVersion:   tls.VersionTLS13,
	}
	ln, err := quic.Listen(udp, tlsConf, &quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		fatal("quic listen", err)
	}
	pid := os.Getpid()
	fmt.Fprintf(os.Stdout, "ready pid=%d udp_reuseport=%d tcp_reuseport=-1 port=%d\n",
		pid, reuseport(udp), udp.LocalAddr().(*net.UDPAddr).Port)

	ctx := context.Background()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			fatal("accept", err)
		}
		go serve(ctx, pid, conn)
	}
}

// serve answers every stream of one connection.
func serve(ctx context.Context, pid int, conn *quic.Conn) {
	fmt.Fprintf(os.Stderr, "quic-go-server pid=%d: connection from %s\n", pid, conn.RemoteAddr())
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			fmt.Fprintf(os.Stderr, "quic-go-server pid=%d: connection from %s ended: %v\n", pid, conn.RemoteAddr(), err)
			return
		}
		go answer(pid, st)
	}
}

func answer(pid int, st *quic.Stream) {
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	payload, err := io.ReadAll(io.LimitReader(st, maxPayload))
	if err != nil {
		st.CancelWrite(1)
		return
	}
	if _, err := fmt.Fprintf(st, "pid=%d %s", pid, payload); err != nil {
		st.CancelWrite(1)
		return
	}
	_ = st.Close()
}
