package notify

import (
	"fmt"
	"os"
	"strconv"
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
	if v := os.Getenv(envSockState); v != "" {
		port, err := strconv.Atoi(v)
		if err == nil {
			err = sockStateServer(port)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "sockstate server: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
