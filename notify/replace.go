package notify

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A managed socket is created by grmwrap (root) and put in place of the
// server's with SECCOMP_IOCTL_NOTIF_ADDFD: a reuseport group admits only
// sockets of one owner uid (fixed at socket creation from the creator's
// fsuid), so the group's members belong to uid 0 and a process of the
// server's user outside the service can neither bind into the group nor,
// having no member, attach a reuseport program to it.

// sockOpt is one socket option copied from the server's socket onto
// grmwrap's when the server changed it from its default.
type sockOpt struct {
	level, name int
	label       string
	// force is the option that sets the value getsockopt reports doubled
	// (SO_RCVBUFFORCE for SO_RCVBUF): set with half the value, exactly the
	// size the server's socket has.
	force int
}

// copiedOpts are the socket options copied, when the server changed them,
// from its socket onto grmwrap's. An option not listed here is not copied
// (docs/faults.md, section 5); a listed one that cannot be set, or does not
// read back equal, makes grmwrap bind the server's own socket instead.
var copiedOpts = []sockOpt{
	{unix.SOL_SOCKET, unix.SO_RCVBUF, "SO_RCVBUF", unix.SO_RCVBUFFORCE},
	{unix.SOL_SOCKET, unix.SO_SNDBUF, "SO_SNDBUF", unix.SO_SNDBUFFORCE},
	{unix.SOL_SOCKET, unix.SO_BROADCAST, "SO_BROADCAST", 0},
	{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", 0},
	{unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "SO_BINDTODEVICE", 0},
	{unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK", 0},
	{unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY", 0},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMP, "SO_TIMESTAMP", 0},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 0},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPING, "SO_TIMESTAMPING", 0},
	{unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT", 0},
	{unix.SOL_SOCKET, unix.SO_PASSCRED, "SO_PASSCRED", 0},
	{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, "SO_RXQ_OVFL", 0},
	{unix.SOL_SOCKET, unix.SO_INCOMING_CPU, "SO_INCOMING_CPU", 0},
	{unix.SOL_SOCKET, unix.SO_BUSY_POLL, "SO_BUSY_POLL", 0},
	{unix.SOL_SOCKET, unix.SO_PEEK_OFF, "SO_PEEK_OFF", 0},
	{unix.SOL_SOCKET, unix.SO_ZEROCOPY, "SO_ZEROCOPY", 0},
	{unix.SOL_SOCKET, unix.SO_TXTIME, "SO_TXTIME", 0},
	{unix.SOL_SOCKET, unix.SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", 0},
	{unix.SOL_SOCKET, unix.SO_BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET", 0},
	{unix.SOL_SOCKET, unix.SO_NOFCS, "SO_NOFCS", 0},
	{unix.SOL_SOCKET, unix.SO_RCVMARK, "SO_RCVMARK", 0},
	{unix.SOL_SOCKET, unix.SO_RCVTIMEO, "SO_RCVTIMEO", 0},
	{unix.SOL_SOCKET, unix.SO_SNDTIMEO, "SO_SNDTIMEO", 0},
	{unix.SOL_SOCKET, unix.SO_DONTROUTE, "SO_DONTROUTE", 0},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 0},
	{unix.SOL_SOCKET, unix.SO_LINGER, "SO_LINGER", 0},
	{unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE", 0},
	{unix.IPPROTO_IP, unix.IP_TOS, "IP_TOS", 0},
	{unix.IPPROTO_IP, unix.IP_TTL, "IP_TTL", 0},
	{unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO", 0},
	{unix.IPPROTO_IP, unix.IP_RECVTOS, "IP_RECVTOS", 0},
	{unix.IPPROTO_IP, unix.IP_RECVTTL, "IP_RECVTTL", 0},
	{unix.IPPROTO_IP, unix.IP_RECVERR, "IP_RECVERR", 0},
	{unix.IPPROTO_IP, unix.IP_RECVOPTS, "IP_RECVOPTS", 0},
	{unix.IPPROTO_IP, unix.IP_RETOPTS, "IP_RETOPTS", 0},
	{unix.IPPROTO_IP, unix.IP_RECVFRAGSIZE, "IP_RECVFRAGSIZE", 0},
	{unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, "IP_MTU_DISCOVER", 0},
	{unix.IPPROTO_IP, unix.IP_FREEBIND, "IP_FREEBIND", 0},
	{unix.IPPROTO_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT", 0},
	{unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR", 0},
	{unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT", 0},
	{unix.IPPROTO_IP, unix.IP_MINTTL, "IP_MINTTL", 0},
	{unix.IPPROTO_IP, unix.IP_CHECKSUM, "IP_CHECKSUM", 0},
	{unix.IPPROTO_IP, unix.IP_OPTIONS, "IP_OPTIONS", 0},
	{unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, "IP_MULTICAST_TTL", 0},
	{unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP", 0},
	{unix.IPPROTO_IP, unix.IP_MULTICAST_IF, "IP_MULTICAST_IF", 0},
	{unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, "IP_MULTICAST_ALL", 0},
	{unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, "IP_LOCAL_PORT_RANGE", 0},
	{unix.IPPROTO_UDP, unix.UDP_SEGMENT, "UDP_SEGMENT", 0},
	{unix.IPPROTO_UDP, unix.UDP_GRO, "UDP_GRO", 0},
	{unix.IPPROTO_UDP, unix.UDP_CORK, "UDP_CORK", 0},
	{unix.IPPROTO_UDP, unix.UDP_ENCAP, "UDP_ENCAP", 0},
	{unix.IPPROTO_UDP, unix.UDP_NO_CHECK6_TX, "UDP_NO_CHECK6_TX", 0},
	{unix.IPPROTO_UDP, unix.UDP_NO_CHECK6_RX, "UDP_NO_CHECK6_RX", 0},
	// TCP options (getsockopt fails for them on a UDP socket, and for
	// the UDP ones on a TCP socket: skipped).
	{unix.IPPROTO_TCP, unix.TCP_NODELAY, "TCP_NODELAY", 0},
	{unix.IPPROTO_TCP, unix.TCP_MAXSEG, "TCP_MAXSEG", 0},
	{unix.IPPROTO_TCP, unix.TCP_CORK, "TCP_CORK", 0},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", 0},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", 0},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", 0},
	{unix.IPPROTO_TCP, unix.TCP_SYNCNT, "TCP_SYNCNT", 0},
	{unix.IPPROTO_TCP, unix.TCP_LINGER2, "TCP_LINGER2", 0},
	{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", 0},
	{unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", 0},
	{unix.IPPROTO_TCP, unix.TCP_QUICKACK, "TCP_QUICKACK", 0},
	{unix.IPPROTO_TCP, unix.TCP_CONGESTION, "TCP_CONGESTION", 0},
	{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", 0},
	{unix.IPPROTO_TCP, unix.TCP_FASTOPEN, "TCP_FASTOPEN", 0},
	{unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT", 0},
	{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, "TCP_FASTOPEN_CONNECT", 0},
	{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, "TCP_FASTOPEN_NO_COOKIE", 0},
	{unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS", 0},
	{unix.IPPROTO_TCP, unix.TCP_SAVE_SYN, "TCP_SAVE_SYN", 0},
	{unix.IPPROTO_TCP, unix.TCP_TX_DELAY, "TCP_TX_DELAY", 0},
	{unix.IPPROTO_TCP, unix.TCP_INQ, "TCP_INQ", 0},
}

// copiedOpts6 are the IPv6 options, read on AF_INET6 sockets only.
var copiedOpts6 = []sockOpt{
	{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, "IPV6_RECVTCLASS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVERR, "IPV6_RECVERR", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, "IPV6_MTU_DISCOVER", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, "IPV6_DONTFRAG", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_AUTOFLOWLABEL, "IPV6_AUTOFLOWLABEL", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVFRAGSIZE, "IPV6_RECVFRAGSIZE", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MINHOPCOUNT, "IPV6_MINHOPCOUNT", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, "IPV6_MULTICAST_IF", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, "IPV6_MULTICAST_ALL", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVRTHDR, "IPV6_RECVRTHDR", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPOPTS, "IPV6_RECVHOPOPTS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS", 0},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVPATHMTU, "IPV6_RECVPATHMTU", 0},
}

// getsockoptRaw returns the bytes getsockopt(level, name) gives for fd.
func getsockoptRaw(fd, level, name int) ([]byte, error) {
	buf := make([]byte, 64)
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return nil, errno
	}
	return buf[:l], nil
}

func setsockoptRaw(fd, level, name int, v []byte) error {
	var p unsafe.Pointer
	if len(v) > 0 {
		p = unsafe.Pointer(&v[0])
	}
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(p), uintptr(len(v)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// errNotCopyable is the reason a server socket keeps its own bind.
type errNotCopyable struct{ why string }

func (e errNotCopyable) Error() string { return e.why }

// copySocketState gives dst (a fresh socket) the state the server set on
// src before bind; ref is a second fresh socket of the same kind, in the
// same network namespace, that tells the defaults apart. Only what differs
// from the default is set, so dst gets nothing the server's socket does not
// have. It returns an errNotCopyable when src has state grmwrap cannot
// carry over.
func copySocketState(src, dst, ref int, v6 bool) error {
	if n, err := unix.GetsockoptInt(src, unix.SOL_SOCKET, unix.SO_GET_FILTER); err == nil && n > 0 {
		return errNotCopyable{"a socket filter is attached"}
	}
	if _, err := unix.Getpeername(src); err == nil {
		return errNotCopyable{"the socket is connected"}
	}
	fl, err := unix.FcntlInt(uintptr(src), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("file status flags: %w", err)
	}
	if fl&unix.O_ASYNC != 0 {
		return errNotCopyable{"O_ASYNC is set"}
	}
	if fl&unix.O_NONBLOCK != 0 {
		if _, err := unix.FcntlInt(uintptr(dst), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return fmt.Errorf("set O_NONBLOCK: %w", err)
		}
	}
	opts := copiedOpts
	if v6 {
		opts = append(append([]sockOpt(nil), copiedOpts...), copiedOpts6...)
	}
	for _, o := range opts {
		want, err := getsockoptRaw(src, o.level, o.name)
		if err != nil {
			continue // not an option of this kernel or family
		}
		def, err := getsockoptRaw(ref, o.level, o.name)
		if err == nil && bytes.Equal(want, def) {
			continue
		}
		if o.force != 0 && len(want) == 4 {
			half := *(*int32)(unsafe.Pointer(&want[0])) / 2
			err = unix.SetsockoptInt(dst, o.level, o.force, int(half))
		} else {
			err = setsockoptRaw(dst, o.level, o.name, want)
		}
		if err != nil {
			return errNotCopyable{fmt.Sprintf("%s cannot be copied: %v", o.label, err)}
		}
		got, err := getsockoptRaw(dst, o.level, o.name)
		if err != nil || !bytes.Equal(got, want) {
			return errNotCopyable{fmt.Sprintf("%s does not read back equal after the copy", o.label)}
		}
	}
	return nil
}

// newOwnSocket creates grmwrap's socket of family domain, type typ and
// protocol proto in the network namespace nsfd and gives it the server
// socket src's state.
func newOwnSocket(src, domain, typ, proto, nsfd int, nsino uint64) (int, error) {
	own := -1
	err := runInNetNS(nsfd, nsino, func() error {
		s, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("create socket: %w", err)
		}
		ref, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			unix.Close(s)
			return fmt.Errorf("create reference socket: %w", err)
		}
		defer unix.Close(ref)
		if err := copySocketState(src, s, ref, domain == unix.AF_INET6); err != nil {
			unix.Close(s)
			return err
		}
		own = s
		return nil
	})
	return own, err
}

// targetCloexec reports whether fd of thread tid has FD_CLOEXEC.
func targetCloexec(tid, fd int) (bool, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return false, fmt.Errorf("read fdinfo: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			fl, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				return false, fmt.Errorf("parse fdinfo flags: %w", err)
			}
			return fl&unix.O_CLOEXEC != 0, nil
		}
	}
	return false, errors.New("fdinfo has no flags")
}

// seccompNotifAddfd is struct seccomp_notif_addfd.
type seccompNotifAddfd struct {
	id         uint64
	flags      uint32
	srcfd      uint32
	newfd      uint32
	newfdFlags uint32
}

const (
	// seccompIoctlNotifAddfd is SECCOMP_IOCTL_NOTIF_ADDFD,
	// _IOW('!', 3, struct seccomp_notif_addfd).
	seccompIoctlNotifAddfd = 1<<30 | 24<<16 | '!'<<8 | 3
	seccompAddfdFlagSetfd  = 1 << 0
)

// installFD puts src in place of fd newfd of the thread that sent
// notification id on listener, as dup2 would (the file newfd named is
// closed), with O_CLOEXEC when cloexec.
func installFD(listener int, id uint64, src, newfd int, cloexec bool) error {
	a := seccompNotifAddfd{id: id, flags: seccompAddfdFlagSetfd, srcfd: uint32(src), newfd: uint32(newfd)}
	if cloexec {
		a.newfdFlags = unix.O_CLOEXEC
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(listener), seccompIoctlNotifAddfd, uintptr(unsafe.Pointer(&a)))
	if errno != 0 {
		return fmt.Errorf("seccomp addfd: %w", errno)
	}
	return nil
}
