package instance

import (
	"testing"
	"time"
)

// The readiness probe looks rarely and where the server is expected to be
// up, and finds it soon after it is: both are what a cold start pays (the
// looks in CPU taken from the starting server, the lag in waiting).
func TestProbePause(t *testing.T) {
	const ms = time.Millisecond
	for _, c := range []struct {
		elapsed, expect time.Duration
		announced       bool
		want            time.Duration
	}{
		{0, 0, false, 100 * time.Microsecond},
		{8 * ms, 0, false, 8*ms + 500*time.Microsecond},
		{time.Second, 0, false, time.Second + 10*ms},
		{0, 12 * ms, false, 8400 * time.Microsecond},
		{8400 * time.Microsecond, 12 * ms, false, 8700 * time.Microsecond},
		{11 * ms, 2 * ms, false, 11*ms + 687500},
		{1500 * time.Microsecond, 2 * ms, false, 1600 * time.Microsecond},
		{0, 0, true, ms},
		{20 * ms, 0, true, 25 * ms},
		{time.Second, 12 * ms, true, time.Second + 10*ms},
	} {
		if got := probePause(c.elapsed, c.expect, c.announced); got != c.want {
			t.Errorf("probePause(%v, %v, %v) = %v, want %v", c.elapsed, c.expect, c.announced, got, c.want)
		}
	}

	// A server up at r, probed under expect: how many looks, and how long
	// after r the look that finds it comes.
	probe := func(r, expect time.Duration) (looks int, lag time.Duration) {
		at := time.Duration(0)
		for {
			at = probePause(at, expect, false)
			looks++
			if at >= r {
				return looks, at - r
			}
		}
	}
	for _, expect := range []time.Duration{3 * ms, 12 * ms, 100 * ms} {
		// Within ±30% of what was expected: a handful of looks, and the
		// server found within a fortieth of expect (or 100 µs).
		for r := expect * 7 / 10; r <= expect*13/10; r += expect / 100 {
			looks, lag := probe(r, expect)
			if looks > 25 {
				t.Errorf("expect %v, up at %v: %d looks, want at most 25", expect, r, looks)
			}
			if limit := max(expect/40, r/16, 100*time.Microsecond); lag > limit {
				t.Errorf("expect %v, up at %v: found %v late, want at most %v", expect, r, lag, limit)
			}
		}
	}
	// Not knowing: looks grow with the logarithm of the start, the lag
	// with the start.
	for _, r := range []time.Duration{ms, 12 * ms, 100 * ms, time.Second} {
		looks, lag := probe(r, 0)
		if limit := max(r/16, 100*time.Microsecond); lag > limit {
			t.Errorf("unknown, up at %v: found %v late, want at most %v", r, lag, limit)
		}
		// Past 160 ms the pause stays at 10 ms: a look per 10 ms.
		if limit := 90 + int(r/(10*ms)); looks > limit {
			t.Errorf("unknown, up at %v: %d looks, want at most %d", r, looks, limit)
		}
	}
	if looks, _ := probe(12*ms, 0); looks > 60 {
		t.Errorf("unknown, up at 12ms: %d looks; at a look per 100 µs it would be 120", looks)
	}
}

// listenTimes expects the median of the last 8 starts: one slow start moves
// it little, and old ones are forgotten.
func TestListenTimes(t *testing.T) {
	var l listenTimes
	if got := l.expect(); got != 0 {
		t.Fatalf("expect before any start = %v, want 0", got)
	}
	l.add(10 * time.Millisecond)
	if got := l.expect(); got != 10*time.Millisecond {
		t.Fatalf("expect after one = %v", got)
	}
	l.add(200 * time.Millisecond) // an outlier
	l.add(12 * time.Millisecond)
	if got := l.expect(); got != 12*time.Millisecond {
		t.Fatalf("expect of 10, 200, 12 ms = %v, want 12ms", got)
	}
	for range 8 {
		l.add(3 * time.Millisecond)
	}
	if got := l.expect(); got != 3*time.Millisecond {
		t.Fatalf("expect after 8 starts of 3 ms = %v, want the old ones forgotten", got)
	}
}
