package notify

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// The inputs below are built from x/sys/unix's copies of the kernel's
// struct sockaddr_in and struct sockaddr_in6, so the decoder is checked
// against the kernel's layout rather than against its own offsets.

// structBytes returns a copy of the memory of *p, sized by its type.
func structBytes[T any](p *T) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
	return bytes.Clone(b)
}

// setNetPort stores port in network byte order in a sin_port / sin6_port
// field (the kernel's __be16).
func setNetPort(field *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(field))
	b[0], b[1] = byte(port>>8), byte(port)
}

func netPort(field *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(field))
	return uint16(b[0])<<8 | uint16(b[1])
}

// sockaddr4 encodes a struct sockaddr_in.
func sockaddr4(family uint16, ap netip.AddrPort) []byte {
	var sa unix.RawSockaddrInet4
	sa.Family = family
	setNetPort(&sa.Port, ap.Port())
	sa.Addr = ap.Addr().As4()
	return structBytes(&sa)
}

// sockaddr6 encodes a struct sockaddr_in6 (28 bytes); [:24] is the RFC 2133
// form without sin6_scope_id.
func sockaddr6(family uint16, ap netip.AddrPort, flowinfo, scope uint32) []byte {
	var sa unix.RawSockaddrInet6
	sa.Family = family
	setNetPort(&sa.Port, ap.Port())
	sa.Flowinfo = flowinfo
	sa.Addr = ap.Addr().As16()
	sa.Scope_id = scope
	return structBytes(&sa)
}

// encodeSockaddr is the test's own encoder for a decoded Sockaddr: the
// struct the kernel would have read it from.
func encodeSockaddr(s Sockaddr) []byte {
	if s.Family == generations.FamilyINET {
		return sockaddr4(unix.AF_INET, s.Addr)
	}
	return sockaddr6(unix.AF_INET6, s.Addr, 0, s.ScopeID)
}

// sizeofSockaddrStorage is sizeof(struct sockaddr_storage) (_K_SS_MAXSIZE),
// the longest address move_addr_to_kernel copies in. x/sys/unix has no
// constant for it (its RawSockaddrAny is 112 bytes).
const sizeofSockaddrStorage = 128

func padded(b []byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = 0xa5 // garbage after the struct is ignored by the kernel
	}
	copy(out, b)
	return out
}

func TestSockaddrLayout(t *testing.T) {
	if unix.SizeofSockaddrInet4 != sizeofSockaddrIn {
		t.Errorf("sizeof(sockaddr_in) = %d, decoder assumes %d", unix.SizeofSockaddrInet4, sizeofSockaddrIn)
	}
	if unix.SizeofSockaddrInet6 != sizeofSockaddrIn6 {
		t.Errorf("sizeof(sockaddr_in6) = %d, decoder assumes %d", unix.SizeofSockaddrInet6, sizeofSockaddrIn6)
	}
	if sizeofSockaddrStorage != maxSockaddr {
		t.Errorf("sizeof(sockaddr_storage) = %d, decoder assumes %d", sizeofSockaddrStorage, maxSockaddr)
	}
	if unix.AF_INET != generations.FamilyINET || unix.AF_INET6 != generations.FamilyINET6 {
		t.Errorf("family numbers differ from the kernel's")
	}
	var sa6 unix.RawSockaddrInet6
	if off := unsafe.Offsetof(sa6.Scope_id); off != sizeofSockaddrIn6RFC {
		t.Errorf("sin6_scope_id at %d, want %d", off, sizeofSockaddrIn6RFC)
	}
	// The port is big-endian at bytes 2-3 whatever the host order.
	b := sockaddr4(unix.AF_INET, netip.MustParseAddrPort("1.2.3.4:5353"))
	if b[2] != 0x14 || b[3] != 0xe9 || !bytes.Equal(b[4:8], []byte{1, 2, 3, 4}) {
		t.Errorf("sockaddr_in bytes % x", b)
	}
}

func TestDecodeSockaddr(t *testing.T) {
	const (
		inet  = generations.FamilyINET
		inet6 = generations.FamilyINET6
	)
	ap := netip.MustParseAddrPort
	v4 := func(s string) []byte { return sockaddr4(unix.AF_INET, ap(s)) }
	tests := []struct {
		name    string
		in      []byte
		sock    uint16
		want    Sockaddr
		wantErr bool
		notInet bool // the error must be errNotInet
	}{
		{name: "ipv4", in: v4("127.0.0.1:5353"), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("127.0.0.1:5353")}},
		{name: "ipv4 any", in: v4("0.0.0.0:53"), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("0.0.0.0:53")}},
		{name: "ipv4 port 0", in: v4("10.0.0.1:0"), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("10.0.0.1:0")}},
		{name: "ipv4 high port", in: v4("192.0.2.1:65535"), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("192.0.2.1:65535")}},
		{name: "ipv4 with garbage in sin_zero", in: func() []byte {
			var sa unix.RawSockaddrInet4
			sa.Family = unix.AF_INET
			setNetPort(&sa.Port, 53)
			sa.Addr = [4]byte{192, 0, 2, 7}
			sa.Zero = [8]uint8{1, 2, 3, 4, 5, 6, 7, 8}
			return structBytes(&sa)
		}(), sock: inet, want: Sockaddr{Family: inet, Addr: ap("192.0.2.7:53")}},
		{name: "ipv4 longer than sockaddr_in", in: padded(v4("127.0.0.1:53"), 20), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("127.0.0.1:53")}},
		{name: "ipv4 of sockaddr_storage size", in: padded(v4("127.0.0.1:53"), 128), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("127.0.0.1:53")}},
		{name: "af_unspec any on ipv4 socket", in: sockaddr4(unix.AF_UNSPEC, ap("0.0.0.0:53")), sock: inet,
			want: Sockaddr{Family: inet, Addr: ap("0.0.0.0:53")}},
		{name: "af_unspec other address on ipv4 socket", in: sockaddr4(unix.AF_UNSPEC, ap("127.0.0.1:53")), sock: inet, wantErr: true},
		{name: "af_unspec on ipv6 socket", in: sockaddr6(unix.AF_UNSPEC, ap("[::]:53"), 0, 0), sock: inet6, wantErr: true},
		{name: "ipv4 too short", in: v4("127.0.0.1:53")[:15], sock: inet, wantErr: true},
		{name: "ipv4 family only", in: v4("127.0.0.1:53")[:2], sock: inet, wantErr: true},
		{name: "one byte", in: []byte{unix.AF_INET}, sock: inet, wantErr: true},
		{name: "empty", in: []byte{}, sock: inet, wantErr: true},
		{name: "nil", in: nil, sock: inet6, wantErr: true},
		{name: "ipv4 too long", in: padded(v4("127.0.0.1:53"), 129), sock: inet, wantErr: true},
		{name: "ipv4 far too long", in: padded(v4("127.0.0.1:53"), 4096), sock: inet, wantErr: true},
		{name: "ipv6 family on ipv4 socket", in: sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0), sock: inet, wantErr: true},
		{name: "af_unix on ipv4 socket", in: func() []byte {
			sa := unix.RawSockaddrUnix{Family: unix.AF_UNIX}
			for i, c := range []byte("/run/x") {
				sa.Path[i] = int8(c)
			}
			return structBytes(&sa)
		}(), sock: inet, wantErr: true},
		{name: "af_unix family in sockaddr_in on ipv4 socket", in: sockaddr4(unix.AF_UNIX, ap("127.0.0.1:53")), sock: inet, wantErr: true},
		{name: "af_packet family on ipv4 socket", in: sockaddr4(unix.AF_PACKET, ap("127.0.0.1:53")), sock: inet, wantErr: true},

		{name: "ipv6 rfc2133 without scope", in: sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0)[:24], sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::1]:53")}},
		{name: "ipv6 rfc2133 ignores what would be the scope", in: sockaddr6(unix.AF_INET6, ap("[fe80::1]:53"), 0, 9)[:24], sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[fe80::1]:53")}},
		{name: "ipv6 with scope", in: sockaddr6(unix.AF_INET6, ap("[fe80::1]:5353"), 0, 3), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[fe80::1]:5353"), ScopeID: 3}},
		{name: "ipv6 large scope is native-endian", in: sockaddr6(unix.AF_INET6, ap("[fe80::1]:53"), 0, 0x01020304), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[fe80::1]:53"), ScopeID: 0x01020304}},
		{name: "ipv6 any", in: sockaddr6(unix.AF_INET6, ap("[::]:443"), 0, 0), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::]:443")}},
		{name: "ipv6 flowinfo ignored", in: sockaddr6(unix.AF_INET6, ap("[2001:db8::1]:53"), 0xfffff, 0), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[2001:db8::1]:53")}},
		{name: "ipv6 between rfc2133 and full size", in: sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 7)[:26], sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::1]:53")}},
		{name: "ipv6 of sockaddr_storage size", in: padded(sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 5), 128), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::1]:53"), ScopeID: 5}},
		{name: "v4-mapped ipv6 stays mapped", in: sockaddr6(unix.AF_INET6, ap("[::ffff:127.0.0.1]:53"), 0, 0), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::ffff:127.0.0.1]:53")}},
		{name: "v4-mapped ipv6 any", in: sockaddr6(unix.AF_INET6, ap("[::ffff:0.0.0.0]:53"), 0, 0), sock: inet6,
			want: Sockaddr{Family: inet6, Addr: ap("[::ffff:0.0.0.0]:53")}},
		{name: "ipv6 too short", in: sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0)[:23], sock: inet6, wantErr: true},
		{name: "sockaddr_in on ipv6 socket", in: v4("127.0.0.1:53"), sock: inet6, wantErr: true},
		{name: "ipv4 family padded to ipv6 size on ipv6 socket", in: padded(v4("127.0.0.1:53"), 28), sock: inet6, wantErr: true},
		{name: "ipv6 too long", in: padded(sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0), 129), sock: inet6, wantErr: true},

		{name: "unix socket", in: v4("127.0.0.1:53"), sock: unix.AF_UNIX, wantErr: true, notInet: true},
		{name: "netlink socket", in: sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0), sock: unix.AF_NETLINK, wantErr: true, notInet: true},
		{name: "unspec socket", in: v4("127.0.0.1:53"), sock: unix.AF_UNSPEC, wantErr: true, notInet: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := bytes.Clone(tt.in)
			got, err := DecodeSockaddr(in, tt.sock)
			if !bytes.Equal(in, tt.in) {
				t.Errorf("DecodeSockaddr modified its input")
			}
			if tt.wantErr {
				if err == nil {
					t.Fatalf("DecodeSockaddr(% x, %d) = %+v, want an error", tt.in, tt.sock, got)
				}
				if tt.notInet && !errors.Is(err, errNotInet) {
					t.Errorf("error %v, want errNotInet", err)
				}
				if got != (Sockaddr{}) {
					t.Errorf("with the error it returned %+v, want the zero Sockaddr", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeSockaddr(% x, %d): %v", tt.in, tt.sock, err)
			}
			if got != tt.want {
				t.Errorf("DecodeSockaddr = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// kernelAccepts is an independent statement of which addresses the kernel's
// inet_bind / inet6_bind accept as far as their syntax goes (length and
// family), for the fuzz target's oracle.
func kernelAccepts(b []byte, sockFamily uint16) bool {
	if len(b) > sizeofSockaddrStorage {
		return false // move_addr_to_kernel: EINVAL
	}
	switch sockFamily {
	case unix.AF_INET:
		if len(b) < unix.SizeofSockaddrInet4 {
			return false
		}
		var sa unix.RawSockaddrInet4
		copy(structBytesPtr(&sa), b)
		if sa.Family == unix.AF_INET {
			return true
		}
		return sa.Family == unix.AF_UNSPEC && sa.Addr == [4]byte{}
	case unix.AF_INET6:
		if len(b) < 24 { // SIN6_LEN_RFC2133
			return false
		}
		var sa unix.RawSockaddrInet6
		copy(structBytesPtr(&sa), b)
		return sa.Family == unix.AF_INET6
	}
	return false
}

// structBytesPtr returns the memory of *p itself (not a copy).
func structBytesPtr[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

func FuzzDecodeSockaddr(f *testing.F) {
	ap := netip.MustParseAddrPort
	seeds := []struct {
		b    []byte
		sock uint16
	}{
		{sockaddr4(unix.AF_INET, ap("127.0.0.1:5353")), unix.AF_INET},
		{sockaddr4(unix.AF_INET, ap("0.0.0.0:53")), unix.AF_INET},
		{sockaddr4(unix.AF_UNSPEC, ap("0.0.0.0:53")), unix.AF_INET},
		{sockaddr4(unix.AF_UNSPEC, ap("127.0.0.1:53")), unix.AF_INET},
		{sockaddr4(unix.AF_UNIX, ap("127.0.0.1:53")), unix.AF_INET},
		{padded(sockaddr4(unix.AF_INET, ap("127.0.0.1:53")), 128), unix.AF_INET},
		{padded(sockaddr4(unix.AF_INET, ap("127.0.0.1:53")), 129), unix.AF_INET},
		{sockaddr4(unix.AF_INET, ap("127.0.0.1:53"))[:15], unix.AF_INET},
		{sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0)[:24], unix.AF_INET6},
		{sockaddr6(unix.AF_INET6, ap("[fe80::1]:53"), 1, 3), unix.AF_INET6},
		{sockaddr6(unix.AF_INET6, ap("[::ffff:127.0.0.1]:53"), 0, 0), unix.AF_INET6},
		{sockaddr6(unix.AF_INET6, ap("[::]:53"), 0, 0)[:23], unix.AF_INET6},
		{sockaddr6(unix.AF_INET6, ap("[::1]:53"), 0, 0), unix.AF_INET},
		{sockaddr4(unix.AF_INET, ap("127.0.0.1:53")), unix.AF_INET6},
		{sockaddr4(unix.AF_INET, ap("127.0.0.1:53")), unix.AF_UNIX},
		{nil, unix.AF_INET},
		{[]byte{2}, unix.AF_INET6},
	}
	for _, s := range seeds {
		f.Add(s.b, s.sock)
	}
	f.Fuzz(func(t *testing.T, b []byte, sockFamily uint16) {
		in := bytes.Clone(b)
		got, err := DecodeSockaddr(b, sockFamily)
		if !bytes.Equal(in, b) {
			t.Fatalf("DecodeSockaddr modified its input")
		}
		if accepts := kernelAccepts(b, sockFamily); accepts != (err == nil) {
			t.Fatalf("DecodeSockaddr(% x, %d) = %+v, %v; the kernel would accept it: %v", b, sockFamily, got, err, accepts)
		}
		// Lengths are checked first: only a plausible length on a socket of
		// another family says errNotInet.
		lenOK := len(b) >= 2 && len(b) <= sizeofSockaddrStorage
		if lenOK && sockFamily != unix.AF_INET && sockFamily != unix.AF_INET6 && !errors.Is(err, errNotInet) {
			t.Fatalf("socket family %d: error %v, want errNotInet", sockFamily, err)
		}
		if err != nil {
			return
		}
		if !got.Addr.IsValid() {
			t.Fatalf("invalid address in %+v", got)
		}
		if got.Family != sockFamily {
			t.Fatalf("Family %d on a socket of family %d", got.Family, sockFamily)
		}
		if got.Addr.Addr().Zone() != "" {
			t.Fatalf("address with a zone: %v", got.Addr)
		}
		// Compare with the kernel's struct read straight from the input.
		switch sockFamily {
		case unix.AF_INET:
			var sa unix.RawSockaddrInet4
			copy(structBytesPtr(&sa), b)
			want := netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port))
			if got.Addr != want || got.ScopeID != 0 {
				t.Fatalf("decoded %+v, the struct says %v", got, want)
			}
		case unix.AF_INET6:
			var sa unix.RawSockaddrInet6
			copy(structBytesPtr(&sa), b)
			want := netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port))
			scope := uint32(0)
			if len(b) >= unix.SizeofSockaddrInet6 {
				scope = sa.Scope_id
			}
			if got.Addr != want || got.ScopeID != scope {
				t.Fatalf("decoded %+v, the struct says %v scope %d", got, want, scope)
			}
		}
		// Re-encoding and decoding again gives the same value.
		again, err := DecodeSockaddr(encodeSockaddr(got), sockFamily)
		if err != nil {
			t.Fatalf("re-decoding %+v: %v", got, err)
		}
		if again != got {
			t.Fatalf("round trip: %+v became %+v", got, again)
		}
	})
}
