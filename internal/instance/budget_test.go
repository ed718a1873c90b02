package instance

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestPlanFitsEvictsLowestFirstOrRefuses(t *testing.T) {
	const mib = 1 << 20
	held := []holderView{
		{bytes: 30 * mib, priority: 3, evictable: true},
		{bytes: 30 * mib, priority: 1, evictable: true},
		{bytes: 30 * mib, priority: 2, evictable: false}, // busy
	}
	for _, tc := range []struct {
		name    string
		need    uint64
		limit   uint64
		max     int
		prio    float64
		victims []int
		ok      bool
	}{
		{"room", 10 * mib, 100 * mib, 10, 0, nil, true},
		{"evicts the least in demand", 20 * mib, 100 * mib, 10, 5, []int{1}, true},
		{"then the next", 50 * mib, 100 * mib, 10, 5, []int{1, 0}, true},
		{"never a busy one", 80 * mib, 100 * mib, 10, 5, nil, false},
		{"only those below its own priority", 20 * mib, 100 * mib, 10, 2, []int{1}, true},
		{"nothing below it: refused", 20 * mib, 100 * mib, 10, 1, nil, false},
		{"demand outranks every idle holder", 50 * mib, 100 * mib, 10, math.Inf(1), []int{1, 0}, true},
		{"count cap", 1, 1 << 40, 3, 5, []int{1}, true},
		{"count cap, nothing evictable below", 1, 1 << 40, 3, 0, nil, false},
		{"larger than the whole budget", 200 * mib, 100 * mib, 10, math.Inf(1), nil, false},
		{"no holders allowed", 1, 100 * mib, 0, math.Inf(1), nil, false},
	} {
		v, ok := plan(held, tc.need, tc.limit, tc.max, tc.prio)
		if ok != tc.ok || !slices.Equal(v, tc.victims) {
			t.Errorf("%s: plan = %v, %v; want %v, %v", tc.name, v, ok, tc.victims, tc.ok)
		}
	}
}

func TestShrinkEvictsUntilItFits(t *testing.T) {
	held := []holderView{
		{bytes: 40, priority: 2, evictable: true},
		{bytes: 40, priority: 1, evictable: true},
		{bytes: 40, priority: 0, evictable: false},
	}
	if v := shrink(held, 120, 3); len(v) != 0 {
		t.Errorf("shrink within the budget = %v; want none", v)
	}
	if v := shrink(held, 100, 3); !slices.Equal(v, []int{1}) {
		t.Errorf("shrink 120 into 100 = %v; want [1]", v)
	}
	if v := shrink(held, 10, 3); !slices.Equal(v, []int{1, 0}) {
		t.Errorf("shrink into 10 = %v; want [1 0] (the busy one stays)", v)
	}
	if v := shrink(held, 1000, 1); !slices.Equal(v, []int{1, 0}) {
		t.Errorf("shrink to one holder = %v; want [1 0]", v)
	}
}

// testHolder is a holder whose size and life the test sets.
type testHolder struct {
	h       *warmHolder
	size    uint64
	busy    bool
	evicted int
}

func newTestHolder(b *WarmBudget, fn string, size uint64) *testHolder {
	th := &testHolder{size: size}
	th.h = b.newHolder(fn, 1, KindZygote, func() uint64 {
		if th.h.status() == nil {
			return 0
		}
		return th.size
	}, func() bool { return !th.busy }, func() {
		if !th.busy {
			th.evicted++
			th.h.release()
		}
	})
	th.h.register()
	return th
}

func TestWarmBudgetSpendsByRecentUse(t *testing.T) {
	const mib = 1 << 20
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	b := NewWarmBudget(WarmConfig{Bytes: 100 * mib, Max: 10, Estimate: 20 * mib, Now: func() time.Time { return now }})
	a, c, d := newTestHolder(b, "a", 30*mib), newTestHolder(b, "c", 30*mib), newTestHolder(b, "d", 30*mib)
	e := newTestHolder(b, "e", 30*mib)
	// Deploys: ahead of need, never used; three fit, the fourth does not
	// and evicts nobody (no one is in less demand).
	for _, th := range []*testHolder{a, c, d} {
		if err := th.h.admit(false); err != nil {
			t.Fatalf("%s: admit = %v; want room", th.h.info.Function, err)
		}
	}
	// They are accounted at the 20 MiB estimate until measured: 30 each.
	if s := b.Snapshot(); s.Used != 90*mib {
		t.Fatalf("snapshot = %d MiB; want the measured 90", s.Used/mib)
	}
	if err := e.h.admit(false); err == nil {
		t.Fatal("a fourth holder of 30 MiB fit in 100 MiB")
	}
	if s := b.Snapshot(); s.Used != 90*mib || len(s.Holders) != 3 {
		t.Fatalf("snapshot = %d bytes, %d holders; want 90 MiB, 3", s.Used, len(s.Holders))
	}
	// a and d are used; e, used now, ranks above c, never used since.
	now = now.Add(time.Minute)
	a.h.used()
	now = now.Add(time.Minute)
	d.h.used()
	now = now.Add(time.Minute)
	e.h.used()
	if err := e.h.admit(false); err != nil {
		t.Fatalf("e, the most recently used: admit = %v; want c evicted", err)
	}
	if c.evicted != 1 || a.evicted != 0 || d.evicted != 0 {
		t.Fatalf("evictions a, c, d = %d, %d, %d; want only c", a.evicted, c.evicted, d.evicted)
	}
	// c, used least recently of all now, cannot evict anyone ahead of
	// need; its request (demand) evicts a, the least recently used.
	if err := c.h.admit(false); err == nil {
		t.Fatal("c was admitted ahead of need over holders in more demand")
	}
	now = now.Add(time.Minute)
	c.h.used()
	if err := c.h.admit(true); err != nil {
		t.Fatalf("c on demand: admit = %v", err)
	}
	if a.evicted != 1 || d.evicted != 0 || e.evicted != 0 {
		t.Fatalf("evictions a, d, e = %d, %d, %d; want only a", a.evicted, d.evicted, e.evicted)
	}
	// Busy holders are never evicted: with all of them busy, a demand
	// build gets no room (its request starts without one).
	d.busy, e.busy, c.busy = true, true, true
	now = now.Add(time.Minute)
	a.h.used()
	if err := a.h.admit(true); err == nil {
		t.Fatal("a demand build evicted a busy holder")
	}
	// Measurements that grow overspend the budget: refresh evicts the
	// least recently used idle holder until it fits.
	d.busy, e.busy, c.busy = false, false, false
	d.size = 50 * mib
	d.h.refresh()
	if s := b.Snapshot(); s.Used > 100*mib || d.evicted != 1 || e.evicted != 0 || c.evicted != 1 {
		t.Fatalf("after d grew: used %d MiB, evictions d, e, c = %d, %d, %d; want ≤ 100 MiB, d (least recent) and c only the once before",
			s.Used/mib, d.evicted, e.evicted, c.evicted)
	}
	// Its measurement is the function's estimate from now on.
	b.mu.Lock()
	est := b.estimateLocked(d.h.info)
	other := b.estimateLocked(HolderInfo{Function: "new", Kind: KindZygote})
	onnx := b.estimateLocked(HolderInfo{Function: "new", Kind: KindONNXSpare})
	b.mu.Unlock()
	if est != 50*mib {
		t.Errorf("estimate for d = %d; want its last measurement, 50 MiB", est)
	}
	if other != 30*mib || onnx != 20*mib {
		t.Errorf("estimates for a new zygote, onnx spare = %d, %d MiB; want the last zygote measured (30), the default (20)", other/mib, onnx/mib)
	}
	for _, th := range []*testHolder{a, c, d, e} {
		th.h.unregister()
	}
	if s := b.Snapshot(); s.Used != 0 || len(s.Holders) != 0 {
		t.Errorf("after unregister: %+v", s)
	}
}

func TestWarmBudgetPriorityHook(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	// A policy that predicts f's next arrival soonest ranks it first,
	// however long ago it was used.
	next := map[string]time.Duration{"f": time.Minute, "g": time.Hour}
	b := NewWarmBudget(WarmConfig{Bytes: 10, Max: 1, Estimate: 10, Now: func() time.Time { return now },
		Priority: func(h HolderInfo, now time.Time) float64 { return -float64(next[h.Function]) }})
	g, f := newTestHolder(b, "g", 10), newTestHolder(b, "f", 10)
	g.h.used()
	if err := g.h.admit(false); err != nil {
		t.Fatal(err)
	}
	if err := f.h.admit(false); err != nil || g.evicted != 1 {
		t.Fatalf("f, predicted sooner: admit = %v, g evicted %d; want g evicted", err, g.evicted)
	}
	// A request for g is demand: it outranks f, whatever the prediction.
	if err := g.h.admit(false); err == nil {
		t.Fatal("g, predicted later, evicted f ahead of need")
	}
	if err := g.h.admit(true); err != nil || f.evicted != 1 {
		t.Fatalf("g on demand: admit = %v, f evicted %d; want f evicted", err, f.evicted)
	}
}

func TestDefaultWarmMemory(t *testing.T) {
	if got := DefaultWarmMemory(64 << 30); got != 64<<30/10 {
		t.Errorf("DefaultWarmMemory(64 GiB) = %d; want a tenth", got)
	}
	if got := DefaultWarmMemory(1 << 30); got != MinWarmMemory {
		t.Errorf("DefaultWarmMemory(1 GiB) = %d; want the floor", got)
	}
}

// A zygote let go and shut down later must not release the hold that a
// build begun in between took over (the keep-alive's unload racing its
// pre-warm): the new zygote would then run outside the budget.
func TestWarmHolderReleaseUnlessSuperseded(t *testing.T) {
	b := NewWarmBudget(WarmConfig{Bytes: 100 << 20, Max: 10, Estimate: 20 << 20})
	th := newTestHolder(b, "a", 10<<20)
	if err := th.h.admit(false); err != nil {
		t.Fatal(err)
	}
	th.h.releaseUnless(func() bool { return true })
	if th.h.status() == nil {
		t.Fatal("a superseded release let go of the hold")
	}
	th.h.releaseUnless(func() bool { return false })
	if th.h.status() != nil {
		t.Fatal("a release that was not superseded kept the hold")
	}
}
