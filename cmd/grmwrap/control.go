package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	c := &controlServer{ln: ln, path: path, log: log, mgr: mgr, dp: dp, hd: hd, obs: obs}
	go c.serve()
	return c, nil
}

func (c *controlServer) Close() error {
	err := c.ln.Close()
	_ = os.Remove(c.path) // gone already is fine
	return err
}

func (c *controlServer) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return // closed
		}
		go c.handle(conn)
	}
}

func (c *controlServer) handle(conn net.Conn) {
	defer conn.Close()
	var req request
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
		c.reply(conn, response{Error: "bad request: " + err.Error()})
		return
	}
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

// call sends req to the control socket at path and decodes the answer,
// waiting at most timeout.
func call(path string, req request, timeout time.Duration) (response, error) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return response{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return response{}, err
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return response{}, fmt.Errorf("send request: %w", err)
	}
	var resp response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("read answer: %w", err)
	}
	return resp, nil
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
