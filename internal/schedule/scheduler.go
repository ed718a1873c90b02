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

// Fire invokes fn for one tick. catchUp says the tick was missed while ebb
// was down. It must be idempotent per (fn, tick): on a cluster every node
// fires the same ticks, and ebb may fire a tick again after a crash.
type Fire func(ctx context.Context, fn string, tick time.Time, catchUp bool) error

// Config configures a Scheduler.
type Config struct {
	JetStream jetstream.JetStream
	Fire      Fire
	Replicas  int
	Logger    *slog.Logger
	Now       func() time.Time
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

func (s *Scheduler) loop(ctx context.Context, fn string, sched Schedule) {
	defer s.wg.Done()
	log := s.cfg.Logger.With("function", fn)
	now := s.cfg.Now()
	last, err := s.last(ctx, fn)
	if err != nil {
		log.Warn("read last schedule tick", "err", err)
	}
	if last.IsZero() {
		// First time seen: missed ticks are counted from now on.
		s.record(ctx, fn, now)
	}
	catchUp, next := Plan(sched, last, now)
	if !catchUp.IsZero() {
		s.fire(ctx, fn, catchUp, true)
	}
	for !next.IsZero() {
		t := time.NewTimer(next.Sub(s.cfg.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		s.fire(ctx, fn, next, false)
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

func (s *Scheduler) fire(ctx context.Context, fn string, tick time.Time, catchUp bool) {
	if err := s.cfg.Fire(ctx, fn, tick, catchUp); err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Error("fire scheduled invocation", "function", fn, "tick", tick, "err", err)
		}
		return
	}
	s.record(ctx, fn, tick)
}

func (s *Scheduler) last(ctx context.Context, fn string) (time.Time, error) {
	e, err := s.kv.Get(ctx, fn)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.Parse(time.RFC3339Nano, string(e.Value()))
}

func (s *Scheduler) record(ctx context.Context, fn string, tick time.Time) {
	if _, err := s.kv.Put(ctx, fn, []byte(tick.UTC().Format(time.RFC3339Nano))); err != nil && ctx.Err() == nil {
		s.cfg.Logger.Warn("record schedule tick", "function", fn, "err", err)
	}
}
