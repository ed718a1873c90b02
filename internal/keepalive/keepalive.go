// Package keepalive decides how long a function's instance stays warm after
// an invocation and when to warm it again before the next one. A policy is
// a pure function of one function's (or app's) arrival history and the
// time: it reads no clock and starts no goroutine, so the live platform and
// `ebb sim` run the same code, and tests move `now` by hand.
//
// Policies:
//   - fixed:DURATION keeps an instance warm DURATION after each invocation
//     and never pre-warms (ebb's idle_timeout, the provider default).
//   - hybrid is the hybrid histogram policy of Shahrad et al., "Serverless
//     in the Wild" (USENIX ATC'20): a histogram of idle times per app gives
//     a pre-warm window (head percentile) and a keep-alive window (tail
//     percentile); apps without a representative histogram fall back to a
//     fixed keep-alive, and apps whose idle times mostly exceed the
//     histogram's range get a forecast of the next idle time. ebb prices
//     the candidate windows on the idle times seen so far, a cold start
//     at a few mean times between the app's calls per MB of its memory,
//     and takes the cheapest (see Hybrid).
package keepalive

import (
	"fmt"
	"strings"
	"time"
)

// A Policy makes the per-app History its decisions are computed from.
type Policy interface {
	// Name is the policy as Parse reads it ("fixed:10m", "hybrid").
	Name() string
	// New returns an empty history for one app.
	New() History
}

// Sized is a Policy whose histories can weigh the app's memory (MB) in
// their decisions; a caller that knows it uses NewSized instead of New.
type Sized interface {
	Policy
	NewSized(mb float64) History
}

// NewHistory returns p's history for an app of mb MB: NewSized when p is
// Sized and mb is known (above 0), New otherwise.
func NewHistory(p Policy, mb float64) History {
	if s, ok := p.(Sized); ok && mb > 0 {
		return s.NewSized(mb)
	}
	return p.New()
}

// Counted is a History that also takes how many calls an arrival stands
// for (a replay observes one arrival per minute with calls); a policy that
// prices cold starts per call uses it. Observe(at) is ObserveN(at, 1).
type Counted interface {
	History
	ObserveN(at time.Time, calls int64)
}

// History is one app's arrival history under a policy. It is not safe for
// concurrent use: the caller owns it (one per app, under its lock).
type History interface {
	// Observe records an invocation that arrived at `at`. Arrivals must be
	// observed in order; one earlier than the last is ignored.
	Observe(at time.Time)
	// Decide returns what to do after the last observed arrival, as seen
	// at now. It does not change the history.
	Decide(now time.Time) Decision
}

// Decision says how an app is kept after its last invocation at Last:
//   - without a pre-warm (PrewarmAt zero) the instance stays warm from Last
//     until UnloadAt, then is unloaded;
//   - with one, it is unloaded right after the invocation, loaded again at
//     PrewarmAt (ahead of the predicted next arrival) and unloaded at
//     UnloadAt if nothing came.
//
// A new arrival replaces the decision.
type Decision struct {
	Last      time.Time // the invocation the decision follows
	PrewarmAt time.Time // zero: no pre-warm, keep warm from Last
	UnloadAt  time.Time // warm until here (inclusive)
	// Why names the branch that made the decision (for status and tests):
	// "fixed", "histogram", "fallback" (too little history or a flat
	// histogram), "forecast" (idle times mostly out of range), "none" (no
	// arrival yet).
	Why string
}

// WarmFrom is when the decision has the instance warm from: PrewarmAt, or
// Last without a pre-warm.
func (d Decision) WarmFrom() time.Time {
	if d.PrewarmAt.IsZero() {
		return d.Last
	}
	return d.PrewarmAt
}

// Warm reports whether the decision has the instance warm at t.
func (d Decision) Warm(t time.Time) bool {
	if d.Last.IsZero() {
		return false
	}
	return !t.Before(d.WarmFrom()) && !t.After(d.UnloadAt)
}

// Action is what the live keeper should do at now.
type Action int

const (
	// Unload: the instance should not be warm now.
	Unload Action = iota
	// Keep: the instance should be warm now (kept or pre-warmed).
	Keep
)

// At returns whether the instance should be warm at now and when that next
// changes (zero: never again, until a new arrival). A live keeper sleeps
// until the returned time, then asks again.
func (d Decision) At(now time.Time) (Action, time.Time) {
	switch {
	case d.Last.IsZero() || now.After(d.UnloadAt):
		return Unload, time.Time{}
	case now.Before(d.WarmFrom()):
		return Unload, d.WarmFrom()
	default:
		return Keep, d.UnloadAt.Add(time.Nanosecond)
	}
}

// Parse reads a policy: "fixed:DURATION" (a Go duration, e.g. fixed:10m)
// or "hybrid" (the paper's defaults, see DefaultHybrid) with optional
// settings "hybrid:head=5,tail=99,fallback=10m" (see ParseHybrid).
func Parse(s string) (Policy, error) {
	name, arg, hasArg := strings.Cut(s, ":")
	switch name {
	case "fixed":
		if !hasArg {
			return nil, fmt.Errorf("parse policy %q: fixed needs a duration (fixed:10m)", s)
		}
		d, err := time.ParseDuration(arg)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("parse policy %q: duration %q must be a positive Go duration like 10m", s, arg)
		}
		return Fixed(d), nil
	case "hybrid":
		cfg := DefaultHybrid()
		if hasArg {
			if err := cfg.set(arg); err != nil {
				return nil, fmt.Errorf("parse policy %q: %w", s, err)
			}
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("parse policy %q: %w", s, err)
		}
		return cfg, nil
	default:
		return nil, fmt.Errorf("parse policy %q: unknown policy %q (want fixed:DURATION or hybrid)", s, name)
	}
}

// Fixed keeps an instance warm for its duration after each invocation and
// never pre-warms.
type Fixed time.Duration

// Name implements Policy.
func (f Fixed) Name() string { return "fixed:" + fmtDuration(time.Duration(f)) }

// New implements Policy.
func (f Fixed) New() History { return &fixedHistory{keep: time.Duration(f)} }

type fixedHistory struct {
	keep time.Duration
	last time.Time
}

func (h *fixedHistory) Observe(at time.Time) {
	if at.After(h.last) || h.last.IsZero() {
		h.last = at
	}
}

func (h *fixedHistory) Decide(time.Time) Decision {
	if h.last.IsZero() {
		return Decision{Why: "none"}
	}
	return Decision{Last: h.last, UnloadAt: h.last.Add(h.keep), Why: "fixed"}
}

// fmtDuration writes 10m rather than 10m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
