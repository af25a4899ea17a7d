package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// TestJSONLogs: with --log-format json every line grmwrap writes is one JSON
// object, and an upgrade and its drain leave one line per step, in order;
// nothing is logged per datagram.
func TestJSONLogs(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	rt := t.TempDir()
	g := grmwrap(t, "--log-format", "json", "--runtime-dir", rt, "--flow-timeout", "1s", "--",
		testbin.EchoC(t), strconv.Itoa(port))
	g.Ready(t, wait)
	for i := range 200 {
		testbin.Echo(t, addr(port), strconv.Itoa(i), wait)
	}
	if out, err := exec.Command(testbin.Grmwrap(t), "upgrade", "--runtime-dir", rt, strconv.Itoa(g.Cmd.Process.Pid)).CombinedOutput(); err != nil {
		t.Fatalf("upgrade: %v: %s", err, out)
	}
	waitStderr(t, g, "quiesce done")
	waitStderr(t, g, `"generation exited"`)
	// The steering maps are pinned while grmwrap runs, and unpinned by a
	// clean stop (a flow table holds kernel memory while pinned).
	if pins, err := os.ReadDir("/sys/fs/bpf/grmwrap"); err != nil || len(pins) != 1 {
		t.Fatalf("pinned state while running: %v, %v; want one directory", pins, err)
	}
	if err := g.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g.Wait(t, wait)
	if pins, _ := os.ReadDir("/sys/fs/bpf/grmwrap"); len(pins) != 0 {
		t.Fatalf("pinned state left after a clean stop: %v", pins)
	}

	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(g.Stderr()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q: %v", line, err)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("log line without %q: %q", k, line)
			}
		}
		msgs = append(msgs, rec["msg"].(string))
	}
	// The steps of the upgrade and the drain, in this order.
	want := []string{
		"upgrade requested",
		"upgrade: starting generation",
		"instance started",
		"managed bind",
		"upgrade: generation working",
		"upgrade: generation confirmed working",
		"drain: no live flows left",
		"socket left steering",
		"quiesce done: stopping generation",
		"generation exited",
	}
	i := 0
	for _, m := range msgs {
		if i < len(want) && m == want[i] {
			i++
		}
	}
	if i != len(want) {
		t.Fatalf("upgrade steps logged %v; missing %q onward, in order %v", msgs, want[i], want)
	}
	// 200 datagrams and their flows left no line of their own.
	if len(msgs) > 30 {
		t.Fatalf("%d log lines for one upgrade of an idle-flow server: something logs per packet:\n%v", len(msgs), msgs)
	}
}
