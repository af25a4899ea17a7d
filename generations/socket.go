package generations

import (
	"context"
	"fmt"
	"net/netip"
	"os"
)

// Address families, as the kernel numbers them.
const (
	FamilyINET  uint16 = 2
	FamilyINET6 uint16 = 10
)

// GroupKey identifies one reuseport group: one managed UDP listening address
// in one network namespace. Two sockets share a group exactly when their keys
// are equal.
type GroupKey struct {
	// NetNS is the inode number of the socket's network namespace.
	NetNS uint64
	// Family is FamilyINET or FamilyINET6 (the socket's family: an IPv6 socket
	// bound to a v4-mapped address is still FamilyINET6).
	Family uint16
	// Addr is the bound local address and port.
	Addr netip.AddrPort
}

// String formats the key as an operator reads it: udp4 or udp6, the address,
// and the namespace.
func (k GroupKey) String() string {
	proto := "udp4"
	if k.Family == FamilyINET6 {
		proto = "udp6"
	}
	return fmt.Sprintf("%s %s netns:%d", proto, k.Addr, k.NetNS)
}

// Socket is one managed socket, reported once it is bound and before the
// server's bind returns.
type Socket struct {
	Group      GroupKey
	Generation uint32
	// PID is the process (thread group) that asked for the bind.
	PID int
	// Inode is the socket's inode number: unique among live sockets.
	Inode uint64
	// Cookie is the kernel's socket cookie (SO_COOKIE).
	Cookie uint64
	// File is a copy of the socket (same open file description as the
	// server's). The receiver owns it and must close it.
	File *os.File
}

// SocketSink is the port through which the bind mechanism reports each
// managed socket. AddSocket is called while the server waits in bind(); it
// must honour ctx's deadline and close s.File before returning.
type SocketSink interface {
	AddSocket(ctx context.Context, s Socket) error
}
