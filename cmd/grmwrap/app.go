package main

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

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
		&cli.StringFlag{Name: "dissector", Value: "flow", Usage: "what a flow is: flow (4-tuple table) or noop (none: every packet to the working generation)"},
		&cli.DurationFlag{Name: "flow-timeout", Value: 125 * time.Second, Usage: "idle time after which a flow is over"},
		&cli.UintFlag{Name: "max-flows", Value: 65536, Usage: "flow table size"},
		&cli.StringFlag{Name: "name", Usage: "name of this service's pinned steering state (default: command name and a hash of the command line)"},
		&cli.StringFlag{Name: "runtime-dir", Value: "/run/grmwrap", Usage: "directory for locks and control sockets"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
	}
}

func newApp(args []string) (*cli.App, []string) {
	own, command, dashes := splitCommand(args)
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
		return serve(c.Context, cfg)
	}
	app := &cli.App{
		Name:      "grmwrap",
		Usage:     "zero-downtime restarts for unmodified UDP servers",
		UsageText: usageLine + "\n" + "grmwrap version",
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
	return app, own
}

// runConfig is everything `grmwrap run` needs, validated.
type runConfig struct {
	command     []string
	listen      []string
	user        string
	dissector   generations.Dissector
	flowTimeout time.Duration
	maxFlows    uint32
	name        string
	runtimeDir  string
	log         *slog.Logger
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
	if maxFlows < 1 || maxFlows > 1<<26 {
		return runConfig{}, fmt.Errorf("max flows %d: want 1 to %d", maxFlows, 1<<26)
	}
	name := c.String("name")
	if strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return runConfig{}, fmt.Errorf("name %q: no slashes", name)
	}
	return runConfig{
		command:     command,
		listen:      c.StringSlice("listen"),
		user:        c.String("user"),
		dissector:   dis,
		flowTimeout: c.Duration("flow-timeout"),
		maxFlows:    uint32(maxFlows),
		name:        name,
		runtimeDir:  c.String("runtime-dir"),
		log:         log,
	}, nil
}

// newLogger builds the one logger that is passed down everywhere.
func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
