// Package generations is grmwrap's policy core: which sockets belong to which
// generation of the server, which slot each holds, and which generation
// receives new flows.
//
// It imports only the standard library. It defines the ports (interfaces)
// that the adapters satisfy: notify reports every managed socket through
// SocketSink; the eBPF data plane sits behind DataPlane. Every policy test
// runs unprivileged against fakes.
//
// Manager runs the generations of one service through their states:
// starting -> working -> draining -> stopping -> exited, or starting ->
// failed when an upgrade is rolled back.
//
// Invariants:
//   - Once the first generation started there is exactly one working
//     generation; it changes only when an upgrade succeeds, in one
//     SetWorking, after the new generation was ready.
//   - A draining generation never receives a new flow while its successor
//     works. If the successor dies before the draining generation was
//     quiesced, the draining generation becomes working again (the service
//     is never left without a working generation while one can serve); a
//     generation that was quiesced or has exited never does.
//   - A failed upgrade leaves the previous generation working: the new
//     generation's sockets leave steering and its process is stopped. A new
//     generation must stay alive and running through the settle window
//     before the flip, and alive and taking datagrams for MinDrain after
//     it, or the upgrade fails (after the flip: its sockets leave steering
//     first, then its predecessor is working again).
//   - A generation whose processes are stopped is never made working.
//   - One upgrade at a time; a second request fails with
//     ErrUpgradeInProgress.
//   - A generation is stopped only after its sockets left steering and its
//     receive queues emptied (bounded), so a server that exits at once on
//     its stop signal loses nothing.
//   - A socket (identified by its inode) is recorded in exactly one
//     generation of one group, and at most once: a bind the kernel
//     re-delivers is not a second socket.
//   - The slots of every generation are dense, 0..n-1: when a socket leaves,
//     the last one moves into its slot before the count shrinks, so the data
//     plane never finds a hole below the count.
//   - There is one working generation for all groups of a supervisor; a
//     group's published count is always the number of sockets the working
//     generation has in it.
//   - The policy never holds a copy of a socket: the file handed to AddSocket
//     is closed before AddSocket returns (a held copy would keep a socket that
//     the server closed alive in its reuseport group and black-hole traffic).
//   - A group without sockets is dropped and its id freed; ids reserved for a
//     previous supervisor's live groups are never handed out.
package generations
