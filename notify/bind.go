package notify

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// bind handles a trapped bind(fd, addr, addrlen). It answers CONTINUE for
// every bind grmwrap does not manage, so the kernel gives the server its own
// result. A managed bind is performed by grmwrap on its copy of the socket,
// with SO_REUSEPORT set and the address it read (never re-read: another
// thread may rewrite it), and the server gets that bind's result. The second
// result is true when the notification went stale and must not be answered.
func (h *Handler) bind(ctx context.Context, n notification) (reply, bool) {
	pidfd, err := openTarget(n.tid)
	if err != nil {
		if !n.valid() {
			return reply{}, true
		}
		h.log.Error("open bind caller", "pid", n.tid, "err", err)
		return replyErr(unix.EAGAIN), false
	}
	defer unix.Close(pidfd)
	if !n.valid() { // the pidfd may name a recycled thread id
		return reply{}, true
	}
	sock, err := unix.PidfdGetfd(pidfd, int(int32(n.args[0])), 0)
	if err != nil {
		// Not an open fd: the kernel returns the right errno.
		return replyContinue, false
	}
	defer func() {
		if sock >= 0 {
			unix.Close(sock)
		}
	}()
	family, proto, ok := inetFamily(sock)
	if !ok || (proto == unix.IPPROTO_TCP && !h.TCPReuseport) {
		return replyContinue, false
	}
	addrLen := int(int32(n.args[2]))
	if addrLen < 2 || addrLen > maxSockaddr {
		return replyContinue, false // the kernel refuses it
	}
	raw := make([]byte, addrLen)
	if err := readTarget(n.tid, n.args[1], raw); err != nil {
		if !n.valid() {
			return reply{}, true
		}
		return replyContinue, false // EFAULT, from the kernel
	}
	if !n.valid() {
		return reply{}, true
	}
	sa, err := DecodeSockaddr(raw, family)
	if err != nil {
		return replyContinue, false
	}
	if !h.match.Manages(sa.Addr) {
		return replyContinue, false
	}

	select {
	case h.bindLock <- struct{}{}:
		defer func() { <-h.bindLock }()
	case <-ctx.Done():
		h.log.Error("managed bind timed out waiting for another bind", "pid", n.tid, "addr", sa.Addr)
		return replyErr(unix.EAGAIN), false
	}
	if proto == unix.IPPROTO_TCP {
		return h.bindTCP(n, sock, sa), false
	}
	r, file, s := h.bindManaged(n, sock, sa, raw)
	if file == nil {
		return r, false
	}
	sock = -1 // owned by file now
	h.counters.bindManaged.Add(1)
	// Logged before registration: registering may make the generation
	// ready and working, and the log keeps the order of events.
	h.log.Info("managed bind", "group", s.Group, "generation", s.Generation, "pid", s.PID, "inode", s.Inode)
	if err := h.sink.AddSocket(ctx, s); err != nil {
		// The socket is bound and serves; it is only not steered. Telling
		// the server its bind failed would leave it with a bound socket it
		// believes unbound.
		h.log.Error("register managed socket", "group", s.Group, "generation", s.Generation, "err", err)
	}
	return replyOK, false
}

// bindManaged checks and performs a managed bind with the bind lock held. On
// success it returns the socket copy as a file and its description.
func (h *Handler) bindManaged(n notification, sock int, sa Sockaddr, raw []byte) (reply, *os.File, generations.Socket) {
	var st unix.Stat_t
	if err := unix.Fstat(sock, &st); err != nil {
		h.log.Error("stat managed socket", "err", err)
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	if bound, err := unix.Getsockname(sock); err == nil && sockaddrPort(bound) != 0 {
		// Already bound. When it is ours at this address, this is the kernel
		// re-delivering a bind that a signal interrupted after grmwrap bound
		// it: the first bind succeeded, so this one does too. Otherwise the
		// kernel's answer to a second bind is EINVAL.
		h.mu.Lock()
		o, ok := h.owned[st.Ino]
		h.mu.Unlock()
		if ok && o.group.Addr == sa.Addr {
			return reply{repeated: true}, nil, generations.Socket{}
		}
		return replyErr(unix.EINVAL), nil, generations.Socket{}
	}
	nsfd, nsino, err := socketNetNS(sock)
	if err != nil {
		h.log.Error("managed bind", "err", err)
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	defer unix.Close(nsfd)
	key := generations.GroupKey{NetNS: nsino, Family: sa.Family, Addr: sa.Addr}

	v6only := false
	if sa.Family == generations.FamilyINET6 {
		v, err := unix.GetsockoptInt(sock, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		v6only = err == nil && v == 1
	}
	needCap := false
	if !h.match.Listed(sa.Addr) {
		can, err := canBindPrivileged(n.tid)
		if err != nil {
			if !n.valid() {
				return reply{}, nil, generations.Socket{}
			}
			h.log.Error("managed bind: caller capabilities", "err", err)
			return replyErr(unix.EAGAIN), nil, generations.Socket{}
		}
		needCap = !can
	}
	var (
		table     []udpEntry
		portStart int
	)
	err = runInNetNS(nsfd, nsino, func() error {
		var err error
		if needCap {
			if portStart, err = unprivilegedPortStart(); err != nil {
				return err
			}
		}
		table, err = readUDPTables()
		return err
	})
	if err != nil {
		h.log.Error("managed bind: inspect network namespace", "group", key, "err", err)
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	if needCap && int(sa.Addr.Port()) < portStart {
		h.log.Info("refused privileged bind: the server lacks CAP_NET_BIND_SERVICE and --listen does not name the address",
			"group", key, "pid", n.tid)
		return replyErr(unix.EACCES), nil, generations.Socket{}
	}
	if holder, busy := h.foreignHolder(table, key, v6only); busy {
		h.log.Info("refused bind: the port is held by a socket grmwrap does not manage",
			"group", key, "holder_inode", holder, "pid", n.tid)
		return replyErr(unix.EADDRINUSE), nil, generations.Socket{}
	}

	if err := claim(sock); err != nil {
		h.log.Error("managed bind: take ownership of the socket", "err", err)
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	if err := unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		h.log.Error("managed bind: set SO_REUSEPORT", "err", err)
		release(sock, st.Uid)
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	if err := rawBind(sock, raw); err != nil {
		release(sock, st.Uid)
		var errno unix.Errno
		if errors.As(err, &errno) {
			return replyErr(errno), nil, generations.Socket{}
		}
		return replyErr(unix.EAGAIN), nil, generations.Socket{}
	}
	cookie, err := unix.GetsockoptUint64(sock, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		h.log.Warn("managed socket cookie", "err", err)
	}
	pid, err := threadGroup(n.tid)
	if err != nil {
		pid = n.tid
	}
	h.mu.Lock()
	h.owned[st.Ino] = owned{group: key, gen: n.gen}
	h.mu.Unlock()
	file := os.NewFile(uintptr(sock), "udp:"+sa.Addr.String())
	return replyOK, file, generations.Socket{
		Group:      key,
		Generation: n.gen,
		PID:        pid,
		Inode:      st.Ino,
		Cookie:     cookie,
		File:       file,
	}
}

// foreignHolder looks for a socket in table that is not grmwrap's and that
// a plain bind to key would collide with. It also forgets grmwrap's sockets
// of key's namespace that are no longer in the table: they were closed, and
// their inode numbers may be reused.
func (h *Handler) foreignHolder(table []udpEntry, key generations.GroupKey, v6only bool) (uint64, bool) {
	present := make(map[uint64]bool, len(table))
	h.mu.Lock()
	defer h.mu.Unlock()
	var holder uint64
	busy := false
	for _, e := range table {
		present[e.Inode] = true
		if _, ours := h.owned[e.Inode]; ours {
			continue
		}
		if !busy && conflicts(e, key.Family, key.Addr, v6only) {
			holder, busy = e.Inode, true
		}
	}
	for ino, o := range h.owned {
		if o.group.NetNS == key.NetNS && !present[ino] {
			delete(h.owned, ino)
		}
	}
	return holder, busy
}

// setsockopt handles a trapped setsockopt(fd, SOL_SOCKET, opt, ...). On a
// socket grmwrap manages, SO_REUSEPORT stays on and reuseport programs stay
// grmwrap's: the call succeeds without effect. Everything else continues.
func (h *Handler) setsockopt(n notification) (reply, bool) {
	link, err := os.Readlink("/proc/" + strconv.Itoa(n.tid) + "/fd/" + strconv.Itoa(int(int32(n.args[0]))))
	if err != nil {
		return replyContinue, false
	}
	inoStr, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return replyContinue, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(inoStr, "]"), 10, 64)
	if err != nil {
		return replyContinue, false
	}
	if !n.valid() {
		return reply{}, true
	}
	h.mu.Lock()
	if _, tcp := h.ownedTCP[ino]; tcp {
		h.mu.Unlock()
		// SO_REUSEPORT stays on; reuseport programs on TCP are the
		// server's business (grmwrap does not steer TCP).
		if int32(n.args[2]) == unix.SO_REUSEPORT {
			if int32(n.args[4]) < int32(unsafe.Sizeof(int32(0))) {
				return replyErr(unix.EINVAL), false
			}
			return replyOK, false
		}
		return replyContinue, false
	}
	o, ours := h.owned[ino]
	firstWarning := ours && int32(n.args[2]) != unix.SO_REUSEPORT && !h.warned[n.gen]
	if firstWarning {
		h.warned[n.gen] = true
	}
	h.mu.Unlock()
	if !ours {
		return replyContinue, false
	}
	if int32(n.args[2]) == unix.SO_REUSEPORT {
		if int32(n.args[4]) < int32(unsafe.Sizeof(int32(0))) {
			return replyErr(unix.EINVAL), false
		}
		h.log.Debug("SO_REUSEPORT on a managed socket kept on", "group", o.group, "pid", n.tid)
		return replyOK, false
	}
	if firstWarning {
		h.log.Info("the server's reuseport program is ignored: grmwrap steers its managed sockets",
			"group", o.group, "generation", n.gen, "pid", n.tid)
	}
	return replyOK, false
}

// inetFamily returns the family and protocol of sock when it is an AF_INET
// or AF_INET6 UDP datagram socket or TCP stream socket.
func inetFamily(sock int) (uint16, int, bool) {
	domain, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || (domain != unix.AF_INET && domain != unix.AF_INET6) {
		return 0, 0, false
	}
	typ, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return 0, 0, false
	}
	proto, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return 0, 0, false
	}
	switch {
	case typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
	case typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP:
	default:
		return 0, 0, false
	}
	return uint16(domain), proto, true
}

// bindTCP handles a TCP bind to a managed address with TCPReuseport: the
// socket gets SO_REUSEPORT, so that the next generation can bind the port
// the old one still listens on, and the kernel binds it with the server's
// own rights. TCP is not steered. A port held by a TCP socket grmwrap did
// not prepare gets EADDRINUSE, as for UDP.
func (h *Handler) bindTCP(n notification, sock int, sa Sockaddr) reply {
	var st unix.Stat_t
	if err := unix.Fstat(sock, &st); err != nil {
		h.log.Error("stat tcp socket", "err", err)
		return replyErr(unix.EAGAIN)
	}
	if bound, err := unix.Getsockname(sock); err == nil && sockaddrPort(bound) != 0 {
		return replyContinue // already bound: the kernel answers
	}
	nsfd, nsino, err := socketNetNS(sock)
	if err != nil {
		h.log.Error("tcp bind", "err", err)
		return replyErr(unix.EAGAIN)
	}
	defer unix.Close(nsfd)
	v6only := false
	if sa.Family == generations.FamilyINET6 {
		v, err := unix.GetsockoptInt(sock, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		v6only = err == nil && v == 1
	}
	var table []udpEntry
	if err := runInNetNS(nsfd, nsino, func() error {
		var err error
		table, err = readTCPListeners()
		return err
	}); err != nil {
		h.log.Error("tcp bind: inspect network namespace", "err", err)
		return replyErr(unix.EAGAIN)
	}
	key := generations.GroupKey{NetNS: nsino, Family: sa.Family, Addr: sa.Addr}
	h.mu.Lock()
	present := make(map[uint64]bool, len(table))
	var holder uint64
	for _, e := range table {
		present[e.Inode] = true
		if _, ours := h.ownedTCP[e.Inode]; !ours && holder == 0 && conflicts(e, sa.Family, sa.Addr, v6only) {
			holder = e.Inode
		}
	}
	for ino, o := range h.ownedTCP {
		if o.group.NetNS == nsino && !present[ino] {
			delete(h.ownedTCP, ino)
		}
	}
	h.mu.Unlock()
	if holder != 0 {
		h.log.Info("refused tcp bind: the port is held by a socket grmwrap does not manage", "group", key, "holder_inode", holder, "pid", n.tid)
		return replyErr(unix.EADDRINUSE)
	}
	if err := claim(sock); err != nil {
		h.log.Error("tcp bind: take ownership of the socket", "err", err)
		return replyErr(unix.EAGAIN)
	}
	if err := unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		h.log.Error("tcp bind: set SO_REUSEPORT", "err", err)
		release(sock, st.Uid)
		return replyErr(unix.EAGAIN)
	}
	h.mu.Lock()
	h.ownedTCP[st.Ino] = owned{group: key, gen: n.gen}
	h.mu.Unlock()
	h.log.Debug("tcp bind shares its port with later generations", "group", key, "pid", n.tid)
	return replyContinue
}

func sockaddrPort(sa unix.Sockaddr) int {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port
	case *unix.SockaddrInet6:
		return a.Port
	}
	return 0
}

// rawBind binds sock to the exact bytes the server passed (scope id and flow
// info included).
func rawBind(sock int, raw []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_BIND, uintptr(sock), uintptr(unsafe.Pointer(&raw[0])), uintptr(len(raw)))
	if errno != 0 {
		return errno
	}
	return nil
}

var (
	ownNetNSOnce sync.Once
	ownNetNS     uint64
)

// runInNetNS runs fn in the network namespace nsfd (inode nsino), on the
// calling thread when that is grmwrap's own namespace.
func runInNetNS(nsfd int, nsino uint64, fn func() error) error {
	ownNetNSOnce.Do(func() {
		var st unix.Stat_t
		if unix.Stat("/proc/self/ns/net", &st) == nil {
			ownNetNS = st.Ino
		}
	})
	if nsino == ownNetNS {
		return fn()
	}
	return inNetNS(nsfd, fn)
}

// claim makes sock grmwrap's (owner uid grmwrap's effective uid) before it
// gets SO_REUSEPORT. The kernel admits a socket into a reuseport group only
// when its owner uid equals the group's (sk_uid, which fchown on a socket
// sets), so every generation's managed socket shares the group while a
// process of the server's user outside the service gets EADDRINUSE, as it
// would without grmwrap. The server keeps its own open file: only the
// owner changes.
func claim(sock int) error {
	if err := unix.Fchown(sock, os.Geteuid(), -1); err != nil {
		return fmt.Errorf("fchown socket: %w", err)
	}
	return nil
}

// release gives sock back to uid after a managed bind that failed, so the
// server's unbound socket is as it was.
func release(sock int, uid uint32) {
	_ = unix.Fchown(sock, int(uid), -1)
}
