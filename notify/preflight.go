package notify

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported wraps every reason Preflight refuses to start.
var ErrUnsupported = errors.New("cannot manage the server")

// capability numbers grmwrap needs, with their names.
var requiredCaps = []struct {
	bit  uint
	name string
	why  string
}{
	{21, "CAP_SYS_ADMIN", "install the filter for any user, enter the server's network namespace"},
	{19, "CAP_SYS_PTRACE", "copy the server's sockets (pidfd_getfd) and read its bind addresses"},
	{12, "CAP_NET_ADMIN", "inspect the server's sockets and namespaces"},
	{39, "CAP_BPF", "load the steering program"},
}

// credCaps are needed only to run instances as another user.
var credCaps = []struct {
	bit  uint
	name string
}{{6, "CAP_SETGID"}, {7, "CAP_SETUID"}}

// Preflight checks, before any server starts, that this process and kernel
// can manage one: the capabilities (root has them all), seccomp user
// notification and pidfd_getfd. It names everything missing; grmwrap never
// runs a server unmanaged. withUser adds what --user needs.
func Preflight(withUser bool) error {
	var missing []string
	if names, err := missingCaps(withUser); err != nil {
		return fmt.Errorf("%w: read own capabilities: %w", ErrUnsupported, err)
	} else if len(names) > 0 {
		missing = append(missing, "root or "+strings.Join(names, ", "))
	}
	if err := userNotifAvailable(); err != nil {
		missing = append(missing, "seccomp user notification (Linux 5.0+): "+err.Error())
	}
	if err := pidfdGetfdAvailable(); err != nil {
		missing = append(missing, "pidfd_getfd (Linux 5.6+): "+err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s", ErrUnsupported, strings.Join(missing, "; "))
	}
	return nil
}

func missingCaps(withUser bool) ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, err
	}
	eff := uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	var names []string
	for _, c := range requiredCaps {
		if eff&(1<<c.bit) == 0 {
			names = append(names, c.name+" (to "+c.why+")")
		}
	}
	if withUser {
		for _, c := range credCaps {
			if eff&(1<<c.bit) == 0 {
				names = append(names, c.name+" (for --user)")
			}
		}
	}
	return names, nil
}

// userNotifAvailable asks the kernel whether SECCOMP_RET_USER_NOTIF exists.
func userNotifAvailable() error {
	action := uint32(unix.SECCOMP_RET_USER_NOTIF)
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_ACTION_AVAIL, 0, uintptr(unsafe.Pointer(&action)))
	if errno != 0 {
		return errno
	}
	return nil
}

// pidfdGetfdAvailable copies one of this process's own fds through a pidfd.
func pidfdGetfdAvailable() error {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, pidfd, 0)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}
