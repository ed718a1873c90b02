package instance

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeAhead is a spare whose life the test sees.
type fakeAhead struct {
	gone     chan struct{}
	once     sync.Once
	claimed  atomic.Pointer[string]
	claimErr error
}

func newFakeAhead() *fakeAhead { return &fakeAhead{gone: make(chan struct{})} }

func (f *fakeAhead) claim(id string) error {
	if f.claimErr != nil {
		return f.claimErr
	}
	f.claimed.Store(&id)
	return nil
}
func (f *fakeAhead) kill()                 { f.once.Do(func() { close(f.gone) }) }
func (f *fakeAhead) done() <-chan struct{} { return f.gone }

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

func TestKeeperRefillsWhenTakenAndExpires(t *testing.T) {
	var made atomic.Int32
	var last atomic.Pointer[fakeAhead]
	retired := make(chan bool, 10)
	k := newKeeper(keeperConfig[*fakeAhead]{
		keepAlive: 50 * time.Millisecond,
		start: func(ctx context.Context) (*fakeAhead, error) {
			made.Add(1)
			f := newFakeAhead()
			last.Store(f)
			return f, nil
		},
		retire: func(had, _ bool) func() {
			return func() { retired <- had }
		},
	})
	defer k.close()
	if _, ok := k.take(context.Background(), "a"); ok {
		t.Fatal("took a spare before any was made")
	}
	k.refill()
	waitFor(t, "a spare", k.live)
	sp, ok := k.take(context.Background(), "inst-1")
	if !ok || *sp.claimed.Load() != "inst-1" {
		t.Fatalf("take = %v, %v; want the spare, claimed as inst-1", sp, ok)
	}
	k.refill()
	waitFor(t, "the next spare", func() bool { return made.Load() == 2 && k.live() })
	next := last.Load()
	// Nothing takes it: it goes after the keep-alive.
	select {
	case had := <-retired:
		if !had {
			t.Error("retire said there was no spare")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("spare not let go after the keep-alive")
	}
	if !isClosed(next.done()) {
		t.Error("expired spare still alive")
	}
	if isClosed(sp.done()) {
		t.Error("the spare handed out was killed")
	}
}

func TestKeeperLimitDisableAndClose(t *testing.T) {
	budget := NewWarmBudget(WarmConfig{Bytes: 1 << 30, Max: 1})
	start := func(ctx context.Context) (*fakeAhead, error) { return newFakeAhead(), nil }
	a := newKeeper(keeperConfig[*fakeAhead]{keepAlive: time.Hour, start: start})
	b := newKeeper(keeperConfig[*fakeAhead]{keepAlive: time.Hour, start: start})
	for _, k := range []*keeper[*fakeAhead]{a, b} {
		k.cfg.hold = budget.newHolder("f", 1, KindONNXSpare, func() uint64 { return 0 }, nil, k.evict)
		k.cfg.hold.register()
	}
	a.refill()
	waitFor(t, "a's spare", a.live)
	// b's loop takes one kick at a time: once it has taken a second one,
	// its attempt after the first has finished.
	b.refill()
	waitFor(t, "b to take the kick", func() bool { return len(b.kick) == 0 })
	b.refill()
	waitFor(t, "b to take the second kick", func() bool { return len(b.kick) == 0 })
	if b.live() {
		t.Fatal("a second spare beyond the node's limit of one")
	}
	var sp *fakeAhead
	a.peek(func(f *fakeAhead) { sp = f })
	a.disable()
	if !a.disabled() || a.live() || !isClosed(sp.done()) {
		t.Fatal("disable left the spare")
	}
	b.refill() // a's slot is free again
	waitFor(t, "b's spare", b.live)
	b.peek(func(f *fakeAhead) { sp = f })
	a.close()
	b.close()
	if !isClosed(sp.done()) {
		t.Error("close left the spare alive")
	}
	if s := budget.Snapshot(); len(s.Holders) != 0 {
		t.Errorf("the budget still has holders after close: %+v", s.Holders)
	}
}

func TestKeeperClaimFailureKillsTheSpare(t *testing.T) {
	f := newFakeAhead()
	f.claimErr = errors.New("died")
	k := newKeeper(keeperConfig[*fakeAhead]{keepAlive: time.Hour, start: func(context.Context) (*fakeAhead, error) { return f, nil }})
	defer k.close()
	k.refill()
	waitFor(t, "a spare", k.live)
	if _, ok := k.take(context.Background(), "x"); ok {
		t.Fatal("took a spare whose claim failed")
	}
	if !isClosed(f.done()) {
		t.Error("a spare whose claim failed was not killed")
	}
}

// busy keeps the spare past the keep-alive (a zygote's forked instances
// still run).
func TestKeeperBusyHoldsTheSpare(t *testing.T) {
	var busy atomic.Bool
	var asked atomic.Int32 // times the keep-alive ran out and busy was asked
	busy.Store(true)
	k := newKeeper(keeperConfig[*fakeAhead]{keepAlive: 20 * time.Millisecond,
		start: func(context.Context) (*fakeAhead, error) { return newFakeAhead(), nil },
		busy:  func(bool) bool { asked.Add(1); return busy.Load() }})
	defer k.close()
	k.refill()
	waitFor(t, "a spare", k.live)
	// Asked twice: the first expiry that found it busy has fully passed.
	waitFor(t, "the keep-alive to run out twice", func() bool { return asked.Load() >= 2 })
	if !k.live() {
		t.Fatal("spare let go while busy")
	}
	busy.Store(false)
	waitFor(t, "the spare to go", func() bool { return !k.live() })
}

// An unload (or eviction) decided after a start asked for the next spare
// stands: the start's delayed refill makes nothing, and a spare whose
// making the unload overtook is let go as soon as it is made. Before this,
// a python function's keep-alive unload was undone 25 ms later by the
// refill of the call it followed, rebuilding a zygote nothing unloaded.
func TestKeeperLetGoCancelsPendingRefill(t *testing.T) {
	var made atomic.Int32
	gate := make(chan struct{})
	started := make(chan struct{}, 10)
	var last atomic.Pointer[fakeAhead]
	retired := make(chan bool, 10)
	k := newKeeper(keeperConfig[*fakeAhead]{
		keepAlive: time.Hour,
		start: func(ctx context.Context) (*fakeAhead, error) {
			started <- struct{}{}
			<-gate
			made.Add(1)
			f := newFakeAhead()
			last.Store(f)
			return f, nil
		},
		retire: func(had, _ bool) func() { return func() { retired <- had } },
	})
	defer k.close()
	close(gate) // starts go through for now

	k.refillSoon()
	k.evict()
	<-retired
	time.Sleep(8 * refillDelay)
	if n := made.Load(); n != 0 {
		t.Fatalf("made %d spares after the unload that followed the refill's request; want none", n)
	}

	// A later ask (a pre-warm) is honoured.
	k.refill()
	waitFor(t, "the pre-warmed spare", k.live)

	// A spare whose making an eviction overtakes goes once made.
	k2gate := make(chan struct{})
	k2 := newKeeper(keeperConfig[*fakeAhead]{
		keepAlive: time.Hour,
		start: func(ctx context.Context) (*fakeAhead, error) {
			started <- struct{}{}
			<-k2gate
			f := newFakeAhead()
			last.Store(f)
			return f, nil
		},
		retire: func(had, _ bool) func() { return func() { retired <- had } },
	})
	defer k2.close()
	for len(started) > 0 {
		<-started
	}
	k2.refill()
	<-started
	k2.evict()
	if had := <-retired; had {
		t.Fatal("the eviction found a spare before one was made")
	}
	close(k2gate)
	select {
	case had := <-retired:
		if !had {
			t.Fatal("the overtaken spare was retired without being seen")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a spare made after an eviction overtook its making was kept")
	}
	if k2.live() || !isClosed(last.Load().done()) {
		t.Fatal("the overtaken spare is still alive")
	}
}

// A start that finds no spare while one is being made waits for it (it
// began earlier, so it is ready no later than a start of its own), gives
// up when its ctx ends, and goes on at once when the making fails.
func TestKeeperTakeWaitsForTheSpareBeingMade(t *testing.T) {
	gate := make(chan error)
	started := make(chan struct{}, 10)
	k := newKeeper(keeperConfig[*fakeAhead]{
		keepAlive: time.Hour,
		start: func(ctx context.Context) (*fakeAhead, error) {
			started <- struct{}{}
			if err := <-gate; err != nil {
				return nil, err
			}
			return newFakeAhead(), nil
		},
	})
	defer func() {
		close(gate)
		k.close()
	}()

	k.refill()
	<-started
	got := make(chan bool)
	go func() {
		sp, ok := k.take(context.Background(), "inst-1")
		got <- ok && *sp.claimed.Load() == "inst-1"
	}()
	select {
	case <-got:
		t.Fatal("take returned while the spare was still being made")
	case <-time.After(50 * time.Millisecond):
	}
	gate <- nil // made
	if !<-got {
		t.Fatal("take did not get the spare it waited for")
	}

	// Its ctx ends first: no spare, and the making goes on for the next.
	k.refill()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, ok := k.take(ctx, "inst-2"); ok {
		t.Fatal("take got a spare that was not made yet")
	}
	gate <- nil
	waitFor(t, "the spare made after the waiter gave up", k.live)
	if _, ok := k.take(context.Background(), "inst-3"); !ok {
		t.Fatal("the spare made after a waiter gave up was lost")
	}

	// The making fails: the waiter goes on without one.
	k.refill()
	<-started
	res := make(chan bool)
	go func() {
		_, ok := k.take(context.Background(), "inst-4")
		res <- ok
	}()
	time.Sleep(20 * time.Millisecond)
	gate <- errors.New("no room")
	select {
	case ok := <-res:
		if ok {
			t.Fatal("take got a spare whose making failed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("take kept waiting after the making failed")
	}
}
