package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Loopback addresses: servers listen on 127.0.0.1; synthetic clients use
// other addresses of 127/8 (all of it is local on lo), so that a million
// distinct 4-tuples exist without a million sockets.
var serverIP = [4]byte{127, 0, 0, 1}

const (
	firstClientPort = 1024
	portsPerIP      = 60000
	ipsPerOctet     = 250
)

// tuple returns the source address and port of synthetic client i: 60,000
// ports on each of 127.0.X.Y, Y from 2.
func tuple(i int) ([4]byte, uint16) {
	ipIdx := i / portsPerIP
	ip := [4]byte{127, 0, byte(ipIdx / ipsPerOctet), byte(2 + ipIdx%ipsPerOctet)}
	return ip, uint16(firstClientPort + i%portsPerIP)
}

// Payload of a synthetic datagram: a magic word and a tag (which sample it
// is, or noTag).
const (
	payloadLen   = 16
	payloadMagic = 0x6772_6d62_656e_6368 // "grmbench"
	noTag        = ^uint64(0)
)

// rawSender writes complete IPv4/UDP datagrams with any source address and
// port through one IPPROTO_RAW socket (IP_HDRINCL is implied). The kernel
// fills in the IP checksum; the UDP checksum is 0 (none), which IPv4
// allows.
type rawSender struct {
	fd  int
	pkt [20 + 8 + payloadLen]byte
	dst unix.SockaddrInet4
}

func newRawSender() (*rawSender, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	s := &rawSender{fd: fd, dst: unix.SockaddrInet4{Addr: serverIP}}
	p := s.pkt[:]
	p[0] = 0x45 // IPv4, 20-byte header
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64 // TTL
	p[9] = unix.IPPROTO_UDP
	copy(p[16:20], serverIP[:])
	binary.BigEndian.PutUint16(p[24:], uint16(8+payloadLen))
	binary.BigEndian.PutUint64(p[28:], payloadMagic)
	return s, nil
}

// send writes one datagram from synthetic client i to 127.0.0.1:port.
func (s *rawSender) send(i int, port uint16, tag uint64) error {
	ip, sport := tuple(i)
	p := s.pkt[:]
	copy(p[12:16], ip[:])
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], port)
	binary.BigEndian.PutUint64(p[36:], tag)
	for {
		err := unix.Sendto(s.fd, p, 0, &s.dst)
		if errors.Is(err, unix.EINTR) {
			continue // a signal for the Go runtime, not a failure
		}
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
			continue // the send buffer is momentarily full
		}
		if err != nil {
			return fmt.Errorf("send from %d.%d.%d.%d:%d: %w", ip[0], ip[1], ip[2], ip[3], sport, err)
		}
		return nil
	}
}

// sendRange sends one datagram from each client in [from, to).
func (s *rawSender) sendRange(from, to int, port uint16) error {
	for i := from; i < to; i++ {
		if err := s.send(i, port, noTag); err != nil {
			return err
		}
	}
	return nil
}

// sendCycle sends count datagrams, cycling over the clients [from, from+n).
func (s *rawSender) sendCycle(from, n, count int, port uint16) error {
	for k := range count {
		if err := s.send(from+k%n, port, noTag); err != nil {
			return err
		}
	}
	return nil
}

func (s *rawSender) close() { unix.Close(s.fd) }

// server is one SO_REUSEPORT UDP socket on 127.0.0.1, drained by a
// goroutine.
type server struct {
	fd     int
	file   *os.File
	port   uint16
	got    atomic.Uint64 // datagrams received
	tagged func(tag uint64)
	stop   atomic.Bool
	done   sync.WaitGroup
}

// newServer binds a SO_REUSEPORT socket to 127.0.0.1:port (0: any) and
// starts draining it; tagged, when set, is called with the tag of every
// tagged synthetic datagram.
func newServer(port uint16, tagged func(tag uint64)) (*server, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	fail := func(what string, err error) (*server, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("set SO_REUSEPORT", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
		return fail("set SO_RCVBUF", err)
	}
	// A receive timeout lets the drainer notice stop.
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("set SO_RCVTIMEO", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: serverIP, Port: int(port)}); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	s := &server{fd: fd, port: uint16(sa.(*unix.SockaddrInet4).Port), tagged: tagged}
	s.file = os.NewFile(uintptr(fd), "server")
	s.done.Add(1)
	go s.drain()
	return s, nil
}

func (s *server) drain() {
	defer s.done.Done()
	buf := make([]byte, 2048)
	for !s.stop.Load() {
		n, err := unix.Read(s.fd, buf)
		if err != nil {
			continue // timeout (EAGAIN) or EINTR: look at stop again
		}
		s.got.Add(1)
		if s.tagged != nil && n == payloadLen && binary.BigEndian.Uint64(buf) == payloadMagic {
			if tag := binary.BigEndian.Uint64(buf[8:]); tag != noTag {
				s.tagged(tag)
			}
		}
	}
}

func (s *server) close() {
	s.stop.Store(true)
	s.done.Wait()
	s.file.Close()
}

// newServerGroup binds n sockets of one reuseport group.
func newServerGroup(n int, tagged func(idx int, tag uint64)) ([]*server, error) {
	var out []*server
	var port uint16
	for k := range n {
		var cb func(uint64)
		if tagged != nil {
			cb = func(tag uint64) { tagged(k, tag) }
		}
		s, err := newServer(port, cb)
		if err != nil {
			closeServers(out)
			return nil, err
		}
		port = s.port
		out = append(out, s)
	}
	return out, nil
}

func closeServers(ss []*server) {
	for _, s := range ss {
		s.close()
	}
}
