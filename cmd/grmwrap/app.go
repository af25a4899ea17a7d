package main

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grmwrap/grmwrap/bpf"
	"github.com/grmwrap/grmwrap/generations"
)

const usageLine = "grmwrap [OPTIONS] -- COMMAND [ARG...]"

// splitCommand separates grmwrap's own arguments from the server's command
// line at the first "--": the CLI library never sees the server's words, so
// a server argument can never be taken for a grmwrap flag or command.
func splitCommand(args []string) (own, command []string, dashes bool) {
	i := slices.Index(args, "--")
	if i < 0 {
		return args, nil, false
	}
	return args[:i], args[i+1:], true
}

// runFlags are the options of running a server (the default command and
// `grmwrap run`).
func runFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Usage: "UDP address to manage, repeatable: HOST:PORT, :PORT, [::]:PORT (default: every UDP bind to a non-zero port)"},
		&cli.StringFlag{Name: "user", Usage: "run instances as `USER[:GROUP]`"},
		&cli.BoolFlag{Name: "tcp-reuseport", Usage: "give TCP binds to managed addresses SO_REUSEPORT, so that a new generation can bind the TCP port the old one listens on (servers like dnsmasq listen on both); TCP is not steered"},
		&cli.BoolFlag{Name: "allow-io-uring", Usage: "let the server use io_uring (refused with EPERM by default, as in containers): its ring can then set socket options and bind without a system call the filter sees, so it can bypass the trapped setsockopt and bind and detach the steering program; for servers whose io_uring speed matters more than that guarantee"},
		&cli.StringFlag{Name: "dissector", Value: "flow", Usage: "what a flow is: flow (4-tuple table) or noop (none: every packet to the working generation)"},
		&cli.DurationFlag{Name: "flow-timeout", Value: 125 * time.Second, Usage: "idle time after which a flow is over"},
		&cli.UintFlag{Name: "max-flows", Value: 65536, Usage: "live flows the flow table holds (it has twice as many 64-byte entries, a power of two)"},
		&cli.StringFlag{Name: "ready", Value: "bound", Usage: "when a new generation is ready: bound, notify, delay:DUR or exec:CMD"},
		&cli.DurationFlag{Name: "ready-timeout", Value: 60 * time.Second, Usage: "longest wait for a new generation to be ready"},
		&cli.DurationFlag{Name: "settle", Value: 500 * time.Millisecond, Usage: "time a ready new generation must stay alive and running before it gets new flows (0: off)"},
		&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Minute, Usage: "longest time an old generation keeps its flows"},
		&cli.StringFlag{Name: "stop-signal", Value: "SIGTERM", Usage: "signal that stops an old generation"},
		&cli.DurationFlag{Name: "kill-timeout", Value: 10 * time.Second, Usage: "time between the stop signal and SIGKILL"},
		&cli.StringFlag{Name: "name", Usage: "name of this service's pinned steering state (default: command name and a hash of the command line)"},
		&cli.StringFlag{Name: "runtime-dir", Value: "/run/grmwrap", Usage: "directory for locks and control sockets"},
		&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at /metrics on `ADDR` (HOST:PORT; off by default)"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
	}
}

// valueFlags are the flags of upgrade and status that take a value.
var valueFlags = map[string]bool{"--timeout": true, "-timeout": true, "--runtime-dir": true, "-runtime-dir": true}

// flagsFirst moves the flags of the upgrade and status commands before
// their PID: the CLI contract writes `upgrade PID [--timeout DUR]`, and the
// CLI library stops reading flags at the first argument.
func flagsFirst(own []string) []string {
	if len(own) < 3 || (own[1] != "upgrade" && own[1] != "status") {
		return own
	}
	var flags, args []string
	rest := own[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case strings.HasPrefix(a, "-") && len(a) > 1:
			flags = append(flags, a)
			if valueFlags[a] && i+1 < len(rest) {
				i++
				flags = append(flags, rest[i])
			}
		default:
			args = append(args, a)
		}
	}
	return append(append([]string{own[0], own[1]}, flags...), args...)
}

func newApp(args []string) (*cli.App, []string) {
	own, command, dashes := splitCommand(args)
	own = flagsFirst(own)
	runAction := func(c *cli.Context) error {
		if c.Args().Len() > 0 {
			if !dashes {
				return usageErr("missing -- before the command: %s", usageLine)
			}
			return usageErr("unexpected argument %q before --: %s", c.Args().First(), usageLine)
		}
		if !dashes || len(command) == 0 {
			return usageErr("missing command: %s", usageLine)
		}
		cfg, err := runConfigFrom(c, command)
		if err != nil {
			return exitError{code: 2, err: err}
		}
		survivePipes()
		return serve(c.Context, cfg)
	}
	app := &cli.App{
		Name:      "grmwrap",
		Usage:     "zero-downtime restarts for unmodified UDP servers",
		UsageText: usageLine + "\ngrmwrap upgrade PID [--timeout DUR] [-- COMMAND [ARG...]]\ngrmwrap status [PID] [--json]\ngrmwrap version",
		Flags:     runFlags(),
		Action:    runAction,
		Commands: []*cli.Command{
			{
				Name:      "run",
				Usage:     "run COMMAND under supervision (the default command)",
				UsageText: "grmwrap run [OPTIONS] -- COMMAND [ARG...]",
				Flags:     runFlags(),
				Action:    runAction,
			},
			{
				Name:      "upgrade",
				Usage:     "start a new generation of the server of PID and move new flows to it",
				UsageText: "grmwrap upgrade PID [--timeout DUR] [-- COMMAND [ARG...]]",
				Flags: []cli.Flag{
					&cli.DurationFlag{Name: "timeout", Usage: "longest wait for the new generation to be ready (default: the supervisor's --ready-timeout); the client waits this plus 30s for the answer, without --timeout at most 5m"},
					&cli.StringFlag{Name: "runtime-dir", Value: "/run/grmwrap", Usage: "where supervisors keep their control sockets"},
				},
				Action: func(c *cli.Context) error { return runUpgrade(c, command, dashes) },
			},
			{
				Name:      "status",
				Usage:     "show generations, groups and counters of one supervisor or all",
				UsageText: "grmwrap status [PID] [--json]",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "stable JSON output"},
					&cli.StringFlag{Name: "runtime-dir", Value: "/run/grmwrap", Usage: "where supervisors keep their control sockets"},
				},
				Action: runStatus,
			},
			{
				Name:   "version",
				Usage:  "print the versions of grmwrap, its libraries and the kernel",
				Action: func(c *cli.Context) error { return printVersion(c.App.Writer) },
			},
		},
		HideHelpCommand: true,
		HideVersion:     true,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageErr("%v", err)
		},
		// Errors come back to main, which prints one line and exits.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	// Hidden: the man page and the shell completion, for packaging.
	app.Commands = append(app.Commands, docCommands()...)
	return app, own
}

// runConfig is everything `grmwrap run` needs, validated.
type runConfig struct {
	command      []string
	listen       []string
	user         string
	dissector    generations.Dissector
	flowTimeout  time.Duration
	maxFlows     uint32
	name         string
	tcpReuseport bool
	allowIOUring bool // --allow-io-uring
	runtimeDir   string
	metricsAddr  string // --metrics-listen; "" is off
	ready        readySpec
	readyTimeout time.Duration
	settle       time.Duration
	drainTimeout time.Duration
	stopSignal   syscall.Signal
	killTimeout  time.Duration
	log          *slog.Logger
}

func runConfigFrom(c *cli.Context, command []string) (runConfig, error) {
	log, err := newLogger(c.String("log-format"), c.String("log-level"))
	if err != nil {
		return runConfig{}, err
	}
	dis, err := generations.ParseDissector(c.String("dissector"))
	if err != nil {
		return runConfig{}, err
	}
	if c.Duration("flow-timeout") < time.Second {
		return runConfig{}, fmt.Errorf("flow timeout %v: want at least 1s", c.Duration("flow-timeout"))
	}
	maxFlows := c.Uint("max-flows")
	if maxFlows < 1 || maxFlows > bpf.MaxFlowsLimit {
		return runConfig{}, fmt.Errorf("max flows %d: want 1 to %d", maxFlows, bpf.MaxFlowsLimit)
	}
	name := c.String("name")
	if strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return runConfig{}, fmt.Errorf("name %q: no slashes", name)
	}
	ready, err := parseReady(c.String("ready"))
	if err != nil {
		return runConfig{}, err
	}
	sig, err := parseSignal(c.String("stop-signal"))
	if err != nil {
		return runConfig{}, err
	}
	for _, f := range []string{"ready-timeout", "drain-timeout", "kill-timeout"} {
		if c.Duration(f) <= 0 {
			return runConfig{}, fmt.Errorf("%s %v: want a positive duration", f, c.Duration(f))
		}
	}
	if c.Duration("settle") < 0 {
		return runConfig{}, fmt.Errorf("settle %v: want zero (off) or a positive duration", c.Duration("settle"))
	}
	return runConfig{
		ready:        ready,
		readyTimeout: c.Duration("ready-timeout"),
		settle:       c.Duration("settle"),
		drainTimeout: c.Duration("drain-timeout"),
		stopSignal:   sig,
		killTimeout:  c.Duration("kill-timeout"),
		command:      command,
		listen:       c.StringSlice("listen"),
		user:         c.String("user"),
		dissector:    dis,
		flowTimeout:  c.Duration("flow-timeout"),
		maxFlows:     uint32(maxFlows),
		name:         name,
		runtimeDir:   c.String("runtime-dir"),
		metricsAddr:  c.String("metrics-listen"),
		tcpReuseport: c.Bool("tcp-reuseport"),
		allowIOUring: c.Bool("allow-io-uring"),
		log:          log,
	}, nil
}

// signalNames are the signals --stop-signal accepts by name.
var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "ALRM": syscall.SIGALRM,
	"WINCH": syscall.SIGWINCH, "PWR": syscall.SIGPWR, "CONT": syscall.SIGCONT,
}

// parseSignal reads a signal name (SIGTERM, TERM) or number.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	if sig, ok := signalNames[strings.TrimPrefix(strings.ToUpper(s), "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("stop signal %q: not a signal name or number", s)
}

// newLogger builds the one logger that is passed down everywhere.
func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	out := &logWriter{w: os.Stderr}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(out, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
