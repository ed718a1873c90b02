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
