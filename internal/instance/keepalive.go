package instance

// What a live keep-alive policy (internal/keepalive/live, wired in the
// platform) asks of a starter: its cheapest pre-warm, whether it is warm,
// and letting go of what it built ahead once the policy unloads the
// version.

// PrewarmsSpare says whether the version's cheapest pre-warm is a spare
// the starter builds ahead (Prewarm): a python function's zygote and its
// forked spare child. Other runtimes pre-warm by starting an instance (an
// onnx one claims its spare process and loads the model).
func (s *Starter) PrewarmsSpare() bool { return s.python != nil && !s.python.disabled() }

// SpareWaiting says whether a spare built ahead waits to be claimed (a
// forked python child, an onnx process, a spare sandbox).
func (s *Starter) SpareWaiting() bool {
	switch {
	case s.python != nil:
		return s.python.spares.live()
	case s.onnx != nil:
		return s.onnx.spares.live()
	}
	return false
}

// Release lets go of what the version holds of the warm budget (a zygote
// and its spare, a spare process), unless instances still use it; it
// reports whether nothing is held afterwards.
func (s *Starter) Release() bool {
	h := s.hold
	if h == nil {
		return true
	}
	if h.status() == nil {
		return true
	}
	if h.evict != nil {
		h.evict()
	}
	return h.status() == nil
}

// KindInstance is an instance started ahead of a predicted call (a
// keep-alive pre-warm of a runtime without a spare to build).
const KindInstance = "instance"

// PrewarmHold accounts the instances a keep-alive policy starts ahead of a
// predicted call in the node's warm budget, like a zygote or a spare: the
// pre-warm starts only when the budget admits it, at the priority of the
// predicted arrival, and the budget may evict it (stop the instances) for
// something in higher demand. Until something of the function was measured
// it counts at the budget's estimate.
type PrewarmHold struct{ h *warmHolder }

// A nil hold admits always (no budget).
//
// NewPrewarmHold makes (and registers) the hold of version of fn: idle
// says no instance it accounts serves a request now, evict stops them.
func (b *WarmBudget) NewPrewarmHold(fn string, version int, idle func() bool, evict func()) *PrewarmHold {
	p := &PrewarmHold{}
	p.h = b.newHolder(fn, version, KindInstance, func() uint64 { return 0 }, idle, func() {
		evict()
		p.h.release()
	})
	p.h.register()
	return p
}

// Admit takes room for a pre-warm, evicting holders of lower priority;
// false when the budget has none. Admitting a held hold is a no-op.
func (p *PrewarmHold) Admit() bool { return p == nil || p.h.admit(false) == nil }

// Release gives the room back: the pre-warmed instances are gone, or in
// use (demand, not held ahead).
func (p *PrewarmHold) Release() {
	if p != nil {
		p.h.release()
	}
}

// Held says whether the hold has room now.
func (p *PrewarmHold) Held() bool { return p != nil && p.h.status() != nil }

// Close forgets the hold (its version is going).
func (p *PrewarmHold) Close() {
	if p != nil {
		p.h.unregister()
	}
}
