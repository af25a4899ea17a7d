package generations

import (
	"context"
	"slices"
	"sync"
)

// Registry records the managed sockets of every generation. It is the
// SocketSink used before a data plane is attached, and the bookkeeping the
// data plane builds on. It is safe for concurrent use.
type Registry struct {
	mu      sync.Mutex
	gens    map[uint32][]Socket // File fields are always nil here
	byInode map[uint64]uint32   // socket inode -> generation
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{gens: make(map[uint32][]Socket), byInode: make(map[uint64]uint32)}
}

// AddSocket records s under its generation and closes its file. A socket
// already recorded (same inode, in any generation) is not recorded again.
func (r *Registry) AddSocket(_ context.Context, s Socket) error {
	if s.File != nil {
		// The copy was only needed to bind; holding it would keep a socket
		// the server closes alive. Close errors on a socket copy carry no
		// information.
		_ = s.File.Close()
		s.File = nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byInode[s.Inode]; ok {
		return nil
	}
	r.byInode[s.Inode] = s.Generation
	r.gens[s.Generation] = append(r.gens[s.Generation], s)
	return nil
}

// Sockets returns the sockets recorded for generation gen, in bind order.
func (r *Registry) Sockets(gen uint32) []Socket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.gens[gen])
}

// Release forgets every socket of generation gen and returns them.
func (r *Registry) Release(gen uint32) []Socket {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.gens[gen]
	delete(r.gens, gen)
	for _, sock := range s {
		delete(r.byInode, sock.Inode)
	}
	return s
}
