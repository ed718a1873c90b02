package dispatch

import (
	"context"
	"sync"
	"testing"
	"time"
)

// fakeInstance is an Instance whose life the test controls: exit() makes it
// crash, and a stubborn one's Stop waits for its ctx to end (to be killed).
type fakeInstance struct {
	id       string
	done     chan struct{}
	exitOnce sync.Once

	stubborn bool // Stop waits for its ctx to end

	mu     sync.Mutex // guards the fields below
	stops  int
	killed bool // Stop's ctx had ended when the instance went
}

func (f *fakeInstance) Done() <-chan struct{} { return f.done }

func (f *fakeInstance) exit() { f.exitOnce.Do(func() { close(f.done) }) }

func (f *fakeInstance) Stop(ctx context.Context) error {
	f.mu.Lock()
	f.stops++
	f.mu.Unlock()
	if f.stubborn {
		<-ctx.Done()
	}
	f.mu.Lock()
	f.killed = ctx.Err() != nil
	f.mu.Unlock()
	f.exit()
	return nil
}

func (f *fakeInstance) stopCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stops
}

func (f *fakeInstance) wasKilled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.killed
}

// startCall is one Start in progress; in manual mode it blocks until the test
// answers it (nil: ready, an error: failed) or its ctx ends.
type startCall struct {
	id     string
	answer chan error
}

// fakeStarter starts fakeInstances. In manual mode every Start blocks until
// the test answers it; otherwise it returns at once, failing with fail if set.
type fakeStarter struct {
	manual bool
	calls  chan *startCall // every Start announces itself here

	mu       sync.Mutex // guards the fields below
	fail     error
	stubborn bool // new instances' Stop waits for its ctx
	exitNow  bool // new instances exit as soon as they are ready
	n        int  // Start calls
	insts    map[string]*fakeInstance
}

func newFakeStarter(manual bool) *fakeStarter {
	return &fakeStarter{manual: manual, calls: make(chan *startCall, 1024), insts: map[string]*fakeInstance{}}
}

func (s *fakeStarter) Start(ctx context.Context, id string) (*fakeInstance, error) {
	c := &startCall{id: id, answer: make(chan error, 1)}
	s.mu.Lock()
	s.n++
	fail, stubborn, exitNow := s.fail, s.stubborn, s.exitNow
	s.mu.Unlock()
	select {
	case s.calls <- c:
	default:
	}
	if s.manual {
		select {
		case err := <-c.answer:
			if err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	} else if fail != nil {
		return nil, fail
	}
	in := &fakeInstance{id: id, done: make(chan struct{}), stubborn: stubborn}
	if exitNow {
		in.exit()
	}
	s.mu.Lock()
	s.insts[id] = in
	s.mu.Unlock()
	return in, nil
}

func (s *fakeStarter) starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *fakeStarter) inst(t *testing.T, id string) *fakeInstance {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.insts[id]
	if in == nil {
		t.Fatalf("no instance %q was started", id)
	}
	return in
}

func (s *fakeStarter) set(f func(s *fakeStarter)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// fakeClock is an injected Config.Now that only moves when told.
type fakeClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type stopEvent struct{ id, reason string }

// fakeObserver records events. It reads the pool's Stats inside every hook,
// which would deadlock if the pool called it with its lock held.
type fakeObserver struct {
	stopped chan stopEvent
	failed  chan error

	mu     sync.Mutex // guards pool and starts
	pool   *Pool[*fakeInstance]
	starts []string
}

func newFakeObserver() *fakeObserver {
	return &fakeObserver{stopped: make(chan stopEvent, 1024), failed: make(chan error, 1024)}
}

func (o *fakeObserver) touch() {
	o.mu.Lock()
	p := o.pool
	o.mu.Unlock()
	if p != nil {
		_ = p.Stats()
	}
}

func (o *fakeObserver) InstanceStarted(fn, id string, took time.Duration) {
	o.touch()
	o.mu.Lock()
	o.starts = append(o.starts, id)
	o.mu.Unlock()
}

func (o *fakeObserver) InstanceStartFailed(fn string, err error) {
	o.touch()
	o.failed <- err
}

func (o *fakeObserver) InstanceStopped(fn, id, reason string) {
	o.touch()
	o.stopped <- stopEvent{id, reason}
}

func (o *fakeObserver) QueueDepth(fn string, n int) { o.touch() }

// recv returns the next value from ch, failing the test after 5 s.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitFor polls cond until it holds, failing the test after 5 s. It waits for
// other goroutines to reach a state; it decides nothing by time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type acquired struct {
	l   *Lease[*fakeInstance]
	err error
}

// acquireAsync runs Acquire in a goroutine and delivers its result.
func acquireAsync(ctx context.Context, p *Pool[*fakeInstance]) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		l, err := p.Acquire(ctx)
		ch <- acquired{l, err}
	}()
	return ch
}
