//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grmwrap/grmwrap/internal/testbin"
)

// need fails the test when a program is missing: make e2e installs them
// all, so a missing one is a broken setup, never a reason to skip.
func need(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not installed: run make e2e (scripts/e2e-deps.sh installs it)", p)
		}
	}
}

// Supervisor is a grmwrap running a server.
type Supervisor struct {
	*testbin.Server
	RuntimeDir string
}

// Start starts `grmwrap ARGS` (ARGS include "-- SERVER ...") with a runtime
// directory of its own and waits until its control socket answers.
func Start(t *testing.T, args ...string) *Supervisor {
	t.Helper()
	rt := t.TempDir()
	cmd := exec.Command(testbin.Grmwrap(t), append([]string{"--runtime-dir", rt}, args...)...)
	s := &Supervisor{Server: testbin.Start(t, cmd), RuntimeDir: rt}
	sock := rt + "/" + strconv.Itoa(cmd.Process.Pid) + ".sock"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) || s.Exited() {
			t.Fatalf("grmwrap did not come up; stderr:\n%s", s.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// PID is the supervisor's pid.
func (s *Supervisor) PID() int { return s.Cmd.Process.Pid }

// Upgrade runs `grmwrap upgrade PID [extra...]` and returns its exit code
// and output.
func (s *Supervisor) Upgrade(t *testing.T, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"upgrade", "--runtime-dir", s.RuntimeDir, strconv.Itoa(s.PID())}, extra...)
	out, err := exec.Command(testbin.Grmwrap(t), args...).CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("grmwrap upgrade: %v", err)
		}
		code = ee.ExitCode()
	}
	return code, strings.TrimSpace(string(out))
}

// MustUpgrade upgrades and fails the test unless the new generation works.
func (s *Supervisor) MustUpgrade(t *testing.T, extra ...string) {
	t.Helper()
	if code, out := s.Upgrade(t, extra...); code != 0 {
		t.Fatalf("upgrade exited %d: %s\ngrmwrap log:\n%s", code, out, s.Stderr())
	}
}

// Status is the part of `grmwrap status --json` the tests read.
type Status struct {
	PID               int `json:"pid"`
	WorkingGeneration int `json:"working_generation"`
	Generations       []struct {
		Generation int    `json:"generation"`
		PID        int    `json:"pid"`
		State      string `json:"state"`
		Sockets    int    `json:"sockets"`
		Flows      int    `json:"flows"`
	} `json:"generations"`
	Groups []struct {
		Address string         `json:"address"`
		Sockets map[string]int `json:"sockets"`
	} `json:"groups"`
	Counters map[string]uint64 `json:"counters"`
}

// Status reads `grmwrap status PID --json`.
func (s *Supervisor) Status(t *testing.T) Status {
	t.Helper()
	out, err := exec.Command(testbin.Grmwrap(t), "status", "--runtime-dir", s.RuntimeDir, "--json", strconv.Itoa(s.PID())).Output()
	if err != nil {
		t.Fatalf("grmwrap status: %v", err)
	}
	var st Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

// WaitSockets waits until the working generation has at least n sockets in
// steering (the server has bound its managed addresses).
func (s *Supervisor) WaitSockets(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st := s.Status(t)
		for _, g := range st.Generations {
			if g.Generation == st.WorkingGeneration && g.Sockets >= n {
				return
			}
		}
		if s.Exited() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("working generation never had %d sockets; stderr:\n%s", n, s.Stderr())
}

// WaitDrained waits until only the working generation is alive.
func (s *Supervisor) WaitDrained(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		live := 0
		for _, g := range s.Status(t).Generations {
			if g.State != "exited" && g.State != "failed" {
				live++
			}
		}
		if live == 1 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("old generations still alive after %v:\n%+v", timeout, s.Status(t))
}
