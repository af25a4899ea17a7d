package notify

import (
	"fmt"
	"os"
	"testing"
)

// TestMain lets the test binary play grmwrap's init stage: Start re-executes
// os.Args[0] with InitArg.
func TestMain(m *testing.M) {
	if IsInit() {
		if err := RunInit(); err != nil {
			fmt.Fprintf(os.Stderr, "init stage: %v\n", err)
		}
		os.Exit(127)
	}
	os.Exit(m.Run())
}
