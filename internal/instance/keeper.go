package instance

import (
	"context"
	"sync"
	"time"
)

// ahead is something a keeper keeps started ahead of need: today an
// instance forked from a python zygote, or an onnx process with ONNX Runtime
// up; tomorrow a sandboxed process blocked before exec. Whatever it is, it
// can be handed out, killed, and says when it is gone.
type ahead interface {
	// claim hands it out as instance id; an error means it died meanwhile,
	// and the keeper kills what is left of it.
	claim(id string) error
	// kill stops it at once.
	kill()
	// done is closed once it is gone.
	done() <-chan struct{}
}

// keeperConfig says how a keeper makes its spare and when it lets it go.
type keeperConfig[T ahead] struct {
	// keepAlive is how long the spare stays when no start takes one.
	keepAlive time.Duration
	// start makes one spare; ctx ends when the keeper closes. An error
	// leaves the keeper without one until the next take; start logs it
	// (and may disable the keeper) itself, since only it knows what the
	// error means.
	start func(ctx context.Context) (T, error)
	// hold accounts the spare in the node's warm budget (Config.Warm): a
	// spare is made only when the budget admits it. nil means the spare
	// is accounted elsewhere (a zygote's spare child, with its zygote).
	hold *warmHolder
	// busy, when set, keeps the spare past the keep-alive while it says
	// true (a zygote with forked instances still running). It runs with
	// the keeper's lock held, so must be quick.
	busy func(spareLive bool) bool
	// retire, when set, runs on each check after the keep-alive ran out
	// (and busy said false), or when the warm budget evicts the spare
	// (evicted); had says there was a spare. It runs with the
	// keeper's lock held, so that no take comes between the check and
	// what it lets go (a zygote a start would fork from), and must be
	// quick; the func it returns, if any, runs after the lock is released
	// and the spare is gone, for the slow part (a shutdown).
	retire func(had, evicted bool) (after func())
	// ready, when set, runs after a spare was made (outside the lock).
	ready func()
}

// keeper keeps one spare started ahead of need: a start takes it and asks
// for the next one (refill when taken); when no start took one for the
// keep-alive it is let go. Its loop starts at the first kick and stops at
// close.
type keeper[T ahead] struct {
	cfg keeperConfig[T]

	mu      sync.Mutex // guards spare, has, lastUse, running, closed, off, want, lets, making
	spare   T
	has     bool // spare is set
	lastUse time.Time
	running bool // the loop was started
	closed  bool
	// want says a spare was asked for (refill) and not made or let go
	// since: a kick that reaches the loop after the spare was let go
	// makes nothing.
	want bool
	// lets counts the times the spare (and what it stands on) was let go:
	// a refill asked for before the latest one is stale. Without it, a
	// start's delayed refill could rebuild a zygote the keep-alive had
	// just unloaded, and nothing would unload it again.
	lets uint64
	// making is closed when the spare being made (if any) is ready or
	// has failed: a start that finds none waits for it rather than start
	// its own, which would begin later, for as long as its ctx allows (a
	// python start: one fork's time, since the spare's making also
	// primes it, which may take long).
	making chan struct{}
	// off is set by disable: every later spare would fail too (no ONNX
	// Runtime library, a zygote that may not fork), so none is made.
	off bool

	kick chan struct{} // asks the loop to make a spare
	stop chan struct{} // closed by close
	wg   sync.WaitGroup
}

func newKeeper[T ahead](cfg keeperConfig[T]) *keeper[T] {
	return &keeper[T]{cfg: cfg, kick: make(chan struct{}, 1), stop: make(chan struct{})}
}

// refill asks for a spare, in the background: after a take, or to prewarm.
func (k *keeper[T]) refill() {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return
	}
	k.want = true
	if !k.running {
		k.running = true
		k.lastUse = time.Now()
		k.wg.Add(1)
		go k.run()
	}
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// refillDelay is how long after a start took (or looked for) the spare the
// next one is made: making it (a fork and a warmup call, bwrap's set-up,
// ONNX Runtime's start) costs milliseconds of CPU that would otherwise
// compete with the cold start it follows, on the request's path.
const refillDelay = 25 * time.Millisecond

// refillSoon is refill after refillDelay, for a start that took the spare,
// unless the spare is let go (an unload, an eviction) meanwhile: that
// decision came later and stands.
func (k *keeper[T]) refillSoon() {
	k.mu.Lock()
	closed, lets := k.closed, k.lets
	k.mu.Unlock()
	if closed {
		return
	}
	time.AfterFunc(refillDelay, func() { // refill checks closed again
		k.mu.Lock()
		stale := k.lets != lets
		k.mu.Unlock()
		if !stale {
			k.refill()
		}
	})
}

// run owns the spare: it makes one when kicked and lets it go when no start
// has wanted one for the keep-alive, until stop is closed, which also
// cancels a start in progress.
func (k *keeper[T]) run() {
	defer k.wg.Done()
	tick := time.NewTicker(min(max(k.cfg.keepAlive/4, 10*time.Millisecond), 30*time.Second))
	defer tick.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-k.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
			k.make(ctx)
		case now := <-tick.C:
			k.expire(now)
		}
	}
}

// make starts a spare if there is no live one and the limit allows one more.
func (k *keeper[T]) make(ctx context.Context) {
	k.mu.Lock()
	skip := k.closed || k.off || !k.want || (k.has && !isClosed(k.spare.done()))
	k.want = false
	lets := k.lets
	k.mu.Unlock()
	if skip || !k.acquire() {
		return
	}
	made := make(chan struct{})
	k.mu.Lock()
	k.making = made
	k.mu.Unlock()
	// Whatever happens, the starts waiting for this one go on.
	defer func() {
		k.mu.Lock()
		k.making = nil
		k.mu.Unlock()
		close(made)
	}()
	sp, err := k.cfg.start(ctx)
	if err != nil {
		k.release()
		return
	}
	k.mu.Lock()
	if k.closed || k.off {
		k.mu.Unlock()
		k.release()
		sp.kill()
		<-sp.done()
		return
	}
	old, had := k.spare, k.has
	k.spare, k.has = sp, true
	stale := k.lets != lets
	k.mu.Unlock()
	if had {
		old.kill() // dead already; its room is the new one's
	}
	if stale {
		// Let go while it was being made: the unload or eviction also
		// covers what this start built (a zygote).
		k.letGo(time.Now(), true)
		return
	}
	k.cfg.hold.refresh()
	if k.cfg.ready != nil {
		k.cfg.ready()
	}
}

// expire lets the spare go when no start took one for the keep-alive.
func (k *keeper[T]) expire(now time.Time) { k.letGo(now, false) }

// evict lets the spare go now, keep-alive or not (unless busy says no): the
// warm budget wants its room for something in higher demand.
func (k *keeper[T]) evict() { k.letGo(time.Now(), true) }

func (k *keeper[T]) letGo(now time.Time, force bool) {
	k.mu.Lock()
	if !force && now.Sub(k.lastUse) < k.cfg.keepAlive {
		k.mu.Unlock()
		return
	}
	if k.cfg.busy != nil && k.cfg.busy(k.has && !isClosed(k.spare.done())) {
		k.mu.Unlock()
		return
	}
	sp, had := k.takeLocked()
	k.lets++
	k.want = false
	var after func()
	if k.cfg.retire != nil {
		after = k.cfg.retire(had, force)
	}
	k.mu.Unlock()
	if had {
		k.release()
		sp.kill()
		<-sp.done()
	}
	if after != nil {
		after()
	}
}

// take hands out the spare as instance id when there is a live one, or
// one being made (waiting for it until ctx ends), and notes the use for
// the keep-alive; the caller then calls refill.
func (k *keeper[T]) take(ctx context.Context, id string) (T, bool) {
	k.cfg.hold.used()
	k.mu.Lock()
	k.lastUse = time.Now()
	sp, had := k.takeLocked()
	making := k.making
	k.mu.Unlock()
	if !had && making != nil {
		select {
		case <-making:
			k.mu.Lock()
			sp, had = k.takeLocked()
			k.mu.Unlock()
		case <-ctx.Done():
		}
	}
	var zero T
	if !had {
		return zero, false
	}
	k.release() // it is an instance now, or dead
	if isClosed(sp.done()) {
		return zero, false
	}
	if err := sp.claim(id); err != nil {
		sp.kill()
		<-sp.done()
		return zero, false
	}
	return sp, true
}

func (k *keeper[T]) takeLocked() (T, bool) {
	sp, had := k.spare, k.has
	var zero T
	k.spare, k.has = zero, false
	return sp, had
}

// peek calls f with the spare, under the keeper's lock (f must be quick),
// when there is one.
func (k *keeper[T]) peek(f func(T)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.has {
		f(k.spare)
	}
}

// live says whether a spare waits to be taken.
func (k *keeper[T]) live() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.has && !isClosed(k.spare.done())
}

// disable stops making spares and kills the one waiting, if any.
func (k *keeper[T]) disable() {
	k.mu.Lock()
	k.off = true
	sp, had := k.takeLocked()
	k.mu.Unlock()
	if had {
		k.release()
		sp.kill()
	}
}

// disabled says whether disable was called.
func (k *keeper[T]) disabled() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.off
}

// close stops the loop (cancelling a start in progress) and the spare, and
// waits for both.
func (k *keeper[T]) close() {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return
	}
	k.closed = true
	sp, had := k.takeLocked()
	k.mu.Unlock()
	close(k.stop)
	k.wg.Wait()
	if had {
		k.release()
		sp.kill()
		<-sp.done()
	}
	k.cfg.hold.unregister()
}

// acquire takes room in the node's warm budget, when the spare is accounted
// there: ahead of need, it may only evict holders in less demand.
func (k *keeper[T]) acquire() bool { return k.cfg.hold.admit(false) == nil }

func (k *keeper[T]) release() { k.cfg.hold.release() }

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
