package generations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// Dissector decides what a flow is.
type Dissector uint32

// The dissectors, numbered as the data plane numbers them.
const (
	DissectorFlow Dissector = 0 // exact 4-tuple flows, remembered in a table
	DissectorNoop Dissector = 1 // no flows: every packet to the working generation
)

// ParseDissector reads a --dissector value.
func ParseDissector(s string) (Dissector, error) {
	switch s {
	case "flow":
		return DissectorFlow, nil
	case "noop":
		return DissectorNoop, nil
	}
	return 0, fmt.Errorf("dissector %q: want flow or noop", s)
}

func (d Dissector) String() string {
	if d == DissectorNoop {
		return "noop"
	}
	return "flow"
}

// GroupState is what the data plane knows of one group.
type GroupState struct {
	WorkingGen  uint32
	Count       uint32 // sockets of the working generation: slots 0..Count-1
	Dissector   Dissector
	FlowTimeout time.Duration
}

// DataPlane is the port the eBPF data plane satisfies. Group ids are
// 1..MaxGroups-1 and handed out by Steering.
type DataPlane interface {
	SetGroup(gid uint32, st GroupState) error
	ClearGroup(gid uint32) error
	// AddSocket puts the bound socket f into group gid as (gen, slot) and
	// returns its cookie; f stays the caller's.
	AddSocket(gid, gen, slot uint32, f *os.File) (uint64, error)
	SetSlot(gid, gen, slot uint32, cookie uint64) error
	DeleteSlot(gid, gen, slot uint32) error
	RemoveSocket(cookie uint64)
	// Alive reports whether the socket is still open (in the data plane).
	Alive(cookie uint64) bool
}

// ErrTooManyGroups means every group id is in use.
var ErrTooManyGroups = errors.New("too many managed addresses")

// Steering keeps the generations and slots of every group and mirrors them
// into the data plane. It is the SocketSink of a supervisor. Safe for
// concurrent use.
type Steering struct {
	log       *slog.Logger
	dp        DataPlane
	maxGroups uint32
	dissector Dissector
	timeout   time.Duration

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change of sockets
	working  uint32
	groups   map[GroupKey]*group
	reserved map[uint32]bool // group ids in use outside this supervisor
	byInode  map[uint64]*group
}

type group struct {
	id   uint32
	key  GroupKey
	gens map[uint32][]member // generation -> sockets, slot = index
}

type member struct {
	cookie uint64
	inode  uint64
	pid    int
}

// SteeringConfig configures NewSteering.
type SteeringConfig struct {
	MaxGroups   uint32 // group ids are 1..MaxGroups-1
	Dissector   Dissector
	FlowTimeout time.Duration
	// Reserved group ids are never handed out (a previous supervisor's
	// groups that still have live sockets).
	Reserved []uint32
}

// NewSteering returns a Steering over dp. The working generation starts
// at 0 (none) until SetWorking.
func NewSteering(log *slog.Logger, dp DataPlane, cfg SteeringConfig) *Steering {
	s := &Steering{
		log:       log,
		dp:        dp,
		maxGroups: cfg.MaxGroups,
		dissector: cfg.Dissector,
		timeout:   cfg.FlowTimeout,
		groups:    make(map[GroupKey]*group),
		reserved:  make(map[uint32]bool),
		byInode:   make(map[uint64]*group),
		changed:   make(chan struct{}),
	}
	for _, id := range cfg.Reserved {
		s.reserved[id] = true
	}
	return s
}

// AddSocket registers s in its group under its generation, in the next
// free slot, and closes s.File. A socket already registered is not added
// again.
func (s *Steering) AddSocket(_ context.Context, sock Socket) error {
	if sock.File != nil {
		defer sock.File.Close() // only needed to insert; holding it would keep a closed socket alive
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byInode[sock.Inode]; ok {
		return nil
	}
	if sock.File == nil {
		return fmt.Errorf("socket of %s: no file", sock.Group)
	}
	g, err := s.groupLocked(sock.Group)
	if err != nil {
		return err
	}
	slot := uint32(len(g.gens[sock.Generation]))
	cookie, err := s.dp.AddSocket(g.id, sock.Generation, slot, sock.File)
	if err != nil {
		s.dropIfEmptyLocked(g)
		return fmt.Errorf("add socket to %s: %w", sock.Group, err)
	}
	g.gens[sock.Generation] = append(g.gens[sock.Generation], member{cookie: cookie, inode: sock.Inode, pid: sock.PID})
	s.byInode[sock.Inode] = g
	s.notifyLocked()
	if sock.Generation == s.working {
		return s.publishLocked(g)
	}
	return nil
}

// groupLocked returns key's group, creating it with a free id.
func (s *Steering) groupLocked(key GroupKey) (*group, error) {
	if g, ok := s.groups[key]; ok {
		return g, nil
	}
	used := make(map[uint32]bool, len(s.groups))
	for _, g := range s.groups {
		used[g.id] = true
	}
	for id := uint32(1); id < s.maxGroups; id++ {
		if used[id] || s.reserved[id] {
			continue
		}
		g := &group{id: id, key: key, gens: make(map[uint32][]member)}
		s.groups[key] = g
		if err := s.publishLocked(g); err != nil {
			delete(s.groups, key)
			return nil, err
		}
		s.log.Debug("group created", "group", key, "id", id)
		return g, nil
	}
	return nil, fmt.Errorf("%w: %d groups in use", ErrTooManyGroups, len(used)+len(s.reserved))
}

// publishLocked writes g's state: the working generation and its count.
func (s *Steering) publishLocked(g *group) error {
	return s.dp.SetGroup(g.id, GroupState{
		WorkingGen:  s.working,
		Count:       uint32(len(g.gens[s.working])),
		Dissector:   s.dissector,
		FlowTimeout: s.timeout,
	})
}

// dropIfEmptyLocked forgets a group without sockets and frees its id.
func (s *Steering) dropIfEmptyLocked(g *group) {
	for _, m := range g.gens {
		if len(m) > 0 {
			return
		}
	}
	delete(s.groups, g.key)
	if err := s.dp.ClearGroup(g.id); err != nil {
		s.log.Warn("clear group", "group", g.key, "err", err)
	}
	s.log.Debug("group removed", "group", g.key, "id", g.id)
}

// SetWorking makes gen the working generation of every group: new flows go
// to its sockets from now on.
func (s *Steering) SetWorking(gen uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.working = gen
	var errs []error
	for _, g := range s.groups {
		if err := s.publishLocked(g); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Working returns the working generation (0: none yet).
func (s *Steering) Working() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.working
}

// Reconcile drops sockets the server has closed and repacks slots so that
// every generation's slots stay dense. It returns how many sockets left.
func (s *Steering) Reconcile() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	removed := 0
	var errs []error
	for _, g := range s.groups {
		for gen, ms := range g.gens {
			for i := 0; i < len(ms); {
				if s.dp.Alive(ms[i].cookie) {
					i++
					continue
				}
				var err error
				ms, err = s.removeSlotLocked(g, gen, ms, i)
				if err != nil {
					errs = append(errs, err)
				}
				removed++
			}
			g.gens[gen] = ms
			if len(ms) == 0 {
				delete(g.gens, gen)
			}
		}
		s.dropIfEmptyLocked(g)
	}
	return removed, errors.Join(errs...)
}

// removeSlotLocked removes ms[i] of generation gen: the last socket moves
// into its slot, the count shrinks, then the last slot is emptied, so a
// reader never finds a hole below the count.
func (s *Steering) removeSlotLocked(g *group, gen uint32, ms []member, i int) ([]member, error) {
	gone := ms[i]
	last := len(ms) - 1
	var errs []error
	if i != last {
		errs = append(errs, s.dp.SetSlot(g.id, gen, uint32(i), ms[last].cookie))
		ms[i] = ms[last]
	}
	ms = ms[:last]
	g.gens[gen] = ms
	if gen == s.working {
		errs = append(errs, s.publishLocked(g))
	}
	errs = append(errs, s.dp.DeleteSlot(g.id, gen, uint32(last)))
	s.dp.RemoveSocket(gone.cookie)
	delete(s.byInode, gone.inode)
	s.notifyLocked()
	s.log.Info("socket left steering", "group", g.key, "generation", gen, "inode", gone.inode)
	return ms, errors.Join(errs...)
}

// notifyLocked wakes everyone waiting on Changed.
func (s *Steering) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of sockets.
func (s *Steering) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Bound returns the groups where gen has at least one socket.
func (s *Steering) Bound(gen uint32) []GroupKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []GroupKey
	for _, g := range s.groups {
		if len(g.gens[gen]) > 0 {
			out = append(out, g.key)
		}
	}
	return out
}

// SocketCount counts gen's sockets in steering.
func (s *Steering) SocketCount(gen uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, g := range s.groups {
		n += len(g.gens[gen])
	}
	return n
}

// Released is a socket ReleaseGeneration took out of steering.
type Released struct {
	Group GroupKey
	Inode uint64
	PID   int
}

// ReleaseGeneration takes every socket of gen out of steering (its
// instance has exited, or is being stopped) and returns them.
func (s *Steering) ReleaseGeneration(gen uint32) ([]Released, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	var out []Released
	for _, g := range s.groups {
		ms := g.gens[gen]
		for _, m := range ms {
			out = append(out, Released{Group: g.key, Inode: m.inode, PID: m.pid})
		}
		for len(ms) > 0 {
			var err error
			ms, err = s.removeSlotLocked(g, gen, ms, len(ms)-1)
			errs = append(errs, err)
		}
		delete(g.gens, gen)
		s.dropIfEmptyLocked(g)
	}
	return out, errors.Join(errs...)
}

// GroupInfo describes one group for status output.
type GroupInfo struct {
	Key GroupKey
	ID  uint32
	// Sockets counts the sockets of each generation.
	Sockets map[uint32]int
}

// Groups returns every group, ordered by id.
func (s *Steering) Groups() []GroupInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]GroupInfo, 0, len(s.groups))
	for _, g := range s.groups {
		gi := GroupInfo{Key: g.key, ID: g.id, Sockets: make(map[uint32]int)}
		for gen, ms := range g.gens {
			gi.Sockets[gen] = len(ms)
		}
		out = append(out, gi)
	}
	slices.SortFunc(out, func(a, b GroupInfo) int { return int(a.ID) - int(b.ID) })
	return out
}

// Cookies returns the cookies of generation gen's sockets, in any order.
func (s *Steering) Cookies(gen uint32) []uint64 {
	return s.members(gen, func(m member) uint64 { return m.cookie })
}

// Sockets returns the inodes of generation gen's sockets, in any order.
func (s *Steering) Sockets(gen uint32) []uint64 {
	return s.members(gen, func(m member) uint64 { return m.inode })
}

// members returns what of generation gen's sockets field picks.
func (s *Steering) members(gen uint32, field func(member) uint64) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for _, g := range s.groups {
		for _, m := range g.gens[gen] {
			out = append(out, field(m))
		}
	}
	return out
}
