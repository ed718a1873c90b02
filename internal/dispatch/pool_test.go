package dispatch

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// newTestPool starts a pool whose loop never ticks on its own (tests call
// tick), observed by a fakeObserver, and closes it when the test ends.
func newTestPool(t *testing.T, cfg Config, s Starter[*fakeInstance]) (*Pool[*fakeInstance], *fakeObserver) {
	t.Helper()
	obs := newFakeObserver()
	if cfg.Function == "" {
		cfg.Function = "fn"
	}
	cfg.Version = 1
	if cfg.TickInterval == 0 {
		cfg.TickInterval = time.Hour
	}
	cfg.Observer = obs
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := NewPool(cfg, s)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	obs.mu.Lock()
	obs.pool = p
	obs.mu.Unlock()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p, obs
}

func mustAcquire(t *testing.T, p *Pool[*fakeInstance]) *Lease[*fakeInstance] {
	t.Helper()
	l, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return l
}

func waitWaiting(t *testing.T, p *Pool[*fakeInstance], n int) {
	t.Helper()
	waitFor(t, "waiting requests", func() bool { return p.Stats().Waiting == n })
}

func instanceByID(s Stats, id string) (InstanceStats, bool) {
	for _, in := range s.Instances {
		if in.ID == id {
			return in, true
		}
	}
	return InstanceStats{}, false
}

func TestColdStartHoldsRequest(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(true)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 2, Now: clk.Now}, fs)

	res := acquireAsync(context.Background(), p)
	call := recv(t, fs.calls, "a start")
	waitWaiting(t, p, 1)
	if st := p.Stats(); st.Starting != 1 || len(st.Instances) != 1 || st.Instances[0].Phase != PhaseStarting {
		t.Fatalf("while starting: stats = %+v, want one instance starting", st)
	}
	select {
	case r := <-res:
		t.Fatalf("Acquire returned before the instance was ready: %+v", r)
	default:
	}

	clk.Advance(250 * time.Millisecond)
	call.answer <- nil
	r := recv(t, res, "the held request")
	if r.err != nil {
		t.Fatalf("Acquire: %v", r.err)
	}
	l := r.l
	if !l.Cold || l.Init != 250*time.Millisecond || l.Waited != 250*time.Millisecond || l.InstanceID != call.id {
		t.Errorf("lease = {Cold:%v Init:%v Waited:%v ID:%q}, want {true 250ms 250ms %q}", l.Cold, l.Init, l.Waited, l.InstanceID, call.id)
	}
	if l.Instance != fs.inst(t, call.id) {
		t.Errorf("lease.Instance is not the instance the starter returned")
	}
	st := p.Stats()
	if st.ColdStarts != 1 || st.Invocations != 1 || st.Waiting != 0 || st.Starting != 0 {
		t.Errorf("stats = %+v, want 1 cold start, 1 invocation, nothing waiting or starting", st)
	}
	if got := st.Instances[0]; got.Phase != PhaseBusy || got.InFlight != 1 || got.Leases != 1 {
		t.Errorf("instance = %+v, want busy with 1 in flight, 1 lease", got)
	}
	l.Release()
	if got := p.Stats().Instances[0]; got.Phase != PhaseIdle || got.InFlight != 0 {
		t.Errorf("after Release: instance = %+v, want idle", got)
	}
}

func TestWarmReuseIsNotCold(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 2}, fs)

	first := mustAcquire(t, p)
	first.Release()
	first.Release() // idempotent: must not free a second slot
	second := mustAcquire(t, p)
	defer second.Release()
	if second.Cold || second.Init != 0 || second.Waited != 0 {
		t.Errorf("warm lease = {Cold:%v Init:%v Waited:%v}, want not cold, no init, no wait", second.Cold, second.Init, second.Waited)
	}
	if second.InstanceID != first.InstanceID {
		t.Errorf("warm lease on %q, want the idle instance %q", second.InstanceID, first.InstanceID)
	}
	if got := fs.starts(); got != 1 {
		t.Errorf("starts = %d, want 1", got)
	}
	if st := p.Stats(); st.ColdStarts != 1 || st.Invocations != 2 || st.Instances[0].InFlight != 1 {
		t.Errorf("stats = %+v, want 1 cold start, 2 invocations, 1 in flight", st)
	}
}

func TestConcurrencySlots(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 3, MaxInstances: 2}, fs)

	var leases []*Lease[*fakeInstance]
	for i := range 3 {
		l := mustAcquire(t, p)
		leases = append(leases, l)
		if l.InstanceID != leases[0].InstanceID {
			t.Fatalf("lease %d on %q, want all 3 on %q", i, l.InstanceID, leases[0].InstanceID)
		}
		if l.Cold != (i == 0) {
			t.Errorf("lease %d: Cold = %v, want %v", i, l.Cold, i == 0)
		}
	}
	fourth := mustAcquire(t, p)
	if fourth.InstanceID == leases[0].InstanceID || !fourth.Cold {
		t.Fatalf("4th lease on %q (cold %v), want a second, cold instance", fourth.InstanceID, fourth.Cold)
	}
	if got := fs.starts(); got != 2 {
		t.Errorf("starts = %d, want 2", got)
	}
	// Packing: with 2 in flight on the first instance and 1 on the second,
	// the next request goes to the fuller one.
	leases[0].Release()
	fifth := mustAcquire(t, p)
	if fifth.InstanceID != leases[0].InstanceID {
		t.Errorf("5th lease on %q, want the fuller instance %q", fifth.InstanceID, leases[0].InstanceID)
	}
	for _, l := range append(leases[1:], fourth, fifth) {
		l.Release()
	}
}

func TestPickPacksOntoBusiestInstance(t *testing.T) {
	t0 := time.Unix(1000, 0)
	m := func(id string, ph memberPhase, inFlight int, used time.Duration) *member[*fakeInstance] {
		return &member[*fakeInstance]{id: id, ph: ph, inFlight: inFlight, lastUsed: t0.Add(used)}
	}
	tests := []struct {
		name    string
		members []*member[*fakeInstance]
		want    string
	}{
		{"none", nil, ""},
		{"only full", []*member[*fakeInstance]{m("a", phReady, 3, 0)}, ""},
		{"most in flight", []*member[*fakeInstance]{m("a", phReady, 0, 9), m("b", phReady, 2, 0), m("c", phReady, 1, 5)}, "b"},
		{"tie: most recently used", []*member[*fakeInstance]{m("a", phReady, 1, 1), m("b", phReady, 1, 3), m("c", phReady, 1, 2)}, "b"},
		{"skips full", []*member[*fakeInstance]{m("a", phReady, 3, 0), m("b", phReady, 0, 0)}, "b"},
		{"skips starting and stopping", []*member[*fakeInstance]{m("a", phStarting, 0, 0), m("b", phStopping, 0, 0), m("c", phReady, 2, 0)}, "c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &Pool[*fakeInstance]{cfg: Config{Concurrency: 3}, members: tc.members}
			got := ""
			if m := p.pickLocked(); m != nil {
				got = m.id
			}
			if got != tc.want {
				t.Errorf("pick = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBurstStartsInstancesAtOnce(t *testing.T) {
	tests := []struct{ requests, max int }{
		{requests: 5, max: 3},
		{requests: 3, max: 10},
	}
	for _, tc := range tests {
		t.Run("", func(t *testing.T) {
			fs := newFakeStarter(true)
			p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: tc.max, MaxQueue: tc.requests}, fs)
			want := min(tc.requests, tc.max)

			results := make(chan acquired, tc.requests)
			for range tc.requests {
				go func() {
					l, err := p.Acquire(context.Background())
					results <- acquired{l, err}
				}()
			}
			// Every start must be in progress before any is let finish:
			// they run at once, not one after another.
			var calls []*startCall
			for range want {
				calls = append(calls, recv(t, fs.calls, "a start of the burst"))
			}
			waitWaiting(t, p, tc.requests)
			if st := p.Stats(); st.Starting != want {
				t.Fatalf("starting = %d, want %d", st.Starting, want)
			}
			for _, c := range calls {
				c.answer <- nil
			}
			var leases []*Lease[*fakeInstance]
			for range want {
				r := recv(t, results, "a held request")
				if r.err != nil || !r.l.Cold {
					t.Fatalf("held request: lease %+v, err %v; want a cold lease", r.l, r.err)
				}
				leases = append(leases, r.l)
			}
			// Those beyond MaxInstances queued; each release serves one.
			for range tc.requests - want {
				leases[0].Release()
				leases = leases[1:]
				r := recv(t, results, "a queued request")
				if r.err != nil || r.l.Cold {
					t.Fatalf("queued request: lease %+v, err %v; want a warm lease", r.l, r.err)
				}
				leases = append(leases, r.l)
			}
			for _, l := range leases {
				l.Release()
			}
			if got := fs.starts(); got != want {
				t.Errorf("starts = %d, want %d", got, want)
			}
		})
	}
}

func TestQueueFullIsOverloadedAtOnce(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, MaxQueue: 2}, fs)

	busy := mustAcquire(t, p)
	first := acquireAsync(context.Background(), p)
	waitWaiting(t, p, 1)
	second := acquireAsync(context.Background(), p)
	waitWaiting(t, p, 2)

	if _, err := p.Acquire(context.Background()); !errors.Is(err, ebb.ErrOverloaded) {
		t.Fatalf("Acquire with the queue full: err = %v, want ErrOverloaded", err)
	}
	// FIFO: the oldest waiter gets the first slot given back.
	busy.Release()
	r := recv(t, first, "the first queued request")
	if r.err != nil || r.l.InstanceID != busy.InstanceID || r.l.Cold {
		t.Fatalf("first queued: lease %+v, err %v; want a warm lease on %q", r.l, r.err, busy.InstanceID)
	}
	select {
	case r := <-second:
		t.Fatalf("second queued request served before a slot was free: %+v", r)
	default:
	}
	r.l.Release()
	r = recv(t, second, "the second queued request")
	if r.err != nil {
		t.Fatalf("second queued: %v", r.err)
	}
	r.l.Release()
}

func TestHeldRequestsAreNotBoundedByMaxQueue(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 2, MaxQueue: 0}, fs)

	busy := mustAcquire(t, p)
	defer busy.Release()
	l, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatalf("Acquire while the pool may grow: %v, want a lease on a new instance", err)
	}
	defer l.Release()
	if !l.Cold || l.InstanceID == busy.InstanceID {
		t.Errorf("lease on %q (cold %v), want a fresh instance", l.InstanceID, l.Cold)
	}
	if _, err := p.Acquire(context.Background()); !errors.Is(err, ebb.ErrOverloaded) {
		t.Errorf("Acquire at max with MaxQueue 0: err = %v, want ErrOverloaded", err)
	}
}

func TestQueueTimeoutIsOverloaded(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, MaxQueue: 1, QueueTimeout: 30 * time.Millisecond}, fs)

	busy := mustAcquire(t, p)
	start := time.Now()
	_, err := p.Acquire(context.Background())
	if !errors.Is(err, ebb.ErrOverloaded) {
		t.Fatalf("queued past QueueTimeout: err = %v, want ErrOverloaded", err)
	}
	if waited := time.Since(start); waited < 30*time.Millisecond {
		t.Errorf("gave up after %v, want at least the 30ms QueueTimeout", waited)
	}
	if st := p.Stats(); st.Waiting != 0 {
		t.Errorf("waiting = %d after the timeout, want 0", st.Waiting)
	}
	busy.Release()
	if in := p.Stats().Instances[0]; in.InFlight != 0 || in.Leases != 1 {
		t.Errorf("instance = %+v, want 0 in flight and only the first lease", in)
	}
}

func TestCancelledWaiterLeavesNoSlot(t *testing.T) {
	t.Run("queued", func(t *testing.T) {
		fs := newFakeStarter(false)
		p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, MaxQueue: 5}, fs)
		busy := mustAcquire(t, p)
		ctx, cancel := context.WithCancel(context.Background())
		res := acquireAsync(ctx, p)
		waitWaiting(t, p, 1)
		cancel()
		if r := recv(t, res, "the cancelled request"); !errors.Is(r.err, context.Canceled) || r.l != nil {
			t.Fatalf("cancelled: lease %+v, err %v; want context.Canceled", r.l, r.err)
		}
		if st := p.Stats(); st.Waiting != 0 {
			t.Fatalf("waiting = %d, want 0", st.Waiting)
		}
		busy.Release()
		if in := p.Stats().Instances[0]; in.InFlight != 0 || in.Leases != 1 {
			t.Fatalf("instance = %+v, want the slot free and not handed to the gone request", in)
		}
		l := mustAcquire(t, p)
		if l.Cold || l.InstanceID != busy.InstanceID {
			t.Errorf("next lease on %q (cold %v), want the warm %q", l.InstanceID, l.Cold, busy.InstanceID)
		}
		l.Release()
	})
	t.Run("held for a start", func(t *testing.T) {
		fs := newFakeStarter(true)
		p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1}, fs)
		ctx, cancel := context.WithCancel(context.Background())
		res := acquireAsync(ctx, p)
		call := recv(t, fs.calls, "a start")
		waitWaiting(t, p, 1)
		cancel()
		if r := recv(t, res, "the cancelled request"); !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled: err %v, want context.Canceled", r.err)
		}
		call.answer <- nil
		waitFor(t, "the instance ready", func() bool {
			st := p.Stats()
			return len(st.Instances) == 1 && st.Instances[0].Phase == PhaseIdle
		})
		if st := p.Stats(); st.Invocations != 0 || st.Instances[0].InFlight != 0 {
			t.Errorf("stats = %+v, want no lease granted", st)
		}
	})
}

// TestWaiterChurn races cancellations, timeouts and releases; whatever the
// interleaving, every slot must end up free and no waiter left behind.
func TestWaiterChurn(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 2, MaxInstances: 2, MaxQueue: 100, QueueTimeout: 5 * time.Millisecond}, fs)
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 30 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(2000))*time.Microsecond)
				l, err := p.Acquire(ctx)
				if err == nil {
					if rng.IntN(10) == 0 {
						l.Discard("churn")
					} else {
						l.Release()
					}
				}
				cancel()
			}
		})
	}
	wg.Wait()
	st := p.Stats()
	if st.Waiting != 0 {
		t.Errorf("waiting = %d, want 0", st.Waiting)
	}
	for _, in := range st.Instances {
		if in.InFlight != 0 {
			t.Errorf("instance %s has %d in flight, want 0", in.ID, in.InFlight)
		}
	}
}

func TestMinInstancesStartedAndKeptWarm(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	p, obs := newTestPool(t, Config{Concurrency: 1, MinInstances: 2, MaxInstances: 3, IdleTimeout: time.Minute, Now: clk.Now}, fs)

	waitFor(t, "2 warm instances", func() bool {
		st := p.Stats()
		return len(st.Instances) == 2 && st.Instances[0].Phase == PhaseIdle && st.Instances[1].Phase == PhaseIdle
	})
	for _, d := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour} {
		p.tick(clk.Now().Add(d))
	}
	if st := p.Stats(); len(st.Instances) != 2 || st.Starting != 0 {
		t.Errorf("after idle ticks: stats = %+v, want the 2 instances kept", st)
	}
	select {
	case ev := <-obs.stopped:
		t.Errorf("instance stopped below MinInstances: %+v", ev)
	default:
	}
	l := mustAcquire(t, p)
	if l.Cold {
		t.Errorf("lease on a warm min instance is cold")
	}
	l.Release()
	if got := fs.starts(); got != 2 {
		t.Errorf("starts = %d, want 2", got)
	}
}

func TestIdleInstanceStoppedByTick(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	p, obs := newTestPool(t, Config{Concurrency: 1, MinInstances: 1, MaxInstances: 3, IdleTimeout: time.Minute, Now: clk.Now}, fs)
	waitFor(t, "the min instance", func() bool {
		st := p.Stats()
		return len(st.Instances) == 1 && st.Instances[0].Phase == PhaseIdle
	})

	a := mustAcquire(t, p) // the warm min instance
	b := mustAcquire(t, p) // a second, started for it
	if a.Cold || !b.Cold {
		t.Fatalf("leases cold = %v, %v; want warm then cold", a.Cold, b.Cold)
	}
	a.Release()
	t1 := clk.Now()
	clk.Advance(10 * time.Second)
	b.Release()

	p.tick(t1.Add(time.Minute - time.Nanosecond))
	if st := p.Stats(); len(st.Instances) != 2 {
		t.Fatalf("tick before IdleTimeout stopped something: %+v", st)
	}
	p.tick(t1.Add(time.Minute))
	ev := recv(t, obs.stopped, "the idle stop")
	if ev != (stopEvent{a.InstanceID, StopIdle}) {
		t.Errorf("stopped %+v, want %s for idle (least recently used)", ev, a.InstanceID)
	}
	if got := fs.inst(t, a.InstanceID).stopCount(); got != 1 {
		t.Errorf("Stop called %d times, want 1", got)
	}
	if st := p.Stats(); len(st.Instances) != 1 || st.Instances[0].ID != b.InstanceID {
		t.Errorf("instances = %+v, want only %s", st.Instances, b.InstanceID)
	}
	p.tick(t1.Add(24 * time.Hour))
	if st := p.Stats(); len(st.Instances) != 1 {
		t.Errorf("stopped below MinInstances: %+v", st)
	}
}

func TestCrashedIdleInstance(t *testing.T) {
	tests := []struct {
		name         string
		min          int
		wantReplaced bool
	}{
		{"below min: replaced", 1, true},
		{"no min: not replaced", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			fs := newFakeStarter(false)
			p, obs := newTestPool(t, Config{Concurrency: 1, MinInstances: tc.min, MaxInstances: 2, Now: clk.Now}, fs)
			l := mustAcquire(t, p)
			l.Release()
			in := fs.inst(t, l.InstanceID)

			in.exit()
			if ev := recv(t, obs.stopped, "the crash"); ev != (stopEvent{l.InstanceID, StopCrashed}) {
				t.Fatalf("stopped %+v, want %s crashed", ev, l.InstanceID)
			}
			if got := in.stopCount(); got != 1 {
				t.Errorf("crashed instance: Stop called %d times, want 1 (to free what it holds)", got)
			}
			if tc.wantReplaced {
				waitFor(t, "a replacement", func() bool {
					st := p.Stats()
					return len(st.Instances) == 1 && st.Instances[0].Phase == PhaseIdle && st.Instances[0].ID != l.InstanceID
				})
			} else if st := p.Stats(); len(st.Instances) != 0 || st.Starting != 0 || fs.starts() != 1 {
				t.Errorf("stats = %+v, starts = %d; want no instance and no replacement", st, fs.starts())
			}
			l.Release() // long since released: still harmless
		})
	}
}

func TestCrashWithWaitersIsReplaced(t *testing.T) {
	fs := newFakeStarter(false)
	p, obs := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, MaxQueue: 5}, fs)
	busy := mustAcquire(t, p)
	res := acquireAsync(context.Background(), p)
	waitWaiting(t, p, 1)

	fs.inst(t, busy.InstanceID).exit()
	r := recv(t, res, "the queued request")
	if r.err != nil || !r.l.Cold || r.l.InstanceID == busy.InstanceID {
		t.Fatalf("queued request: lease %+v, err %v; want a cold lease on a replacement", r.l, r.err)
	}
	if ev := recv(t, obs.stopped, "the crash"); ev != (stopEvent{busy.InstanceID, StopCrashed}) {
		t.Errorf("stopped %+v, want %s crashed", ev, busy.InstanceID)
	}
	// The crashed instance's caller gives its lease back late: harmless.
	busy.Release()
	busy.Discard("late")
	st := p.Stats()
	if len(st.Instances) != 1 || st.Instances[0].ID != r.l.InstanceID || st.Instances[0].InFlight != 1 {
		t.Errorf("instances = %+v, want only the replacement with 1 in flight", st.Instances)
	}
	r.l.Release()
}

func TestFailedStartBacksOff(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	initErr := &ebb.InitError{Type: "Runtime.ImportModuleError", Message: "No module named 'app'"}
	fs.set(func(s *fakeStarter) { s.fail = initErr })
	p, obs := newTestPool(t, Config{Concurrency: 1, MaxInstances: 5, Now: clk.Now}, fs)

	acquireFails := func(what string) {
		t.Helper()
		_, err := p.Acquire(context.Background())
		var ie *ebb.InitError
		if !errors.As(err, &ie) || *ie != *initErr {
			t.Fatalf("%s: err = %v, want the InitError", what, err)
		}
	}
	acquireFails("first request")
	if err := recv(t, obs.failed, "the start failure"); !errors.As(err, new(*ebb.InitError)) {
		t.Errorf("observer got %v, want the InitError", err)
	}
	// While backing off, requests fail fast with the last error; no start.
	for range 50 {
		acquireFails("request while backing off")
	}
	steps := []struct {
		advance    time.Duration
		wantStarts int
	}{
		{99 * time.Millisecond, 1},
		{time.Millisecond, 2},       // 100ms after the first failure: one retry
		{100 * time.Millisecond, 2}, // now 200ms back-off
		{100 * time.Millisecond, 3},
		{399 * time.Millisecond, 3}, // now 400ms
		{time.Millisecond, 4},
	}
	for i, s := range steps {
		clk.Advance(s.advance)
		acquireFails("request")
		acquireFails("request")
		if got := fs.starts(); got != s.wantStarts {
			t.Fatalf("step %d: starts = %d, want %d", i, got, s.wantStarts)
		}
	}
	if st := p.Stats(); st.StartFailures != 4 || len(st.Instances) != 0 || st.Waiting != 0 {
		t.Errorf("stats = %+v, want 4 start failures and nothing left", st)
	}

	// The function is fixed: the next start after the back-off succeeds and
	// resets it.
	fs.set(func(s *fakeStarter) { s.fail = nil })
	clk.Advance(800 * time.Millisecond)
	l := mustAcquire(t, p)
	if !l.Cold {
		t.Errorf("lease after recovery is not cold")
	}
	busy := mustAcquire(t, p) // a second instance starts at once: no back-off left
	if got := fs.starts(); got != 6 {
		t.Errorf("starts = %d, want 6", got)
	}
	l.Release()
	busy.Release()
}

func TestFailedStartFailsOnlyItsRequests(t *testing.T) {
	fs := newFakeStarter(true)
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 2}, fs)
	older := acquireAsync(context.Background(), p)
	first := recv(t, fs.calls, "the first start")
	waitWaiting(t, p, 1)
	newer := acquireAsync(context.Background(), p)
	second := recv(t, fs.calls, "the second start")
	waitWaiting(t, p, 2)

	// One start fails: the request not covered by the other start gets the
	// error, and the other stays held for the start still in progress.
	boom := &ebb.InitError{Type: "Runtime.ExitError", Message: "exit status 1"}
	first.answer <- boom
	if r := recv(t, newer, "the failed request"); !errors.As(r.err, new(*ebb.InitError)) {
		t.Fatalf("err = %v, want the InitError", r.err)
	}
	select {
	case r := <-older:
		t.Fatalf("the request covered by the other start returned early: %+v", r)
	default:
	}
	second.answer <- nil
	r := recv(t, older, "the held request")
	if r.err != nil || !r.l.Cold {
		t.Fatalf("held request: lease %+v, err %v; want a cold lease", r.l, r.err)
	}
	r.l.Release()
}

func TestStartTimeoutBoundsHeldRequest(t *testing.T) {
	fs := newFakeStarter(true) // never answered: only the ctx ends the start
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, StartTimeout: 20 * time.Millisecond}, fs)
	_, err := p.Acquire(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the start's DeadlineExceeded", err)
	}
	if st := p.Stats(); st.StartFailures != 1 || st.Waiting != 0 || len(st.Instances) != 0 {
		t.Errorf("stats = %+v, want 1 start failure and nothing left", st)
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	fs.set(func(s *fakeStarter) { s.exitNow = true })
	p, obs := newTestPool(t, Config{Concurrency: 1, MinInstances: 1, MaxInstances: 2, Now: clk.Now}, fs)

	// The first exit before serving anything is replaced at once; the
	// second backs off.
	for range 2 {
		if ev := recv(t, obs.stopped, "a crash"); ev.reason != StopCrashed {
			t.Fatalf("stop reason %q, want crashed", ev.reason)
		}
	}
	for range 3 {
		p.tick(clk.Now())
	}
	if st := p.Stats(); fs.starts() != 2 || st.Starting != 0 || len(st.Instances) != 0 {
		t.Fatalf("starts = %d, stats = %+v; want 2 starts and none in progress", fs.starts(), st)
	}
	clk.Advance(100 * time.Millisecond)
	p.tick(clk.Now())
	if ev := recv(t, obs.stopped, "the retried instance's crash"); ev.reason != StopCrashed {
		t.Fatalf("stop reason %q, want crashed", ev.reason)
	}
	if got := fs.starts(); got != 3 {
		t.Errorf("starts = %d, want 3", got)
	}
	// A request is not held back by the floor's back-off.
	fs.set(func(s *fakeStarter) { s.exitNow = false })
	l := mustAcquire(t, p)
	if !l.Cold {
		t.Errorf("lease is not cold")
	}
	l.Release()
}

func TestDiscardStopsInstance(t *testing.T) {
	fs := newFakeStarter(false)
	p, obs := newTestPool(t, Config{Concurrency: 2, MaxInstances: 2}, fs)
	l := mustAcquire(t, p)
	other := mustAcquire(t, p) // on the same instance
	if other.InstanceID != l.InstanceID {
		t.Fatalf("second lease on %q, want %q", other.InstanceID, l.InstanceID)
	}

	l.Discard("invocation timed out")
	if ev := recv(t, obs.stopped, "the discarded instance"); ev != (stopEvent{l.InstanceID, StopDiscarded}) {
		t.Errorf("stopped %+v, want %s discarded", ev, l.InstanceID)
	}
	if got := fs.inst(t, l.InstanceID).stopCount(); got != 1 {
		t.Errorf("Stop called %d times, want 1", got)
	}
	l.Release()
	other.Release() // its instance is gone: harmless
	if st := p.Stats(); len(st.Instances) != 0 {
		t.Errorf("instances = %+v, want none", st.Instances)
	}
	next := mustAcquire(t, p)
	if !next.Cold || next.InstanceID == l.InstanceID {
		t.Errorf("next lease on %q (cold %v), want a fresh instance", next.InstanceID, next.Cold)
	}
	next.Release()
}

func TestDrain(t *testing.T) {
	t.Run("waiting and new requests get ErrDraining", func(t *testing.T) {
		fs := newFakeStarter(false)
		p, obs := newTestPool(t, Config{Concurrency: 1, MaxInstances: 1, MaxQueue: 5}, fs)
		busy := mustAcquire(t, p)
		res := acquireAsync(context.Background(), p)
		waitWaiting(t, p, 1)

		drained := make(chan error, 1)
		go func() { drained <- p.Drain(context.Background()) }()
		if r := recv(t, res, "the queued request"); !errors.Is(r.err, ebb.ErrDraining) {
			t.Errorf("queued request: err = %v, want ErrDraining", r.err)
		}
		if _, err := p.Acquire(context.Background()); !errors.Is(err, ebb.ErrDraining) {
			t.Errorf("Acquire while draining: err = %v, want ErrDraining", err)
		}
		if st := p.Stats(); !st.Draining || st.Waiting != 0 {
			t.Errorf("stats = %+v, want draining and nothing waiting", st)
		}
		busy.Release()
		if ev := recv(t, obs.stopped, "the drained instance"); ev != (stopEvent{busy.InstanceID, StopDrained}) {
			t.Errorf("stopped %+v, want %s drained", ev, busy.InstanceID)
		}
		if err := recv(t, drained, "Drain"); err != nil {
			t.Errorf("Drain: %v", err)
		}
	})
	t.Run("in-flight requests finish, idle instances stop at once", func(t *testing.T) {
		fs := newFakeStarter(false)
		p, obs := newTestPool(t, Config{Concurrency: 2, MaxInstances: 2}, fs)
		a1 := mustAcquire(t, p)
		a2 := mustAcquire(t, p)
		b := mustAcquire(t, p) // the first instance is full: a second starts
		b.Release()
		if a1.InstanceID != a2.InstanceID || b.InstanceID == a1.InstanceID {
			t.Fatalf("leases on %s, %s, %s; want two on one instance and one on another", a1.InstanceID, a2.InstanceID, b.InstanceID)
		}

		drained := make(chan error, 1)
		go func() { drained <- p.Drain(context.Background()) }()
		if ev := recv(t, obs.stopped, "the idle instance"); ev != (stopEvent{b.InstanceID, StopDrained}) {
			t.Errorf("stopped %+v, want %s drained", ev, b.InstanceID)
		}
		a1.Release()
		if in, _ := instanceByID(p.Stats(), a1.InstanceID); in.Phase != PhaseBusy {
			t.Errorf("instance with a request still in flight: phase %q, want busy", in.Phase)
		}
		select {
		case err := <-drained:
			t.Fatalf("Drain returned (%v) with a lease in flight", err)
		default:
		}
		a2.Release()
		if err := recv(t, drained, "Drain"); err != nil {
			t.Errorf("Drain: %v", err)
		}
		if st := p.Stats(); len(st.Instances) != 0 {
			t.Errorf("instances after Drain = %+v, want none", st.Instances)
		}
		for _, id := range []string{a1.InstanceID, b.InstanceID} {
			if got := fs.inst(t, id).stopCount(); got != 1 {
				t.Errorf("%s stopped %d times, want 1", id, got)
			}
		}
		a2.Release() // again, after the drain: harmless
	})
}

func TestDrainTimeoutKills(t *testing.T) {
	fs := newFakeStarter(false)
	fs.set(func(s *fakeStarter) { s.stubborn = true })
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 2, StopTimeout: time.Hour}, fs)
	busy := mustAcquire(t, p)
	idle := mustAcquire(t, p)
	idle.Release() // its graceful Stop will hang until killed

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain: err = %v, want DeadlineExceeded", err)
	}
	waitFor(t, "every instance gone", func() bool { return len(p.Stats().Instances) == 0 })
	for _, id := range []string{busy.InstanceID, idle.InstanceID} {
		if in := fs.inst(t, id); !in.wasKilled() || in.stopCount() != 1 {
			t.Errorf("%s: killed %v, stops %d; want killed by one Stop", id, in.wasKilled(), in.stopCount())
		}
	}
	busy.Release() // after the kill: harmless
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("Close after Drain: %v", err)
	}
}

func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	fs := newFakeStarter(true)
	p, err := NewPool(Config{Function: "fn", Concurrency: 1, MinInstances: 1, MaxInstances: 3, TickInterval: time.Millisecond}, fs)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, fs.calls, "the min start").answer <- nil
	waitFor(t, "the min instance", func() bool { return len(p.Stats().Instances) == 1 && p.Stats().Starting == 0 })
	busy := mustAcquire(t, p)
	held := acquireAsync(context.Background(), p)
	recv(t, fs.calls, "a start for a held request") // left hanging: Close must cancel it
	waitWaiting(t, p, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a lease in flight: err = %v, want DeadlineExceeded", err)
	}
	if r := recv(t, held, "the held request"); !errors.Is(r.err, ebb.ErrDraining) {
		t.Errorf("held request: err = %v, want ErrDraining", r.err)
	}
	busy.Release()
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := p.Acquire(context.Background()); !errors.Is(err, ebb.ErrDraining) {
		t.Errorf("Acquire after Close: err = %v, want ErrDraining", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLeaseZeroValuesAreHarmless(t *testing.T) {
	var nilLease *Lease[*fakeInstance]
	nilLease.Release()
	nilLease.Discard("nil")
	var zero Lease[*fakeInstance]
	zero.Release()
	zero.Discard("zero")
}

func TestNewPoolRejectsBadConfig(t *testing.T) {
	if _, err := NewPool(Config{Function: "fn", MinInstances: 3, MaxInstances: 2}, newFakeStarter(false)); err == nil {
		t.Errorf("NewPool with min > max: no error")
	}
	if _, err := NewPool[*fakeInstance](Config{Function: "fn"}, nil); err == nil {
		t.Errorf("NewPool with no starter: no error")
	}
}

func TestAcquireReleaseAllocations(t *testing.T) {
	fs := newFakeStarter(false)
	p, _ := newTestPool(t, Config{Concurrency: 4, MaxInstances: 1}, fs)
	mustAcquire(t, p).Release()
	allocs := testing.AllocsPerRun(1000, func() {
		l, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
	})
	if allocs > 1 {
		t.Errorf("warm Acquire+Release: %v allocations, want at most 1 (the Lease)", allocs)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	p, err := NewPool(Config{Function: "bench", Concurrency: ebb.MaxConcurrency, MinInstances: 1, MaxInstances: 1}, newFakeStarter(false))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	for len(p.Stats().Instances) == 0 || p.Stats().Instances[0].Phase != PhaseIdle {
		runtime.Gosched()
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l, err := p.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			if l.Cold {
				b.Error("cold lease in a warm benchmark")
			}
			l.Release()
		}
	})
}

func TestIsNilSeesNilPointersInTheInstanceType(t *testing.T) {
	if !isNil[*fakeInstance](nil) || !isNil[Instance](nil) || !isNil[Instance]((*fakeInstance)(nil)) {
		t.Error("a nil instance was not seen as nil")
	}
	if isNil(&fakeInstance{}) {
		t.Error("a live instance was seen as nil")
	}
}

// A keep-alive policy's deadline replaces IdleTimeout in the idle stop,
// and a pre-warm starts one instance that the next request finds warm.
func TestIdleDeadlineAndPrewarm(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	var mu sync.Mutex
	keep := time.Hour // what the policy says now
	deadline := func(lastUsed time.Time) time.Time {
		mu.Lock()
		defer mu.Unlock()
		return lastUsed.Add(keep)
	}
	p, obs := newTestPool(t, Config{Concurrency: 1, MaxInstances: 3, IdleTimeout: time.Minute, IdleDeadline: deadline, Now: clk.Now}, fs)

	if !p.Prewarm(clk.Now()) {
		t.Fatal("Prewarm of an empty pool started nothing")
	}
	if p.Prewarm(clk.Now()) {
		t.Fatal("a second Prewarm started another instance while one was starting")
	}
	waitFor(t, "the pre-warmed instance", func() bool {
		st := p.Stats()
		return len(st.Instances) == 1 && st.Instances[0].Phase == PhaseIdle
	})
	l := mustAcquire(t, p)
	if l.Cold {
		t.Fatal("the request after a pre-warm was cold")
	}
	l.Release()
	t1 := clk.Now()
	p.StopIdle(t1.Add(30 * time.Minute)) // past IdleTimeout, within the policy's hour
	if st := p.Stats(); len(st.Instances) != 1 || st.Instances[0].Phase != PhaseIdle {
		t.Fatalf("stopped before the policy's deadline: %+v", st)
	}
	mu.Lock()
	keep = 0 // the policy now unloads right after a call
	mu.Unlock()
	p.StopIdle(t1)
	if ev := recv(t, obs.stopped, "the idle stop"); ev != (stopEvent{l.InstanceID, StopIdle}) {
		t.Fatalf("stopped %+v, want %s for idle", ev, l.InstanceID)
	}

	// StopIdleNow stops an idle instance within its deadline, not a busy
	// one.
	mu.Lock()
	keep = time.Hour
	mu.Unlock()
	if !p.Prewarm(clk.Now()) {
		t.Fatal("Prewarm of an empty pool started nothing")
	}
	waitFor(t, "the second pre-warmed instance", func() bool {
		st := p.Stats()
		return len(st.Instances) == 1 && st.Instances[0].Phase == PhaseIdle
	})
	busy := mustAcquire(t, p)
	p.StopIdleNow()
	if st := p.Stats(); st.Instances[0].Phase != PhaseBusy {
		t.Fatalf("StopIdleNow touched a busy instance: %+v", st)
	}
	busy.Release()
	p.StopIdleNow()
	if ev := recv(t, obs.stopped, "the stop of an idle instance within its deadline"); ev != (stopEvent{busy.InstanceID, StopIdle}) {
		t.Fatalf("stopped %+v, want %s", ev, busy.InstanceID)
	}
}

// TestLimitBoundsStarts: a pool whose Limit says k (the slots a node of a
// cluster holds) starts no more than k instances for a burst, whatever
// MaxInstances allows; the others queue. Raising the limit lets the next
// Acquire start one more; with a limit of 0 and nothing running, a request
// fails at once as overloaded rather than start an instance.
func TestLimitBoundsStarts(t *testing.T) {
	fs := newFakeStarter(true)
	var mu sync.Mutex
	limit := 2
	p, _ := newTestPool(t, Config{Concurrency: 1, MaxInstances: 10, MaxQueue: 10, Limit: func() int {
		mu.Lock()
		defer mu.Unlock()
		return limit
	}}, fs)
	results := make(chan acquired, 6)
	for range 5 {
		go func() {
			l, err := p.Acquire(context.Background())
			results <- acquired{l, err}
		}()
	}
	calls := []*startCall{recv(t, fs.calls, "a start"), recv(t, fs.calls, "a start")}
	waitWaiting(t, p, 5)
	if st := p.Stats(); st.Starting != 2 {
		t.Fatalf("starting = %d with a limit of 2, want 2", st.Starting)
	}
	mu.Lock()
	limit = 3
	mu.Unlock()
	go func() {
		l, err := p.Acquire(context.Background())
		results <- acquired{l, err}
	}()
	calls = append(calls, recv(t, fs.calls, "the start the raised limit allows"))
	waitWaiting(t, p, 6)
	for _, c := range calls {
		c.answer <- nil
	}
	var leases []*Lease[*fakeInstance]
	for range 3 {
		r := recv(t, results, "a held request")
		if r.err != nil {
			t.Fatal(r.err)
		}
		leases = append(leases, r.l)
	}
	for range 3 {
		leases[0].Release()
		leases = leases[1:]
		r := recv(t, results, "a queued request")
		if r.err != nil {
			t.Fatal(r.err)
		}
		leases = append(leases, r.l)
	}
	for _, l := range leases {
		l.Release()
	}
	if got := fs.starts(); got != 3 {
		t.Errorf("starts = %d, want 3 (the limit)", got)
	}

	none, _ := newTestPool(t, Config{Function: "none", Concurrency: 1, MaxInstances: 10, MaxQueue: 10, Limit: func() int { return 0 }}, newFakeStarter(false))
	if _, err := none.Acquire(context.Background()); !errors.Is(err, ebb.ErrOverloaded) {
		t.Errorf("Acquire with a limit of 0: err = %v, want ErrOverloaded", err)
	}
}

// TestFloorFollowsItsFunction: a pool whose Floor (a node's share of a
// cluster's min_instances) moves keeps what it says now: none at first,
// two after it rises (at the next tick), and back to none, idle
// instances stopped, after it falls.
func TestFloorFollowsItsFunction(t *testing.T) {
	clk := newFakeClock()
	fs := newFakeStarter(false)
	var mu sync.Mutex
	floor := 0
	p, _ := newTestPool(t, Config{Concurrency: 1, MinInstances: 2, MaxInstances: 3, IdleTimeout: time.Minute, Now: clk.Now,
		Floor: func() int { mu.Lock(); defer mu.Unlock(); return floor }}, fs)
	p.tick(clk.Now())
	if st := p.Stats(); len(st.Instances) != 0 || fs.starts() != 0 {
		t.Fatalf("with a floor of 0: %+v, %d starts; want none (MinInstances is replaced)", st, fs.starts())
	}
	mu.Lock()
	floor = 2
	mu.Unlock()
	p.tick(clk.Now())
	waitFor(t, "2 warm instances", func() bool {
		st := p.Stats()
		return len(st.Instances) == 2 && st.Instances[0].Phase == PhaseIdle && st.Instances[1].Phase == PhaseIdle
	})
	p.tick(clk.Now().Add(time.Hour))
	if st := p.Stats(); len(st.Instances) != 2 {
		t.Fatalf("idle past the timeout with a floor of 2: %d instances, want 2 kept", len(st.Instances))
	}
	mu.Lock()
	floor = 0
	mu.Unlock()
	p.tick(clk.Now().Add(time.Hour))
	waitFor(t, "the idle instances to stop", func() bool { return len(p.Stats().Instances) == 0 })
	if got := fs.starts(); got != 2 {
		t.Errorf("starts = %d, want 2", got)
	}
}
