package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/grmwrap/grmwrap/internal/nstest"
	"github.com/grmwrap/grmwrap/internal/testbin"
)

// scrape is one parsed answer of /metrics, by family name.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics fetches url and parses it as the Prometheus text format.
func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	c := http.Client{Timeout: wait}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape: content type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return fams
}

// series returns the samples of family name whose labels include labels
// (name, value pairs).
func (s scrape) series(name string, labels ...string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range s[name].GetMetric() {
		have := make(map[string]string)
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// value is the value of the one sample of family name with labels: a
// counter's or gauge's value, a histogram's sample count.
func (s scrape) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	ms := s.series(name, labels...)
	if len(ms) != 1 {
		t.Fatalf("%s%v: %d samples, want 1; the family: %v", name, labels, len(ms), s[name])
	}
	m := ms[0]
	switch s[name].GetType() {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("%s: unexpected type %v", name, s[name].GetType())
	return 0
}

// sum adds the counter values of family name with labels.
func (s scrape) sum(name string, labels ...string) float64 {
	var n float64
	for _, m := range s.series(name, labels...) {
		n += m.GetCounter().GetValue()
	}
	return n
}

// label is the value of label key of every sample of family name.
func (s scrape) label(name, key string) []string {
	var out []string
	for _, m := range s[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == key {
				out = append(out, l.GetValue())
			}
		}
	}
	sort.Strings(out)
	return out
}

// freeTCPPort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestMetrics runs grmwrap with --metrics-listen and scrapes /metrics: the
// families exist; the data plane's counter of the group moves by exactly
// the datagrams sent; an upgrade is counted and timed; generations by state
// and flows per generation follow the upgrade and the old generation's
// drain.
func TestMetrics(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	port := testbin.FreeUDPPort(t)
	listen := addr(freeTCPPort(t))
	url := "http://" + listen + "/metrics"
	rt := t.TempDir()
	// A short flow timeout lets the old generation drain within the test.
	g := grmwrap(t, "--metrics-listen", listen, "--runtime-dir", rt, "--flow-timeout", "4s", "--", testbin.EchoC(t), strconv.Itoa(port))
	r1 := g.Ready(t, wait)
	waitStderr(t, g, "generation 1 ready")

	s := scrapeMetrics(t, url)
	for _, name := range []string{
		"grmwrap_dataplane_rx_processed_total", "grmwrap_dataplane_rx_flow_ok_total",
		"grmwrap_dataplane_rx_new_flow_total", "grmwrap_dataplane_rx_fallback_kernel_total",
		"grmwrap_flows", "grmwrap_sockets", "grmwrap_generations", "grmwrap_working_generation",
		"grmwrap_ready", "grmwrap_upgrades_in_progress", "grmwrap_upgrades_total",
		"grmwrap_upgrade_duration_seconds", "grmwrap_trapped_syscalls_total",
		"grmwrap_trap_handling_seconds", "go_goroutines", "process_open_fds",
	} {
		if s[name] == nil {
			t.Errorf("no family %s", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if n := s.value(t, "grmwrap_trapped_syscalls_total", "syscall", "bind", "result", "managed"); n < 1 {
		t.Errorf("trapped bind/managed = %v, want at least 1", n)
	}
	if n := s.value(t, "grmwrap_ready"); n != 1 {
		t.Errorf("grmwrap_ready = %v, want 1", n)
	}
	if n := s.value(t, "grmwrap_working_generation"); n != 1 {
		t.Errorf("working generation = %v, want 1", n)
	}
	for _, r := range []string{"ok", "rolled_back", "refused_in_progress", "refused_not_running"} {
		if n := s.value(t, "grmwrap_upgrades_total", "result", r); n != 0 {
			t.Errorf("upgrades %s = %v before any upgrade", r, n)
		}
	}
	groups := s.label("grmwrap_dataplane_rx_processed_total", "group")
	if len(groups) != 1 || !strings.Contains(groups[0], fmt.Sprintf(" 0.0.0.0:%d netns:", port)) {
		t.Fatalf("groups %q, want the one of 0.0.0.0:%d", groups, port)
	}
	group := groups[0]
	processed := func(s scrape) float64 {
		return s.value(t, "grmwrap_dataplane_rx_processed_total", "group", group)
	}
	base := processed(s)

	// N datagrams on one flow, each answered by generation 1.
	const n = 50
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	old := openFlows(t, server, 1)[0]
	pid1 := strconv.Itoa(r1.PID)
	for i := range n {
		if got := old.ask(t, "ping"); got != pid1 {
			t.Fatalf("datagram %d answered by %s, want generation 1 (%s)", i, got, pid1)
		}
	}
	s = scrapeMetrics(t, url)
	if got := processed(s) - base; got != n {
		t.Fatalf("rx_processed moved by %v after %d datagrams", got, n)
	}
	if got := s.value(t, "grmwrap_flows", "generation", "1"); got != 1 {
		t.Errorf("flows of generation 1 = %v, want 1", got)
	}
	if got := s.value(t, "grmwrap_sockets", "generation", "1"); got != 1 {
		t.Errorf("sockets of generation 1 = %v, want 1", got)
	}

	// An upgrade: counted, timed; generation 1 drains with its flow.
	code, stderr := runOnce(t, exec.Command(testbin.Grmwrap(t), "upgrade", "--runtime-dir", rt, strconv.Itoa(g.Cmd.Process.Pid)))
	if code != 0 {
		t.Fatalf("upgrade exited %d: %s", code, stderr)
	}
	pid2 := strconv.Itoa(g.Ready(t, wait).PID)
	if got := old.ask(t, "still"); got != pid1 {
		t.Fatalf("old flow answered by %s after the upgrade, want generation 1 (%s)", got, pid1)
	}
	if got := openFlows(t, server, 1)[0].ask(t, "new"); got != pid2 {
		t.Fatalf("new flow answered by %s, want generation 2 (%s)", got, pid2)
	}
	s = scrapeMetrics(t, url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"grmwrap_upgrades_total", []string{"result", "ok"}, 1},
		{"grmwrap_upgrades_total", []string{"result", "rolled_back"}, 0},
		{"grmwrap_upgrade_duration_seconds", []string{"result", "ok"}, 1},
		{"grmwrap_upgrade_duration_seconds", []string{"result", "rolled_back"}, 0},
		{"grmwrap_upgrades_in_progress", nil, 0},
		{"grmwrap_working_generation", nil, 2},
		{"grmwrap_generations", []string{"state", "working"}, 1},
		{"grmwrap_generations", []string{"state", "draining"}, 1},
		{"grmwrap_generations", []string{"state", "starting"}, 0},
		{"grmwrap_generations", []string{"state", "failed"}, 0},
		{"grmwrap_flows", []string{"generation", "1"}, 1},
		{"grmwrap_flows", []string{"generation", "2"}, 1},
		{"grmwrap_sockets", []string{"generation", "2"}, 1},
		{"grmwrap_trapped_syscalls_total", []string{"syscall", "bind", "result", "managed"}, 2},
	} {
		if got := s.value(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := processed(s) - base; got != n+2 {
		t.Errorf("rx_processed moved by %v after %d datagrams", got, n+2)
	}
	// The handling time of every trapped bind is observed.
	if h, c := s.value(t, "grmwrap_trap_handling_seconds", "syscall", "bind"), s.sum("grmwrap_trapped_syscalls_total", "syscall", "bind"); h != c {
		t.Errorf("trap handling histogram counts %v binds, the counter %v", h, c)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The old flow goes idle: generation 1 drains, stops and is gone from
	// the per-generation series.
	deadline := time.Now().Add(30 * time.Second)
	for {
		s = scrapeMetrics(t, url)
		if s.value(t, "grmwrap_generations", "state", "exited") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation 1 never exited: %v", s["grmwrap_generations"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, st := range []string{"draining", "stopping", "starting", "failed"} {
		if got := s.value(t, "grmwrap_generations", "state", st); got != 0 {
			t.Errorf("generations %s = %v after the drain, want 0", st, got)
		}
	}
	if got := s.value(t, "grmwrap_generations", "state", "working"); got != 1 {
		t.Errorf("working generations = %v, want 1", got)
	}
	for _, name := range []string{"grmwrap_flows", "grmwrap_sockets"} {
		if gens := s.label(name, "generation"); len(gens) != 1 || gens[0] != "2" {
			t.Errorf("%s for generations %q after the drain, want only 2", name, gens)
		}
	}
}

// TestMetricsListenRefused: an address grmwrap cannot listen on is a
// startup error: exit 2, one line, the command never runs.
func TestMetricsListenRefused(t *testing.T) {
	if !nstest.Enter(t) {
		return
	}
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tc := range []struct {
		name, addr, want string
	}{
		{"not an address", "nowhere:xx", `metrics listen "nowhere:xx"`},
		{"in use", held.Addr().String(), "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "ran")
			rt := t.TempDir()
			code, stderr := runOnce(t, exec.Command(testbin.Grmwrap(t), "--metrics-listen", tc.addr,
				"--runtime-dir", rt, "--", "sh", "-c", "touch "+marker))
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			oneLine(t, stderr, tc.want)
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran")
			}
			if socks, _ := filepath.Glob(filepath.Join(rt, "*.sock")); len(socks) != 0 {
				t.Fatalf("control sockets left: %v", socks)
			}
		})
	}
}
