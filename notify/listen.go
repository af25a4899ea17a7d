package notify

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ListenAddr is one --listen entry: a port, optionally restricted to one
// local address.
type ListenAddr struct {
	// Addr is the address to match; invalid (the zero Addr) means any.
	Addr netip.Addr
	Port uint16
}

// ParseListen parses HOST:PORT, :PORT or [V6]:PORT. HOST must be an IP
// address; the port must be 1-65535.
func ParseListen(s string) (ListenAddr, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return ListenAddr{}, fmt.Errorf("listen %q: want HOST:PORT, :PORT or [::]:PORT", s)
	}
	host, portStr := s[:i], s[i+1:]
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return ListenAddr{}, fmt.Errorf("listen %q: port must be a number from 1 to 65535", s)
	}
	la := ListenAddr{Port: uint16(port)}
	if host == "" {
		return la, nil
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	} else if strings.Contains(host, ":") {
		return ListenAddr{}, fmt.Errorf("listen %q: put an IPv6 address in brackets, as [%s]:%s", s, host, portStr)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return ListenAddr{}, fmt.Errorf("listen %q: host must be an IP address", s)
	}
	if ip.Zone() != "" {
		return ListenAddr{}, fmt.Errorf("listen %q: zones are not supported", s)
	}
	la.Addr = ip.Unmap()
	return la, nil
}

// String formats the entry the way ParseListen reads it.
func (l ListenAddr) String() string {
	if !l.Addr.IsValid() {
		return ":" + strconv.Itoa(int(l.Port))
	}
	return netip.AddrPortFrom(l.Addr, l.Port).String()
}

// Matcher decides which binds grmwrap manages. The zero Matcher (no entries)
// manages every inet UDP bind to a non-zero port.
type Matcher struct {
	entries []ListenAddr
}

// NewMatcher returns a matcher for the given --listen entries.
func NewMatcher(entries []ListenAddr) Matcher {
	return Matcher{entries: entries}
}

// Manages reports whether a bind to ap is managed. IPv4-mapped addresses
// match their IPv4 form.
func (m Matcher) Manages(ap netip.AddrPort) bool {
	if ap.Port() == 0 {
		return false
	}
	if len(m.entries) == 0 {
		return true
	}
	return m.Listed(ap)
}

// Listed reports whether an explicit --listen entry names ap. The operator's
// listing is what lets an unprivileged server bind a privileged port.
func (m Matcher) Listed(ap netip.AddrPort) bool {
	ip := ap.Addr().Unmap()
	for _, e := range m.entries {
		if e.Port == ap.Port() && (!e.Addr.IsValid() || e.Addr == ip) {
			return true
		}
	}
	return false
}
