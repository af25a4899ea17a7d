package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
)

// Prometheus metrics, served on --metrics-listen at /metrics.
//
// The data plane's counters are one family each,
// grmwrap_dataplane_<counter>_total{group}, not one family with a counter
// label: they overlap (rx_processed counts every packet that rx_flow_ok and
// rx_new_flow count again), so a sum over such a label would mean nothing.
// group is the managed address as `status` names it ("udp4 0.0.0.0:53
// netns:4026531840").
//
// The supervisor's events (observer) and the trapped syscalls (the
// notify.Handler's Observe hook) are counted as they happen; the data
// plane's counters, flows and generations are read at scrape time.

// The states a generation can be in, all of them always reported.
var generationStates = []generations.State{
	generations.StateStarting, generations.StateWorking, generations.StateDraining,
	generations.StateStopping, generations.StateExited, generations.StateFailed,
}

// upgradeResults are the values upgradeResult returns.
var upgradeResults = []string{"ok", "rolled_back", "refused_in_progress", "refused_not_running"}

// dataplaneHelp explains the data plane's counters (bpf/grmwrap.h).
var dataplaneHelp = map[string]string{
	"rx_processed":                           "Datagrams the steering program ran for.",
	"rx_internal_state_error":                "Datagrams of a group whose state was never written (sent to the kernel's choice).",
	"rx_packet_too_short_error":              "Datagrams whose headers could not be read.",
	"rx_dissected_ok":                        "Datagrams whose flow key was built.",
	"rx_flow_ok":                             "Datagrams of an existing flow, sent to its socket.",
	"rx_flow_socket_gone":                    "Datagrams of an existing flow whose socket is gone (new-flow path).",
	"rx_flow_wrong_group":                    "Datagrams of an existing flow whose socket is in another group (new-flow path).",
	"rx_flow_new_unseen":                     "Datagrams with no flow entry.",
	"rx_flow_new_had_expired":                "Datagrams whose flow entry was older than the flow timeout.",
	"rx_new_flow":                            "Datagrams taking the new-flow path.",
	"rx_new_flow_working_gen_dispatch_ok":    "New-flow datagrams sent to a socket of the working generation.",
	"rx_new_flow_working_gen_dispatch_error": "New-flow datagrams whose working-generation slot was empty or whose socket was gone.",
	"rx_no_working_socket":                   "Datagrams arriving while the working generation had no socket.",
	"rx_flow_create_error":                   "New flows not recorded: the flow table entries they could take were being written by another CPU.",
	"rx_flow_evicted":                        "New flows that took the entry of a live flow (both of its sets in the flow table were full).",
	"rx_noop":                                "Datagrams of groups with the noop dissector.",
	"rx_fallback_kernel":                     "Datagrams for which nothing was selected: the kernel's reuseport hash decided.",
}

// Buckets of grmwrap_trap_handling_seconds: from a setsockopt answered in
// microseconds to a bind on behalf (hundreds of them), and a tail.
var trapBuckets = []float64{
	5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 100e-3, 1,
}

// Buckets of grmwrap_upgrade_duration_seconds: from a server that binds at
// once to one that takes the whole default readiness timeout.
var upgradeBuckets = []float64{
	0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
}

// metrics is the supervisor's Prometheus registry: an observer of its
// events, the trapped-syscall hook, and a collector that reads the data
// plane and the generations at scrape time.
type metrics struct {
	reg *prometheus.Registry
	mgr *generations.Manager
	dp  *dataPlane

	isReady         prometheus.Gauge
	upgrading       prometheus.Gauge
	upgrades        *prometheus.CounterVec
	upgradeDuration *prometheus.HistogramVec
	trapped         *prometheus.CounterVec
	trapSeconds     *prometheus.HistogramVec

	// Read at scrape time.
	dataplane   map[string]*prometheus.Desc // by bpf counter name
	flows       *prometheus.Desc
	sockets     *prometheus.Desc
	generations *prometheus.Desc
	working     *prometheus.Desc
	stalled     *prometheus.Desc
}

var _ observer = (*metrics)(nil)
var _ prometheus.Collector = (*metrics)(nil)

func newMetrics(mgr *generations.Manager, dp *dataPlane) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		mgr: mgr,
		dp:  dp,
		isReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grmwrap_ready",
			Help: "1 once generation 1 passed its readiness check, 0 before and while stopping.",
		}),
		upgrading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grmwrap_upgrades_in_progress",
			Help: "Upgrade requests being handled.",
		}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grmwrap_upgrades_total",
			Help: "Upgrade requests by result: ok, rolled_back, refused_in_progress, refused_not_running.",
		}, []string{"result"}),
		upgradeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grmwrap_upgrade_duration_seconds",
			Help:    "Time from an upgrade request to the new generation confirmed working (ok: after the settle window and the confirmation) or rolled back (rolled_back); refused requests are not observed.",
			Buckets: upgradeBuckets,
		}, []string{"result"}),
		trapped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grmwrap_trapped_syscalls_total",
			Help: "Trapped syscalls of the instances by syscall (bind, setsockopt) and result (managed, repeated, continued, refused, kept, stale).",
		}, []string{"syscall", "result"}),
		trapSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grmwrap_trap_handling_seconds",
			Help:    "Time the supervisor took to answer a trapped syscall, by syscall.",
			Buckets: trapBuckets,
		}, []string{"syscall"}),
		dataplane: make(map[string]*prometheus.Desc),
		flows: prometheus.NewDesc("grmwrap_flows",
			"Flows seen within the flow timeout, by live generation.", []string{"generation"}, nil),
		sockets: prometheus.NewDesc("grmwrap_sockets",
			"Managed sockets in steering, by live generation.", []string{"generation"}, nil),
		generations: prometheus.NewDesc("grmwrap_generations",
			"Generations by state (ended ones as far as status remembers them).", []string{"state"}, nil),
		working: prometheus.NewDesc("grmwrap_working_generation",
			"The generation that receives new flows (0: none yet).", nil, nil),
		stalled: prometheus.NewDesc("grmwrap_generation_stalled",
			"1 while a live generation does not take datagrams off its sockets (queues not shrinking while a process of it is stopped), by generation.", []string{"generation"}, nil),
	}
	for _, name := range bpf.CounterNames() {
		base := strings.TrimSuffix(name, "_total")
		help, ok := dataplaneHelp[base]
		if !ok {
			help = "Data plane counter " + name + "."
		}
		m.dataplane[name] = prometheus.NewDesc("grmwrap_dataplane_"+base+"_total",
			help+" Per managed address (group).", []string{"group"}, nil)
	}
	// Every known series exists from the start, at 0: a rate over a
	// series that appears only with its first event misses that event.
	for _, r := range upgradeResults {
		m.upgrades.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "rolled_back"} {
		m.upgradeDuration.WithLabelValues(r)
	}
	for _, s := range []string{"bind", "setsockopt"} {
		m.trapSeconds.WithLabelValues(s)
	}
	m.reg.MustRegister(
		m, m.isReady, m.upgrading, m.upgrades, m.upgradeDuration, m.trapped, m.trapSeconds,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// observe is the notify.Handler's Observe hook: one answered notification.
func (m *metrics) observe(syscall, result string, took time.Duration) {
	m.trapped.WithLabelValues(syscall, result).Inc()
	m.trapSeconds.WithLabelValues(syscall).Observe(took.Seconds())
}

func (m *metrics) ready(err error) {
	if err == nil {
		m.isReady.Set(1)
	}
}

func (m *metrics) upgradeStarted() { m.upgrading.Inc() }

func (m *metrics) upgradeDone(_ uint32, err error, took time.Duration) {
	m.upgrading.Dec()
	result := upgradeResult(err)
	m.upgrades.WithLabelValues(result).Inc()
	if result == "ok" || result == "rolled_back" {
		m.upgradeDuration.WithLabelValues(result).Observe(took.Seconds())
	}
}

func (m *metrics) stopping() { m.isReady.Set(0) }

// Describe is the scrape-time half of the collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.dataplane {
		ch <- d
	}
	ch <- m.flows
	ch <- m.sockets
	ch <- m.generations
	ch <- m.working
	ch <- m.stalled
}

// Collect reads the data plane's counters of every group, and the
// generations.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, g := range m.dp.Groups() {
		group := g.Key.String()
		counters, err := m.dp.bpf.Counters(g.ID)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(m.dataplane["rx_processed_total"], fmt.Errorf("group %s: %w", group, err))
			continue
		}
		for name, d := range m.dataplane {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(counters[name]), group)
		}
	}
	working, gens := m.mgr.Status()
	ch <- prometheus.MustNewConstMetric(m.working, prometheus.GaugeValue, float64(working))
	byState := make(map[generations.State]int, len(generationStates))
	for _, g := range gens {
		byState[g.State]++
		if g.State == generations.StateExited || g.State == generations.StateFailed {
			continue // no sockets and no flows any more
		}
		gen := strconv.FormatUint(uint64(g.Generation), 10)
		ch <- prometheus.MustNewConstMetric(m.flows, prometheus.GaugeValue, float64(g.Flows), gen)
		ch <- prometheus.MustNewConstMetric(m.sockets, prometheus.GaugeValue, float64(g.Sockets), gen)
		stalled := 0.0
		if g.Stalled {
			stalled = 1
		}
		ch <- prometheus.MustNewConstMetric(m.stalled, prometheus.GaugeValue, stalled, gen)
	}
	for _, s := range generationStates {
		ch <- prometheus.MustNewConstMetric(m.generations, prometheus.GaugeValue, float64(byState[s]), string(s))
	}
}

// promLog passes promhttp's errors (a group whose counters could not be
// read) to the log.
type promLog struct{ log *slog.Logger }

func (l promLog) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// serve listens on addr and serves /metrics in the background until the
// returned stop is called. Failing to listen is the error.
func (m *metrics) serve(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      promLog{log},
		ErrorHandling: promhttp.ContinueOnError,
		// A scrape walks the flow table: do not let many run at once.
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving metrics", "address", ln.Addr().String(), "path", "/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}
