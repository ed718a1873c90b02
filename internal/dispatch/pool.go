package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ebb-run/ebb"
)

// Back-off between starts of a function whose starts keep failing (or whose
// instances keep exiting before serving anything): doubled per failure.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

func backoff(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	return min(minBackoff<<min(failures-1, 16), maxBackoff)
}

// Pool hands out instance slots of one function version and scales its
// instances. All its methods are safe for concurrent use.
type Pool[I Instance] struct {
	cfg     Config
	starter Starter[I]
	obs     Observer
	log     *slog.Logger
	name    string // "fn v3", for errors
	idBase  string // "fn-v3-1a2b3c-", instance ids append a sequence number

	// startCtx parents every Start; cancelled when the pool drains, since no
	// start is wanted after that.
	startCtx   context.Context
	stopStarts context.CancelFunc
	// killCtx parents every Stop; cancelled when a drain runs out of time, so
	// that Stops in progress and to come get an expired ctx and kill.
	killCtx context.Context
	kill    context.CancelFunc
	quit    chan struct{}  // closed by Close to end the loop
	gone    chan struct{}  // closed once the pool drains and its last instance is gone
	wg      sync.WaitGroup // the loop and every instance's lifecycle goroutine

	// mu guards every field below, and the unexported fields of this pool's
	// members, waiters and Leases.
	mu         sync.Mutex
	members    []*member[I] // every instance from start to stopped, in start order
	ready      int          // members in phReady
	starting   int          // members in phStarting
	head, tail *waiter[I]   // requests waiting for a slot, oldest first
	waiting    int          // length of that list
	seq        uint64       // last instance sequence number
	draining   bool
	reason     string // StopDrained or StopClosed, once draining
	goneClosed bool
	quitClosed bool
	// Start back-off: no start before retryAt; startStreak counts failed
	// starts since the last successful one.
	startStreak int
	retryAt     time.Time
	lastErr     error // why the last start failed, for requests that cannot be served
	// Crash-loop back-off for the MinInstances floor: exitStreak counts
	// instances that exited before serving anything since a lease was last
	// given back, and no floor refill starts before floorRetryAt. Without it
	// a function that dies right after becoming ready would spin with no
	// traffic; starts for waiting requests are not held back by it, since
	// those are paced by the requests themselves.
	exitStreak   int
	floorRetryAt time.Time

	invocations, coldStarts, startFailures uint64 // for Stats
}

type memberPhase uint8

const (
	phStarting memberPhase = iota
	phReady
	phStopping
)

// member is one instance as the pool tracks it, from the moment its start
// begins until its Stop returns.
type member[I Instance] struct {
	id        string
	stop      chan struct{} // closed to ask its lifecycle goroutine to stop it
	inst      I             // the zero value while starting
	ph        memberPhase
	reason    string // why it stops, once phStopping
	inFlight  int
	leases    uint64
	startedAt time.Time
	lastUsed  time.Time
	init      time.Duration
}

// waiter is a request in Acquire that found no free slot.
type waiter[I Instance] struct {
	// ch carries the one grant a waiter gets. It is buffered and the grant is
	// sent under Pool.mu as the waiter leaves the list, so sending never
	// blocks and a waiter that is no longer listed always has its grant ready.
	ch         chan grant[I]
	enq        time.Time
	prev, next *waiter[I]
	listed     bool
}

type grant[I Instance] struct {
	lease *Lease[I]
	err   error
}

// Lease is one slot on one instance. Give it back with exactly one of Release
// or Discard (further calls are harmless); do not copy it.
type Lease[I Instance] struct {
	Instance   I
	InstanceID string
	// Cold says this request waited for a fresh instance's start and got one
	// of that instance's first slots; Init is then how long the start took.
	Cold bool
	Init time.Duration
	// Waited is the time spent in Acquire (zero when a slot was free).
	Waited time.Duration

	// A Lease is not recycled through a sync.Pool: Release must stay
	// idempotent, and a second Release on a recycled Lease would free a slot
	// that another request now holds.
	pool *Pool[I]
	m    *member[I]
	done bool
}

// NewPool validates cfg and starts the pool's loop and its MinInstances
// instances; it does not wait for them to be ready. Close the pool to stop it.
func NewPool[I Instance](cfg Config, s Starter[I]) (*Pool[I], error) {
	if s == nil {
		return nil, errors.New("new pool: starter is nil")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new pool: %w", err)
	}
	var nonce [3]byte
	_, _ = rand.Read(nonce[:]) // never fails (crypto/rand panics instead)
	p := &Pool[I]{
		cfg:     cfg,
		starter: s,
		obs:     cfg.Observer,
		log:     cfg.Logger,
		name:    cfg.Function + " v" + strconv.Itoa(cfg.Version),
		idBase:  cfg.Function + "-v" + strconv.Itoa(cfg.Version) + "-" + hex.EncodeToString(nonce[:]) + "-",
		quit:    make(chan struct{}),
		gone:    make(chan struct{}),
	}
	if p.obs == nil {
		p.obs = nopObserver{}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("function", cfg.Function, "version", cfg.Version)
	p.startCtx, p.stopStarts = context.WithCancel(context.Background())
	p.killCtx, p.kill = context.WithCancel(context.Background())

	p.mu.Lock()
	p.refillLocked(cfg.Now())
	p.mu.Unlock()
	p.wg.Add(1)
	go p.loop()
	return p, nil
}

// Acquire returns a lease on a free slot, starting an instance when none is
// free and the pool may grow, and holding the caller until that instance is
// ready. Errors: ebb.ErrOverloaded (queue full, or queued past QueueTimeout),
// ebb.ErrDraining (the pool is draining or closed: re-resolve the function),
// the Starter's error (e.g. wrapping an *ebb.InitError) for the requests a
// failed start was serving or, while starts back off, for requests that
// nothing could serve, and ctx.Err().
func (p *Pool[I]) Acquire(ctx context.Context) (*Lease[I], error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := p.cfg.Now()
	l := new(Lease[I]) // before the lock, to keep the critical section short
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return nil, ebb.ErrDraining
	}
	if m := p.pickLocked(); m != nil {
		p.leaseLocked(l, m, now, false)
		p.mu.Unlock()
		return l, nil
	}
	return p.waitUnlock(ctx, now)
}

// pickLocked returns the ready instance with the most requests in flight that
// still has a free slot (ties: the most recently used), so that traffic packs
// onto few instances and the rest can go idle and be stopped; nil if none.
func (p *Pool[I]) pickLocked() *member[I] {
	var best *member[I]
	full := p.cfg.Concurrency
	for _, m := range p.members {
		if m.ph != phReady || m.inFlight >= full {
			continue
		}
		if best == nil || m.inFlight > best.inFlight || (m.inFlight == best.inFlight && m.lastUsed.After(best.lastUsed)) {
			best = m
			if m.inFlight == full-1 {
				break // nothing can beat one slot short of full
			}
		}
	}
	return best
}

func (p *Pool[I]) leaseLocked(l *Lease[I], m *member[I], now time.Time, cold bool) {
	m.inFlight++
	m.leases++
	m.lastUsed = now
	p.invocations++
	*l = Lease[I]{Instance: m.inst, InstanceID: m.id, pool: p, m: m}
	if cold {
		p.coldStarts++
		l.Cold = true
		l.Init = m.init
	}
}

// waitUnlock is Acquire's slow path: it is called with p.mu held, finding no
// free slot, and unlocks it.
func (p *Pool[I]) waitUnlock(ctx context.Context, now time.Time) (*Lease[I], error) {
	w := &waiter[I]{ch: make(chan grant[I], 1), enq: now}
	p.pushLocked(w)
	p.growLocked(now)
	if !w.listed { // nothing can serve it: growLocked failed it already
		p.mu.Unlock()
		g := <-w.ch
		return g.lease, g.err
	}
	// Held for a start, a request is bounded by that start's StartTimeout and
	// gets its outcome; the timer is only a backstop for one that ends up
	// queued after all (its start failed and the error went to older ones).
	timeout := p.cfg.StartTimeout + p.cfg.QueueTimeout
	if unserved := p.waiting - p.starting*p.cfg.Concurrency; unserved > 0 {
		// Beyond what starting instances will serve and the pool cannot
		// grow: queued.
		if unserved > p.cfg.MaxQueue {
			p.unlinkLocked(w)
			p.mu.Unlock()
			return nil, ebb.ErrOverloaded
		}
		timeout = p.cfg.QueueTimeout
	}
	depth := p.waiting
	p.mu.Unlock()
	p.obs.QueueDepth(p.cfg.Function, depth)

	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case g := <-w.ch:
		return g.lease, g.err
	case <-ctx.Done():
		if g, ok := p.leave(w); ok && g.lease != nil {
			g.lease.Release() // granted as the caller gave up: pass it on
		}
		return nil, ctx.Err()
	case <-t.C:
		if g, ok := p.leave(w); ok {
			return g.lease, g.err // granted as the timer fired: use it
		}
		return nil, ebb.ErrOverloaded
	}
}

// leave takes w out of the waiting list; if w was granted first, it returns
// that grant and ok.
func (p *Pool[I]) leave(w *waiter[I]) (grant[I], bool) {
	p.mu.Lock()
	if !w.listed {
		p.mu.Unlock()
		return <-w.ch, true
	}
	p.unlinkLocked(w)
	depth := p.waiting
	p.mu.Unlock()
	p.obs.QueueDepth(p.cfg.Function, depth)
	return grant[I]{}, false
}

func (p *Pool[I]) pushLocked(w *waiter[I]) {
	w.listed = true
	w.prev = p.tail
	if p.tail != nil {
		p.tail.next = w
	} else {
		p.head = w
	}
	p.tail = w
	p.waiting++
}

func (p *Pool[I]) unlinkLocked(w *waiter[I]) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		p.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		p.tail = w.prev
	}
	w.prev, w.next, w.listed = nil, nil, false
	p.waiting--
}

// grantLocked answers w and takes it out of the list.
func (p *Pool[I]) grantLocked(w *waiter[I], l *Lease[I], err error) {
	p.unlinkLocked(w)
	w.ch <- grant[I]{lease: l, err: err}
}

// serveLocked hands m's free slots to waiters, oldest first, and reports how
// many it served.
func (p *Pool[I]) serveLocked(m *member[I], now time.Time, cold bool) int {
	n := 0
	for p.head != nil && m.inFlight < p.cfg.Concurrency {
		w := p.head
		l := new(Lease[I])
		p.leaseLocked(l, m, now, cold)
		l.Waited = now.Sub(w.enq)
		p.grantLocked(w, l, nil)
		n++
	}
	return n
}

// canStartLocked reports whether one more instance may start now.
func (p *Pool[I]) canStartLocked(now time.Time) bool {
	return !p.draining && p.ready+p.starting < p.maxLocked() && !now.Before(p.retryAt)
}

// minLocked is the floor of instances kept now: MinInstances, or what
// Floor says when set.
func (p *Pool[I]) minLocked() int {
	if p.cfg.Floor != nil {
		return min(p.cfg.Floor(), p.maxLocked())
	}
	return p.cfg.MinInstances
}

// maxLocked is how many instances may run or start now: MaxInstances,
// within Limit when set.
func (p *Pool[I]) maxLocked() int {
	if p.cfg.Limit != nil {
		return min(p.cfg.MaxInstances, p.cfg.Limit())
	}
	return p.cfg.MaxInstances
}

// growLocked starts instances until those starting can serve every waiting
// request or the pool may not grow. Waiting requests that nothing running or
// starting can ever serve (starts are backing off) fail with the last start
// error rather than hang.
func (p *Pool[I]) growLocked(now time.Time) {
	for p.waiting > p.starting*p.cfg.Concurrency && p.canStartLocked(now) {
		p.startLocked(now)
	}
	if p.waiting > 0 && p.ready == 0 && p.starting == 0 {
		err := p.lastErr
		if err == nil {
			err = ebb.ErrOverloaded
		}
		for p.head != nil {
			p.grantLocked(p.head, nil, err)
		}
	}
}

// refillLocked starts what waiting requests and MinInstances need.
func (p *Pool[I]) refillLocked(now time.Time) {
	p.growLocked(now)
	p.fillFloorLocked(now, p.minLocked())
}

// fillFloorLocked starts up to n instances, no more than MinInstances lacks.
func (p *Pool[I]) fillFloorLocked(now time.Time, n int) {
	if now.Before(p.floorRetryAt) {
		return
	}
	for floor := p.minLocked(); n > 0 && p.ready+p.starting < floor && p.canStartLocked(now); n-- {
		p.startLocked(now)
	}
}

func (p *Pool[I]) startLocked(now time.Time) {
	p.seq++
	m := &member[I]{
		id:        p.idBase + strconv.FormatUint(p.seq, 10),
		stop:      make(chan struct{}),
		startedAt: now,
	}
	p.members = append(p.members, m)
	p.starting++
	p.wg.Add(1)
	go p.run(m)
}

// requestStopLocked takes a ready instance out of service and asks its
// lifecycle goroutine to stop it.
func (p *Pool[I]) requestStopLocked(m *member[I], reason string) {
	if m.ph != phReady {
		return
	}
	m.ph = phStopping
	m.reason = reason
	p.ready--
	close(m.stop)
}

func (p *Pool[I]) removeMemberLocked(m *member[I]) {
	if i := slices.Index(p.members, m); i >= 0 {
		p.members = slices.Delete(p.members, i, i+1)
	}
	if p.draining && len(p.members) == 0 && !p.goneClosed {
		p.goneClosed = true
		close(p.gone)
	}
}

// run is the lifecycle goroutine of one instance: it starts it, watches it,
// and stops it when the pool asks or it exits on its own.
func (p *Pool[I]) run(m *member[I]) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.startCtx, p.cfg.StartTimeout)
	t0 := p.cfg.Now()
	in, err := p.starter.Start(ctx, m.id)
	took := p.cfg.Now().Sub(t0)
	cancel()
	if err == nil && isNil(in) {
		err = errors.New("starter returned no instance")
	}
	if err != nil {
		p.startFailed(m, err)
		return
	}
	if p.started(m, in, took) {
		select {
		case <-in.Done():
			p.exited(m)
		case <-m.stop:
		}
	}
	stopCtx, cancel := context.WithTimeout(p.killCtx, p.cfg.StopTimeout)
	err = in.Stop(stopCtx)
	cancel()

	p.mu.Lock()
	reason := m.reason
	p.removeMemberLocked(m)
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("stop instance", "instance", m.id, "reason", reason, "err", err)
	} else {
		p.log.Debug("instance stopped", "instance", m.id, "reason", reason)
	}
	p.obs.InstanceStopped(p.cfg.Function, m.id, reason)
}

// isNil says whether a Starter returned a nil instance (a nil interface, or
// a nil pointer in one) without an error.
func isNil[I Instance](in I) bool {
	v := reflect.ValueOf(any(in))
	if !v.IsValid() {
		return true
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Chan, reflect.Func, reflect.Slice:
		return v.IsNil()
	}
	return false
}

// started puts a freshly started instance into service, serving waiting
// requests first. It reports false when the pool began draining meanwhile and
// the instance is to be stopped at once.
func (p *Pool[I]) started(m *member[I], in I, took time.Duration) bool {
	now := p.cfg.Now()
	p.mu.Lock()
	p.starting--
	m.inst = in
	m.init = took
	if p.draining {
		m.ph = phStopping
		m.reason = p.reason
		p.mu.Unlock()
		p.obs.InstanceStarted(p.cfg.Function, m.id, took)
		return false
	}
	m.ph = phReady
	m.lastUsed = now
	p.ready++
	p.startStreak = 0
	p.retryAt = time.Time{}
	served := p.serveLocked(m, now, true)
	p.growLocked(now) // those still uncovered, should starts have been backing off
	depth := p.waiting
	p.mu.Unlock()
	p.log.Debug("instance started", "instance", m.id, "took", took, "served", served)
	p.obs.InstanceStarted(p.cfg.Function, m.id, took)
	if served > 0 {
		p.obs.QueueDepth(p.cfg.Function, depth)
	}
	return true
}

// exited handles an instance whose Done closed: unless the pool had asked it
// to stop, it crashed. Its in-flight requests see their own errors from the
// instance; their leases are given back harmlessly later.
func (p *Pool[I]) exited(m *member[I]) {
	now := p.cfg.Now()
	p.mu.Lock()
	if m.ph != phReady {
		p.mu.Unlock()
		return
	}
	m.ph = phStopping
	m.reason = StopCrashed
	p.ready--
	early := m.leases == 0
	if early { // the first such exit is replaced at once, a streak backs off
		p.exitStreak++
		p.floorRetryAt = now.Add(backoff(p.exitStreak - 1))
	}
	p.refillLocked(now)
	depth := p.waiting
	p.mu.Unlock()
	p.log.Warn("instance crashed", "instance", m.id, "before_first_request", early)
	p.obs.QueueDepth(p.cfg.Function, depth)
}

// startFailed handles a start that returned an error: the requests it was
// serving get the error, and further starts back off.
func (p *Pool[I]) startFailed(m *member[I], err error) {
	now := p.cfg.Now()
	err = fmt.Errorf("start instance %s: %w", m.id, err)
	p.mu.Lock()
	p.starting--
	if p.draining { // cancelled by the drain, most likely; nobody waits for it
		p.removeMemberLocked(m)
		p.mu.Unlock()
		p.log.Debug("start abandoned for drain", "instance", m.id, "err", err)
		return
	}
	p.removeMemberLocked(m)
	p.startFailures++
	p.startStreak++
	retry := backoff(p.startStreak)
	p.retryAt = now.Add(retry)
	p.lastErr = err
	// The requests this start was serving are the oldest not covered by the
	// starts still in progress.
	w := p.head
	for skip := p.starting * p.cfg.Concurrency; w != nil && skip > 0; skip-- {
		w = w.next
	}
	for n := 0; w != nil && n < p.cfg.Concurrency; n++ {
		next := w.next
		p.grantLocked(w, nil, err)
		w = next
	}
	p.refillLocked(now) // backing off now, so this only fails what nothing can serve
	depth := p.waiting
	p.mu.Unlock()
	p.log.Warn("start instance failed", "instance", m.id, "err", err, "retry_in", retry)
	p.obs.InstanceStartFailed(p.cfg.Function, err)
	p.obs.QueueDepth(p.cfg.Function, depth)
}

// Release gives the slot back to the pool, handing it straight to the oldest
// waiting request if any. It is idempotent, and harmless once the instance is
// gone.
func (l *Lease[I]) Release() {
	p := l.poolOf()
	if p == nil {
		return
	}
	now := p.cfg.Now()
	p.mu.Lock()
	if l.done {
		p.mu.Unlock()
		return
	}
	l.done = true
	m := l.m
	m.inFlight--
	if m.ph != phReady {
		p.mu.Unlock()
		return
	}
	m.lastUsed = now
	if p.exitStreak != 0 {
		p.exitStreak = 0 // an instance served a request: this function does not die on sight
	}
	if p.head != nil {
		p.serveLocked(m, now, false)
		depth := p.waiting
		p.mu.Unlock()
		p.obs.QueueDepth(p.cfg.Function, depth)
		return
	}
	if p.draining && m.inFlight == 0 {
		p.requestStopLocked(m, p.reason)
	}
	p.mu.Unlock()
}

// Discard says the instance is bad (timed out, crashed): it is taken out of
// the pool now and stopped in the background, and the lease is freed.
// Replacements follow the usual rules (waiting requests, MinInstances).
// Discard after Release, or twice, is harmless.
func (l *Lease[I]) Discard(reason string) {
	p := l.poolOf()
	if p == nil {
		return
	}
	now := p.cfg.Now()
	p.mu.Lock()
	if l.done {
		p.mu.Unlock()
		return
	}
	l.done = true
	m := l.m
	m.inFlight--
	if m.ph != phReady {
		p.mu.Unlock()
		return
	}
	p.requestStopLocked(m, StopDiscarded)
	p.refillLocked(now)
	p.mu.Unlock()
	p.log.Info("instance discarded", "instance", m.id, "why", reason)
}

func (l *Lease[I]) poolOf() *Pool[I] {
	if l == nil {
		return nil
	}
	return l.pool
}

// Drain is for a redeploy: new Acquires and waiting requests get
// ebb.ErrDraining, leases in flight finish, then every instance is stopped.
// It returns when all are gone, or when ctx ends: then every instance left is
// stopped with an expired ctx (killed) and Drain returns without waiting for
// that. Drain does not end the pool's loop; Close does.
func (p *Pool[I]) Drain(ctx context.Context) error {
	return p.shutdown(ctx, StopDrained)
}

// Close is Drain for shutdown, and then ends the pool's loop and waits for
// every goroutine the pool owns, killed instances included.
func (p *Pool[I]) Close(ctx context.Context) error {
	err := p.shutdown(ctx, StopClosed)
	p.mu.Lock()
	if !p.quitClosed {
		p.quitClosed = true
		close(p.quit)
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.kill() // releases the contexts' resources; nothing is left to kill
	return err
}

func (p *Pool[I]) shutdown(ctx context.Context, reason string) error {
	p.mu.Lock()
	first := !p.draining
	if first {
		p.draining = true
		p.reason = reason
		for p.head != nil {
			p.grantLocked(p.head, nil, ebb.ErrDraining)
		}
		for _, m := range p.members {
			if m.inFlight == 0 {
				p.requestStopLocked(m, reason)
			}
		}
		if len(p.members) == 0 && !p.goneClosed {
			p.goneClosed = true
			close(p.gone)
		}
	}
	p.mu.Unlock()
	if first {
		p.stopStarts()
		p.log.Info("draining", "reason", reason)
		p.obs.QueueDepth(p.cfg.Function, 0)
	}

	select {
	case <-p.gone:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	for _, m := range p.members {
		p.requestStopLocked(m, p.reason)
	}
	p.mu.Unlock()
	p.kill()
	p.log.Warn("drain ran out of time: killing instances", "err", ctx.Err())
	return fmt.Errorf("drain %s: %w", p.name, ctx.Err())
}

// loop applies Plan every TickInterval until Close.
func (p *Pool[I]) loop() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
			p.tick(p.cfg.Now())
		}
	}
}

// tick applies Plan for now: it stops idle instances (re-checking under the
// lock that each is still idle) and starts what MinInstances and waiting
// requests need, within MaxInstances and the start back-off.
func (p *Pool[I]) tick(now time.Time) {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return
	}
	st := State{Instances: p.instanceStatsLocked(), Waiting: p.waiting, Starting: p.starting}
	cfg := p.cfg
	cfg.MinInstances = p.minLocked()
	p.mu.Unlock()

	d := Plan(cfg, st, now)

	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return
	}
	for _, id := range d.Stop {
		for _, m := range p.members {
			if m.id == id {
				if m.ph == phReady && m.inFlight == 0 && p.waiting == 0 && p.ready > p.minLocked() &&
					!now.Before(p.cfg.idleDeadline(m.lastUsed)) {
					p.requestStopLocked(m, StopIdle)
				}
				break
			}
		}
	}
	// The decision may be stale by now (a crash may have been replaced
	// meanwhile): start no more than the floor still lacks.
	p.fillFloorLocked(now, d.Start)
	p.growLocked(now) // starts that back-off held up
	depth := p.waiting
	p.mu.Unlock()
	p.obs.QueueDepth(p.cfg.Function, depth)
}

// StopIdle applies the idle stop now, rather than at the loop's next tick:
// for a keep-alive policy whose unload time has come. It does what a tick
// does (the floor and waiting requests are served as usual).
func (p *Pool[I]) StopIdle(now time.Time) { p.tick(now) }

// StopIdleNow stops every idle instance above MinInstances now, whatever
// its idle deadline: for the warm budget taking back the room of a
// pre-warm. Busy instances are left alone.
func (p *Pool[I]) StopIdleNow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining || p.waiting > 0 {
		return
	}
	for _, m := range p.members {
		if p.ready <= p.minLocked() {
			return
		}
		if m.ph == phReady && m.inFlight == 0 {
			p.requestStopLocked(m, StopIdle)
		}
	}
}

// Prewarm starts one instance ahead of a predicted request, when none is
// running or starting (and the pool may start one: not draining, below
// MaxInstances, not backing off). It reports whether it started one. The
// instance is stopped as idle like any other.
func (p *Pool[I]) Prewarm(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready+p.starting > 0 || !p.canStartLocked(now) {
		return false
	}
	p.startLocked(now)
	return true
}

// Stats is a snapshot of a pool.
type Stats struct {
	Instances   []InstanceStats // sorted by start time
	Waiting     int             // requests in Acquire (held for a start, or queued)
	Starting    int
	ColdStarts  uint64 // cold leases granted
	Invocations uint64 // leases granted
	// StartFailures counts starts that returned an error (not those a drain
	// cancelled).
	StartFailures uint64
	Draining      bool
}

// Instance returns the instance Stats names id, for a report (its
// process); false while it starts or once it has left the pool.
func (p *Pool[I]) Instance(id string) (I, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.members {
		if m.id == id && m.ph != phStarting {
			return m.inst, true
		}
	}
	var zero I
	return zero, false
}

// Stats returns a snapshot of the pool.
func (p *Pool[I]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{
		Instances:     p.instanceStatsLocked(),
		Waiting:       p.waiting,
		Starting:      p.starting,
		ColdStarts:    p.coldStarts,
		Invocations:   p.invocations,
		StartFailures: p.startFailures,
		Draining:      p.draining,
	}
}

func (p *Pool[I]) instanceStatsLocked() []InstanceStats {
	out := make([]InstanceStats, len(p.members))
	for i, m := range p.members {
		s := InstanceStats{ID: m.id, InFlight: m.inFlight, StartedAt: m.startedAt, LastUsed: m.lastUsed, Leases: m.leases}
		switch {
		case m.ph == phStarting:
			s.Phase = PhaseStarting
		case m.ph == phStopping:
			s.Phase = PhaseStopping
		case m.inFlight > 0:
			s.Phase = PhaseBusy
		default:
			s.Phase = PhaseIdle
		}
		out[i] = s
	}
	return out
}
