package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grmwrap/grmwrap/generations"
)

// The control protocol: one JSON request per connection, one JSON answer.

type request struct {
	Op      string   `json:"op"`                // "upgrade" or "status"
	Argv    []string `json:"argv,omitempty"`    // upgrade: a new command line
	Timeout string   `json:"timeout,omitempty"` // upgrade: readiness deadline (Go duration)
}

type response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Refused is set when the upgrade did not start at all (another one
	// runs, or the service is stopping): nothing was rolled back.
	Refused    bool    `json:"refused,omitempty"`
	Generation uint32  `json:"generation,omitempty"`
	Status     *Status `json:"status,omitempty"`
}

// Status is the stable output of `grmwrap status --json`.
type Status struct {
	PID               int                            `json:"pid"`
	WorkingGeneration uint32                         `json:"working_generation"`
	Generations       []generations.GenerationStatus `json:"generations"`
	Groups            []GroupStatus                  `json:"groups"`
	Counters          map[string]uint64              `json:"counters"`
}

// GroupStatus is one managed address.
type GroupStatus struct {
	Address   string `json:"address"`
	Dissector string `json:"dissector"`
	// Sockets counts sockets per generation ("1": 2, "2": 2).
	Sockets map[string]int `json:"sockets"`
}

// Limits of the control socket. Variables so that tests may lower them.
var (
	// ctlRequestLimit bounds one request; a larger one is answered with
	// an error and the connection closed.
	ctlRequestLimit = 64 << 10
	// ctlReadTimeout bounds the wait for a whole request after accept.
	ctlReadTimeout = 10 * time.Second
	// ctlWriteTimeout bounds writing an answer.
	ctlWriteTimeout = 10 * time.Second
	// ctlMaxConns bounds the connections handled at once; more are
	// answered "busy" and closed at once.
	ctlMaxConns = 32
	// ctlAcceptLogEvery rate-limits the log line of failing accepts.
	ctlAcceptLogEvery = 10 * time.Second
)

// errTooLarge: a request over ctlRequestLimit.
var errTooLarge = errors.New("request too large")

// limitReader reads at most n bytes and then fails with errTooLarge.
type limitReader struct {
	r io.Reader
	n int
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errTooLarge
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// controlServer answers upgrade and status requests on
// <runtime-dir>/<pid>.sock (mode 0600: root only).
type controlServer struct {
	ln   net.Listener
	path string
	log  *slog.Logger
	mgr  *generations.Manager
	dp   *dataPlane
	hd   interface{ Counters() map[string]uint64 }
	obs  observer

	slots chan struct{} // one per connection being handled
	done  chan struct{} // closed by Close
}

func controlPath(runtimeDir string, pid int) string {
	return filepath.Join(runtimeDir, strconv.Itoa(pid)+".sock")
}

func listenControl(runtimeDir string, log *slog.Logger, mgr *generations.Manager, dp *dataPlane, hd interface{ Counters() map[string]uint64 }, obs observer) (*controlServer, error) {
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return nil, fmt.Errorf("runtime directory: %w", err)
	}
	path := controlPath(runtimeDir, os.Getpid())
	_ = os.Remove(path) // a stale socket of a dead process with our pid
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// Connecting needs write permission: 0600 keeps it to root.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket mode: %w", err)
	}
	c := &controlServer{ln: ln, path: path, log: log, mgr: mgr, dp: dp, hd: hd, obs: obs,
		slots: make(chan struct{}, ctlMaxConns), done: make(chan struct{})}
	go c.serve()
	return c, nil
}

func (c *controlServer) Close() error {
	close(c.done)
	err := c.ln.Close()
	_ = os.Remove(c.path) // gone already is fine
	return err
}

// serve accepts until Close. An accept error (EMFILE when the supervisor
// is out of fds) is logged, rate-limited, and retried after a backoff of
// 5ms doubling to 1s: the control socket never dies while the service runs.
func (c *controlServer) serve() {
	var backoff time.Duration
	var lastLog time.Time
	failed := 0 // accept errors since the last log line
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			failed++
			if now := time.Now(); now.Sub(lastLog) >= ctlAcceptLogEvery {
				c.log.Warn("control socket: accept failed, retrying", "err", err, "failures", failed, "backoff", backoff)
				lastLog, failed = now, 0
			}
			select {
			case <-c.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		if backoff > 0 {
			c.log.Info("control socket: accepting again")
			backoff = 0
		}
		select {
		case c.slots <- struct{}{}:
			go func() {
				defer func() { <-c.slots }()
				c.handle(conn)
			}()
		default:
			// Full: answer at once (bounded by the write deadline) and
			// close, so idle connections cannot use up the fds.
			c.reply(conn, response{Error: fmt.Sprintf("busy: %d control connections open, try again", ctlMaxConns), Refused: true})
			conn.Close()
		}
	}
}

func (c *controlServer) handle(conn net.Conn) {
	defer conn.Close()
	var req request
	// Errors of SetDeadline on a fresh connection are ignored: the read
	// that follows reports a broken connection.
	_ = conn.SetReadDeadline(time.Now().Add(ctlReadTimeout))
	if err := json.NewDecoder(&limitReader{r: conn, n: ctlRequestLimit}).Decode(&req); err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, errTooLarge):
			c.log.Warn("control socket: request too large", "limit", ctlRequestLimit)
			c.reply(conn, response{Error: fmt.Sprintf("request too large (limit %d KiB)", ctlRequestLimit>>10)})
		case errors.As(err, &ne) && ne.Timeout():
			c.log.Debug("control socket: no request in time", "timeout", ctlReadTimeout)
			c.reply(conn, response{Error: fmt.Sprintf("no request within %v", ctlReadTimeout)})
		default:
			c.reply(conn, response{Error: "bad request: " + err.Error()})
		}
		return
	}
	_ = conn.SetReadDeadline(time.Time{}) // the answer may take the whole upgrade; see reply
	switch req.Op {
	case "status":
		st := c.status()
		c.reply(conn, response{OK: true, Status: &st})
	case "upgrade":
		var timeout time.Duration
		if req.Timeout != "" {
			d, err := time.ParseDuration(req.Timeout)
			if err != nil {
				c.reply(conn, response{Error: "bad timeout: " + err.Error()})
				return
			}
			timeout = d
		}
		c.log.Info("upgrade requested", "argv", req.Argv, "timeout", timeout)
		c.obs.upgradeStarted()
		start := time.Now()
		gen, err := c.mgr.Upgrade(context.Background(), req.Argv, timeout)
		c.obs.upgradeDone(gen, err, time.Since(start))
		if err != nil {
			refused := errors.Is(err, generations.ErrUpgradeInProgress) || errors.Is(err, generations.ErrNotRunning)
			c.reply(conn, response{Error: err.Error(), Refused: refused})
			return
		}
		c.reply(conn, response{OK: true, Generation: gen})
	default:
		c.reply(conn, response{Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

func (c *controlServer) reply(conn net.Conn, r response) {
	// An error here shows in the Encode below.
	_ = conn.SetWriteDeadline(time.Now().Add(ctlWriteTimeout))
	if err := json.NewEncoder(conn).Encode(r); err != nil {
		c.log.Debug("control reply", "err", err)
	}
}

func (c *controlServer) status() Status {
	working, gens := c.mgr.Status()
	st := Status{
		PID:               os.Getpid(),
		WorkingGeneration: working,
		Generations:       gens,
		Groups:            []GroupStatus{},
		Counters:          make(map[string]uint64),
	}
	if st.Generations == nil {
		st.Generations = []generations.GenerationStatus{}
	}
	for _, g := range c.dp.Groups() {
		gs := GroupStatus{Address: g.Key.String(), Dissector: c.dp.cfg.dissector.String(), Sockets: make(map[string]int)}
		for gen, n := range g.Sockets {
			gs.Sockets[strconv.Itoa(int(gen))] = n
		}
		st.Groups = append(st.Groups, gs)
		if counters, err := c.dp.bpf.Counters(g.ID); err == nil {
			for k, v := range counters {
				st.Counters[k] += v
			}
		}
	}
	for k, v := range c.hd.Counters() {
		st.Counters["trapped_"+k] = v
	}
	return st
}

// findSupervisor returns the control socket for pid: the supervisor's own,
// or that of the supervisor of the instance pid (its nearest ancestor that
// has one). PID 1 counts: grmwrap may be a container's init.
func findSupervisor(runtimeDir string, pid int) (string, error) {
	for p := pid; p > 0; {
		path := controlPath(runtimeDir, p)
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return "", fmt.Errorf("process %d: no such process", pid)
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 {
			return "", fmt.Errorf("process %d: unreadable stat", p)
		}
		p, _ = strconv.Atoi(fields[1])
	}
	return "", fmt.Errorf("process %d is neither a grmwrap supervisor nor one of its instances (no control socket in %s)", pid, runtimeDir)
}

// errNoAnswer: the supervisor did not answer within the client's wait.
var errNoAnswer = errors.New("no answer")

// call sends req to the control socket at path and decodes the answer,
// waiting at most timeout in all; running out of time is errNoAnswer.
func call(path string, req request, timeout time.Duration) (response, error) {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout("unix", path, min(timeout, 5*time.Second))
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return response{}, fmt.Errorf("connect to %s: %w", path, errNoAnswer)
		}
		return response{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return response{}, fmt.Errorf("connection deadline: %w", err)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = errNoAnswer
		}
		return response{}, fmt.Errorf("send request: %w", err)
	}
	var resp response
	if err := json.NewDecoder(&limitReader{r: conn, n: maxAnswer}).Decode(&resp); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = errNoAnswer
		}
		return response{}, fmt.Errorf("read answer: %w", err)
	}
	return resp, nil
}

// maxAnswer bounds an answer the client reads (a status of many groups
// and generations stays far below).
const maxAnswer = 16 << 20

// pidOfControl returns the pid in a control socket's name.
func pidOfControl(path string) int {
	pid, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".sock")) // 0 for an odd name: only printed
	return pid
}

// sortedSupervisors lists the pids with a control socket in runtimeDir.
func sortedSupervisors(runtimeDir string) ([]int, error) {
	ents, err := os.ReadDir(runtimeDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".sock"); ok {
			if pid, err := strconv.Atoi(n); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return pids, nil
}
