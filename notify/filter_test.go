package notify

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData mirrors the kernel's struct seccomp_data (include/uapi/linux/
// seccomp.h), the input a seccomp filter runs on. The kernel fills it in the
// machine's byte order.
type seccompData struct {
	Nr                 int32
	Arch               uint32
	InstructionPointer uint64
	Args               [6]uint64
}

// x32SyscallBit marks x32 system calls on x86-64 (__X32_SYSCALL_BIT).
const x32SyscallBit = 0x40000000

// nativeAuditArch is the AUDIT_ARCH_* value the kernel puts in
// seccomp_data.arch for a native system call of the test binary.
func nativeAuditArch(t *testing.T) uint32 {
	t.Helper()
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64
	default:
		t.Skipf("no audit arch known to this test for GOARCH=%s", runtime.GOARCH)
		return 0
	}
}

// foreignAuditArch is an architecture the filter was not built for.
func foreignAuditArch() uint32 {
	if runtime.GOARCH == "amd64" {
		return unix.AUDIT_ARCH_I386
	}
	return unix.AUDIT_ARCH_X86_64
}

// vmInput turns d into the byte string x/net/bpf's VM runs on.
//
// The kernel's seccomp BPF only allows 32-bit absolute loads at offsets that
// are multiples of 4 (seccomp_check_filter rewrites BPF_LD|BPF_W|BPF_ABS into
// a native 32-bit load from struct seccomp_data), so the filter sees each
// 4-byte word of the struct as a NATIVE-endian number. x/net/bpf's VM was
// written for packets: its LoadAbsolute reads 4 bytes as a BIG-endian number.
// Encoding the struct natively and then reversing the bytes of every aligned
// 32-bit word makes the VM's big-endian load of word i yield exactly the value
// the kernel's native load of word i yields, on any host byte order (on a
// big-endian host the reversal would be wrong, so it is only done when the
// native order is little-endian). A 64-bit argument stays split the way the
// kernel splits it: libseccomp loads its low half at args[i] + 0 and its high
// half at args[i] + 4 on little-endian machines, and each half is one word.
func vmInput(d seccompData) []byte {
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&d)), unsafe.Sizeof(d))
	in := make([]byte, len(raw))
	copy(in, raw)
	var probe [2]byte
	binary.NativeEndian.PutUint16(probe[:], 1)
	if probe[0] == 1 { // little-endian host
		for i := 0; i+4 <= len(in); i += 4 {
			in[i], in[i+1], in[i+2], in[i+3] = in[i+3], in[i+2], in[i+1], in[i]
		}
	}
	return in
}

// filterVM builds the program with FilterProgram and loads it into
// x/net/bpf's VM.
func filterVM(t *testing.T) (*bpf.VM, []bpf.Instruction) {
	t.Helper()
	return filterVMWith(t, FilterOptions{})
}

// filterVMWith is filterVM for the program FilterProgramWith(o) builds.
func filterVMWith(t *testing.T, o FilterOptions) (*bpf.VM, []bpf.Instruction) {
	t.Helper()
	prog, err := FilterProgramWith(o)
	if err != nil {
		t.Fatalf("FilterProgram: %v", err)
	}
	if len(prog) == 0 || len(prog) > unix.BPF_MAXINSNS {
		t.Fatalf("FilterProgram returned %d instructions", len(prog))
	}
	raw := make([]bpf.RawInstruction, len(prog))
	for i, ins := range prog {
		raw[i] = bpf.RawInstruction{Op: ins.Code, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Logf("program:\n%s", listing(insns))
		t.Fatalf("the program has instructions x/net/bpf does not know")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Logf("program:\n%s", listing(insns))
		t.Fatalf("bpf.NewVM: %v", err)
	}
	return vm, insns
}

func listing(insns []bpf.Instruction) string {
	s := ""
	for i, ins := range insns {
		s += fmt.Sprintf("%3d  %v\n", i, ins)
	}
	return s
}

// runFilter runs the filter on one system call and returns the action.
func runFilter(t *testing.T, vm *bpf.VM, d seccompData) uint32 {
	t.Helper()
	out, err := vm.Run(vmInput(d))
	if err != nil {
		t.Fatalf("run filter on %+v: %v", d, err)
	}
	return uint32(out)
}

func actionName(a uint32) string {
	switch a & unix.SECCOMP_RET_ACTION_FULL {
	case unix.SECCOMP_RET_ALLOW:
		return "ALLOW"
	case unix.SECCOMP_RET_USER_NOTIF:
		return "USER_NOTIF"
	case unix.SECCOMP_RET_KILL_PROCESS:
		return "KILL_PROCESS"
	case unix.SECCOMP_RET_KILL_THREAD:
		return "KILL_THREAD"
	case unix.SECCOMP_RET_ERRNO:
		return fmt.Sprintf("ERRNO(%d)", a&unix.SECCOMP_RET_DATA)
	case unix.SECCOMP_RET_TRAP:
		return "TRAP"
	case unix.SECCOMP_RET_TRACE:
		return "TRACE"
	case unix.SECCOMP_RET_LOG:
		return "LOG"
	}
	return fmt.Sprintf("%#x", a)
}

func TestSeccompDataLayout(t *testing.T) {
	// struct seccomp_data is 64 bytes: nr at 0, arch at 4, ip at 8, args at 16.
	var d seccompData
	if got := unsafe.Sizeof(d); got != 64 {
		t.Fatalf("sizeof(seccomp_data) = %d, want 64", got)
	}
	if off := unsafe.Offsetof(d.Arch); off != 4 {
		t.Errorf("arch at %d, want 4", off)
	}
	if off := unsafe.Offsetof(d.InstructionPointer); off != 8 {
		t.Errorf("instruction_pointer at %d, want 8", off)
	}
	if off := unsafe.Offsetof(d.Args); off != 16 {
		t.Errorf("args at %d, want 16", off)
	}
	// The word swap makes a big-endian load see the native value.
	in := vmInput(seccompData{Nr: 0x01020304, Arch: 0xc000003e, Args: [6]uint64{0x1122334455667788}})
	if got := binary.BigEndian.Uint32(in[0:]); got != 0x01020304 {
		t.Errorf("nr word = %#x", got)
	}
	if got := binary.BigEndian.Uint32(in[4:]); got != 0xc000003e {
		t.Errorf("arch word = %#x", got)
	}
	lo, hi := binary.BigEndian.Uint32(in[16:]), binary.BigEndian.Uint32(in[20:])
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 { // little-endian
		if lo != 0x55667788 || hi != 0x11223344 {
			t.Errorf("args[0] words = %#x %#x, want low half first", lo, hi)
		}
	}
}

func TestFilterProgramActions(t *testing.T) {
	arch := nativeAuditArch(t)
	vm, insns := filterVM(t)
	t.Logf("program (%d instructions):\n%s", len(insns), listing(insns))

	setsockopt := func(level, name uint64) seccompData {
		return seccompData{Nr: unix.SYS_SETSOCKOPT, Arch: arch, Args: [6]uint64{3, level, name, 0x7fff0000, 4}}
	}
	tests := []struct {
		name string
		data seccompData
		want uint32
	}{
		{"bind", seccompData{Nr: unix.SYS_BIND, Arch: arch, Args: [6]uint64{3, 0x7fff1000, 16}}, unix.SECCOMP_RET_USER_NOTIF},
		{"bind with odd arguments", seccompData{Nr: unix.SYS_BIND, Arch: arch, Args: [6]uint64{^uint64(0), 0, 1 << 40, 7, 7, 7}}, unix.SECCOMP_RET_USER_NOTIF},

		{"setsockopt SOL_SOCKET SO_REUSEPORT", setsockopt(unix.SOL_SOCKET, unix.SO_REUSEPORT), unix.SECCOMP_RET_USER_NOTIF},
		{"setsockopt SOL_SOCKET SO_ATTACH_REUSEPORT_CBPF", setsockopt(unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF), unix.SECCOMP_RET_USER_NOTIF},
		{"setsockopt SOL_SOCKET SO_ATTACH_REUSEPORT_EBPF", setsockopt(unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF), unix.SECCOMP_RET_USER_NOTIF},
		{"setsockopt SOL_SOCKET SO_DETACH_REUSEPORT_BPF", setsockopt(unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF), unix.SECCOMP_RET_USER_NOTIF},

		{"setsockopt SOL_SOCKET SO_REUSEADDR", setsockopt(unix.SOL_SOCKET, unix.SO_REUSEADDR), unix.SECCOMP_RET_ALLOW},
		{"setsockopt SOL_SOCKET SO_RCVBUF", setsockopt(unix.SOL_SOCKET, unix.SO_RCVBUF), unix.SECCOMP_RET_ALLOW},
		{"setsockopt SOL_SOCKET SO_DETACH_FILTER", setsockopt(unix.SOL_SOCKET, unix.SO_DETACH_FILTER), unix.SECCOMP_RET_ALLOW},
		{"setsockopt IPPROTO_IP with SO_REUSEPORT's number", setsockopt(unix.IPPROTO_IP, unix.SO_REUSEPORT), unix.SECCOMP_RET_ALLOW},
		{"setsockopt IPPROTO_IPV6 with SO_ATTACH_REUSEPORT_EBPF's number", setsockopt(unix.IPPROTO_IPV6, unix.SO_ATTACH_REUSEPORT_EBPF), unix.SECCOMP_RET_ALLOW},
		{"setsockopt IPPROTO_UDP with SO_REUSEPORT's number", setsockopt(unix.IPPROTO_UDP, unix.SO_REUSEPORT), unix.SECCOMP_RET_ALLOW},

		{"recvfrom", seccompData{Nr: unix.SYS_RECVFROM, Arch: arch, Args: [6]uint64{3}}, unix.SECCOMP_RET_ALLOW},
		{"sendto", seccompData{Nr: unix.SYS_SENDTO, Arch: arch, Args: [6]uint64{3}}, unix.SECCOMP_RET_ALLOW},
		{"read", seccompData{Nr: unix.SYS_READ, Arch: arch}, unix.SECCOMP_RET_ALLOW},
		{"socket", seccompData{Nr: unix.SYS_SOCKET, Arch: arch, Args: [6]uint64{unix.AF_INET, unix.SOCK_DGRAM}}, unix.SECCOMP_RET_ALLOW},
		{"connect", seccompData{Nr: unix.SYS_CONNECT, Arch: arch, Args: [6]uint64{3, 0x7fff1000, 16}}, unix.SECCOMP_RET_ALLOW},
		{"getsockopt SOL_SOCKET SO_REUSEPORT", seccompData{Nr: unix.SYS_GETSOCKOPT, Arch: arch, Args: [6]uint64{3, unix.SOL_SOCKET, unix.SO_REUSEPORT}}, unix.SECCOMP_RET_ALLOW},

		// A foreign architecture could reach the same kernel entry points
		// under other numbers: the process is killed before any number is
		// looked at.
		{"bind of a foreign arch", seccompData{Nr: unix.SYS_BIND, Arch: foreignAuditArch(), Args: [6]uint64{3}}, unix.SECCOMP_RET_KILL_PROCESS},
		{"read of a foreign arch", seccompData{Nr: unix.SYS_READ, Arch: foreignAuditArch()}, unix.SECCOMP_RET_KILL_PROCESS},
		{"unknown arch", seccompData{Nr: unix.SYS_READ, Arch: 0}, unix.SECCOMP_RET_KILL_PROCESS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runFilter(t, vm, tt.data); got != tt.want {
				t.Errorf("action = %#x (%s), want %#x (%s)", got, actionName(got), tt.want, actionName(tt.want))
			}
		})
	}
}

// TestFilterProgramIOUring: a ring would run socket operations the filter
// never sees, so by default the three io_uring system calls fail with EPERM
// (whatever their arguments); with AllowIOUring they are allowed, and the
// trapped calls are trapped as before.
func TestFilterProgramIOUring(t *testing.T) {
	arch := nativeAuditArch(t)
	calls := map[string]int32{
		"io_uring_setup":    unix.SYS_IO_URING_SETUP,
		"io_uring_enter":    unix.SYS_IO_URING_ENTER,
		"io_uring_register": unix.SYS_IO_URING_REGISTER,
	}
	eperm := unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	for _, tc := range []struct {
		name string
		o    FilterOptions
		want uint32
	}{
		{"default", FilterOptions{}, eperm},
		{"allow-io-uring", FilterOptions{AllowIOUring: true}, unix.SECCOMP_RET_ALLOW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, insns := filterVMWith(t, tc.o)
			for name, nr := range calls {
				for _, args := range [][6]uint64{{}, {8, 0x7fff0000}, {^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}} {
					if got := runFilter(t, vm, seccompData{Nr: nr, Arch: arch, Args: args}); got != tc.want {
						t.Errorf("%s%v: action = %#x (%s), want %#x (%s)\n%s", name, args, got, actionName(got), tc.want, actionName(tc.want), listing(insns))
					}
				}
			}
			bind := seccompData{Nr: unix.SYS_BIND, Arch: arch, Args: [6]uint64{3, 0x7fff1000, 16}}
			if got := runFilter(t, vm, bind); got != unix.SECCOMP_RET_USER_NOTIF {
				t.Errorf("bind: action = %s, want USER_NOTIF", actionName(got))
			}
			detach := seccompData{Nr: unix.SYS_SETSOCKOPT, Arch: arch, Args: [6]uint64{3, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF}}
			if got := runFilter(t, vm, detach); got != unix.SECCOMP_RET_USER_NOTIF {
				t.Errorf("setsockopt SO_DETACH_REUSEPORT_BPF: action = %s, want USER_NOTIF", actionName(got))
			}
			if got := runFilter(t, vm, seccompData{Nr: unix.SYS_READ, Arch: arch}); got != unix.SECCOMP_RET_ALLOW {
				t.Errorf("read: action = %s, want ALLOW", actionName(got))
			}
		})
	}
}

// TestFilterProgramX32 checks x32 system calls (amd64 only). The kernel
// reports an x32 call with arch AUDIT_ARCH_X86_64 and nr | __X32_SYSCALL_BIT,
// so an arch check alone does not keep x32's bind out. libseccomp, built for
// x86_64 only, answers every number at or above the x32 bit (except -1, the
// number a tracer uses to skip a call) with the bad-arch action, which
// FilterProgram sets to KILL_PROCESS. Observed program:
//
//	ld [0]; jlt #0x40000000 -> rules; jneq #0xffffffff -> ret KILL_PROCESS
func TestFilterProgramX32(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("x32 exists on amd64 only")
	}
	vm, _ := filterVM(t)
	for _, nr := range []int32{unix.SYS_BIND, unix.SYS_SETSOCKOPT, unix.SYS_READ, unix.SYS_RECVFROM, 0} {
		d := seccompData{Nr: nr | x32SyscallBit, Arch: unix.AUDIT_ARCH_X86_64, Args: [6]uint64{3, unix.SOL_SOCKET, unix.SO_REUSEPORT}}
		got := runFilter(t, vm, d)
		if got != unix.SECCOMP_RET_KILL_PROCESS {
			t.Errorf("x32 nr %#x: action = %#x (%s), want KILL_PROCESS", uint32(d.Nr), got, actionName(got))
		}
	}
	// nr -1 is not a system call (a tracer or a SECCOMP_RET_TRACE handler
	// sets it to skip one); libseccomp lets it through to the rules, and no
	// rule names it.
	if got := runFilter(t, vm, seccompData{Nr: -1, Arch: unix.AUDIT_ARCH_X86_64}); got != unix.SECCOMP_RET_ALLOW {
		t.Errorf("nr -1: action = %#x (%s), want ALLOW", got, actionName(got))
	}
}

// TestFilterProgramUpperArgumentBits checks that the filter ignores the
// upper 32 bits of setsockopt's int arguments, as the kernel does.
//
// The kernel declares setsockopt(int fd, int level, int optname, ...): the
// syscall wrapper truncates each register to 32 bits, so level
// 0x1_00000001 IS SOL_SOCKET to the kernel (TestKernelTruncatesSetsockoptLevel
// shows it on this machine). A filter comparing all 64 bits would let a
// server reach setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_*) untrapped by
// setting garbage in the upper half; the filter masks to 32 bits.
func TestFilterProgramUpperArgumentBits(t *testing.T) {
	arch := nativeAuditArch(t)
	vm, _ := filterVM(t)
	const high = uint64(1) << 32
	tests := []struct {
		name           string
		level, optname uint64
		want           uint32
	}{
		{"level SOL_SOCKET with bit 32", high | unix.SOL_SOCKET, unix.SO_REUSEPORT, unix.SECCOMP_RET_USER_NOTIF},
		{"level SOL_SOCKET with all upper bits", 0xffffffff_00000000 | unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, unix.SECCOMP_RET_USER_NOTIF},
		{"optname SO_REUSEPORT with bit 32", unix.SOL_SOCKET, high | unix.SO_REUSEPORT, unix.SECCOMP_RET_USER_NOTIF},
		{"optname SO_ATTACH_REUSEPORT_CBPF with bit 63", unix.SOL_SOCKET, 1<<63 | unix.SO_ATTACH_REUSEPORT_CBPF, unix.SECCOMP_RET_USER_NOTIF},
		{"level SOL_IP with upper bits", high | unix.IPPROTO_IP, unix.SO_REUSEPORT, unix.SECCOMP_RET_ALLOW},
		// Upper bits in the other arguments are not compared.
		{"fd and optval with upper bits", unix.SOL_SOCKET, unix.SO_REUSEPORT, unix.SECCOMP_RET_USER_NOTIF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := seccompData{Nr: unix.SYS_SETSOCKOPT, Arch: arch, Args: [6]uint64{high | 3, tt.level, tt.optname, 0xdead_0000_0000_0000, high | 4}}
			if got := runFilter(t, vm, d); got != tt.want {
				t.Errorf("action = %#x (%s), want %#x (%s)", got, actionName(got), tt.want, actionName(tt.want))
			}
		})
	}
}

// TestKernelTruncatesSetsockoptLevel shows, on this kernel, that the upper
// half of setsockopt's level is ignored: level 1<<32 | SOL_SOCKET sets
// SO_REUSEPORT. It is the other half of TestFilterProgramUpperArgumentBits.
func TestKernelTruncatesSetsockoptLevel(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("needs 64-bit registers")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	defer unix.Close(fd)
	one := int32(1)
	level := uint64(1)<<32 | unix.SOL_SOCKET
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), unix.SO_REUSEPORT,
		uintptr(unsafe.Pointer(&one)), unsafe.Sizeof(one), 0)
	if errno != 0 {
		t.Fatalf("setsockopt(level %#x, SO_REUSEPORT): %v", level, errno)
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT)
	if err != nil {
		t.Fatalf("getsockopt SO_REUSEPORT: %v", err)
	}
	if v != 1 {
		t.Fatalf("SO_REUSEPORT = %d after setsockopt with level %#x: the kernel did not truncate", v, level)
	}
}

// TestFilterProgramSeccompShape checks that the program stays within what
// the kernel's seccomp checker accepts and what vmInput models: loads are
// aligned 32-bit absolute loads inside struct seccomp_data, and every return
// is one of the actions grmwrap means to use.
func TestFilterProgramSeccompShape(t *testing.T) {
	_, insns := filterVM(t)
	size := uint32(unsafe.Sizeof(seccompData{}))
	for i, ins := range insns {
		switch ins := ins.(type) {
		case bpf.LoadAbsolute:
			if ins.Size != 4 || ins.Off%4 != 0 || ins.Off+4 > size {
				t.Errorf("instruction %d: %v: seccomp allows only aligned 32-bit loads inside seccomp_data", i, ins)
			}
		case bpf.LoadIndirect, bpf.LoadMemShift, bpf.LoadExtension:
			t.Errorf("instruction %d: %v: not allowed in a seccomp filter", i, ins)
		case bpf.RetConstant:
			switch ins.Val {
			case unix.SECCOMP_RET_ALLOW, unix.SECCOMP_RET_USER_NOTIF, unix.SECCOMP_RET_KILL_PROCESS,
				unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM): // io_uring
			default:
				t.Errorf("instruction %d: returns %#x (%s)", i, ins.Val, actionName(ins.Val))
			}
		case bpf.RetA:
			t.Errorf("instruction %d: returns A: the action would depend on the data", i)
		}
	}
}

// TestFilterProgramDeterministic: two builds give the same program (the init
// stage and the tests must see the same filter).
func TestFilterProgramDeterministic(t *testing.T) {
	a, err := FilterProgram()
	if err != nil {
		t.Fatal(err)
	}
	b, err := FilterProgram()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Fatalf("programs of %d and %d instructions", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("instruction %d differs: %+v vs %+v", i, a[i], b[i])
		}
	}
}

func TestDecodeSockFilters(t *testing.T) {
	raw := make([]byte, 16)
	binary.NativeEndian.PutUint16(raw[0:], unix.BPF_LD|unix.BPF_W|unix.BPF_ABS)
	raw[2], raw[3] = 1, 2
	binary.NativeEndian.PutUint32(raw[4:], 4)
	binary.NativeEndian.PutUint16(raw[8:], unix.BPF_RET|unix.BPF_K)
	binary.NativeEndian.PutUint32(raw[12:], unix.SECCOMP_RET_ALLOW)
	got, err := decodeSockFilters(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, Jt: 1, Jf: 2, K: 4},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("decodeSockFilters = %+v, want %+v", got, want)
	}
	for _, n := range []int{0, 7, 9, 17} {
		if _, err := decodeSockFilters(make([]byte, n)); err == nil {
			t.Errorf("decodeSockFilters of %d bytes: no error", n)
		}
	}
}
