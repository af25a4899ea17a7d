// Package notify is grmwrap's seccomp user-notification adapter: the filter,
// the init stage that installs it, and the loop that answers the server's
// trapped bind and setsockopt calls by binding on the server's behalf.
//
// How an instance starts: the supervisor re-executes its own binary with
// InitArg (Start). The init stage locks its OS thread (package init), installs
// the filter with a new listener on that thread (WAIT_KILLABLE_RECV where the
// kernel has it), hands the listener to the supervisor over a socketpair
// (received close-on-exec), drops privileges, and execs the server.
//
// Invariants:
//   - Only bind, and setsockopt(SOL_SOCKET, SO_REUSEPORT | SO_ATTACH_REUSEPORT_*
//     | SO_DETACH_REUSEPORT_BPF), are trapped; nothing on the data path stops.
//   - Every notification follows one shape: receive, check the id, read the
//     target, check the id again, act, respond. A stale notification is never
//     answered; every handler has a deadline.
//   - A bind grmwrap does not manage (not inet UDP, port 0, not matched by
//     --listen) continues untouched: the kernel gives the server its own
//     result.
//   - A managed bind is performed by grmwrap on its copy of the socket with
//     the address bytes it read, so the address cannot change under it. The
//     server gets exactly the result of that bind, and the socket is reported
//     to the SocketSink before the server's bind returns.
//   - grmwrap never grants what the server lacks: a privileged port needs the
//     server's CAP_NET_BIND_SERVICE or an explicit --listen entry, and a port
//     held by a socket grmwrap does not manage gets EADDRINUSE, so grmwrap
//     never joins a reuseport group it does not own.
//   - A managed socket (UDP, and TCP under TCPReuseport) is owned by grmwrap's
//     uid before it gets SO_REUSEPORT, so the kernel's same-owner rule keeps
//     processes of the server's user outside the service out of its group; a
//     bind that fails gives the socket back to its owner.
//   - A bind the kernel re-delivers (signal without WAIT_KILLABLE_RECV) on a
//     socket grmwrap already bound at that address succeeds again without a
//     second bind or registration.
//   - The loop ends when the listener reports POLLHUP (the instance is gone);
//     it sleeps in poll and never spins.
//   - The server never holds a listener or any other grmwrap fd.
//
// Raw syscalls (golang.org/x/sys/unix) live here and in package bpf only.
package notify
