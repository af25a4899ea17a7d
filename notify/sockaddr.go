package notify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/grmwrap/grmwrap/generations"
)

// maxSockaddr is the largest address bind(2) accepts (sizeof(struct
// sockaddr_storage)); longer addresses get EINVAL from the kernel.
const maxSockaddr = 128

// Sizes of the kernel's sockaddr_in, and of sockaddr_in6 without and with the
// scope id (inet6_bind accepts SIN6_LEN_RFC2133 = 24 bytes).
const (
	sizeofSockaddrIn            = 16
	sizeofSockaddrIn6RFC        = 24
	sizeofSockaddrIn6           = 28
	familyUnspec         uint16 = 0
)

// errNotInet is returned for addresses of other families.
var errNotInet = errors.New("not an inet address")

// Sockaddr is a decoded bind address.
type Sockaddr struct {
	Family  uint16 // generations.FamilyINET or FamilyINET6
	Addr    netip.AddrPort
	ScopeID uint32 // IPv6 only
}

// DecodeSockaddr decodes the address a server passed to bind on a socket of
// family sockFamily, the way the kernel reads it. It returns errNotInet for
// non-inet families and an error for addresses the kernel would refuse
// (too short, family mismatch). AF_UNSPEC with the any address on an AF_INET
// socket means 0.0.0.0, as in inet_bind.
func DecodeSockaddr(b []byte, sockFamily uint16) (Sockaddr, error) {
	if len(b) < 2 {
		return Sockaddr{}, fmt.Errorf("sockaddr of %d bytes: too short", len(b))
	}
	if len(b) > maxSockaddr {
		return Sockaddr{}, fmt.Errorf("sockaddr of %d bytes: too long", len(b))
	}
	fam := binary.NativeEndian.Uint16(b[0:2])
	switch sockFamily {
	case generations.FamilyINET:
		if len(b) < sizeofSockaddrIn {
			return Sockaddr{}, fmt.Errorf("ipv4 sockaddr of %d bytes: too short", len(b))
		}
		ip := netip.AddrFrom4([4]byte(b[4:8]))
		if fam == familyUnspec && !ip.IsUnspecified() {
			return Sockaddr{}, fmt.Errorf("af_unspec sockaddr with address %s", ip)
		}
		if fam != generations.FamilyINET && fam != familyUnspec {
			return Sockaddr{}, fmt.Errorf("family %d on an ipv4 socket", fam)
		}
		port := binary.BigEndian.Uint16(b[2:4])
		return Sockaddr{Family: generations.FamilyINET, Addr: netip.AddrPortFrom(ip, port)}, nil
	case generations.FamilyINET6:
		if len(b) < sizeofSockaddrIn6RFC {
			return Sockaddr{}, fmt.Errorf("ipv6 sockaddr of %d bytes: too short", len(b))
		}
		if fam != generations.FamilyINET6 {
			return Sockaddr{}, fmt.Errorf("family %d on an ipv6 socket", fam)
		}
		port := binary.BigEndian.Uint16(b[2:4])
		ip := netip.AddrFrom16([16]byte(b[8:24]))
		var scope uint32
		if len(b) >= sizeofSockaddrIn6 {
			scope = binary.NativeEndian.Uint32(b[24:28])
		}
		return Sockaddr{Family: generations.FamilyINET6, Addr: netip.AddrPortFrom(ip, port), ScopeID: scope}, nil
	default:
		return Sockaddr{}, errNotInet
	}
}
