package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket holds each function's last tick; part of the on-disk format.
const Bucket = "ebb_schedules"

// Fire invokes fn for one tick. catchUp says the tick is fired late: it was
// missed while ebb was down, or while no node of a cluster led. It must be
// idempotent per (fn, tick): ebb may fire a tick again after a crash between
// firing it and recording it, and two nodes may both believe they lead for
// a moment when a lease changes hands.
type Fire func(ctx context.Context, fn string, tick time.Time, catchUp bool) error

// MaxCatchUp is how many missed ticks a scheduler fires one by one when it
// finds them (a leader taking over from one that died); past it, after a
// long downtime, only the latest fires.
const MaxCatchUp = 30

// Config configures a Scheduler.
type Config struct {
	JetStream jetstream.JetStream
	Fire      Fire
	// Leader says whether this node fires schedules now; nil means always
	// (a single node). On a cluster it is the holder of a lease, so that
	// a tick fires on one node.
	Leader   func() bool
	Replicas int
	Logger   *slog.Logger
	Now      func() time.Time
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.JetStream == nil || c.Fire == nil {
		return errors.New("schedule config: JetStream and Fire are required")
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Leader == nil {
		c.Leader = func() bool { return true }
	}
	return nil
}

// Scheduler fires each scheduled function's ticks.
type Scheduler struct {
	cfg  Config
	kv   jetstream.KeyValue
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup // one loop per entry

	mu      sync.Mutex // guards entries
	entries map[string]*entry
}

type entry struct {
	expr   string
	cancel context.CancelFunc
}

// New binds or creates the bucket of last ticks.
func New(ctx context.Context, cfg Config) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kv, err := cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "ebb schedules: last tick per function", History: 1,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", Bucket, err)
	}
	s := &Scheduler{cfg: cfg, kv: kv, entries: map[string]*entry{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// Set schedules fn with expr, replacing its schedule; "" unschedules it.
func (s *Scheduler) Set(fn, expr string) error {
	var sched Schedule
	if expr != "" {
		var err error
		if sched, err = Parse(expr); err != nil {
			return fmt.Errorf("schedule %s: %w", fn, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return nil
	}
	if e := s.entries[fn]; e != nil {
		if e.expr == expr {
			return nil
		}
		e.cancel()
		delete(s.entries, fn)
	}
	if expr == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.entries[fn] = &entry{expr: expr, cancel: cancel}
	s.wg.Add(1)
	go s.loop(ctx, fn, sched)
	return nil
}

// Close stops every schedule and waits for ticks being fired.
func (s *Scheduler) Close(ctx context.Context) error {
	s.mu.Lock()
	s.stop()
	s.entries = map[string]*entry{}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close scheduler: %w", ctx.Err())
	}
}

// Plan decides what a schedule does now, given its last tick: at most one
// catch-up tick (the latest one missed, zero if none was), and the next tick
// to wait for. A function that was down for a week fires once, not 2,016
// times.
func Plan(sched Schedule, last, now time.Time) (catchUp, next time.Time) {
	next = sched.Next(now)
	if last.IsZero() {
		return time.Time{}, next
	}
	due := sched.Next(last)
	if due.IsZero() || due.After(now) {
		return time.Time{}, next
	}
	if e, ok := sched.(Every); ok {
		return now.Truncate(e.D), next
	}
	// The latest missed tick; the walk is bounded, and past the bound the
	// first missed tick stands in for it.
	catchUp = due
	for range 100000 {
		n := sched.Next(catchUp)
		if n.IsZero() || n.After(now) {
			break
		}
		catchUp = n
	}
	return catchUp, next
}

// Due lists the ticks to fire at now, given the last one fired: every tick
// after last up to now, oldest first, so that a leader taking over fires
// the ticks missed since its predecessor's last one. More than max of them
// is a long downtime, not a failover: then only the latest fires.
func Due(sched Schedule, last, now time.Time, max int) []time.Time {
	if last.IsZero() {
		return nil
	}
	var out []time.Time
	for t := sched.Next(last); !t.IsZero() && !t.After(now); t = sched.Next(t) {
		if len(out) == max {
			latest, _ := Plan(sched, last, now)
			return []time.Time{latest}
		}
		out = append(out, t)
	}
	return out
}

func (s *Scheduler) loop(ctx context.Context, fn string, sched Schedule) {
	defer s.wg.Done()
	log := s.cfg.Logger.With("function", fn)
	now := s.cfg.Now()
	if s.cfg.Leader() {
		s.start(ctx, fn, sched, now)
	}
	next := sched.Next(now)
	for !next.IsZero() {
		t := time.NewTimer(next.Sub(s.cfg.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if s.cfg.Leader() {
			s.tick(ctx, fn, sched, next)
		}
		// A tick that took longer than the interval does not queue up the
		// ones it overran.
		from := s.cfg.Now()
		if from.Before(next) {
			from = next
		}
		next = sched.Next(from)
	}
	log.Warn("schedule has no further ticks")
}

// start is a leader's first look at fn: a schedule seen for the first time
// counts missed ticks from now on; one that missed ticks while ebb was down
// fires one catch-up tick (Plan).
func (s *Scheduler) start(ctx context.Context, fn string, sched Schedule, now time.Time) {
	last, rev, err := s.last(ctx, fn)
	if err != nil {
		s.cfg.Logger.Warn("read last schedule tick", "function", fn, "err", err)
		return
	}
	if last.IsZero() {
		s.record(ctx, fn, now, 0)
		return
	}
	if catchUp, _ := Plan(sched, last, now); !catchUp.IsZero() {
		s.fire(ctx, fn, catchUp, true, rev)
	}
}

// tick fires the tick due at `at` and, first, those after the last one
// recorded that nobody fired (a leader died): each is recorded with a
// compare-and-set on the revision read, so that a node that lost the lease
// unawares stops at its first stale write instead of firing on.
func (s *Scheduler) tick(ctx context.Context, fn string, sched Schedule, at time.Time) {
	last, rev, err := s.last(ctx, fn)
	if err != nil {
		s.cfg.Logger.Warn("read last schedule tick", "function", fn, "err", err)
		return
	}
	if last.IsZero() {
		s.fire(ctx, fn, at, false, 0)
		return
	}
	for _, t := range Due(sched, last, at, MaxCatchUp) {
		if rev, err = s.fire(ctx, fn, t, !t.Equal(at), rev); err != nil {
			return
		}
	}
}

// fire fires one tick and records it over revision rev (0: the first
// record), returning the new revision.
func (s *Scheduler) fire(ctx context.Context, fn string, tick time.Time, catchUp bool, rev uint64) (uint64, error) {
	if err := s.cfg.Fire(ctx, fn, tick, catchUp); err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Error("fire scheduled invocation", "function", fn, "tick", tick, "err", err)
		}
		return 0, err
	}
	// Every fire is logged, so that a tick fired by two nodes shows (the
	// queue would keep one job of it; the lease is what keeps it to one).
	s.cfg.Logger.Info("schedule fired", "function", fn, "tick", tick.UTC().Format(time.RFC3339Nano), "catch_up", catchUp)
	return s.record(ctx, fn, tick, rev)
}

// last reads fn's last tick and the entry's revision (0 when none).
func (s *Scheduler) last(ctx context.Context, fn string) (time.Time, uint64, error) {
	e, err := s.kv.Get(ctx, fn)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return time.Time{}, 0, nil
	}
	if err != nil {
		return time.Time{}, 0, err
	}
	t, err := time.Parse(time.RFC3339Nano, string(e.Value()))
	return t, e.Revision(), err
}

// record stores tick as fn's last over revision rev (0: none yet).
func (s *Scheduler) record(ctx context.Context, fn string, tick time.Time, rev uint64) (uint64, error) {
	v := []byte(tick.UTC().Format(time.RFC3339Nano))
	var err error
	if rev == 0 {
		rev, err = s.kv.Create(ctx, fn, v)
	} else {
		rev, err = s.kv.Update(ctx, fn, v, rev)
	}
	if err != nil && ctx.Err() == nil {
		s.cfg.Logger.Warn("record schedule tick (another node may have recorded it)", "function", fn, "tick", tick, "err", err)
	}
	return rev, err
}
