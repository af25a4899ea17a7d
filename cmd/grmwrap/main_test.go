package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"testing"

	seccomp "github.com/seccomp/libseccomp-golang"

	"github.com/grmwrap/grmwrap/notify"
)

// envDeny names a syscall that TestMain makes fail with ENOSYS before it
// execs the rest of its arguments: a kernel without that syscall, for the
// preflight tests.
const envDeny = "GRMWRAP_TEST_DENY_SYSCALL"

// TestMain lets the test binary play grmwrap's init stage (the in-process
// supervisor tests re-execute os.Args[0]) and the syscall-denying wrapper.
func TestMain(m *testing.M) {
	if notify.IsInit() {
		if err := notify.RunInit(); err != nil {
			fmt.Fprintf(os.Stderr, "init stage: %v\n", err)
		}
		os.Exit(127)
	}
	if name := os.Getenv(envDeny); name != "" {
		if err := denyAndExec(name, os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "deny %s: %v\n", name, err)
		}
		os.Exit(126)
	}
	os.Exit(m.Run())
}

// denyAndExec installs a filter that fails syscall name with ENOSYS on this
// thread and execs argv (the filter is inherited across exec).
func denyAndExec(name string, argv []string) error {
	runtime.LockOSThread()
	f, err := seccomp.NewFilter(seccomp.ActAllow)
	if err != nil {
		return err
	}
	nr, err := seccomp.GetSyscallFromName(name)
	if err != nil {
		return err
	}
	if err := f.AddRule(nr, seccomp.ActErrno.SetReturnCode(int16(syscall.ENOSYS))); err != nil {
		return err
	}
	if err := f.Load(); err != nil {
		return err
	}
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if len(e) < len(envDeny) || e[:len(envDeny)] != envDeny {
			env = append(env, e)
		}
	}
	return syscall.Exec(argv[0], argv, env)
}
