package schedule

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/store"
)

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestNext(t *testing.T) {
	tests := []struct {
		expr, from, want string
	}{
		{"*/5 * * * *", "2026-03-01 10:02", "2026-03-01 10:05"},
		{"*/5 * * * *", "2026-03-01 10:05", "2026-03-01 10:10"},
		{"0 9 * * mon-fri", "2026-03-06 09:00", "2026-03-09 09:00"}, // Friday to Monday
		{"30 2 1 * *", "2026-01-31 23:00", "2026-02-01 02:30"},
		{"0 0 29 2 *", "2026-01-01 00:00", "2028-02-29 00:00"},
		{"0 0 1,15 * 0", "2026-03-02 00:00", "2026-03-08 00:00"}, // day-of-month OR Sunday
		{"15 14 * 12 *", "2026-03-01 00:00", "2026-12-01 14:15"},
		{"0 0 * * 7", "2026-03-01 12:00", "2026-03-08 00:00"}, // 7 is Sunday
		{"5/20 * * * *", "2026-03-01 10:46", "2026-03-01 11:05"},
		{"@hourly", "2026-03-01 10:00", "2026-03-01 11:00"},
		{"@daily", "2026-03-01 10:00", "2026-03-02 00:00"},
		{"0 12 * jan,JUL *", "2026-02-01 00:00", "2026-07-01 12:00"},
	}
	for _, tt := range tests {
		t.Run(tt.expr+"@"+tt.from, func(t *testing.T) {
			s, err := Parse(tt.expr)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Next(at(tt.from)); !got.Equal(at(tt.want)) {
				t.Errorf("Next(%s) = %s, want %s", tt.from, got.Format(time.DateTime), tt.want)
			}
		})
	}
}

func TestEvery(t *testing.T) {
	s, err := Parse("@every 30s")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 3, 1, 10, 0, 10, 0, time.UTC)
	if got, want := s.Next(from), from.Add(20*time.Second); !got.Equal(want) {
		t.Errorf("Next = %s, want %s", got, want)
	}
	if got, want := s.Next(from.Add(20*time.Second)), from.Add(50*time.Second); !got.Equal(want) {
		t.Errorf("Next on a tick = %s, want the following tick %s", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ expr, want string }{
		{"", "empty"},
		{"* * * *", "5 fields"},
		{"60 * * * *", "minute"},
		{"* 24 * * *", "hour"},
		{"* * 0 * *", "day of month"},
		{"* * * 13 *", "month"},
		{"* * * * 8", "day of week"},
		{"*/0 * * * *", "step"},
		{"10-5 * * * *", "backwards"},
		{"0 0 30 2 *", "never matches"},
		{"@every", "@every DURATION"},
		{"@every soon", "not a duration"},
		{"@every 10ms", "interval"},
		{"@sometimes", "unknown macro"},
		{strings.Repeat("*", 300), "longer"},
	}
	for _, tt := range tests {
		if _, err := Parse(tt.expr); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tt.expr, err, tt.want)
		}
	}
}

func TestPlan(t *testing.T) {
	every5, _ := Parse("*/5 * * * *")
	now := at("2026-03-01 10:02")
	tests := []struct {
		name          string
		sched         Schedule
		last          time.Time
		catchUp, next time.Time
	}{
		{"first run", every5, time.Time{}, time.Time{}, at("2026-03-01 10:05")},
		{"nothing missed", every5, at("2026-03-01 10:00"), time.Time{}, at("2026-03-01 10:05")},
		{"one missed", every5, at("2026-03-01 09:55"), at("2026-03-01 10:00"), at("2026-03-01 10:05")},
		{"a week down: one catch-up", every5, at("2026-02-22 10:00"), at("2026-03-01 10:00"), at("2026-03-01 10:05")},
		{"interval", Every{time.Minute}, now.Add(-time.Hour), at("2026-03-01 10:02"), at("2026-03-01 10:03")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, n := Plan(tt.sched, tt.last, now)
			if !c.Equal(tt.catchUp) || !n.Equal(tt.next) {
				t.Errorf("Plan = (%s, %s), want (%s, %s)", c, n, tt.catchUp, tt.next)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"*/5 * * * *", "@every 30s", "0 9 * * mon-fri", "1,2,3-9/2 */4 1-31 * sun", "@daily", "0 0 29 2 *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := Parse(expr)
		if err != nil {
			return
		}
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		n := s.Next(from)
		if !n.After(from) {
			t.Fatalf("Parse(%q) accepted a schedule whose Next(%s) = %s", expr, from, n)
		}
	})
}

// TestCatchUpOnce: a scheduler coming back after an hour down fires one
// catch-up tick, records it, and waits for the next tick.
func TestCatchUpOnce(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	now := at("2026-03-01 10:02")
	var mu sync.Mutex
	var fired []time.Time
	var catchUps []bool
	firedCh := make(chan struct{}, 100)
	s, err := New(context.Background(), Config{JetStream: st.JetStream(), Now: func() time.Time { return now },
		Fire: func(ctx context.Context, fn string, tick time.Time, catchUp bool) error {
			mu.Lock()
			fired, catchUps = append(fired, tick), append(catchUps, catchUp)
			mu.Unlock()
			firedCh <- struct{}{}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.record(context.Background(), "cron", now.Add(-time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("cron", "*/5 * * * *"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-firedCh:
	case <-time.After(5 * time.Second):
		t.Fatal("no catch-up tick")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		last, _, _ := s.last(context.Background(), "cron")
		if last.Equal(at("2026-03-01 10:00")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("last tick = %s, want the catch-up tick recorded", last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(fired) != 1 || !fired[0].Equal(at("2026-03-01 10:00")) || !catchUps[0] {
		t.Errorf("fired %v (catch-up %v), want one catch-up at 10:00", fired, catchUps)
	}
}

func TestDue(t *testing.T) {
	every5, _ := Parse("*/5 * * * *")
	last := at("2026-03-01 10:00")
	for _, c := range []struct {
		now  string
		want []string
	}{
		{"2026-03-01 10:04", nil},
		{"2026-03-01 10:05", []string{"2026-03-01 10:05"}},
		{"2026-03-01 10:17", []string{"2026-03-01 10:05", "2026-03-01 10:10", "2026-03-01 10:15"}},
		{"2026-03-01 10:20", []string{"2026-03-01 10:05", "2026-03-01 10:10", "2026-03-01 10:15", "2026-03-01 10:20"}},
		// Past max (4 here): a downtime, only the latest.
		{"2026-03-01 10:25", []string{"2026-03-01 10:25"}},
		{"2026-03-08 10:03", []string{"2026-03-08 10:00"}},
	} {
		got := Due(every5, last, at(c.now), 4)
		var s []string
		for _, g := range got {
			s = append(s, g.Format("2006-01-02 15:04"))
		}
		if strings.Join(s, ",") != strings.Join(c.want, ",") {
			t.Errorf("Due(last 10:00, now %s) = %v, want %v", c.now, s, c.want)
		}
	}
	if got := Due(every5, time.Time{}, at("2026-03-01 10:25"), 4); got != nil {
		t.Errorf("Due with no last tick = %v, want none", got)
	}
}

// TestLeaderFailoverNeitherLosesNorDoubles: two schedulers on one store,
// as two nodes; only the leader fires. The leader goes, nobody leads for a
// couple of ticks, then the other takes over: it fires the ticks missed,
// late, and every tick fires exactly once.
func TestLeaderFailoverNeitherLosesNorDoubles(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	var mu sync.Mutex
	fired := map[int64]int{}
	var lead [2]atomic.Bool
	fires := make(chan struct{}, 100)
	mk := func(i int) *Scheduler {
		s, err := New(context.Background(), Config{JetStream: st.JetStream(), Leader: lead[i].Load,
			Fire: func(ctx context.Context, fn string, tick time.Time, catchUp bool) error {
				mu.Lock()
				fired[tick.Unix()]++
				mu.Unlock()
				fires <- struct{}{}
				return nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Set("tick", "@every 1s"); err != nil {
			t.Fatal(err)
		}
		return s
	}
	lead[0].Store(true)
	a, b := mk(0), mk(1)
	defer b.Close(context.Background())
	wait := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-fires:
			case <-time.After(10 * time.Second):
				t.Fatal("no tick fired within 10s")
			}
		}
	}
	wait(2)
	lead[0].Store(false)
	a.Close(context.Background())
	gap := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(gap) { // two ticks pass with no leader
		time.Sleep(50 * time.Millisecond)
	}
	lead[1].Store(true)
	wait(4) // at least the two missed, then two on time
	b.Close(context.Background())
	mu.Lock()
	defer mu.Unlock()
	var lo, hi int64
	for k := range fired {
		if lo == 0 || k < lo {
			lo = k
		}
		hi = max(hi, k)
	}
	for k := lo; k <= hi; k++ {
		if fired[k] != 1 {
			t.Errorf("tick %d fired %d times, want once (ticks %d..%d: %v)", k, fired[k], lo, hi, fired)
		}
	}
	if hi-lo < 5 {
		t.Errorf("ticks %d..%d: want at least 6", lo, hi)
	}
}
