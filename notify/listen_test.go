package notify

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseListenAccepted(t *testing.T) {
	tests := []struct {
		in   string
		want ListenAddr
		str  string // String() of the result
	}{
		{":53", ListenAddr{Port: 53}, ":53"},
		{":1", ListenAddr{Port: 1}, ":1"},
		{":65535", ListenAddr{Port: 65535}, ":65535"},
		{"127.0.0.1:5353", ListenAddr{Addr: netip.MustParseAddr("127.0.0.1"), Port: 5353}, "127.0.0.1:5353"},
		{"0.0.0.0:53", ListenAddr{Addr: netip.MustParseAddr("0.0.0.0"), Port: 53}, "0.0.0.0:53"},
		{"[::]:53", ListenAddr{Addr: netip.IPv6Unspecified(), Port: 53}, "[::]:53"},
		{"[::1]:53", ListenAddr{Addr: netip.IPv6Loopback(), Port: 53}, "[::1]:53"},
		{"[2001:db8::7]:443", ListenAddr{Addr: netip.MustParseAddr("2001:db8::7"), Port: 443}, "[2001:db8::7]:443"},
		{"[::ffff:127.0.0.1]:53", ListenAddr{Addr: netip.MustParseAddr("127.0.0.1"), Port: 53}, "127.0.0.1:53"},
		{"[::ffff:0.0.0.0]:53", ListenAddr{Addr: netip.MustParseAddr("0.0.0.0"), Port: 53}, "0.0.0.0:53"},
		{":053", ListenAddr{Port: 53}, ":53"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseListen(tt.in)
			if err != nil {
				t.Fatalf("ParseListen(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseListen(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if got.Addr.Is4In6() {
				t.Errorf("ParseListen(%q) kept a v4-mapped address", tt.in)
			}
			if s := got.String(); s != tt.str {
				t.Errorf("String() = %q, want %q", s, tt.str)
			}
			again, err := ParseListen(got.String())
			if err != nil {
				t.Fatalf("ParseListen(%q) (from String): %v", got.String(), err)
			}
			if again != got {
				t.Errorf("round trip: %#v became %#v", got, again)
			}
		})
	}
}

func TestParseListenRefused(t *testing.T) {
	for _, in := range []string{
		"",
		"53",
		":",
		":0",
		":00",
		":70000",
		":65536",
		":-1",
		":+53",
		": 53",
		":abc",
		":0x35",
		"host:53",
		"localhost:53",
		"::1:53",
		"::53",
		"2001:db8::1:53",
		"[fe80::1%eth0]:53",
		"[::1]",
		"[::1]:",
		"[]:53",
		"[:53",
		"[::1:53",
		"::1]:53",
		"127.0.0.1",
		"127.0.0.1:",
		"127.0.0.1:53:",
		"127.0.0.256:53",
		"[[::1]]:53",
	} {
		t.Run(in, func(t *testing.T) {
			got, err := ParseListen(in)
			if err == nil {
				t.Fatalf("ParseListen(%q) = %#v, want an error", in, got)
			}
			if got != (ListenAddr{}) {
				t.Errorf("with the error it returned %#v", got)
			}
			if !strings.Contains(err.Error(), in) {
				t.Errorf("error %q does not quote the input", err)
			}
		})
	}
}

func TestParseListenUnbracketedV6Hint(t *testing.T) {
	_, err := ParseListen("::1:53")
	if err == nil || !strings.Contains(err.Error(), "[::1]:53") {
		t.Fatalf("error %v, want a hint naming [::1]:53", err)
	}
}

func TestListenAddrString(t *testing.T) {
	tests := []struct {
		in   ListenAddr
		want string
	}{
		{ListenAddr{Port: 53}, ":53"},
		{ListenAddr{Addr: netip.MustParseAddr("10.1.2.3"), Port: 8053}, "10.1.2.3:8053"},
		{ListenAddr{Addr: netip.IPv6Unspecified(), Port: 53}, "[::]:53"},
		{ListenAddr{Addr: netip.MustParseAddr("fd00::1"), Port: 65535}, "[fd00::1]:65535"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func mustListen(t *testing.T, specs ...string) Matcher {
	t.Helper()
	var entries []ListenAddr
	for _, s := range specs {
		la, err := ParseListen(s)
		if err != nil {
			t.Fatalf("ParseListen(%q): %v", s, err)
		}
		entries = append(entries, la)
	}
	return NewMatcher(entries)
}

func TestMatcherZero(t *testing.T) {
	for name, m := range map[string]Matcher{
		"zero value":    {},
		"nil entries":   NewMatcher(nil),
		"empty entries": NewMatcher([]ListenAddr{}),
	} {
		t.Run(name, func(t *testing.T) {
			for _, s := range []string{"0.0.0.0:53", "127.0.0.1:1", "[::]:65535", "[::1]:5353", "[::ffff:10.0.0.1]:53", "[fe80::1]:123"} {
				ap := netip.MustParseAddrPort(s)
				if !m.Manages(ap) {
					t.Errorf("Manages(%v) = false, want true", ap)
				}
				if m.Listed(ap) {
					t.Errorf("Listed(%v) = true with no entries", ap)
				}
			}
			for _, s := range []string{"0.0.0.0:0", "127.0.0.1:0", "[::]:0", "[::ffff:127.0.0.1]:0"} {
				ap := netip.MustParseAddrPort(s)
				if m.Manages(ap) {
					t.Errorf("Manages(%v) = true: port 0 is never managed", ap)
				}
				if m.Listed(ap) {
					t.Errorf("Listed(%v) = true with no entries", ap)
				}
			}
		})
	}
}

func TestMatcherEntries(t *testing.T) {
	type check struct {
		ap     string
		manage bool
	}
	tests := []struct {
		name   string
		listen []string
		checks []check
	}{
		{"port only matches any address of both families", []string{":53"}, []check{
			{"0.0.0.0:53", true},
			{"127.0.0.1:53", true},
			{"192.0.2.1:53", true},
			{"[::]:53", true},
			{"[::1]:53", true},
			{"[::ffff:127.0.0.1]:53", true},
			{"[fe80::1]:53", true},
			{"0.0.0.0:54", false},
			{"[::]:5353", false},
			{"0.0.0.0:0", false},
		}},
		{"ipv4 address", []string{"127.0.0.1:53"}, []check{
			{"127.0.0.1:53", true},
			{"[::ffff:127.0.0.1]:53", true},
			{"0.0.0.0:53", false},
			{"127.0.0.1:54", false},
			{"127.0.0.2:53", false},
			{"[::]:53", false},
			{"[::1]:53", false},
			{"[::ffff:0.0.0.0]:53", false},
		}},
		{"mapped entry is unmapped", []string{"[::ffff:127.0.0.1]:53"}, []check{
			{"127.0.0.1:53", true},
			{"[::ffff:127.0.0.1]:53", true},
			{"[::1]:53", false},
		}},
		{"ipv6 loopback", []string{"[::1]:53"}, []check{
			{"[::1]:53", true},
			{"127.0.0.1:53", false},
			{"[::]:53", false},
			{"[::1]:54", false},
		}},
		// An address entry names that address exactly; the IPv6 wildcard is
		// an address like any other, so [::]:53 does not cover 0.0.0.0:53.
		{"ipv6 wildcard is exact", []string{"[::]:53"}, []check{
			{"[::]:53", true},
			{"0.0.0.0:53", false},
			{"[::1]:53", false},
		}},
		{"several entries", []string{"127.0.0.1:53", "[::1]:53", ":8053"}, []check{
			{"127.0.0.1:53", true},
			{"[::1]:53", true},
			{"10.0.0.1:8053", true},
			{"[::]:8053", true},
			{"10.0.0.1:53", false},
			{"127.0.0.1:0", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustListen(t, tt.listen...)
			for _, c := range tt.checks {
				ap := netip.MustParseAddrPort(c.ap)
				if got := m.Manages(ap); got != c.manage {
					t.Errorf("--listen %v: Manages(%v) = %v, want %v", tt.listen, ap, got, c.manage)
				}
				// With entries, a non-zero port is managed exactly when it
				// is listed.
				if ap.Port() != 0 {
					if got := m.Listed(ap); got != c.manage {
						t.Errorf("--listen %v: Listed(%v) = %v, want %v", tt.listen, ap, got, c.manage)
					}
				}
			}
		})
	}
}

func FuzzParseListen(f *testing.F) {
	for _, s := range []string{
		":53", "127.0.0.1:5353", "[::]:53", "[::1]:53", "[::ffff:127.0.0.1]:53",
		"53", ":0", ":70000", "host:53", "::1:53", "[fe80::1%eth0]:53", ":abc",
		"[::ffff:1.2.3.4%x]:1", "[1.2.3.4]:5", ":065535", "[]:1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		la, err := ParseListen(s)
		if err != nil {
			if la != (ListenAddr{}) {
				t.Fatalf("ParseListen(%q) returned %#v with error %v", s, la, err)
			}
			return
		}
		if la.Port == 0 {
			t.Fatalf("ParseListen(%q) accepted port 0", s)
		}
		if la.Addr.IsValid() && (la.Addr.Zone() != "" || la.Addr.Is4In6()) {
			t.Fatalf("ParseListen(%q) = %#v: zone or mapped address", s, la)
		}
		str := la.String()
		again, err := ParseListen(str)
		if err != nil {
			t.Fatalf("ParseListen(%q) = %#v, whose String %q does not parse: %v", s, la, str, err)
		}
		if again != la {
			t.Fatalf("ParseListen(%q) = %#v; String %q parses to %#v", s, la, str, again)
		}
		if again.String() != str {
			t.Fatalf("String not stable: %q then %q", str, again.String())
		}
		// The entry manages its own address.
		ap := netip.AddrPortFrom(la.Addr, la.Port)
		if !la.Addr.IsValid() {
			ap = netip.AddrPortFrom(netip.IPv4Unspecified(), la.Port)
		}
		if m := NewMatcher([]ListenAddr{la}); !m.Manages(ap) || !m.Listed(ap) {
			t.Fatalf("--listen %q does not manage %v", s, ap)
		}
	})
}
