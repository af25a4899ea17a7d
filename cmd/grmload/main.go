// Command grmload is grmwrap's load generator and loss counter: N flows
// (one socket each) send numbered datagrams at a fixed total rate to a
// server that answers "<instance id> <payload>", and a JSON report says, per
// flow, what was sent, answered and lost, and which instance answered.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/grmwrap/grmwrap/internal/load"
)

func main() {
	var cfg load.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:5353", "server `host:port`")
	flag.IntVar(&cfg.Flows, "flows", 32, "flows (one socket each)")
	flag.Float64Var(&cfg.Rate, "rate", 1000, "datagrams per second, all flows together")
	flag.DurationVar(&cfg.Duration, "duration", 5*time.Second, "how long to send")
	flag.DurationVar(&cfg.Grace, "grace", time.Second, "how long to wait for late answers")
	flag.IntVar(&cfg.Payload, "payload", 16, "datagram size in bytes (at least 16)")
	perFlow := flag.Bool("per-flow", true, "include every flow in the report")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "grmload: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := load.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "grmload: %v\n", err)
		os.Exit(2)
	}
	if !*perFlow {
		res.Flows = nil
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "grmload: %v\n", err)
		os.Exit(2)
	}
	if res.Lost > 0 {
		os.Exit(1)
	}
}
