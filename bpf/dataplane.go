package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grmwrap/grmwrap/generations"
)

// The dissectors are numbered alike here and in grmwrap.h.
var _ = [1]struct{}{}[uint32(generations.DissectorFlow)-uint32(reuseportGrmDissectorGRM_DISSECTOR_FLOW)]
var _ = [1]struct{}{}[uint32(generations.DissectorNoop)-uint32(reuseportGrmDissectorGRM_DISSECTOR_NOOP)]

// MaxGroups is how many groups one data plane holds (group id 0 is
// reserved).
const MaxGroups = 1024

// Options configure Load.
type Options struct {
	// MaxFlows is the flow table's size (default 65536).
	MaxFlows uint32
	// PinDir, when set, is a directory on a bpffs where the maps are
	// pinned; maps already pinned there are reused, so a restarted
	// supervisor finds its state again.
	PinDir string
	// Refresh bounds how often a flow's last-seen time is written
	// (default 1s).
	Refresh time.Duration
}

// DataPlane is the maps and one copy of the program per group (each copy
// has its group id as a constant, so a packet needs no lookup to find its
// group).
type DataPlane struct {
	objs reuseportMaps
	spec *ebpf.CollectionSpec

	mu    sync.Mutex
	progs map[uint32]*ebpf.Program // by group id
}

// Load loads the program and creates (or reopens) its maps.
func Load(opts Options) (*DataPlane, error) {
	if opts.MaxFlows == 0 {
		opts.MaxFlows = 65536
	}
	if opts.Refresh == 0 {
		opts.Refresh = time.Second
	}
	spec, err := loadReuseport()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	spec.Maps["flows"].MaxEntries = opts.MaxFlows
	if err := spec.Variables["refresh_ns"].Set(uint64(opts.Refresh.Nanoseconds())); err != nil {
		return nil, fmt.Errorf("set refresh interval: %w", err)
	}
	var copts ebpf.CollectionOptions
	if opts.PinDir != "" {
		if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		copts.Maps.PinPath = opts.PinDir
	} else {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	d := &DataPlane{spec: spec, progs: make(map[uint32]*ebpf.Program)}
	if err := spec.LoadAndAssign(&d.objs, &copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("maps pinned in %s do not match this grmwrap (another version or --max-flows); remove them to start afresh: %w", opts.PinDir, err)
		}
		return nil, fmt.Errorf("create steering maps: %w", err)
	}
	// Load one copy now: a program the verifier refuses fails here, at
	// start, not at the first bind.
	if _, err := d.Program(1); err != nil {
		d.objs.Close()
		return nil, err
	}
	return d, nil
}

// Close releases the programs and map handles. Groups keep their program
// attached and pinned maps stay, so steering goes on.
func (d *DataPlane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for gid, p := range d.progs {
		errs = append(errs, p.Close())
		delete(d.progs, gid)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Program returns group gid's copy of the SK_REUSEPORT program, loading it
// the first time.
func (d *DataPlane) Program(gid uint32) (*ebpf.Program, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.progs[gid]; p != nil {
		return p, nil
	}
	if gid == 0 || gid >= MaxGroups {
		return nil, fmt.Errorf("group id %d out of range 1..%d", gid, MaxGroups-1)
	}
	spec := d.spec.Copy()
	if err := spec.Variables["group_id"].Set(gid); err != nil {
		return nil, fmt.Errorf("set group id: %w", err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"grm_reuseport"`
	}
	err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"sockets":       d.objs.Sockets,
		"socket_groups": d.objs.SocketGroups,
		"slots":         d.objs.Slots,
		"groups":        d.objs.Groups,
		"flows":         d.objs.Flows,
		"counters":      d.objs.Counters,
	}})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load steering program: %+v", ve)
		}
		return nil, fmt.Errorf("load steering program: %w", err)
	}
	d.progs[gid] = objs.Prog
	return objs.Prog, nil
}

// SetGroup writes group gid's state. Working generation and count change in
// one 8-byte word, so the program never sees one without the other.
func (d *DataPlane) SetGroup(gid uint32, st generations.GroupState) error {
	if gid == 0 || gid >= MaxGroups {
		return fmt.Errorf("group id %d out of range 1..%d", gid, MaxGroups-1)
	}
	v := reuseportGrmGroup{
		GenCount:       uint64(st.WorkingGen)<<32 | uint64(st.Count),
		Dissector:      uint32(st.Dissector),
		FlowTimeoutSec: uint32(st.FlowTimeout.Round(time.Second) / time.Second),
	}
	if err := d.objs.Groups.Update(gid, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update group %d: %w", gid, err)
	}
	return nil
}

// ClearGroup resets group gid's state and counters (the group is no longer
// used).
func (d *DataPlane) ClearGroup(gid uint32) error {
	if err := d.objs.Groups.Update(gid, reuseportGrmGroup{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear group %d: %w", gid, err)
	}
	zero := make([]reuseportGrmCounters, ebpf.MustPossibleCPU())
	if err := d.objs.Counters.Update(gid, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear counters of group %d: %w", gid, err)
	}
	// The kernel keeps a program attached to a group alive; our handle
	// goes, and a re-created group gets a fresh copy.
	d.mu.Lock()
	if p := d.progs[gid]; p != nil {
		p.Close()
		delete(d.progs, gid)
	}
	d.mu.Unlock()
	return nil
}

// AddSocket puts the bound socket f into group gid as (gen, slot): it
// enters the sockets map, its group gets the program attached, and the slot
// points at it. It returns the socket's cookie. f stays the caller's.
func (d *DataPlane) AddSocket(gid, gen, slot uint32, f *os.File) (uint64, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("socket handle: %w", err)
	}
	var (
		cookie uint64
		aerr   error
	)
	// Control keeps the fd's blocking mode (Fd would change the server's
	// shared file description to blocking).
	if err := rc.Control(func(fd uintptr) { cookie, aerr = d.addSocket(gid, gen, slot, int(fd)) }); err != nil {
		return 0, fmt.Errorf("socket handle: %w", err)
	}
	return cookie, aerr
}

func (d *DataPlane) addSocket(gid, gen, slot uint32, fd int) (uint64, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("socket cookie: %w", err)
	}
	if err := d.objs.SocketGroups.Update(cookie, gid, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("record socket group: %w", err)
	}
	if err := d.objs.Sockets.Update(cookie, uint64(fd), ebpf.UpdateAny); err != nil {
		d.RemoveSocket(cookie)
		return 0, fmt.Errorf("insert socket into sockhash: %w", err)
	}
	prog, err := d.Program(gid)
	if err != nil {
		d.RemoveSocket(cookie)
		return 0, err
	}
	// The program belongs to the reuseport group; attaching again is
	// harmless and covers a group that emptied and was re-created.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, prog.FD()); err != nil {
		d.RemoveSocket(cookie)
		return 0, fmt.Errorf("attach reuseport program: %w", err)
	}
	if err := d.SetSlot(gid, gen, slot, cookie); err != nil {
		d.RemoveSocket(cookie)
		return 0, err
	}
	return cookie, nil
}

// SetSlot points (gid, gen, slot) at the socket with cookie.
func (d *DataPlane) SetSlot(gid, gen, slot uint32, cookie uint64) error {
	k := reuseportGrmSlotKey{Group: gid, Gen: gen, Slot: slot}
	if err := d.objs.Slots.Update(k, cookie, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set slot %d/%d/%d: %w", gid, gen, slot, err)
	}
	return nil
}

// DeleteSlot empties (gid, gen, slot).
func (d *DataPlane) DeleteSlot(gid, gen, slot uint32) error {
	k := reuseportGrmSlotKey{Group: gid, Gen: gen, Slot: slot}
	if err := d.objs.Slots.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete slot %d/%d/%d: %w", gid, gen, slot, err)
	}
	return nil
}

// RemoveSocket takes the socket with cookie out of steering. It is a no-op
// for a socket already gone (the kernel drops closed sockets from the
// sockhash by itself).
func (d *DataPlane) RemoveSocket(cookie uint64) {
	// Missing keys are expected: the socket may have closed already.
	_ = d.objs.Sockets.Delete(cookie)
	_ = d.objs.SocketGroups.Delete(cookie)
}

// Alive reports whether the socket with cookie is still in the sockhash
// (the kernel removes a socket when it is closed).
func (d *DataPlane) Alive(cookie uint64) bool {
	var v uint64
	return d.objs.Sockets.Lookup(cookie, &v) == nil
}

// FlowCounts returns, for group gid, how many flows each generation has
// that were seen within timeout.
func (d *DataPlane) FlowCounts(gid uint32, timeout time.Duration) (map[uint32]int, error) {
	return d.LiveFlows(map[uint32]bool{gid: true}, timeout)
}

// LiveFlows counts, per generation, the flows of the given groups seen
// within timeout, in one pass over the flow table.
func (d *DataPlane) LiveFlows(groups map[uint32]bool, timeout time.Duration) (map[uint32]int, error) {
	now, err := coarseNow()
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]int)
	var (
		k reuseportGrmFlowKey
		v reuseportGrmFlow
	)
	it := d.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		if groups[k.Group] && now-v.SeenNs <= uint64(timeout.Nanoseconds()) {
			out[v.Gen]++
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate flows: %w", err)
	}
	return out, nil
}

// coarseNow reads CLOCK_MONOTONIC_COARSE, the clock of
// bpf_ktime_get_coarse_ns.
func coarseNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read coarse clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// Counters returns group gid's counters summed over CPUs, by name
// (rx_processed_total, ...). Group 0 counts traffic of no known group.
func (d *DataPlane) Counters(gid uint32) (map[string]uint64, error) {
	var per []reuseportGrmCounters
	if err := d.objs.Counters.Lookup(gid, &per); err != nil {
		return nil, fmt.Errorf("read counters of group %d: %w", gid, err)
	}
	out := make(map[string]uint64, len(counterNames))
	for _, c := range per {
		v := reflect.ValueOf(c)
		for i, name := range counterNames {
			out[name] += v.Field(counterFields[i]).Uint()
		}
	}
	return out, nil
}

// counterNames are the fields of grm_counters in snake case, in order, and
// counterFields their indexes in the generated struct.
var counterNames, counterFields = func() ([]string, []int) {
	t := reflect.TypeFor[reuseportGrmCounters]()
	var names []string
	var fields []int
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Name == "_" {
			continue // layout marker
		}
		if f.Type.Kind() != reflect.Uint64 {
			panic("grm_counters holds a non-counter field " + f.Name)
		}
		names = append(names, snake(f.Name))
		fields = append(fields, i)
	}
	return names, fields
}()

// CounterNames lists the counters in the order grmwrap.h declares them.
func CounterNames() []string { return append([]string(nil), counterNames...) }

// snake turns RxFlowOk into rx_flow_ok.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// bpffsMagic is BPF_FS_MAGIC.
const bpffsMagic = 0xcafe4a11

// EnsureBPFFS makes sure dir lies on a bpffs, mounting one at mountPoint
// (usually /sys/fs/bpf) when none is there.
func EnsureBPFFS(mountPoint string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(mountPoint, &st); err == nil && st.Type == bpffsMagic {
		return nil
	}
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", mountPoint, err)
	}
	if err := unix.Mount("bpf", mountPoint, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mountPoint, err)
	}
	return nil
}

// PinDir is where a supervisor named name pins its maps under mountPoint.
func PinDir(mountPoint, name string) string {
	return filepath.Join(mountPoint, "grmwrap", name)
}

var _ generations.DataPlane = (*DataPlane)(nil)

// LiveGroups returns the group ids that still have an open socket (left by
// an earlier supervisor whose maps were reopened), and forgets the sockets
// of the others.
func (d *DataPlane) LiveGroups() (map[uint32]bool, error) {
	live := make(map[uint32]bool)
	var (
		cookie uint64
		gid    uint32
		dead   []uint64
	)
	it := d.objs.SocketGroups.Iterate()
	for it.Next(&cookie, &gid) {
		if d.Alive(cookie) {
			live[gid] = true
		} else {
			dead = append(dead, cookie)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate socket groups: %w", err)
	}
	for _, c := range dead {
		d.RemoveSocket(c)
	}
	return live, nil
}
