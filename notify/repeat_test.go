package notify

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// slowSink holds every registration for delay, the way a busy supervisor
// would, so that signals land while the server waits in bind.
type slowSink struct {
	delay time.Duration
	calls atomic.Int32
}

func (s *slowSink) AddSocket(_ context.Context, sock generations.Socket) error {
	s.calls.Add(1)
	time.Sleep(s.delay)
	return sock.File.Close()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestBindUnderSignalStorm binds from a server that takes SIGALRM every
// millisecond while grmwrap holds its bind for 50 ms. Without
// WAIT_KILLABLE_RECV the kernel interrupts and repeats the bind: it must
// still succeed, with one bind and one registration. With the flag there is
// exactly one notification.
func TestBindUnderSignalStorm(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for _, killable := range []bool{false, true} {
		t.Run(fmt.Sprintf("killable=%v", killable), func(t *testing.T) {
			sink := &slowSink{delay: 50 * time.Millisecond}
			h := NewHandler(testLogger(t), Matcher{}, sink)
			line := runAlarmBind(t, h, killable)
			var ret, errno, alarms, reuseport int
			if _, err := fmt.Sscanf(line, "bind ret=%d errno=%d alarms=%d reuseport=%d", &ret, &errno, &alarms, &reuseport); err != nil {
				t.Fatalf("server said %q: %v", line, err)
			}
			if ret != 0 || errno != 0 {
				t.Fatalf("bind failed under signals: %q", line)
			}
			if reuseport != 1 {
				t.Fatalf("managed socket has SO_REUSEPORT=%d", reuseport)
			}
			// With WAIT_KILLABLE_RECV the timer's signals stay pending while
			// the bind waits and coalesce into one delivery.
			if alarms < 1 {
				t.Fatalf("no alarm during the bind: the storm did not happen")
			}
			if n := sink.calls.Load(); n != 1 {
				t.Fatalf("socket registered %d times, want 1", n)
			}
			c := h.Counters()
			t.Logf("counters %v", c)
			if c["bind_managed"] != 1 {
				t.Fatalf("bind_managed = %d, want 1", c["bind_managed"])
			}
			if killable {
				if c["bind_trapped"] != 1 || c["bind_repeated"] != 0 {
					t.Fatalf("with WAIT_KILLABLE_RECV: trapped %d, repeated %d; want 1 and 0", c["bind_trapped"], c["bind_repeated"])
				}
			} else if c["bind_repeated"] < 1 {
				t.Fatalf("without WAIT_KILLABLE_RECV no bind was repeated (trapped %d): the test did not exercise re-delivery", c["bind_trapped"])
			}
		})
	}
}

// runAlarmBind starts the alrmbind server under h and returns its report.
func runAlarmBind(t *testing.T, h *Handler, killable bool) string {
	bin := testbin.AlarmBind(t)
	port := testbin.FreeUDPPort(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	child, err := Start(Spec{
		Self:           os.Args[0],
		Path:           bin,
		Argv:           []string{bin, strconv.Itoa(port)},
		Env:            os.Environ(),
		Files:          [3]*os.File{os.Stdin, w, os.Stderr},
		NoWaitKillable: !killable,
	})
	w.Close()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if killable != child.Killable {
		t.Fatalf("filter killable=%v, asked %v", child.Killable, killable)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(ctx, child.Listener, 1) }()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		_, _ = child.Process.Wait()
		// The loop ends on POLLHUP once the server is gone.
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("notification loop did not end after the server exited")
		}
		cancel()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("server exited without a report")
		}
		return l
	case <-time.After(20 * time.Second):
		t.Fatal("no report from the server in 20s: bind hung")
	}
	return ""
}
