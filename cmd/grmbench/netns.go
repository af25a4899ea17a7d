package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// envInNetns marks the re-executed copy that runs inside the fresh
// namespaces.
const envInNetns = "GRMBENCH_IN_NETNS"

// inNetns reports whether this process is the re-executed copy.
func inNetns() bool { return os.Getenv(envInNetns) == "1" }

// reexecInNetns runs this binary again, with the same arguments, in a new
// network and mount namespace, and returns its exit status. Nothing the
// benchmark binds or attaches is visible outside, and everything goes away
// with the child.
func reexecInNetns() (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 1, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Args[0] = os.Args[0] // the child reports the command as it was typed
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envInNetns+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		Pdeathsig:  syscall.SIGKILL,
	}
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, fmt.Errorf("run in a new network namespace: %w", err)
	}
	return 0, nil
}

// setupNetns makes the child's mounts private (nothing propagates back to
// the host), mounts a bpffs of its own on /sys/fs/bpf and brings loopback
// up: a new network namespace starts with lo down.
//
// The supervisors the benchmark starts pin their maps under
// /sys/fs/bpf/grmwrap/NAME and leave them there when they exit (so that a
// restarted supervisor finds its state). A bpffs mounted here is a new
// instance seen only in this mount namespace: the pins die with it instead
// of piling up in the host's bpffs.
func setupNetns() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a private bpffs on %s: %w", bpffs, err)
	}
	return loopbackUp()
}

// bpffs is where grmwrap pins its maps.
const bpffs = "/sys/fs/bpf"

// loopbackUp sets IFF_UP on lo with SIOCGIFFLAGS and SIOCSIFFLAGS.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("ifreq for lo: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}
