// Command grmwrap runs an unmodified UDP server under supervision and
// manages its UDP listening sockets.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

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
