package generations

import (
	"context"
	"fmt"
	"time"
)

// Bindings is what bound readiness needs of the steering state.
type Bindings interface {
	Working() uint32
	Bound(gen uint32) []GroupKey
	Changed() <-chan struct{}
}

// BoundReadiness is ready when the new generation has a socket in every
// group where the working generation has one (and in at least one group).
type BoundReadiness struct{ B Bindings }

// Wait implements Readiness.
func (r BoundReadiness) Wait(ctx context.Context, gen uint32, p Process) error {
	for {
		changed := r.B.Changed()
		have := make(map[GroupKey]bool)
		for _, k := range r.B.Bound(gen) {
			have[k] = true
		}
		var missing []GroupKey
		for _, k := range r.B.Bound(r.B.Working()) {
			if !have[k] {
				missing = append(missing, k)
			}
		}
		if len(have) > 0 && len(missing) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-p.Done():
			return fmt.Errorf("generation %d exited with status %d before binding", gen, p.ExitCode())
		case <-ctx.Done():
			if len(have) == 0 {
				return fmt.Errorf("generation %d bound no managed address in time: %w", gen, ctx.Err())
			}
			return fmt.Errorf("generation %d did not bind %v in time: %w", gen, missing, ctx.Err())
		}
	}
}

// DelayReadiness is ready a fixed time after the start.
type DelayReadiness struct{ D time.Duration }

// Wait implements Readiness.
func (r DelayReadiness) Wait(ctx context.Context, gen uint32, p Process) error {
	t := time.NewTimer(r.D)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-p.Done():
		return fmt.Errorf("generation %d exited with status %d", gen, p.ExitCode())
	case <-ctx.Done():
		return fmt.Errorf("generation %d: delay %v longer than the readiness timeout: %w", gen, r.D, ctx.Err())
	}
}
