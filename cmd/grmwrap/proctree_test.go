package main

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/grmwrap/grmwrap/generations"
	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// forking is a server whose main process (sh) starts a worker that binds
// the managed port (the C echo server) and exits 0 on SIGTERM without
// stopping it, as a forking server's master may. With setsid the worker
// leaves the process group (and session) too.
func forking(t *testing.T, port int, setsid bool) []string {
	worker := `"$0" "$1"`
	if setsid {
		worker = `setsid "$0" "$1"`
	}
	return []string{"sh", "-c", `trap "exit 0" TERM; ` + worker + ` & wait`, testbin.EchoC(t), strconv.Itoa(port)}
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// othersInNamespace lists every process of the test's PID namespace but
// the test itself, zombies included.
func othersInNamespace() []string {
	var out []string
	ents, _ := os.ReadDir("/proc") // unreadable: nothing to report
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	return out
}

// bindPID is the pid that made generation gen's managed bind: its worker.
func bindPID(s *svc, gen uint32) int {
	s.t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`msg="managed bind" .* generation=%d pid=(\d+)`, gen))
	var pid int
	settle(s.t, fmt.Sprintf("generation %d never logged a managed bind", gen), func() (bool, string) {
		m := re.FindStringSubmatch(s.g.Stderr())
		if m == nil {
			return false, s.g.Stderr()
		}
		pid, _ = strconv.Atoi(m[1])
		return true, ""
	})
	return pid
}

// TestForkingServerGeneration: a generation is every process it started.
// The forking server's main process exits on the stop signal and leaves
// its worker behind; grmwrap stops and reaps the worker too, shows the
// generation exited only once it is gone, keeps counting the worker's
// socket as the generation's, and so a later upgrade binds the port again.
// After SIGTERM to grmwrap no process and no cgroup of it is left. The
// cgroup cases cover a worker that calls setsid(); the fallback (process
// group) covers one that stays in the group.
func TestForkingServerGeneration(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	for _, tc := range []struct {
		name     string
		fallback bool
		setsid   bool
		upgrades uint32
	}{
		{name: "cgroup", upgrades: 2},
		{name: "cgroup setsid", setsid: true, upgrades: 2},
		{name: "process group", fallback: true, upgrades: 2},
		// Only the stop of grmwrap: nothing may be left.
		{name: "cgroup setsid stop", setsid: true},
		{name: "process group stop", fallback: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fallback {
				t.Setenv(noCgroupEnv, "1")
			}
			port := testbin.FreeUDPPort(t)
			s := startSvc(t, port, []string{"--log-level", "debug", "--dissector", "noop", "--kill-timeout", "5s"}, forking(t, port, tc.setsid)...)
			log := s.g.Stderr()
			cgroup := ""
			if m := regexp.MustCompile(`generations are tracked by cgroup" cgroup=(\S+)`).FindStringSubmatch(log); m != nil {
				cgroup = m[1]
			}
			if tc.fallback != (cgroup == "") {
				t.Fatalf("fallback=%v but grmwrap logged cgroup %q:\n%s", tc.fallback, cgroup, log)
			}
			if tc.fallback && !strings.Contains(log, "tracked by process group") {
				t.Fatalf("the fallback is not logged:\n%s", log)
			}
			workers := []int{s.first.PID}
			if st := s.status(); genOf(t, st, 1).Sockets != 1 || genOf(t, st, 1).PID == s.first.PID {
				t.Fatalf("generation 1 should count its worker's socket: %+v", st)
			}
			for gen := uint32(2); gen <= 1+tc.upgrades; gen++ {
				s.mustUpgrade(gen)
				workers = append(workers, bindPID(s, gen))
				st := s.waitGen(gen-1, generations.StateExited)
				if old := workers[gen-2]; alive(old) {
					// Not fatal: the next upgrade shows what it costs.
					t.Errorf("generation %d shows exited but its worker %d is alive: %+v", gen-1, old, st)
				} else {
					settle(t, fmt.Sprintf("worker of generation %d reaped", gen-1), func() (bool, string) {
						return procGone(workers[gen-2]), fmt.Sprintf("%d still exists", workers[gen-2])
					})
				}
				if n := genOf(t, s.status(), gen).Sockets; n != 1 {
					t.Fatalf("generation %d has %d sockets, want 1", gen, n)
				}
			}
			if err := s.g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			s.g.Wait(t, hang)
			settle(t, "no process left after grmwrap stopped", func() (bool, string) {
				left := othersInNamespace()
				return len(left) == 0, strings.Join(left, "\n")
			})
			if cgroup != "" {
				if _, err := os.Stat(cgroup); !os.IsNotExist(err) {
					t.Fatalf("cgroup %s left behind (%v)", cgroup, err)
				}
			}
		})
	}
}
