package usage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sink keeps what the Meter writes: the store's usage streams.
type Sink interface {
	// AppendUsageRecords stores a batch of records of function fn, one
	// JSON object a line.
	AppendUsageRecords(ctx context.Context, fn string, data []byte) error
	// AppendUsageMinute stores one minute's rollup.
	AppendUsageMinute(ctx context.Context, data []byte) error
	// UsageMinutes calls each with every stored minute message published
	// from since on, oldest first.
	UsageMinutes(ctx context.Context, since time.Time, each func([]byte) error) error
	// UsageRecords calls each with every stored record batch of function
	// fn (every function for "") published from since on, oldest first. A
	// batch may hold other functions' records too (batches written before
	// they were kept per function).
	UsageRecords(ctx context.Context, fn string, since time.Time, each func([]byte) error) error
}

// Config configures a Meter.
type Config struct {
	Sink Sink
	// FlushEvery is how often records are written and closed minutes
	// rolled up; default 1s.
	FlushEvery time.Duration
	// Grace is how long after its end a minute stays open for the records
	// of invocations that ended in it; default 2s.
	Grace time.Duration
	// MaxPending bounds records held while the store refuses them; the
	// oldest are dropped (and counted) past it. Default 100000.
	MaxPending int
	// LongRange is the report range from which a report is a long scan
	// (every minute rollup of it is read: a year is some 500,000
	// messages); default 7 days. LongScans of them run at once, node-wide,
	// the rest wait their turn; default 1. A key that may read usage can
	// then keep at most that much of the machine busy, whatever it asks.
	LongRange time.Duration
	LongScans int
	Logger    *slog.Logger
	Now       func() time.Time
}

// Validate fills in defaults and reports the first invalid field.
func (c *Config) Validate() error {
	if c.Sink == nil {
		return errors.New("usage config: sink is required")
	}
	if c.FlushEvery == 0 {
		c.FlushEvery = time.Second
	}
	if c.Grace == 0 {
		c.Grace = 2 * time.Second
	}
	if c.MaxPending == 0 {
		c.MaxPending = 100000
	}
	if c.LongRange == 0 {
		c.LongRange = 7 * 24 * time.Hour
	}
	if c.LongScans == 0 {
		c.LongScans = 1
	}
	if c.FlushEvery < 0 || c.Grace < 0 || c.MaxPending < 0 || c.LongRange < 0 || c.LongScans < 0 {
		return errors.New("usage config: flush interval, grace, max pending, long range and long scans must not be negative")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// key names a function version; Version 0 is the function as a whole.
type key struct {
	fn  string
	ver int
}

// sweep follows how many invocations of a key are running, to measure busy
// time (at least one running) and peak concurrency exactly: Begin and End
// arrive in time order, so each is one step of a sweep line.
type sweep struct {
	running int
	last    time.Time
}

// Meter collects usage. Its methods are safe for concurrent use.
type Meter struct {
	cfg Config
	id  string // names this meter's minutes in the store

	mu sync.Mutex // guards the fields below
	// open holds the minutes not yet written, by Unix minute.
	open map[int64]map[key]*Bucket
	// closed is the newest minute written (or given up on): later records
	// go to a minute after it.
	closed  int64
	sweeps  map[key]*sweep
	pending []Record
	// spare is the last written batch's array, reused for the next one.
	spare   []Record
	dropped uint64
	// unsent holds closed minutes not yet stored, oldest first; a minute
	// leaves it only once stored, so that a report always finds it in
	// memory or in the store (in both for a moment: memory wins).
	unsent []Minute

	flushMu sync.Mutex // serialises Flush: a minute is written once

	// longScans holds a token per long report running (see
	// Config.LongRange).
	longScans chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Meter; Start runs its flusher.
func New(cfg Config) (*Meter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Meter{cfg: cfg, id: rand.Text(), open: map[int64]map[key]*Bucket{}, sweeps: map[key]*sweep{},
		longScans: make(chan struct{}, cfg.LongScans)}
	m.closed = unixMinute(cfg.Now()) - 1
	return m, nil
}

func unixMinute(t time.Time) int64 { return t.Unix() / 60 }

// bucketLocked returns k's bucket for minute min, or for the first open
// minute when min is already written.
func (m *Meter) bucketLocked(min int64, k key) *Bucket {
	min = max(min, m.closed+1)
	mb := m.open[min]
	if mb == nil {
		mb = map[key]*Bucket{}
		m.open[min] = mb
	}
	b := mb[k]
	if b == nil {
		b = &Bucket{Function: k.fn, Version: k.ver}
		if s := m.sweeps[k]; s != nil {
			b.Peak = s.running // those still running count in the new minute
		}
		mb[k] = b
	}
	return b
}

// advanceLocked moves k's sweep to t, adding the busy time since its last
// step to the minutes it fell in.
func (m *Meter) advanceLocked(k key, s *sweep, t time.Time) {
	if t.Before(s.last) {
		t = s.last // steps read the clock before the lock: keep them in order
	}
	if s.running > 0 {
		for from := s.last; from.Before(t); {
			min := unixMinute(from)
			end := time.Unix((min+1)*60, 0)
			if end.After(t) {
				end = t
			}
			m.bucketLocked(min, k).BusyMS += float64(end.Sub(from)) / float64(time.Millisecond)
			from = end
		}
	}
	s.last = t
}

// Begin notes that an invocation of fn's version ver began running at t.
func (m *Meter) Begin(fn string, ver int, t time.Time) {
	m.mu.Lock()
	for _, k := range [2]key{{fn, ver}, {fn, 0}} {
		s := m.sweeps[k]
		if s == nil {
			s = &sweep{last: t}
			m.sweeps[k] = s
		}
		m.advanceLocked(k, s, t)
		s.running++
		b := m.bucketLocked(unixMinute(t), k)
		b.Peak = max(b.Peak, s.running)
	}
	m.mu.Unlock()
}

// Record keeps an invocation's record, which ended at end. began says
// whether Begin was called for it (an invocation refused before it ran was
// not).
func (m *Meter) Record(r Record, began bool, end time.Time) {
	m.mu.Lock()
	if began {
		for _, k := range [2]key{{r.Function, r.Version}, {r.Function, 0}} {
			if s := m.sweeps[k]; s != nil && s.running > 0 {
				m.advanceLocked(k, s, end)
				s.running-- // kept at 0 until Forget: a version's next call reuses it
			}
		}
	}
	m.bucketLocked(unixMinute(end), key{r.Function, r.Version}).add(&r)
	if len(m.pending) >= m.cfg.MaxPending {
		m.pending = m.pending[1:]
		m.dropped++
	}
	m.pending = append(m.pending, r)
	m.mu.Unlock()
}

// Idle adds mibSeconds of warm capacity that fn's version ver kept while it
// served nothing, at t.
func (m *Meter) Idle(fn string, ver int, mibSeconds float64, t time.Time) {
	if mibSeconds <= 0 {
		return
	}
	m.mu.Lock()
	m.bucketLocked(unixMinute(t), key{fn, ver}).IdleMiBs += mibSeconds
	m.mu.Unlock()
}

// Forget drops the sweeps of a removed function.
func (m *Meter) Forget(fn string) {
	m.mu.Lock()
	for k := range m.sweeps {
		if k.fn == fn {
			delete(m.sweeps, k)
		}
	}
	m.mu.Unlock()
}

// Dropped is how many records were dropped because the store refused them
// for longer than MaxPending records.
func (m *Meter) Dropped() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}

// Start runs the flusher until Close.
func (m *Meter) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		t := time.NewTicker(m.cfg.FlushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.Flush(ctx, false)
			}
		}
	}()
}

// Close stops the flusher and writes what is held, the open minutes too,
// within ctx.
func (m *Meter) Close(ctx context.Context) error {
	if m.cancel != nil {
		m.cancel()
		<-m.done
	}
	return m.Flush(ctx, true)
}

// Flush writes the pending records and every minute that has closed (every
// open minute when all is set).
func (m *Meter) Flush(ctx context.Context, all bool) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	now := m.cfg.Now()
	m.mu.Lock()
	recs := m.pending
	m.pending, m.spare = m.spare[:0], nil
	last := unixMinute(now.Add(-m.cfg.Grace)) - 1 // the newest minute to close
	if all {
		last = max(last, m.newestOpenLocked())
	}
	for min := m.closed + 1; min <= last; min++ {
		end := time.Unix((min+1)*60, 0)
		for k, s := range m.sweeps {
			if s.running > 0 {
				m.advanceLocked(k, s, end)
			}
		}
		if mb := m.open[min]; len(mb) > 0 {
			mi := Minute{Time: time.Unix(min*60, 0).UTC(), Writer: m.id}
			for _, b := range mb {
				mi.Buckets = append(mi.Buckets, *b)
			}
			m.unsent = append(m.unsent, mi)
		}
		delete(m.open, min)
		m.closed = min
	}
	unsent := slices.Clone(m.unsent)
	m.mu.Unlock()

	var errs []error
	if len(recs) > 0 {
		// One batch per function, so that a function's records are read
		// without reading every other function's. The sort is stable:
		// a function's records keep their order.
		slices.SortStableFunc(recs, func(a, b Record) int { return strings.Compare(a.Function, b.Function) })
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		failed := -1 // the first record of the first batch refused
		for i := 0; i < len(recs); {
			j := i + 1
			for j < len(recs) && recs[j].Function == recs[i].Function {
				j++
			}
			buf.Reset()
			for k := i; k < j; k++ {
				enc.Encode(&recs[k])
			}
			if err := m.cfg.Sink.AppendUsageRecords(ctx, recs[i].Function, buf.Bytes()); err != nil {
				errs = append(errs, err)
				failed = i
				break
			}
			i = j
		}
		if failed >= 0 {
			m.requeue(recs[failed:])
		} else if cap(recs) <= 4*m.cfg.MaxPending/100+1024 {
			clear(recs)
			m.mu.Lock()
			m.spare = recs[:0]
			m.mu.Unlock()
		}
	}
	for _, mi := range unsent {
		data, _ := json.Marshal(mi)
		if err := m.cfg.Sink.AppendUsageMinute(ctx, data); err != nil {
			errs = append(errs, err)
			break
		}
		m.mu.Lock()
		m.unsent = m.unsent[1:] // mi: only Flush removes, in order
		m.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		m.cfg.Logger.Warn("write usage; will retry", "err", err)
		return err
	}
	return nil
}

func (m *Meter) newestOpenLocked() int64 {
	n := m.closed
	for min := range m.open {
		n = max(n, min)
	}
	return n
}

// requeue puts back what the store refused, ahead of what came since.
func (m *Meter) requeue(recs []Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(recs) > 0 {
		m.pending = append(recs, m.pending...)
		if over := len(m.pending) - m.cfg.MaxPending; over > 0 {
			m.pending = m.pending[over:]
			m.dropped += uint64(over)
		}
	}
}

// snapshot returns copies of the minutes not yet stored (open, and closed
// but unsent), by minute time.
func (m *Meter) snapshot() map[int64][]Bucket {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[int64][]Bucket{}
	for _, mi := range m.unsent {
		out[mi.Time.Unix()/60] = append(out[mi.Time.Unix()/60], cloneBuckets(mi.Buckets)...)
	}
	for min, mb := range m.open {
		for _, b := range mb {
			out[min] = append(out[min], cloneBucket(b))
		}
	}
	return out
}

func cloneBuckets(bs []Bucket) []Bucket {
	out := make([]Bucket, len(bs))
	for i := range bs {
		out[i] = cloneBucket(&bs[i])
	}
	return out
}

func cloneBucket(b *Bucket) Bucket {
	c := *b
	c.Triggers, c.Latency, c.Init = nil, nil, nil
	c.merge(&Bucket{Triggers: b.Triggers, Latency: b.Latency, Init: b.Init})
	return c
}
