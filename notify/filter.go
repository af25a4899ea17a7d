package notify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	seccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"
)

// TrappedOptions are the SOL_SOCKET options whose setsockopt is trapped:
// a managed socket's reuseport membership and program belong to grmwrap.
var TrappedOptions = []int{
	unix.SO_REUSEPORT,
	unix.SO_ATTACH_REUSEPORT_CBPF,
	unix.SO_ATTACH_REUSEPORT_EBPF,
	unix.SO_DETACH_REUSEPORT_BPF,
}

// IOUringSyscalls are refused with EPERM unless FilterOptions.AllowIOUring:
// an io_uring ring runs socket operations (IORING_OP_URING_CMD with
// SOCKET_URING_OP_SETSOCKOPT, IORING_OP_BIND) in the kernel without a
// system call the filter could see, so a server with a ring could detach
// or replace the steering program. EPERM is what container runtimes'
// default profiles and kernel.io_uring_disabled give, so servers fall back
// to plain system calls. io_uring_enter and io_uring_register are refused
// too: a ring fd could come from elsewhere (inherited, or over SCM_RIGHTS).
var IOUringSyscalls = []string{"io_uring_setup", "io_uring_enter", "io_uring_register"}

// FilterOptions change what FilterProgramWith builds.
type FilterOptions struct {
	// AllowIOUring lets the server use io_uring, and with it bypass the
	// trapped setsockopt and bind (an explicit opt-in: --allow-io-uring).
	AllowIOUring bool
}

// FilterProgram builds the default filter (FilterProgramWith with zero
// options).
func FilterProgram() ([]unix.SockFilter, error) {
	return FilterProgramWith(FilterOptions{})
}

// FilterProgramWith builds grmwrap's seccomp filter with libseccomp and
// returns it as classic BPF: bind always notifies, setsockopt notifies for
// SOL_SOCKET with one of TrappedOptions, the io_uring system calls fail
// with EPERM unless o.AllowIOUring, everything else is allowed. A syscall
// of a foreign architecture kills the process (it could bypass the
// filter's argument checks).
func FilterProgramWith(o FilterOptions) ([]unix.SockFilter, error) {
	f, err := seccomp.NewFilter(seccomp.ActAllow)
	if err != nil {
		return nil, fmt.Errorf("new seccomp filter: %w", err)
	}
	defer f.Release()
	if err := f.SetBadArchAction(seccomp.ActKillProcess); err != nil {
		return nil, fmt.Errorf("set bad-arch action: %w", err)
	}
	bind, err := seccomp.GetSyscallFromName("bind")
	if err != nil {
		return nil, fmt.Errorf("resolve bind: %w", err)
	}
	if err := f.AddRule(bind, seccomp.ActNotify); err != nil {
		return nil, fmt.Errorf("add bind rule: %w", err)
	}
	setsockopt, err := seccomp.GetSyscallFromName("setsockopt")
	if err != nil {
		return nil, fmt.Errorf("resolve setsockopt: %w", err)
	}
	// level and optname are ints: the kernel ignores their upper 32 bits,
	// so the filter must too (mask first, then value, for libseccomp).
	for _, opt := range TrappedOptions {
		level, err := seccomp.MakeCondition(1, seccomp.CompareMaskedEqual, 0xffffffff, unix.SOL_SOCKET)
		if err != nil {
			return nil, fmt.Errorf("setsockopt level condition: %w", err)
		}
		name, err := seccomp.MakeCondition(2, seccomp.CompareMaskedEqual, 0xffffffff, uint64(opt))
		if err != nil {
			return nil, fmt.Errorf("setsockopt name condition: %w", err)
		}
		if err := f.AddRuleConditional(setsockopt, seccomp.ActNotify, []seccomp.ScmpCondition{level, name}); err != nil {
			return nil, fmt.Errorf("add setsockopt rule: %w", err)
		}
	}
	if !o.AllowIOUring {
		for _, name := range IOUringSyscalls {
			nr, err := seccomp.GetSyscallFromName(name)
			if err != nil {
				return nil, fmt.Errorf("resolve %s: %w", name, err)
			}
			if err := f.AddRule(nr, seccomp.ActErrno.SetReturnCode(int16(unix.EPERM))); err != nil {
				return nil, fmt.Errorf("add %s rule: %w", name, err)
			}
		}
	}
	return exportBPF(f)
}

// exportBPF exports f through a memfd (a pipe could block on a large
// program) and decodes the kernel's sock_filter array.
func exportBPF(f *seccomp.ScmpFilter) ([]unix.SockFilter, error) {
	mfd, err := unix.MemfdCreate("grmwrap-seccomp", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd for seccomp export: %w", err)
	}
	file := os.NewFile(uintptr(mfd), "grmwrap-seccomp")
	defer file.Close()
	if err := f.ExportBPF(file); err != nil {
		return nil, fmt.Errorf("export seccomp filter: %w", err)
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind seccomp export: %w", err)
	}
	raw, err := io.ReadAll(file)
	if err != nil {
		return nil, fmt.Errorf("read seccomp export: %w", err)
	}
	return decodeSockFilters(raw)
}

// decodeSockFilters decodes an array of struct sock_filter (8 bytes each).
func decodeSockFilters(raw []byte) ([]unix.SockFilter, error) {
	const size = int(unsafe.Sizeof(unix.SockFilter{}))
	if len(raw) == 0 || len(raw)%size != 0 {
		return nil, fmt.Errorf("seccomp export of %d bytes is not a filter", len(raw))
	}
	prog := make([]unix.SockFilter, 0, len(raw)/size)
	for i := 0; i < len(raw); i += size {
		prog = append(prog, unix.SockFilter{
			Code: binary.NativeEndian.Uint16(raw[i:]),
			Jt:   raw[i+2],
			Jf:   raw[i+3],
			K:    binary.NativeEndian.Uint32(raw[i+4:]),
		})
	}
	return prog, nil
}

// ErrNestedListener means a seccomp user-notification listener already
// watches this process (EBUSY): grmwrap cannot run under another
// seccomp-notify supervisor, nor under itself.
var ErrNestedListener = errors.New("another seccomp user-notification supervisor already watches this process (grmwrap cannot run under itself or under a container runtime's seccomp agent)")

// installFilter loads prog on the calling thread with a new listener and
// returns the listener fd. With killable it asks for WAIT_KILLABLE_RECV (Linux 5.19+), so a
// signal cannot interrupt a bind the supervisor is already handling, and
// falls back to a plain listener where the kernel lacks the flag. The
// returned bool says whether the flag is in force.
func installFilter(prog []unix.SockFilter, killable bool) (int, bool, error) {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER)
	if killable {
		flags |= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
	}
	for {
		fd, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
		switch {
		case errno == 0:
			return int(fd), killable, nil
		case errno == unix.EINVAL && killable:
			flags &^= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
			killable = false
		case errno == unix.EBUSY:
			return -1, false, ErrNestedListener
		default:
			return -1, false, fmt.Errorf("install seccomp filter: %w", errno)
		}
	}
}
