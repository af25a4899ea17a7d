package notify

import "sync/atomic"

// counters count what the handler did with trapped syscalls.
type counters struct {
	bindTrapped       atomic.Uint64 // bind notifications received
	bindManaged       atomic.Uint64 // binds grmwrap performed and registered
	bindRepeated      atomic.Uint64 // re-delivered binds answered from the first result
	bindContinued     atomic.Uint64 // binds left to the kernel
	bindRefused       atomic.Uint64 // managed binds answered with an errno
	setsockoptTrapped atomic.Uint64 // setsockopt notifications received
	setsockoptKept    atomic.Uint64 // setsockopt on managed sockets answered without effect
	stale             atomic.Uint64 // notifications that went stale before the answer
}

// Counters returns a snapshot of the handler's counters by name.
func (h *Handler) Counters() map[string]uint64 {
	c := &h.counters
	return map[string]uint64{
		"bind_trapped":       c.bindTrapped.Load(),
		"bind_managed":       c.bindManaged.Load(),
		"bind_repeated":      c.bindRepeated.Load(),
		"bind_continued":     c.bindContinued.Load(),
		"bind_refused":       c.bindRefused.Load(),
		"setsockopt_trapped": c.setsockoptTrapped.Load(),
		"setsockopt_kept":    c.setsockoptKept.Load(),
		"stale":              c.stale.Load(),
	}
}
