package usage

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/store"
)

// clock is a test clock moved by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func newMeter(t *testing.T, sink Sink, c *clock) *Meter {
	t.Helper()
	m, err := New(Config{Sink: sink, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func rec(fn string, ver int, start time.Time, dur time.Duration, status int, cold bool, tr ebb.Trigger) Record {
	inv := ebb.Invocation{Function: fn, Version: ver, Start: start, Duration: dur, MemoryMiB: 2048, Status: status,
		ColdStart: cold, Trigger: tr}
	return RecordOf(&inv)
}

// run records one invocation that ran over [begin, begin+dur).
func run(m *Meter, c *clock, fn string, ver int, begin time.Time, dur time.Duration, status int) {
	m.Begin(fn, ver, begin)
	c.Set(begin.Add(dur))
	m.Record(rec(fn, ver, begin, dur, status, false, ebb.TriggerSync), true, begin.Add(dur))
}

// TestBusyAndPeak checks the sweep: overlapping invocations count busy time
// once and raise the peak; an invocation spanning minutes splits its busy
// time between them, the whole function's entry sums versions' overlap.
func TestBusyAndPeak(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	c := &clock{t: t0}
	m := newMeter(t, st, c)
	ctx := context.Background()

	// v1: [0s,10s) and [5s,20s) overlap: busy 20s, peak 2.
	m.Begin("f", 1, t0)
	m.Begin("f", 1, t0.Add(5*time.Second))
	m.Record(rec("f", 1, t0, 10*time.Second, 200, true, ebb.TriggerSync), true, t0.Add(10*time.Second))
	m.Record(rec("f", 1, t0.Add(5*time.Second), 15*time.Second, 500, false, ebb.TriggerAsync), true, t0.Add(20*time.Second))
	// v2: [50s, 70s) spans into the next minute, and overlaps nothing of v1.
	m.Begin("f", 2, t0.Add(50*time.Second))
	m.Record(rec("f", 2, t0.Add(50*time.Second), 20*time.Second, 200, false, ebb.TriggerSchedule), true, t0.Add(70*time.Second))
	// Refused before it ran: counted, not busy.
	m.Record(rec("f", 1, t0.Add(30*time.Second), 0, 429, false, ebb.TriggerSync), false, t0.Add(30*time.Second))

	c.Set(t0.Add(5 * time.Minute))
	if err := m.Flush(ctx, false); err != nil {
		t.Fatal(err)
	}
	reps, err := m.Report(ctx, Query{Function: "f", Since: t0, Until: t0.Add(5 * time.Minute), Step: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 1 {
		t.Fatalf("got %d reports", len(reps))
	}
	r := reps[0]
	if r.Invocations != 4 || r.Errors != 2 || r.ColdStarts != 1 {
		t.Errorf("counts = %d/%d/%d, want 4 invocations, 2 errors, 1 cold", r.Invocations, r.Errors, r.ColdStarts)
	}
	if r.BusySeconds != 40 || r.Peak != 2 {
		t.Errorf("busy %v s, peak %d; want 40 s (20 + 20), 2", r.BusySeconds, r.Peak)
	}
	if r.Triggers["sync"] != 2 || r.Triggers["async"] != 1 || r.Triggers["schedule"] != 1 {
		t.Errorf("triggers = %v", r.Triggers)
	}
	if len(r.Series) != 5 || r.Series[0].Invocations != 3 || r.Series[1].Invocations != 1 {
		t.Fatalf("series = %+v", r.Series)
	}
	// Billed: 10000 + 15000 + 20000 + 1 (a refused one bills the 1 ms minimum).
	if r.BilledMS != 45001 {
		t.Errorf("billed %d ms", r.BilledMS)
	}

	v1, err := m.Report(ctx, Query{Function: "f", Version: 1, Since: t0, Until: t0.Add(5 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if v1[0].Invocations != 3 || v1[0].BusySeconds != 20 || v1[0].Peak != 2 {
		t.Errorf("v1 = %+v, want 3 invocations, busy 20 s, peak 2", v1[0].Totals)
	}
	v2, _ := m.Report(ctx, Query{Function: "f", Version: 2, Since: t0.Add(time.Minute), Until: t0.Add(5 * time.Minute)})
	if v2[0].BusySeconds != 10 || v2[0].Invocations != 1 {
		t.Errorf("v2 in its second minute = %+v, want busy 10 s and its record (it ended there)", v2[0].Totals)
	}
}

// TestTotalsEqualRecords runs many invocations at random through two
// functions, with the clock crossing minutes and the store written as it
// goes, and checks that the report's totals are the sums of the records
// read back from the usage stream.
func TestTotalsEqualRecords(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	c := &clock{t: t0}
	m := newMeter(t, st, c)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	now := t0
	for i := range 3000 {
		fn := []string{"a", "b"}[i%2]
		dur := time.Duration(rng.IntN(900)+1) * time.Millisecond
		status := 200
		if rng.IntN(10) == 0 {
			status = 500
		}
		run(m, c, fn, 1+rng.IntN(2), now, dur, status)
		now = now.Add(time.Duration(rng.IntN(200)) * time.Millisecond)
		c.Set(now)
		if i%97 == 0 {
			if err := m.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	type sum struct {
		n, errs uint64
		billed  int64
		gbs     float64
	}
	want := map[string]*sum{"a": {}, "b": {}}
	if err := m.Records(ctx, "", time.Time{}, time.Time{}, func(r *Record) bool {
		s := want[r.Function]
		s.n++
		if r.Error() {
			s.errs++
		}
		s.billed += r.BilledMS
		s.gbs += r.GBSeconds
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if want["a"].n+want["b"].n != 3000 {
		t.Fatalf("the stream holds %d records, want 3000", want["a"].n+want["b"].n)
	}
	reps, err := m.Report(ctx, Query{Since: t0, Until: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 2 {
		t.Fatalf("%d reports, want a and b", len(reps))
	}
	for _, r := range reps {
		w := want[r.Function]
		if r.Invocations != w.n || r.Errors != w.errs || r.BilledMS != w.billed || math.Abs(r.GBSeconds-w.gbs) > 1e-5 {
			t.Errorf("%s: report %d/%d/%d ms/%.6f GB-s; records %d/%d/%d ms/%.6f GB-s", r.Function,
				r.Invocations, r.Errors, r.BilledMS, r.GBSeconds, w.n, w.errs, w.billed, w.gbs)
		}
	}
}

// failing is a sink that refuses writes while down.
type failing struct {
	*store.Store
	mu   sync.Mutex
	down bool
}

func (f *failing) AppendUsageRecords(ctx context.Context, fn string, data []byte) error {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return errors.New("store down")
	}
	return f.Store.AppendUsageRecords(ctx, fn, data)
}

func (f *failing) AppendUsageMinute(ctx context.Context, data []byte) error {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return errors.New("store down")
	}
	return f.Store.AppendUsageMinute(ctx, data)
}

// TestStoreOutageLosesNothing: while the store refuses writes, records and
// closed minutes stay in memory, still count in reports, and are written
// once it is back.
func TestStoreOutageLosesNothing(t *testing.T) {
	f := &failing{Store: ebbtest.Store(t, store.Config{}), down: true}
	c := &clock{t: t0}
	m := newMeter(t, f, c)
	ctx := context.Background()
	for i := range 10 {
		run(m, c, "f", 1, t0.Add(time.Duration(i)*20*time.Second), time.Second, 200)
	}
	c.Set(t0.Add(10 * time.Minute))
	if err := m.Flush(ctx, false); err == nil {
		t.Fatal("flush to a refusing store succeeded")
	}
	reps, err := m.Report(ctx, Query{Function: "f", Since: t0, Until: c.Now()})
	if err != nil || reps[0].Invocations != 10 {
		t.Fatalf("during the outage: %+v, %v; want 10 invocations", reps, err)
	}
	f.mu.Lock()
	f.down = false
	f.mu.Unlock()
	if err := m.Flush(ctx, false); err != nil {
		t.Fatal(err)
	}
	n := 0
	m.Records(ctx, "f", time.Time{}, time.Time{}, func(*Record) bool { n++; return true })
	reps, _ = m.Report(ctx, Query{Function: "f", Since: t0, Until: c.Now()})
	if n != 10 || reps[0].Invocations != 10 || reps[0].BusySeconds != 10 {
		t.Fatalf("after: %d records stored, report %+v; want 10 and 10, busy 10 s", n, reps[0].Totals)
	}
	if m.Dropped() != 0 {
		t.Errorf("dropped %d", m.Dropped())
	}
}

// TestIdle: idle MiB-seconds land in their minute and version, and sum over
// versions for the function.
func TestIdle(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	c := &clock{t: t0}
	m := newMeter(t, st, c)
	m.Idle("f", 1, 100, t0.Add(10*time.Second))
	m.Idle("f", 2, 50, t0.Add(70*time.Second))
	m.Idle("f", 2, -5, t0.Add(70*time.Second)) // ignored
	reps, err := m.Report(context.Background(), Query{Function: "f", Since: t0, Until: t0.Add(2 * time.Minute), Step: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	r := reps[0]
	if r.IdleMiBs != 150 || r.Series[0].IdleMiBs != 100 || r.Series[1].IdleMiBs != 50 {
		t.Errorf("idle %v, series %v/%v; want 150, 100, 50", r.IdleMiBs, r.Series[0].IdleMiBs, r.Series[1].IdleMiBs)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := Histogram{}
	for i := 1; i <= 1000; i++ {
		h.Add(float64(i)) // 1..1000 ms
	}
	for _, c := range []struct{ q, want float64 }{{0.5, 500}, {0.95, 950}, {0.99, 990}} {
		got := h.Quantile(c.q)
		if got < c.want || got > c.want*1.02 {
			t.Errorf("q%.2f = %v, want within 2%% above %v", c.q, got, c.want)
		}
	}
	if (Histogram{}).Quantile(0.5) != 0 {
		t.Error("an empty histogram has a median")
	}
	g := Histogram{}
	g.Add(0)
	g.Add(1e9)
	if g.Quantile(0.5) != histFloor || g.Quantile(1) < 1e9 {
		t.Errorf("extremes: %v %v", g.Quantile(0.5), g.Quantile(1))
	}
}

func TestQueryLimits(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	c := &clock{t: t0}
	m := newMeter(t, st, c)
	ctx := context.Background()
	if _, err := m.Report(ctx, Query{Since: t0, Until: t0.Add(time.Hour), Step: 90 * time.Second}); err == nil {
		t.Error("a step of 90 s was accepted")
	}
	if _, err := m.Report(ctx, Query{Since: t0.Add(-365 * 24 * time.Hour), Until: t0, Step: time.Minute}); err == nil {
		t.Error("half a million points were accepted")
	}
	reps, err := m.Report(ctx, Query{Function: "none", Since: t0, Until: t0.Add(time.Hour), Step: 10 * time.Minute})
	if err != nil || len(reps) != 1 || len(reps[0].Series) != 6 || reps[0].Invocations != 0 {
		t.Errorf("no usage: %+v, %v; want one empty report with 6 points", reps, err)
	}
}

// BenchmarkMeter is what metering adds to each invocation on the request
// path: Begin and Record.
func BenchmarkMeter(b *testing.B) {
	st := ebbtest.Store(b, store.Config{})
	m, err := New(Config{Sink: st})
	if err != nil {
		b.Fatal(err)
	}
	r := rec("f", 1, time.Now(), 3*time.Millisecond, 200, false, ebb.TriggerSync)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		now := time.Now()
		m.Begin("f", 1, now)
		m.Record(r, true, now)
		if i++; i%1000 == 0 {
			m.Flush(ctx, false) // the flusher, once a second at 1000 rps
		}
	}
}

// FuzzParseSince: any string is a time or an error, never a panic, and a
// time is never after now.
func FuzzParseSince(f *testing.F) {
	for _, s := range []string{"", "1h", "30d", "90m", "2026-11-30T12:00:00Z", "-1h", "99999999d", "1e9h", "d"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseSince(s, now, time.Hour)
		if err != nil {
			return
		}
		if _, rfc := time.Parse(time.RFC3339, s); rfc != nil && got.After(now) {
			t.Errorf("ParseSince(%q) = %v, after now", s, got)
		}
	})
}

// TestTwoNodesAddUp: two meters writing one store (two ebb nodes) each see
// the other's minutes added to their own, also for a minute one of them
// still holds in memory.
func TestTwoNodesAddUp(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	ca, cb := &clock{t: t0}, &clock{t: t0}
	a, b := newMeter(t, st, ca), newMeter(t, st, cb)
	ctx := context.Background()
	run(a, ca, "f", 1, t0.Add(10*time.Second), time.Second, 200)
	run(b, cb, "f", 1, t0.Add(20*time.Second), time.Second, 200)
	run(b, cb, "f", 1, t0.Add(30*time.Second), time.Second, 200)
	cb.Set(t0.Add(5 * time.Minute))
	if err := b.Flush(ctx, false); err != nil { // b's minute is stored; a's is in memory
		t.Fatal(err)
	}
	reps, err := a.Report(ctx, Query{Function: "f", Since: t0, Until: t0.Add(5 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if reps[0].Invocations != 3 {
		t.Errorf("node a sees %d invocations, want its 1 and b's 2", reps[0].Invocations)
	}
}

// slowSink holds each minute's write until released.
type slowSink struct {
	*store.Store
	entered chan struct{}
	release chan struct{}
}

func (s *slowSink) AppendUsageMinute(ctx context.Context, data []byte) error {
	s.entered <- struct{}{}
	<-s.release
	return s.Store.AppendUsageMinute(ctx, data)
}

// TestReportDuringWrite: a report made while a minute is being written
// (out of the open minutes, not yet in the store) still counts it, once.
func TestReportDuringWrite(t *testing.T) {
	s := &slowSink{Store: ebbtest.Store(t, store.Config{}), entered: make(chan struct{}), release: make(chan struct{})}
	c := &clock{t: t0}
	m := newMeter(t, s, c)
	ctx := context.Background()
	run(m, c, "f", 1, t0.Add(time.Second), time.Second, 200)
	c.Set(t0.Add(5 * time.Minute))
	done := make(chan error)
	go func() { done <- m.Flush(ctx, false) }()
	<-s.entered
	reps, err := m.Report(ctx, Query{Function: "f", Since: t0, Until: c.Now()})
	if err != nil || reps[0].Invocations != 1 {
		t.Errorf("during the write: %+v, %v; want 1 invocation", reps, err)
	}
	close(s.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	reps, _ = m.Report(ctx, Query{Function: "f", Since: t0, Until: c.Now()})
	if reps[0].Invocations != 1 {
		t.Errorf("after the write: %d invocations, want 1", reps[0].Invocations)
	}
}

// counting is a sink that counts what UsageRecords hands back.
type counting struct {
	*store.Store
	batches, bytes int
}

func (c *counting) UsageRecords(ctx context.Context, fn string, since time.Time, each func([]byte) error) error {
	return c.Store.UsageRecords(ctx, fn, since, func(b []byte) error {
		c.batches++
		c.bytes += len(b)
		return each(b)
	})
}

// TestRecordsOfOneFunctionReadAlone checks that reading one function's
// records costs that function's records, not the stream's: a key allowed to
// read a small function's invocations must not make ebb ship and decode a
// busy neighbour's gigabyte.
func TestRecordsOfOneFunctionReadAlone(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	cs := &counting{Store: st}
	c := &clock{t: t0}
	m := newMeter(t, cs, c)
	ctx := context.Background()
	now := t0
	for i := range 2000 {
		fn := "busy"
		if i%100 == 0 {
			fn = "small"
		}
		run(m, c, fn, 1, now, 10*time.Millisecond, 200)
		now = now.Add(20 * time.Millisecond)
		c.Set(now)
		if i%50 == 49 {
			if err := m.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := m.Records(ctx, "small", time.Time{}, time.Time{}, func(r *Record) bool {
		if r.Function != "small" {
			t.Errorf("read a record of %q", r.Function)
		}
		n++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != 20 {
		t.Fatalf("read %d records of small, want 20", n)
	}
	// 20 records in at most 20 batches (one per flush that had one), and
	// no batch of busy's.
	if cs.batches > 20 || cs.bytes > 20*1024 {
		t.Fatalf("reading small's 20 records was handed %d batches, %d bytes: the neighbour's records came too", cs.batches, cs.bytes)
	}
	all := 0
	if err := m.Records(ctx, "", time.Time{}, time.Time{}, func(*Record) bool { all++; return true }); err != nil {
		t.Fatal(err)
	}
	if all != 2000 {
		t.Fatalf("read %d records in all, want 2000", all)
	}
}

// gated is a sink whose minute reads wait for their own release, and say
// when one began.
type gated struct {
	*store.Store
	began chan read
}

// read is a minute read that began from since; closing release lets it go.
type read struct {
	since   time.Time
	release chan struct{}
}

func (g *gated) UsageMinutes(ctx context.Context, since time.Time, each func([]byte) error) error {
	r := read{since, make(chan struct{})}
	g.began <- r
	<-r.release
	return g.Store.UsageMinutes(ctx, since, each)
}

// next waits for the next read to begin, failing after a deadline far past
// anything a loaded machine needs (a read that never comes is the failure).
func (g *gated) next(t *testing.T) read {
	t.Helper()
	select {
	case r := <-g.began:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no read began")
		return read{}
	}
}

// TestLongReportsOneAtATime checks that reports over long ranges (every
// rollup of a year read) run one at a time, however many are asked for,
// while a short report does not wait behind them.
func TestLongReportsOneAtATime(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	g := &gated{Store: st, began: make(chan read, 4)}
	c := &clock{t: t0}
	m := newMeter(t, g, c)
	ctx := context.Background()
	year := Query{Since: t0.Add(-396 * 24 * time.Hour), Until: t0}
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := m.Report(ctx, year); errs <- err }()
	}
	first := g.next(t)
	if !first.since.Equal(year.Since) {
		t.Fatalf("a read from %s began, want the long report's", first.since)
	}
	// The second long report waits; a short one goes past it.
	short := make(chan error, 1)
	go func() { _, err := m.Report(ctx, Query{Since: t0.Add(-time.Hour), Until: t0}); short <- err }()
	r := g.next(t)
	if !r.since.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("a read from %s began while the first long report ran, want only the short one", r.since)
	}
	close(r.release)
	if err := <-short; err != nil {
		t.Fatal(err)
	}
	// A long report whose caller gives up while waiting ends with its
	// context's error.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { _, err := m.Report(cctx, year); gaveUp <- err }()
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("a waiting report whose caller left: %v", err)
	}
	close(first.release) // the first long one ends, and the second begins
	second := g.next(t)
	if !second.since.Equal(year.Since) {
		t.Fatalf("a read from %s began, want the second long report's", second.since)
	}
	close(second.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
