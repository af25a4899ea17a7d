package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

// The client's bounds of waiting for the supervisor's answer.
const (
	// upgradeWait is the wait of `upgrade` without --timeout.
	upgradeWait = 5 * time.Minute
	// upgradeMargin is added to --timeout: time to stop a generation
	// that failed and to answer.
	upgradeMargin = 30 * time.Second
	// statusWait is the wait of `status`, per supervisor.
	statusWait = 10 * time.Second
)

// runUpgrade asks the supervisor of PID for a new generation. Exit 0: the
// new generation works; 1: it failed and was rolled back; 2: usage or
// connection errors.
func runUpgrade(c *cli.Context, command []string, dashes bool) error {
	if c.Args().Len() != 1 {
		return usageErr("usage: grmwrap upgrade PID [--timeout DUR] [-- COMMAND [ARG...]]")
	}
	pid, err := strconv.Atoi(c.Args().First())
	if err != nil || pid <= 0 {
		return usageErr("upgrade: %q is not a process id", c.Args().First())
	}
	if dashes && len(command) == 0 {
		return usageErr("upgrade: missing command after --")
	}
	path, err := findSupervisor(c.String("runtime-dir"), pid)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	req := request{Op: "upgrade", Argv: command}
	// The supervisor enforces the readiness deadline and rolls back; the
	// client only bounds its own wait. With --timeout: that deadline plus
	// a margin for stopping a failed generation. Without: the supervisor's
	// --ready-timeout is not known here, so a fixed default that covers
	// readiness timeouts up to a few minutes.
	wait := upgradeWait
	if timeout := c.Duration("timeout"); timeout > 0 {
		req.Timeout = timeout.String()
		wait = timeout + upgradeMargin
	}
	resp, err := call(path, req, wait)
	if errors.Is(err, errNoAnswer) {
		pid := pidOfControl(path)
		return exitError{code: 2, err: fmt.Errorf("no answer from the grmwrap supervisor (pid %d) within %v while it started and checked the new generation; the upgrade may still be running: see `grmwrap status %d`; pass --timeout for a longer readiness", pid, wait, pid)}
	}
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if !resp.OK {
		if resp.Refused {
			return exitError{code: 1, err: fmt.Errorf("upgrade refused: %s", resp.Error)}
		}
		return exitError{code: 1, err: fmt.Errorf("upgrade failed, rolled back: %s", resp.Error)}
	}
	fmt.Fprintf(c.App.Writer, "generation %d working\n", resp.Generation)
	return nil
}

// runStatus prints the status of one supervisor, or of every supervisor
// in the runtime directory.
func runStatus(c *cli.Context) error {
	dir := c.String("runtime-dir")
	var paths []string
	switch c.Args().Len() {
	case 0:
		pids, err := sortedSupervisors(dir)
		if err != nil {
			return exitError{code: 2, err: fmt.Errorf("list supervisors: %w", err)}
		}
		for _, pid := range pids {
			paths = append(paths, controlPath(dir, pid))
		}
	case 1:
		pid, err := strconv.Atoi(c.Args().First())
		if err != nil || pid <= 0 {
			return usageErr("status: %q is not a process id", c.Args().First())
		}
		path, err := findSupervisor(dir, pid)
		if err != nil {
			return exitError{code: 2, err: err}
		}
		paths = []string{path}
	default:
		return usageErr("usage: grmwrap status [PID] [--json]")
	}
	var all []Status
	var errs []error
	for _, p := range paths {
		resp, err := call(p, request{Op: "status"}, statusWait)
		if errors.Is(err, errNoAnswer) {
			err = fmt.Errorf("no answer from the grmwrap supervisor (pid %d) to a status request within %v", pidOfControl(p), statusWait)
		}
		if err == nil && !resp.OK {
			err = errors.New(resp.Error)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, *resp.Status)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		var err error
		if c.Args().Len() == 1 && len(all) == 1 {
			err = enc.Encode(all[0])
		} else {
			if all == nil {
				all = []Status{}
			}
			err = enc.Encode(all)
		}
		if err != nil {
			return err
		}
	} else {
		for _, st := range all {
			printStatus(c.App.Writer, st)
		}
		if len(paths) == 0 {
			fmt.Fprintf(c.App.Writer, "no grmwrap supervisor in %s\n", dir)
		}
	}
	if len(errs) > 0 {
		return exitError{code: 2, err: errors.Join(errs...)}
	}
	return nil
}

// printStatus writes the human form of st.
func printStatus(w io.Writer, st Status) {
	fmt.Fprintf(w, "supervisor %d, working generation %d\n", st.PID, st.WorkingGeneration)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  GENERATION\tPID\tSTATE\tSOCKETS\tFLOWS\t")
	for _, g := range st.Generations {
		reason := g.Reason
		if g.Stalled {
			reason = "stalled: " + g.StalledReason
		}
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%d\t%d\t%s\n", g.Generation, g.PID, g.State, g.Sockets, g.Flows, reason)
	}
	tw.Flush()
	for _, g := range st.Groups {
		var parts []string
		for gen, n := range g.Sockets {
			parts = append(parts, fmt.Sprintf("gen %s: %d", gen, n))
		}
		slices.Sort(parts)
		fmt.Fprintf(w, "  group %s (%s): %s\n", g.Address, g.Dissector, strings.Join(parts, ", "))
	}
	names := make([]string, 0, len(st.Counters))
	for k := range st.Counters {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		fmt.Fprintf(w, "  %-42s %d\n", k, st.Counters[k])
	}
}
