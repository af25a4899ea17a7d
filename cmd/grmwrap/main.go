// Command grmwrap runs an unmodified UDP server under supervision and
// manages its UDP listening sockets.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/grmwrap/grmwrap/notify"
)

func main() {
	if notify.IsInit() {
		// The hidden init stage: install the filter and exec the server.
		// RunInit returns only when it could not exec the server.
		err := notify.RunInit()
		fmt.Fprintf(os.Stderr, "grmwrap init: %v\n", err)
		os.Exit(127)
	}
	os.Exit(run(context.Background(), os.Args))
}

// run executes the CLI and returns the process exit status.
func run(ctx context.Context, args []string) int {
	app, own := newApp(args)
	err := app.RunContext(ctx, own)
	if err == nil {
		return 0
	}
	var ex exitError
	if errors.As(err, &ex) {
		if ex.err != nil {
			fmt.Fprintf(os.Stderr, "grmwrap: %v\n", ex.err)
		}
		return ex.code
	}
	// Everything else is usage: unknown flags, bad values.
	fmt.Fprintf(os.Stderr, "grmwrap: %v\n", err)
	return 2
}

// exitError carries an exit status out of a command. A nil err prints
// nothing.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// survivePipes keeps the supervisor alive when its stdout or stderr is a
// pipe whose reader has gone (`grmwrap -- server 2>&1 | head -1`): unless
// SIGPIPE is handled, Go kills a program that writes to a broken pipe on fd
// 1 or 2. The signal is handled, not ignored: a handled signal is reset to
// the default at exec, an ignored one would be inherited, and the servers
// must get the default SIGPIPE as without grmwrap. The channel is never
// read; the runtime drops signals for a full channel.
func survivePipes() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}

// logWriter is the logger's output: once a write fails with EPIPE (the
// reader is gone for good) it drops every later line instead of making a
// failing system call per line. Logging never stops the supervisor.
type logWriter struct {
	w      io.Writer
	broken atomic.Bool
}

func (l *logWriter) Write(p []byte) (int, error) {
	if l.broken.Load() {
		return len(p), nil
	}
	n, err := l.w.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		l.broken.Store(true)
		return len(p), nil
	}
	return n, err
}
