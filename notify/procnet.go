package notify

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/grmwrap/grmwrap/generations"
)

// udpEntry is one socket of /proc/net/udp or /proc/net/udp6.
type udpEntry struct {
	Family  uint16
	Local   netip.AddrPort
	Inode   uint64
	RxQueue uint64 // bytes waiting to be read
}

// readUDPTables lists the UDP sockets of the current thread's network
// namespace.
func readUDPTables() ([]udpEntry, error) {
	return readUDPTablesAt("/proc/thread-self/net")
}

// QueuedBytes returns how many bytes wait in the receive queues of the
// sockets with the given inodes, as seen from the network namespace of
// process pid.
func QueuedBytes(pid int, inodes []uint64) (uint64, error) {
	entries, err := readUDPTablesAt(fmt.Sprintf("/proc/%d/net", pid))
	if err != nil {
		return 0, err
	}
	want := make(map[uint64]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	var total uint64
	for _, e := range entries {
		if want[e.Inode] {
			total += e.RxQueue
		}
	}
	return total, nil
}

// readTCPListeners lists the TCP sockets of the current thread's network
// namespace that are listening or bound without a connection (the ones a
// bind can collide with; connections on the port are left out).
func readTCPListeners() ([]udpEntry, error) {
	var out []udpEntry
	for _, t := range []struct {
		path   string
		family uint16
	}{
		{"/proc/thread-self/net/tcp", generations.FamilyINET},
		{"/proc/thread-self/net/tcp6", generations.FamilyINET6},
	} {
		b, err := os.ReadFile(t.path)
		if os.IsNotExist(err) && t.family == generations.FamilyINET6 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.path, err)
		}
		entries, states, err := parseSocketTable(strings.NewReader(string(b)), t.family)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", t.path, err)
		}
		for i, e := range entries {
			if states[i] == tcpListen || states[i] == tcpClose {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// TCP states as /proc/net/tcp prints them.
const (
	tcpClose  = 0x07
	tcpListen = 0x0A
)

func readUDPTablesAt(dir string) ([]udpEntry, error) {
	var all []udpEntry
	for _, t := range []struct {
		path   string
		family uint16
	}{
		{dir + "/udp", generations.FamilyINET},
		{dir + "/udp6", generations.FamilyINET6},
	} {
		f, err := os.Open(t.path)
		if os.IsNotExist(err) && t.family == generations.FamilyINET6 {
			continue // IPv6 disabled
		}
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", t.path, err)
		}
		entries, err := parseUDPTable(f, t.family)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", t.path, err)
		}
		all = append(all, entries...)
	}
	return all, nil
}

// parseUDPTable parses the text of /proc/net/udp (family INET) or
// /proc/net/udp6 (INET6). Addresses there are 32-bit words printed in host
// byte order; ports are printed as numbers.
func parseUDPTable(r io.Reader, family uint16) ([]udpEntry, error) {
	out, _, err := parseSocketTable(r, family)
	return out, err
}

// parseSocketTable parses /proc/net/{udp,udp6,tcp,tcp6} (they share the
// columns this reads) and returns each socket's state too.
func parseSocketTable(r io.Reader, family uint16) ([]udpEntry, []uint64, error) {
	var out []udpEntry
	var states []uint64
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			return nil, nil, fmt.Errorf("line %q: too few fields", sc.Text())
		}
		local, err := parseHexAddrPort(fields[1])
		if err != nil {
			return nil, nil, err
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("inode %q: %w", fields[9], err)
		}
		_, rxHex, ok := strings.Cut(fields[4], ":")
		if !ok {
			return nil, nil, fmt.Errorf("queues %q: want tx:rx", fields[4])
		}
		rx, err := strconv.ParseUint(rxHex, 16, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("receive queue %q: %w", rxHex, err)
		}
		state, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, nil, fmt.Errorf("state %q: %w", fields[3], err)
		}
		out = append(out, udpEntry{Family: family, Local: local, Inode: inode, RxQueue: rx})
		states = append(states, state)
	}
	return out, states, sc.Err()
}

func parseHexAddrPort(s string) (netip.AddrPort, error) {
	addrHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", portHex, err)
	}
	raw, err := hex.DecodeString(addrHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q: not 4 or 16 bytes of hex", addrHex)
	}
	// Each 32-bit word was printed as a host-order number.
	var b [16]byte
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	if len(raw) == 4 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16(b), uint16(port)), nil
}

// conflicts reports whether a socket bound at e stands in the way of binding
// want (family wantFamily, v6only when an IPv6 socket has IPV6_V6ONLY) in
// the same namespace, the way a plain bind without SO_REUSEPORT would see it.
// It is conservative where /proc does not tell: another IPv6 wildcard socket
// is assumed to be dual-stack.
func conflicts(e udpEntry, wantFamily uint16, want netip.AddrPort, v6only bool) bool {
	if e.Local.Port() != want.Port() {
		return false
	}
	a, b := e.Local.Addr(), want.Addr()
	// A v4-mapped bind on an IPv6 socket takes an IPv4 address.
	aV4 := e.Family == generations.FamilyINET || a.Is4In6()
	bV4 := wantFamily == generations.FamilyINET || b.Is4In6()
	a, b = a.Unmap(), b.Unmap()
	switch {
	case aV4 && bV4:
		return a == b || a.IsUnspecified() || b.IsUnspecified()
	case !aV4 && !bV4:
		return a == b || a.IsUnspecified() || b.IsUnspecified()
	case aV4: // existing IPv4, wanted IPv6
		return b.IsUnspecified() && !v6only
	default: // existing IPv6, wanted IPv4
		return a.IsUnspecified()
	}
}
