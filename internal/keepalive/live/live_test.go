package live

import (
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/keepalive"
)

// target records what a keeper asked of it; warm says what a pre-warm
// starts and whether an unload leaves nothing behind.
type target struct {
	mu       sync.Mutex
	unloads  []time.Time
	prewarms []time.Time
	refuse   bool // Prewarm starts nothing (no room in the budget)
	busy     bool // Unload leaves something warm
	unloaded chan time.Time
}

func (t *target) Unload(now time.Time) bool {
	t.mu.Lock()
	t.unloads = append(t.unloads, now)
	busy := t.busy
	t.mu.Unlock()
	if t.unloaded != nil {
		select {
		case t.unloaded <- now:
		default:
		}
	}
	return !busy
}

func (t *target) Prewarm(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prewarms = append(t.prewarms, now)
	return !t.refuse
}

func (t *target) calls() (unloads, prewarms []time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Time(nil), t.unloads...), append([]time.Time(nil), t.prewarms...)
}

var t0 = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

// periodic records n arrivals every period from t0 into k's history and
// applies what each decided at once (the scheduler is not moved between
// them); it returns the last arrival.
func periodic(s *Scheduler, k *Keeper, n int, period time.Duration) time.Time {
	var at time.Time
	for i := range n {
		at = t0.Add(time.Duration(i) * period)
		k.Observe(at, true)
		s.Advance(at)
	}
	return at
}

// A timer every 15 minutes is unloaded right after each call, pre-warmed
// before the next one, and counted as a pre-warmed start when the call
// comes; a call that does not come leaves the pre-warm unused, unloaded
// after the learned keep-alive.
func TestPeriodicFunctionIsPrewarmedAndUnloaded(t *testing.T) {
	s := NewScheduler(nil, nil)
	tg := &target{}
	k := s.Add("timer", 1, keepalive.DefaultHybrid(), tg, 5*time.Minute)
	const period = 15 * time.Minute
	last := periodic(s, k, 12, period)

	st := k.Status(last)
	idleBefore := st.IdleWarm
	if st.Why != "histogram" || st.PrewarmAt.IsZero() {
		t.Fatalf("after 12 calls every 15m: status %+v, want a histogram decision with a pre-warm", st)
	}
	unloads, _ := tg.calls()
	if len(unloads) == 0 || !unloads[len(unloads)-1].Equal(last) {
		t.Fatalf("unloads %v: want one right after the last call at %v", unloads, last)
	}
	if dl := k.IdleDeadline(last); !dl.Equal(last) {
		t.Fatalf("idle deadline of the instance the last call used: %v, want right after it (%v)", dl, last)
	}

	// Nothing happens until the pre-warm window; the pre-warm comes before
	// the next call.
	next := last.Add(period)
	due := s.Advance(last.Add(10 * time.Minute))
	if _, pw := tg.calls(); len(pw) != 0 {
		t.Fatalf("pre-warmed at %v, 10 minutes after a call every 15", pw)
	}
	if !due.Equal(st.PrewarmAt) {
		t.Fatalf("next change due %v, want the pre-warm at %v", due, st.PrewarmAt)
	}
	s.Advance(due)
	_, pw := tg.calls()
	if len(pw) != 1 || !pw[0].Before(next) || pw[0].Before(last.Add(period/2)) {
		t.Fatalf("pre-warms %v: want one shortly before the next call at %v", pw, next)
	}
	if dl := k.IdleDeadline(due); dl.Before(next) {
		t.Fatalf("a pre-warmed instance is stopped at %v, before the call it is for (%v)", dl, next)
	}
	k.Observe(next, true)
	s.Advance(next)
	if c := k.Status(next).Counts; c.Prewarms != 1 || c.PrewarmedStarts != 1 || c.UnusedPrewarms != 0 {
		t.Fatalf("counts %+v: want one pre-warm, used", c)
	}

	// The next call does not come: the pre-warm is unloaded at the learned
	// keep-alive, after the time the call was due, and counted unused.
	st = k.Status(next)
	for now := next; now.Before(next.Add(time.Hour)); now = now.Add(time.Minute) {
		s.Advance(now)
	}
	unloads, pw = tg.calls()
	if len(pw) != 2 {
		t.Fatalf("pre-warms %v: want a second one before the missed call", pw)
	}
	lastUnload := unloads[len(unloads)-1]
	if !lastUnload.After(st.UnloadAt) || !lastUnload.After(next.Add(period)) || lastUnload.After(next.Add(2*period)) {
		t.Fatalf("unloaded at %v: want after the learned keep-alive (%v), after the missed call's time and before the one after", lastUnload, st.UnloadAt)
	}
	c := k.Status(next.Add(time.Hour)).Counts
	if c.Prewarms != 2 || c.PrewarmedStarts != 1 || c.UnusedPrewarms != 1 {
		t.Fatalf("counts %+v: want two pre-warms, one used, one unused", c)
	}
	// The idle warm time is the pre-warm windows less the waits they
	// served: both windows together are well under two periods.
	if idle := c.IdleWarm - idleBefore; idle <= 0 || idle > period {
		t.Fatalf("idle warm time of the two pre-warms %v, want some, under a period", idle)
	}
	if due := s.Advance(next.Add(time.Hour)); !due.IsZero() {
		t.Fatalf("a change is due at %v with nothing warm and no call", due)
	}
}

// Without history the keeper keeps warm for the fallback from the last
// call, and calls within a bin move the keep-alive without a decision.
func TestFallbackKeepAliveFollowsTheLastCall(t *testing.T) {
	s := NewScheduler(nil, nil)
	tg := &target{}
	k := s.Add("fn", 1, keepalive.DefaultHybrid(), tg, 5*time.Minute)
	k.Observe(t0, true)
	k.Observe(t0.Add(30*time.Second), true) // same bin
	if dl := k.IdleDeadline(t0.Add(30 * time.Second)); !dl.Equal(t0.Add(30*time.Second + 10*time.Minute)) {
		t.Fatalf("idle deadline %v, want 10m (the fallback) after the last call", dl)
	}
	s.Advance(t0.Add(10 * time.Minute))
	if u, _ := tg.calls(); len(u) != 0 {
		t.Fatalf("unloaded at %v, before the keep-alive from the last call ran out", u)
	}
	s.Advance(t0.Add(10*time.Minute + 31*time.Second))
	if u, _ := tg.calls(); len(u) != 1 {
		t.Fatalf("unloads %v: want one once the keep-alive ran out", u)
	}
	if c := k.Status(t0.Add(time.Hour)).Counts; c.IdleWarm != 10*time.Minute || c.Prewarms != 0 {
		t.Fatalf("counts %+v: want 10m idle warm and no pre-warm", c)
	}
}

// A pre-warm the budget refused is not counted, and an arrival in its
// window is no pre-warmed start; an unload that leaves something warm is
// asked again.
func TestRefusedPrewarmAndBusyUnload(t *testing.T) {
	s := NewScheduler(nil, nil)
	tg := &target{refuse: true}
	k := s.Add("timer", 1, keepalive.DefaultHybrid(), tg, 5*time.Minute)
	last := periodic(s, k, 12, 15*time.Minute)
	for now := last; now.Before(last.Add(15 * time.Minute)); now = now.Add(30 * time.Second) {
		s.Advance(now)
	}
	k.Observe(last.Add(15*time.Minute), true)
	if c := k.Status(last).Counts; c.Prewarms != 0 || c.PrewarmedStarts != 0 {
		t.Fatalf("counts %+v after refused pre-warms", c)
	}
	tg.mu.Lock()
	tg.busy = true
	tg.mu.Unlock()
	at := last.Add(15 * time.Minute)
	s.Advance(at)
	due := s.Advance(at)
	if !due.Equal(at.Add(unloadRetry)) {
		t.Fatalf("after an unload that left something warm, next change at %v, want a retry at %v", due, at.Add(unloadRetry))
	}
}

// A call in the pre-warm window that found nothing warm (the pre-warm
// failed, or was unloaded) is not a pre-warmed start: the pre-warm went
// unused.
func TestPrewarmNotFoundIsUnused(t *testing.T) {
	s := NewScheduler(nil, nil)
	k := s.Add("timer", 1, keepalive.DefaultHybrid(), &target{}, 5*time.Minute)
	last := periodic(s, k, 12, 15*time.Minute)
	s.Advance(k.Status(last).PrewarmAt)
	k.Observe(last.Add(15*time.Minute), false)
	if c := k.Status(last).Counts; c.Prewarms != 1 || c.PrewarmedStarts != 0 || c.UnusedPrewarms != 1 {
		t.Fatalf("counts %+v: want one pre-warm, unused", c)
	}
}

// The scheduler's goroutine applies what is due on the real clock, and
// stops on Close.
func TestSchedulerGoroutine(t *testing.T) {
	s := NewScheduler(nil, nil)
	tg := &target{unloaded: make(chan time.Time, 1)}
	k := s.Add("fn", 1, keepalive.Fixed(time.Millisecond), tg, time.Millisecond)
	s.Start()
	at := time.Now()
	k.Observe(at, true)
	got := <-tg.unloaded
	if !got.After(at.Add(time.Millisecond)) {
		t.Fatalf("unloaded at %v, before fixed:1ms after the call at %v ran out", got, at)
	}
	s.Close()
	k.Remove()
	if s.Lookup("fn", 1) != nil {
		t.Fatal("a removed keeper is still looked up")
	}
}

// Observe on the invocation path: a call within the bin of the last
// observed one is a time stamp.
func BenchmarkObserveWithinBin(b *testing.B) {
	s := NewScheduler(nil, nil)
	k := s.Add("fn", 1, keepalive.DefaultHybrid(), &target{}, time.Minute)
	k.Observe(t0, true)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k.Observe(t0.Add(time.Duration(i)), false)
	}
}

// TestSeedFromPastArrivals: a keeper made after a restart, seeded with
// the arrivals the node recorded before it (a timer every 15 minutes),
// pre-warms before the next call without a new arrival, and unloads
// nothing before that; a seed after a live arrival changes nothing.
func TestSeedFromPastArrivals(t *testing.T) {
	var past []time.Time
	for i := range 7 {
		past = append(past, t0.Add(time.Duration(i)*15*time.Minute))
	}
	last := past[len(past)-1]
	now := last.Add(5 * time.Minute) // the restart
	clock := now
	s := NewScheduler(func() time.Time { return clock }, nil)
	tg := &target{}
	k := s.Add("timer", 1, keepalive.DefaultHybrid(), tg, 5*time.Minute)
	k.Seed(past)
	st := k.Status(now)
	if st.Why != "histogram" || st.PrewarmAt.IsZero() || !st.PrewarmAt.After(now) || !st.PrewarmAt.Before(last.Add(15*time.Minute)) {
		t.Fatalf("seeded keeper at the restart: %+v, want a histogram pre-warm before the next call at %v", st, last.Add(15*time.Minute))
	}
	s.Advance(now)
	if unloads, prewarms := tg.calls(); len(unloads) != 0 || len(prewarms) != 0 {
		t.Fatalf("at the restart the keeper unloaded %v, pre-warmed %v; want nothing until the pre-warm", unloads, prewarms)
	}
	s.Advance(st.PrewarmAt)
	if _, prewarms := tg.calls(); len(prewarms) != 1 || !prewarms[0].Equal(st.PrewarmAt) {
		t.Fatalf("pre-warms %v, want one at %v", prewarms, st.PrewarmAt)
	}
	k.Observe(last.Add(15*time.Minute), true)
	if c := k.Status(last.Add(15 * time.Minute)).Counts; c.Prewarms != 1 || c.PrewarmedStarts != 1 || c.IdleWarm > 2*time.Minute {
		t.Fatalf("counts %+v: want the seeded pre-warm counted and used, its idle time only from the pre-warm", c)
	}

	// A keeper that already saw a live call keeps its own history.
	k2 := s.Add("fn", 1, keepalive.DefaultHybrid(), &target{}, 5*time.Minute)
	k2.Observe(now, false)
	k2.Seed(past)
	if st := k2.Status(now); st.Why != "fallback" {
		t.Fatalf("seed after a live arrival: %s, want the one-arrival fallback", st.Why)
	}
}

// A keeper added with the function's memory prices its idle time by it, as
// the replay prices an app's: on the same calls, a large function is kept
// warm for less time than a small one.
func TestKeeperPricesByMemory(t *testing.T) {
	s := NewScheduler(nil, nil)
	small := s.AddSized("small", 1, keepalive.DefaultHybrid(), &target{}, 5*time.Minute, 16)
	large := s.AddSized("large", 1, keepalive.DefaultHybrid(), &target{}, 5*time.Minute, 16384)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// Calls 4 to 40 minutes apart, irregularly.
	gaps := []int{7, 31, 4, 19, 40, 12, 26, 9, 35, 15, 22, 6, 38, 11, 29, 17}
	at := t0
	for _, g := range gaps {
		at = at.Add(time.Duration(g) * time.Minute)
		s.Advance(at)
		small.Observe(at, false)
		large.Observe(at, false)
	}
	ss, ls := small.Status(at), large.Status(at)
	warm := func(st Status) time.Duration {
		if !st.PrewarmAt.IsZero() {
			return st.UnloadAt.Sub(st.PrewarmAt)
		}
		return st.UnloadAt.Sub(at)
	}
	if warm(ls) >= warm(ss) {
		t.Fatalf("after the same calls a 16 GiB function is kept warm %v (%+v), a 16 MiB one %v (%+v): want the large one less", warm(ls), ls, warm(ss), ss)
	}
}
