package dispatch

import (
	"cmp"
	"slices"
	"time"
)

// Phase is where an instance is in its life, as Stats reports it.
type Phase string

// Phases of an instance.
const (
	PhaseStarting Phase = "starting" // Starter.Start has not returned yet
	PhaseIdle     Phase = "idle"     // ready, no request in flight
	PhaseBusy     Phase = "busy"     // ready, at least one request in flight
	PhaseStopping Phase = "stopping" // out of the pool, Stop not yet returned
)

// InstanceStats describes one instance of a pool.
type InstanceStats struct {
	ID       string
	Phase    Phase
	InFlight int
	// StartedAt is when its start began; LastUsed is when a lease on it was
	// last granted or given back (zero while starting).
	StartedAt, LastUsed time.Time
	Leases              uint64
}

// State is what Plan decides from.
type State struct {
	// Instances may list instances in any phase; Plan counts the idle and
	// busy ones as running and ignores the others (starting ones are counted
	// through Starting, stopping ones are already on their way out).
	Instances []InstanceStats
	// Waiting is the number of requests waiting for a slot.
	Waiting int
	// Starting is the number of starts in progress.
	Starting int
}

// Decision is what Plan wants done: Start more instances, Stop these (by ID).
type Decision struct {
	Start int
	Stop  []string
}

// Plan is the pure scaling decision for (state, now). It stops instances idle
// for at least IdleTimeout (or past cfg.IdleDeadline), least recently used first, but never below
// MinInstances and never while requests wait (they are about to need the
// capacity); it starts enough instances to reach MinInstances, counting those
// already starting. Starting for waiting requests is not Plan's business: the
// pool does that the moment a request arrives.
func Plan(cfg Config, s State, now time.Time) Decision {
	cfg.setDefaults()
	floor := max(cfg.MinInstances, 0)
	running := 0
	var expired []InstanceStats
	for _, in := range s.Instances {
		switch in.Phase {
		case PhaseBusy:
			running++
		case PhaseIdle:
			running++
			if in.InFlight == 0 && !now.Before(cfg.idleDeadline(in.LastUsed)) {
				expired = append(expired, in)
			}
		}
	}

	var d Decision
	if need := floor - running - s.Starting; need > 0 {
		d.Start = min(need, max(cfg.MaxInstances-running-s.Starting, 0))
	}
	// Only running instances hold the floor: a start in progress may still
	// fail, so it is not counted on to replace one stopped now.
	n := min(len(expired), running-floor)
	if s.Waiting > 0 || n <= 0 {
		return d
	}
	slices.SortFunc(expired, func(a, b InstanceStats) int {
		return cmp.Or(a.LastUsed.Compare(b.LastUsed), a.StartedAt.Compare(b.StartedAt), cmp.Compare(a.ID, b.ID))
	})
	d.Stop = make([]string, n)
	for i := range n {
		d.Stop[i] = expired[i].ID
	}
	return d
}
