package bpf

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
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

// MaxSlots is how many sockets one generation can have on one address.
const MaxSlots = 256

// MaxFlowsLimit bounds Options.MaxFlows (a table of 2^25 entries, 2 GiB).
const MaxFlowsLimit = 1 << 24

// flowWays is GRM_FLOW_WAYS: entries per set of the flow table.
const flowWays = 8

// flowEntries is the size of the flow table that holds maxFlows flows:
// the power of two at or above twice as many. At most half full, a flow
// finds room in one of its two sets of 8 (simulated: no eviction in 10^6
// flows placed into 2^21 entries), so live flows do not evict each other.
func flowEntries(maxFlows uint32) uint32 {
	want := max(2*uint64(maxFlows), 2*flowWays)
	n := uint32(1) << bits.Len64(want-1)
	return n
}

// maxSockets is how many managed sockets one data plane holds.
const maxSockets = 65536

// banks is how many banks of slots a group has (grmwrap.h GRM_BANKS).
const banks = 2

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
	objs    reuseportMaps
	spec    *ebpf.CollectionSpec
	groups  *groupTable   // the groups array, mapped group by group; under mu
	refresh time.Duration // Options.Refresh

	mu    sync.Mutex
	progs map[uint32]*ebpf.Program // by group id

	// Mirrors of what the maps hold, under mu.
	socks   map[uint64]sockRef     // by cookie
	used    []bool                 // socket indexes in use
	next    uint32                 // where the search for a free index starts
	slotOf  map[slotKey]uint64     // (group, generation, slot) -> cookie
	bankSet map[uint32]*groupBanks // by group id
}

// sockRef is where a managed socket sits.
type sockRef struct {
	gid, gen, index, epoch uint32
}

type slotKey struct{ gid, gen, slot uint32 }

// groupBanks records which generation each bank of a group holds (0:
// none) and which bank the published state points at (-1: none).
type groupBanks struct {
	gen  [banks]uint32
	live int
}

// Load loads the program and creates (or reopens) its maps.
func Load(opts Options) (*DataPlane, error) {
	if opts.MaxFlows == 0 {
		opts.MaxFlows = 65536
	}
	if opts.Refresh == 0 {
		opts.Refresh = time.Second
	}
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("the steering program's flow table needs x86-64 memory ordering, not %s", runtime.GOARCH)
	}
	spec, err := loadReuseport()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	if opts.MaxFlows > MaxFlowsLimit {
		return nil, fmt.Errorf("flow table of %d flows: at most %d", opts.MaxFlows, MaxFlowsLimit)
	}
	entries := flowEntries(opts.MaxFlows)
	sets := entries / flowWays
	spec.Maps["flows"].MaxEntries = entries
	if err := spec.Variables["flow_set_mask"].Set(sets - 1); err != nil {
		return nil, fmt.Errorf("set flow table size: %w", err)
	}
	if err := spec.Variables["flow_set_shift"].Set(uint32(32 - bits.TrailingZeros32(sets))); err != nil {
		return nil, fmt.Errorf("set flow table size: %w", err)
	}
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
	d := &DataPlane{
		spec:    spec,
		refresh: opts.Refresh,
		progs:   make(map[uint32]*ebpf.Program),
		socks:   make(map[uint64]sockRef),
		used:    make([]bool, maxSockets),
		slotOf:  make(map[slotKey]uint64),
		bankSet: make(map[uint32]*groupBanks),
	}
	if err := spec.LoadAndAssign(&d.objs, &copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("maps pinned in %s do not match this grmwrap (another version or --max-flows); remove them to start afresh: %w", opts.PinDir, err)
		}
		return nil, fmt.Errorf("create steering maps: %w", err)
	}
	d.groups = newGroupTable(d.objs.Groups)
	if err := d.restore(); err != nil {
		d.groups.close()
		d.objs.Close()
		return nil, fmt.Errorf("reopen steering maps: %w", err)
	}
	// Load one copy now: a program the verifier refuses fails here, at
	// start, not at the first bind.
	if _, err := d.Program(1); err != nil {
		d.groups.close()
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
	d.groups.close()
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
		"epochs":        d.objs.Epochs,
		"sock_seen":     d.objs.SockSeen,
		"socket_groups": d.objs.SocketGroups,
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

// FlowCounts returns, for group gid, how many flows each generation has
// that were seen within timeout.
func (d *DataPlane) FlowCounts(gid uint32, timeout time.Duration) (map[uint32]int, error) {
	return d.LiveFlows(map[uint32]bool{gid: true}, timeout)
}

// LiveFlows counts, per generation, the flows of the given groups seen
// within timeout, in one pass over the flow table. A flow counts for the
// generation of its socket while that socket is in the data plane.
func (d *DataPlane) LiveFlows(groups map[uint32]bool, timeout time.Duration) (map[uint32]int, error) {
	now, err := coarseNow()
	if err != nil {
		return nil, err
	}
	type owner struct{ epoch, gen uint32 }
	d.mu.Lock()
	byIndex := make(map[uint32]owner, len(d.socks))
	for _, r := range d.socks {
		byIndex[r.index] = owner{r.epoch, r.gen}
	}
	d.mu.Unlock()
	out := make(map[uint32]int)
	err = d.scanFlows(func(_ uint32, f *reuseportGrmFlow) {
		if !groups[f.Key.Group] || now-f.SeenNs > uint64(timeout.Nanoseconds()) {
			return
		}
		if o, ok := byIndex[f.Index]; ok && o.epoch == f.Epoch {
			out[o.gen]++
		}
	})
	return out, err
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
// an earlier supervisor whose maps were reopened), keeps their socket
// indexes out of use, and forgets the sockets of the others.
func (d *DataPlane) LiveGroups() (map[uint32]bool, error) {
	live := make(map[uint32]bool)
	var (
		cookie uint64
		ref    reuseportGrmSocketRef
		dead   []uint64
	)
	d.mu.Lock()
	it := d.objs.SocketGroups.Iterate()
	for it.Next(&cookie, &ref) {
		if d.aliveLocked(cookie) && ref.Index < maxSockets {
			live[ref.Group] = true
			d.used[ref.Index] = true
		} else {
			dead = append(dead, cookie)
		}
	}
	d.mu.Unlock()
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate socket groups: %w", err)
	}
	for _, c := range dead {
		d.RemoveSocket(c)
	}
	return live, nil
}
