// Package generations is grmwrap's policy core: which sockets belong to which
// generation of the server, and (in later steps) which generation receives new
// flows.
//
// It imports only the standard library. It defines the ports (interfaces) that
// the adapters satisfy: notify reports every managed socket through
// SocketSink; the eBPF data plane and the upgrade logic plug in behind the same
// port without changes to notify.
//
// Invariants:
//   - A socket (identified by its inode) is recorded in exactly one generation,
//     and at most once: a bind the kernel re-delivers is not a second socket.
//   - The registry never holds a copy of a socket: the file handed to AddSocket
//     is closed before AddSocket returns (a held copy would keep a socket that
//     the server closed alive in its reuseport group and black-hole traffic).
//   - Releasing a generation forgets all of its sockets.
package generations
