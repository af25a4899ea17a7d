package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// programRuns sums the data plane's counters (the trapped_ ones are the
// notify loop's): they move only while the steering program runs.
func programRuns(st Status) uint64 {
	var n uint64
	for k, v := range st.Counters {
		if !strings.HasPrefix(k, "trapped_") {
			n += v
		}
	}
	return n
}

// echoN sends n datagrams to port from one socket and waits for each
// answer.
func echoN(t *testing.T, port, n int) {
	t.Helper()
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256)
	for i := 0; i < n; i++ {
		if _, err := fmt.Fprintf(c, "ping %d", i); err != nil {
			t.Fatal(err)
		}
		if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("datagram %d: no answer: %v", i, err)
		}
	}
}

// TestIOUringBypass (issue 10, case 6): a server that binds the managed
// port and then tries to detach the steering program with io_uring
// (IORING_OP_URING_CMD SOCKET_URING_OP_SETSOCKOPT SO_DETACH_REUSEPORT_BPF,
// which seccomp never sees). By default io_uring_setup fails with EPERM and
// the program stays: its counters move. With --allow-io-uring the detach
// succeeds and the counters freeze: the risk the opt-in accepts. Before
// the fix the default case was the bypass.
func TestIOUringBypass(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	bin := testbin.UringDetach(t)
	for _, tc := range []struct {
		name   string
		opts   []string
		bypass bool
	}{
		{"default", nil, false},
		{"--allow-io-uring", []string{"--allow-io-uring"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := testbin.FreeUDPPort(t)
			s := startSvc(t, port, tc.opts, bin, strconv.Itoa(port))
			line := s.g.Line(t, wait)
			t.Logf("server: %s", line)
			before := programRuns(s.status())
			echoN(t, port, 20)
			after := programRuns(s.status())
			t.Logf("data-plane counters: %d before, %d after 20 datagrams", before, after)
			warned := strings.Contains(s.g.Stderr(), "--allow-io-uring")
			if !tc.bypass {
				if want := fmt.Sprintf("uring setup=%d detach=none", -int(syscall.EPERM)); line != want {
					t.Fatalf("server said %q, want %q (io_uring refused)", line, want)
				}
				if after <= before {
					t.Fatalf("the steering program no longer runs: counters %d before and %d after 20 datagrams", before, after)
				}
				if warned {
					t.Fatalf("a warning about --allow-io-uring without it:\n%s", s.g.Stderr())
				}
				return
			}
			if line != "uring setup=0 detach=0" {
				t.Fatalf("server said %q, want the detach through io_uring to succeed", line)
			}
			if after != before {
				t.Fatalf("counters moved (%d -> %d): the program is still attached", before, after)
			}
			oneLineWith(t, "the opt-in warning", grepLines(s.g.Stderr(), "--allow-io-uring"), "level=WARN")
		})
	}
}
