// Package live applies keep-alive decisions (package keepalive) to running
// function versions. A Keeper per version owns its arrival History and
// the current Decision; one Scheduler per platform owns the only timer
// goroutine, a heap of the keepers' next changes, and at each one asks the
// keeper's decision what to do now (Decision.At) and tells the version's
// Target: unload what the policy no longer keeps warm, or pre-warm ahead of
// a predicted arrival.
//
// Decisions are pure functions of (history, now); the keeper only applies
// them, and tests move now (Scheduler.Advance) instead of sleeping.
package live

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb/internal/keepalive"
)

// Target is what a keeper acts on: one function version's warm capacity.
// Its methods are called from the scheduler's goroutine (or a test's
// Advance), never with a keeper's lock held.
type Target interface {
	// Unload lets go of what the policy no longer keeps warm at now: the
	// instances idle past the keeper's IdleDeadline, and what was built
	// ahead of need (a zygote, a spare) once no instance uses it. It
	// reports whether nothing is left warm; the keeper asks again shortly
	// when something was (an instance still stopping, busy).
	Unload(now time.Time) (done bool)
	// Prewarm warms the version ahead of a predicted arrival along its
	// cheapest path (a forked spare, a spare process, a started instance)
	// and reports whether it started anything (the warm budget may have
	// had no room, or the version is warm already).
	Prewarm(now time.Time) bool
}

// Observer is told of what keepers do, for metrics. Calls come without
// locks held.
type Observer interface {
	// Prewarmed counts a pre-warm that started something.
	Prewarmed(fn string)
	// PrewarmUsed counts an arrival that found its pre-warm in place.
	PrewarmUsed(fn string)
	// PrewarmUnused counts a pre-warm unloaded with no arrival.
	PrewarmUnused(fn string)
	// IdleWarm adds time the policy kept the version warm without an
	// invocation.
	IdleWarm(fn string, d time.Duration)
}

// unloadRetry is how soon a keeper asks its target to unload again when
// something was still warm (an instance stopping, a zygote with a child
// still exiting).
const unloadRetry = time.Second

// Scheduler owns the timer of every Keeper on a node: one goroutine
// (Start) that sleeps until the earliest keeper's next change and applies
// it. Safe for concurrent use.
type Scheduler struct {
	now func() time.Time
	obs Observer

	mu      sync.Mutex // guards heap, the keepers' due and idx, byKey, started, closed
	heap    keeperHeap
	byKey   map[key]*Keeper
	started bool
	closed  bool
	wake    chan struct{} // buffered 1: the earliest due time changed
	stop    chan struct{}
	done    chan struct{}
}

type key struct {
	fn      string
	version int
}

// NewScheduler makes a scheduler reading the clock now (nil: time.Now) and
// telling obs (nil: nobody) of what keepers do. It runs nothing until
// Start.
func NewScheduler(now func() time.Time, obs Observer) *Scheduler {
	if now == nil {
		now = time.Now
	}
	if obs == nil {
		obs = nopObserver{}
	}
	return &Scheduler{now: now, obs: obs, byKey: map[key]*Keeper{}, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Start starts the scheduler's goroutine; Close stops it.
func (s *Scheduler) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	go s.loop()
}

// Close stops the goroutine and waits for it; keepers are left as they
// are (their targets are closed by their owners).
func (s *Scheduler) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	started := s.started
	s.mu.Unlock()
	close(s.stop)
	if started {
		<-s.done
	}
}

// Poke makes the goroutine read the clock again: for a clock that moved
// other than with real time (tests).
func (s *Scheduler) Poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Scheduler) loop() {
	defer close(s.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := s.Advance(s.now())
		wait := time.Hour
		if !next.IsZero() {
			wait = min(max(next.Sub(s.now()), 0), time.Hour)
		}
		t.Reset(wait)
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}

// Advance applies every keeper change due at or before now, and returns
// when the next one is due (zero: none). The goroutine calls it; tests call
// it directly with the time they moved to.
func (s *Scheduler) Advance(now time.Time) time.Time {
	for {
		s.mu.Lock()
		if len(s.heap) == 0 {
			s.mu.Unlock()
			return time.Time{}
		}
		k := s.heap[0]
		if k.due.After(now) {
			due := k.due
			s.mu.Unlock()
			return due
		}
		heap.Pop(&s.heap)
		k.dueAt.Store(0)
		s.mu.Unlock()
		if next := k.apply(now); !next.IsZero() {
			s.schedule(k, next)
		}
	}
}

// schedule puts k's next change at t, earlier than one it had (a later
// one is found by apply, which asks again).
func (s *Scheduler) schedule(k *Keeper, t time.Time) {
	if d := k.dueAt.Load(); d != 0 && d <= t.UnixNano() {
		return // due as early already: no shared lock on the invocation path
	}
	s.mu.Lock()
	if k.removed {
		s.mu.Unlock()
		return
	}
	first := false
	if k.idx >= 0 {
		if !t.Before(k.due) {
			s.mu.Unlock()
			return
		}
		k.due = t
		heap.Fix(&s.heap, k.idx)
	} else {
		k.due = t
		heap.Push(&s.heap, k)
	}
	k.dueAt.Store(t.UnixNano())
	first = s.heap[0] == k
	s.mu.Unlock()
	if first {
		s.Poke()
	}
}

// Add makes the keeper of version of fn under policy, acting on target;
// idle is the keep-alive of an instance no arrival was observed for (a
// floor instance, one started before the first arrival).
func (s *Scheduler) Add(fn string, version int, policy keepalive.Policy, target Target, idle time.Duration) *Keeper {
	return s.AddSized(fn, version, policy, target, idle, 0)
}

// AddSized is Add for a function of mb MB (its memory limit): a policy that
// prices idle memory (keepalive.Sized, as hybrid) weighs it as the replay
// weighs an app's memory; 0 prices it as the paper's median app.
func (s *Scheduler) AddSized(fn string, version int, policy keepalive.Policy, target Target, idle time.Duration, mb float64) *Keeper {
	k := &Keeper{s: s, fn: fn, version: version, policy: policy, target: target, idle: idle, hist: keepalive.NewHistory(policy, mb), idx: -1}
	if h, ok := policy.(*keepalive.Hybrid); ok {
		k.bin = h.Bin
	}
	s.mu.Lock()
	s.byKey[key{fn, version}] = k
	s.mu.Unlock()
	return k
}

// Lookup returns the keeper of version of fn; nil when it has none.
func (s *Scheduler) Lookup(fn string, version int) *Keeper {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byKey[key{fn, version}]
}

// Remove forgets k: it acts no more (its version is going).
func (k *Keeper) Remove() {
	s := k.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k.removed = true
	if k.idx >= 0 {
		heap.Remove(&s.heap, k.idx)
	}
	k.dueAt.Store(0)
	if s.byKey[key{k.fn, k.version}] == k {
		delete(s.byKey, key{k.fn, k.version})
	}
}

// Keeper keeps one function version under a policy: it owns the
// version's History and current Decision.
type Keeper struct {
	s       *Scheduler
	fn      string
	version int
	policy  keepalive.Policy
	target  Target
	idle    time.Duration
	// bin is the policy's histogram bin: arrivals closer than it to the
	// last one observed are one arrival to the policy (as in the replay,
	// docs/keepalive.md), and cost only a time stamp.
	bin time.Duration

	// dueAt mirrors due (UnixNano) while k is in the heap, 0 otherwise, so
	// that an arrival finds out without s.mu that k is due soon enough.
	dueAt atomic.Int64
	// under s.mu
	due     time.Time
	idx     int
	removed bool

	mu   sync.Mutex // guards the fields below
	hist keepalive.History
	d    keepalive.Decision
	// lastCall is the latest arrival, lastObs the latest the policy saw;
	// the decision is shifted by their difference (effective).
	lastCall, lastObs time.Time
	tried             bool // Prewarm was called for d
	prewarmed         bool // and started something
	closed            bool // d's warm window was accounted (ended, unloaded)
	counts            Counts
}

// Counts are a keeper's totals since it was made.
type Counts struct {
	Prewarms        uint64        // pre-warms that started something
	PrewarmedStarts uint64        // arrivals that found their pre-warm in place
	UnusedPrewarms  uint64        // pre-warms unloaded with no arrival
	IdleWarm        time.Duration // time kept warm without an invocation, as the policy decided it
}

// Observe records an invocation that arrived at `at`; warm says it found
// something started ahead (a warm instance, a spare), which after a
// pre-warm makes it a pre-warmed start. It is the one call on the
// invocation path: a time stamp under the keeper's own lock, and once per
// bin the policy's Observe and Decide.
func (k *Keeper) Observe(at time.Time, warm bool) {
	k.mu.Lock()
	if k.sameBinLocked(at) {
		k.mu.Unlock()
		return
	}
	used, unused, idle := k.closeLocked(at, warm)
	k.hist.Observe(at)
	k.d = k.hist.Decide(at)
	d := k.d
	k.lastObs, k.lastCall = at, at
	k.tried, k.prewarmed, k.closed = false, false, false
	k.mu.Unlock()
	k.report(used, unused, idle)
	// A pre-warm decision unloads right after the invocation: apply it at
	// once; a keep-alive needs nothing until it runs out.
	next := at
	if d.PrewarmAt.IsZero() {
		next = d.UnloadAt.Add(time.Nanosecond)
	}
	k.s.schedule(k, next)
}

// Seed replays arrivals from before the keeper was made into its history,
// in order: after a restart, the minutes with calls in the node's usage
// rollups, so that the policy starts from what it had learned rather than
// from nothing. It does nothing once the keeper has observed an arrival.
// The decision after the last one acts from now on: a pre-warm still ahead
// is scheduled; a keep-alive from the last call is not counted as idle
// warm time (nothing was warm while the node was down).
func (k *Keeper) Seed(arrivals []time.Time) {
	k.mu.Lock()
	if !k.lastObs.IsZero() || len(arrivals) == 0 {
		k.mu.Unlock()
		return
	}
	for _, at := range arrivals {
		k.hist.Observe(at)
	}
	last := arrivals[len(arrivals)-1]
	k.d = k.hist.Decide(last)
	k.lastObs, k.lastCall = last, last
	k.tried, k.prewarmed = false, false
	k.closed = k.d.PrewarmAt.IsZero()
	d := k.d
	k.mu.Unlock()
	// Act at the decision's next change, not now: unloading now would let
	// go of what a restart built ahead by recent use before the pre-warm
	// window it is kept for.
	switch act, next := d.At(k.s.now()); {
	case act == keepalive.Keep:
		k.s.schedule(k, k.s.now())
	case !next.IsZero():
		k.s.schedule(k, next)
	}
}

// sameBinLocked says whether a call at `at` is one arrival with the last
// one observed (within a bin of it, or older), noting it as the latest
// call.
func (k *Keeper) sameBinLocked(at time.Time) bool {
	if k.lastObs.IsZero() {
		return false
	}
	if at.Sub(k.lastObs) < k.bin || at.Before(k.lastObs) {
		if at.After(k.lastCall) {
			k.lastCall = at
		}
		return true
	}
	return false
}

// closeLocked accounts the current decision's warm window as ended at t
// (an arrival, or the unload): the idle warm time in it, and whether its
// pre-warm was used (an arrival in the window that found it warm).
func (k *Keeper) closeLocked(t time.Time, warm bool) (used, unused bool, idle time.Duration) {
	if k.closed || k.d.Last.IsZero() {
		return false, false, 0
	}
	k.closed = true
	d := k.effectiveLocked()
	from, to := d.WarmFrom(), d.UnloadAt
	if !k.prewarmed && !d.PrewarmAt.IsZero() {
		// Its pre-warm never started anything: nothing was warm.
		from = to
	}
	if t.Before(to) {
		to = t
	}
	if to.After(from) {
		idle = to.Sub(from)
	}
	if k.prewarmed {
		if warm && !t.Before(d.PrewarmAt) && !t.After(d.UnloadAt) {
			used = true
			k.counts.PrewarmedStarts++
		} else {
			unused = true
			k.counts.UnusedPrewarms++
		}
	}
	k.counts.IdleWarm += idle
	return used, unused, idle
}

func (k *Keeper) report(used, unused bool, idle time.Duration) {
	if used {
		k.s.obs.PrewarmUsed(k.fn)
	}
	if unused {
		k.s.obs.PrewarmUnused(k.fn)
	}
	if idle > 0 {
		k.s.obs.IdleWarm(k.fn, idle)
	}
}

// effectiveLocked is the decision shifted to the latest call: the policy
// sees one arrival per bin, the keep-alive runs from the last one.
func (k *Keeper) effectiveLocked() keepalive.Decision {
	d := k.d
	if shift := k.lastCall.Sub(k.lastObs); shift > 0 && !d.Last.IsZero() {
		d.Last = d.Last.Add(shift)
		d.UnloadAt = d.UnloadAt.Add(shift)
		if !d.PrewarmAt.IsZero() {
			d.PrewarmAt = d.PrewarmAt.Add(shift)
		}
	}
	return d
}

// apply does what the decision says at now and returns when to ask again
// (zero: not until the next arrival).
func (k *Keeper) apply(now time.Time) time.Time {
	k.mu.Lock()
	d := k.effectiveLocked()
	act, next := d.At(now)
	prewarm := act == keepalive.Keep && !d.PrewarmAt.IsZero() && !k.tried
	if prewarm {
		k.tried = true
	}
	var used, unused bool
	var idle time.Duration
	if act == keepalive.Unload && !d.Last.IsZero() && now.After(d.UnloadAt) {
		used, unused, idle = k.closeLocked(now, false)
	}
	k.mu.Unlock()
	k.report(used, unused, idle)
	switch {
	case prewarm:
		if k.target.Prewarm(now) {
			k.mu.Lock()
			counted := k.tried && !k.closed // no arrival replaced the decision meanwhile
			if counted {
				k.prewarmed = true
				k.counts.Prewarms++
			}
			k.mu.Unlock()
			if counted {
				k.s.obs.Prewarmed(k.fn)
			}
		}
	case act == keepalive.Unload && !d.Last.IsZero():
		if !k.target.Unload(now) {
			retry := now.Add(unloadRetry)
			if next.IsZero() || retry.Before(next) {
				next = retry
			}
		}
	}
	return next
}

// IdleDeadline is when an instance last used at lastUsed is to be
// stopped as idle (the pool's idle stop): the learned keep-alive after its
// last use; with a pre-warm pending, right after the invocation; for a
// pre-warmed instance, the decision's UnloadAt.
func (k *Keeper) IdleDeadline(lastUsed time.Time) time.Time {
	k.mu.Lock()
	d := k.effectiveLocked()
	k.mu.Unlock()
	switch {
	case d.Last.IsZero():
		return lastUsed.Add(k.idle)
	case d.PrewarmAt.IsZero():
		return lastUsed.Add(d.UnloadAt.Sub(d.Last))
	case lastUsed.Before(d.PrewarmAt):
		return lastUsed
	default:
		return d.UnloadAt
	}
}

// NextArrival is when the policy, at now, expects the version's next
// call: the start of its pre-warm window; false when it predicts none (no
// history, a plain keep-alive, or the window passed without a call).
func (k *Keeper) NextArrival(now time.Time) (time.Time, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := k.effectiveLocked()
	if d.PrewarmAt.IsZero() || now.After(d.UnloadAt) {
		return time.Time{}, false
	}
	return d.PrewarmAt, true
}

// Status is a keeper as status output shows it.
type Status struct {
	Policy string
	// Why names the branch of the policy that made the decision
	// (keepalive.Decision.Why).
	Why string
	// Warm says whether the decision has the version warm now.
	Warm bool
	// PrewarmAt is the next pre-warm (zero: none pending); UnloadAt when
	// the version is unloaded (zero: nothing warm to unload).
	PrewarmAt, UnloadAt time.Time
	Counts
}

// Status reports the keeper at now.
func (k *Keeper) Status(now time.Time) Status {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := k.effectiveLocked()
	st := Status{Policy: k.policy.Name(), Why: d.Why, Counts: k.counts}
	if d.Last.IsZero() {
		st.Why = "none"
		return st
	}
	act, _ := d.At(now)
	st.Warm = act == keepalive.Keep
	if !d.PrewarmAt.IsZero() && now.Before(d.PrewarmAt) {
		st.PrewarmAt = d.PrewarmAt
	}
	if !now.After(d.UnloadAt) {
		st.UnloadAt = d.UnloadAt
	}
	return st
}

// keeperHeap orders keepers by due time.
type keeperHeap []*Keeper

func (h keeperHeap) Len() int           { return len(h) }
func (h keeperHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h keeperHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *keeperHeap) Push(x any) {
	k := x.(*Keeper)
	k.idx = len(*h)
	*h = append(*h, k)
}
func (h *keeperHeap) Pop() any {
	old := *h
	k := old[len(old)-1]
	old[len(old)-1] = nil
	k.idx = -1
	*h = old[:len(old)-1]
	return k
}

type nopObserver struct{}

func (nopObserver) Prewarmed(string)               {}
func (nopObserver) PrewarmUsed(string)             {}
func (nopObserver) PrewarmUnused(string)           {}
func (nopObserver) IdleWarm(string, time.Duration) {}
