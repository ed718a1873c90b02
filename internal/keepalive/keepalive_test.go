package keepalive

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

func min_(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Minute))) }

func TestParse(t *testing.T) {
	for _, c := range []struct{ in, name string }{
		{"fixed:10m", "fixed:10m"},
		{"fixed:90s", "fixed:1m30s"},
		{"fixed:2h", "fixed:2h"},
		{"hybrid", "hybrid"},
		{"hybrid:tail=99,fallback=4h", "hybrid:tail=99,fallback=4h"},
		{"hybrid:tail=90", "hybrid"}, // the default
		{"hybrid:exchange=30m,exchange-idle=0,exchange-memory=0,search=false", "hybrid:exchange=30m,exchange-idle=0,exchange-memory=0,search=false"},
		{"hybrid:exchange-idle=4,search=true", "hybrid"},
	} {
		p, err := Parse(c.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.in, err)
		}
		if p.Name() != c.name {
			t.Errorf("Parse(%q).Name() = %q, want %q", c.in, p.Name(), c.name)
		}
		if q, err := Parse(p.Name()); err != nil || q.Name() != p.Name() {
			t.Errorf("Parse(%q) = %v, %v: a name must parse back to itself", p.Name(), q, err)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"fixed", "needs a duration"},
		{"fixed:-1m", "positive"},
		{"fixed:soon", "positive"},
		{"lru", "unknown policy"},
		{"hybrid:tail", "key=value"},
		{"hybrid:tail=x", "setting tail"},
		{"hybrid:tail=101", "tail must be"},
		{"hybrid:head=50,tail=10", "tail must be"},
		{"hybrid:color=red", "unknown setting"},
		{"hybrid:range=0s", "range"},
		{"hybrid:exchange-idle=-1", "exchange-idle must be"},
		{"hybrid:exchange-memory=NaN", "exchange-memory must be"},
		{"hybrid:search=maybe", "setting search"},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", c.in, err, c.want)
		}
	}
}

func TestFixed(t *testing.T) {
	h := Fixed(10 * time.Minute).New()
	if d := h.Decide(t0); d.Warm(t0) || d.Why != "none" {
		t.Fatalf("before any arrival: %+v, want nothing warm", d)
	}
	h.Observe(min_(3))
	d := h.Decide(min_(3))
	if !d.PrewarmAt.IsZero() || !d.UnloadAt.Equal(min_(13)) {
		t.Fatalf("fixed:10m after an arrival at 3m: %+v, want unload at 13m, no pre-warm", d)
	}
	for _, c := range []struct {
		at   float64
		warm bool
	}{{3, true}, {12.9, true}, {13, true}, {13.01, false}, {100, false}} {
		if got := d.Warm(min_(c.at)); got != c.warm {
			t.Errorf("Warm(%vm) = %v, want %v", c.at, got, c.warm)
		}
	}
	h.Observe(min_(1)) // out of order: ignored
	if got := h.Decide(min_(4)); !got.Last.Equal(min_(3)) {
		t.Errorf("an earlier arrival moved Last to %v", got.Last)
	}
}

// TestHybridPeriodic moves now through the arrivals of a function called
// every 15 minutes (with a little jitter): once the histogram is learned,
// every decision pre-warms before the next call and unloads after the
// learned keep-alive, and a live keeper acting on Decision.At has it warm
// when the call comes.
func TestHybridPeriodic(t *testing.T) {
	h := DefaultHybrid().New()
	jitter := []float64{0, 0.2, -0.3, 0.1, 0.4, -0.2, 0, 0.3}
	var arrivals []time.Time
	for i := range 40 {
		arrivals = append(arrivals, min_(float64(15*i)+jitter[i%len(jitter)]))
	}
	learned := false
	for i, a := range arrivals[:len(arrivals)-1] {
		h.Observe(a)
		d := h.Decide(a)
		next := arrivals[i+1]
		if d.Why != "histogram" && d.Why != "search" { // the paper's window, or a searched one
			if learned {
				t.Fatalf("arrival %d: %s decision after the histogram was learned", i, d.Why)
			}
			if i >= 10 {
				t.Fatalf("arrival %d: still %s after %d idle times of 15m", i, d.Why, i)
			}
			continue
		}
		learned = true
		if d.PrewarmAt.IsZero() || !d.PrewarmAt.Before(next) || !d.PrewarmAt.After(a.Add(10*time.Minute)) {
			t.Fatalf("arrival %d at %v: pre-warm at %v, want between 10m after it and the next call at %v", i, a, d.PrewarmAt, next)
		}
		if !d.UnloadAt.After(next) || d.UnloadAt.After(a.Add(20*time.Minute)) {
			t.Fatalf("arrival %d: unload at %v, want after the next call %v and within 20m", i, d.UnloadAt, next)
		}
		// Walk now from the arrival to the next one as a live keeper
		// would: sleep until the decision's next change, act, repeat.
		now, warm, prewarmed := a, true, false
		for {
			act, until := d.At(now)
			if act == Keep && !warm {
				prewarmed = true
			}
			warm = act == Keep
			if until.IsZero() || until.After(next) {
				break
			}
			now = until
		}
		if !warm || !prewarmed {
			t.Fatalf("arrival %d: at the next call warm=%v prewarmed=%v, want a pre-warmed instance", i, warm, prewarmed)
		}
		if act, _ := d.At(d.UnloadAt.Add(time.Second)); act != Unload {
			t.Fatalf("arrival %d: still warm after the learned keep-alive", i)
		}
		if act, _ := d.At(a.Add(5 * time.Minute)); act != Unload {
			t.Fatalf("arrival %d: warm 5m after the call, want unloaded until the pre-warm", i)
		}
	}
	if !learned {
		t.Fatal("the histogram was never used")
	}
}

// TestHybridFrequent: a function called every minute keeps warm without
// pre-warming, and its keep-alive is short (the tail of its idle times),
// not the 10 minutes of the fallback.
func TestHybridFrequent(t *testing.T) {
	h := DefaultHybrid().New()
	for i := range 30 {
		h.Observe(min_(float64(i)))
	}
	d := h.Decide(min_(29))
	if d.Why != "histogram" || !d.PrewarmAt.IsZero() {
		t.Fatalf("every minute: %+v, want a histogram decision without pre-warm", d)
	}
	if k := d.UnloadAt.Sub(d.Last); k < 2*time.Minute || k > 3*time.Minute {
		t.Fatalf("every minute: keep-alive %v, want the end of bin 1 plus 10%% (2m12s)", k)
	}
}

// TestHybridFallback: too few idle times, or idle times spread evenly
// (a flat histogram), keep the fixed fallback.
func TestHybridFallback(t *testing.T) {
	p := DefaultHybrid()
	h := p.New()
	for i := range p.MinSamples { // MinSamples arrivals = MinSamples−1 idle times
		h.Observe(min_(float64(15 * i)))
	}
	d := h.Decide(min_(100))
	if d.Why != "fallback" || !d.UnloadAt.Equal(d.Last.Add(p.Fallback)) || !d.PrewarmAt.IsZero() {
		t.Fatalf("%d idle times: %+v, want the fallback", p.MinSamples-1, d)
	}
	h.Observe(min_(float64(15 * p.MinSamples)))
	if d := h.Decide(min_(200)); d.Why != "histogram" {
		t.Fatalf("%d idle times: %s, want the histogram", p.MinSamples, d.Why)
	}

	// Idle times 1, 2, …, 200 minutes: every bin once, no pattern; the
	// paper's rule falls back.
	paper, _ := Parse("hybrid:exchange=0s")
	h = paper.New()
	at := 0.0
	for i := range 201 {
		at += float64(i)
		h.Observe(min_(at))
	}
	if d := h.Decide(min_(at)); d.Why != "fallback" {
		t.Fatalf("flat histogram: %s, want the fallback", d.Why)
	}
}

// TestHybridForecast: idle times mostly beyond the 4h range (a function
// called every 6 hours) are forecast: pre-warm shortly before 6h.
func TestHybridForecast(t *testing.T) {
	h := DefaultHybrid().New()
	for i := range 8 {
		h.Observe(min_(float64(360 * i)))
	}
	last := min_(360 * 7)
	d := h.Decide(last)
	if d.Why != "forecast" {
		t.Fatalf("6-hourly: %s, want forecast", d.Why)
	}
	if !d.PrewarmAt.Equal(last.Add(306*time.Minute)) || !d.UnloadAt.Equal(last.Add(414*time.Minute)) {
		t.Fatalf("6-hourly: pre-warm %v unload %v, want 360m ∓ 15%%", d.PrewarmAt.Sub(last), d.UnloadAt.Sub(last))
	}
	if !d.Warm(last.Add(360*time.Minute)) || d.Warm(last.Add(time.Hour)) {
		t.Fatal("6-hourly: want cold an hour after, warm at the next call")
	}

	// Idle times of 5 to 40 hours at random: the forecast's window is
	// priced like the histogram's, and rarely holds the next call.
	gaps := []float64{300, 2400, 610, 1500, 330, 2000, 900, 420, 1800, 700}
	for _, c := range []struct{ policy, want string }{
		{"hybrid:exchange=0s", "forecast"}, // the paper's rule
		{"hybrid:exchange=30m,exchange-idle=0", "fallback"},
	} {
		p, _ := Parse(c.policy)
		if d := idles(p.New(), 1, gaps...); d.Why != c.want {
			t.Errorf("random 5–40h idle times, %s: %s, want %s", c.policy, d.Why, c.want)
		}
	}
}

func BenchmarkHybridObserveDecide(b *testing.B) {
	h := DefaultHybrid().New()
	now := t0
	for i := range b.N {
		now = now.Add(time.Duration(1+i%37) * time.Minute)
		h.Observe(now)
		h.Decide(now)
	}
}

// TestHybridTreesMatchBins: the percentiles and prices read from the
// Fenwick trees equal the ones counted bin by bin, on random histories.
func TestHybridTreesMatchBins(t *testing.T) {
	p := DefaultHybrid()
	p.ExchangeIdle = 0 // a constant price, Exchange
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		h := p.New().(*hybridHistory)
		at := t0
		for range 1 + rng.IntN(300) {
			at = at.Add(time.Duration(rng.ExpFloat64() * float64(time.Duration(1+rng.IntN(120))*time.Minute)))
			h.Observe(at)
		}
		if h.inRange == 0 {
			continue
		}
		for _, pct := range []float64{0, 1, 5, 50, 90, 99, 100} {
			rank, seen, want := max(1, int(math.Ceil(pct/100*float64(h.inRange)))), 0, len(h.bins)-1
			for b, c := range h.bins {
				if seen += int(c); seen >= rank {
					want = b
					break
				}
			}
			if got := h.bin(pct); got != want {
				t.Fatalf("trial %d: percentile %v in bin %d, counting says %d", trial, pct, got, want)
			}
		}
		for _, w := range [][2]float64{{0, 10}, {0, 240}, {3.5, 17.2}, {0.9, 2.2}, {100, 300}, {0, 0.4}} {
			d := Decision{Last: at, UnloadAt: at.Add(time.Duration(w[1] * float64(time.Minute)))}
			if w[0] > 0 {
				d.PrewarmAt = at.Add(time.Duration(w[0] * float64(time.Minute)))
			}
			x := float64(p.Exchange / time.Minute)
			want, kept := 0.0, min(h.oob, oobKeep)
			for _, v := range h.oobRecent[:kept] {
				switch {
				case v < w[0]:
					want += x
				case v <= w[1]:
					want += v - w[0]
				default:
					want += x + w[1] - w[0]
				}
			}
			if kept > 0 {
				want *= float64(h.oob) / float64(kept)
			}
			for b, c := range h.bins {
				switch g := float64(b) + 0.5; {
				case g < w[0]:
					want += float64(c) * x
				case g <= w[1]:
					want += float64(c) * (g - w[0])
				default:
					want += float64(c) * (x + w[1] - w[0])
				}
			}
			if got := h.cost(d); math.Abs(got-want) > 1e-6*max(1, want) {
				t.Fatalf("trial %d: window %v costs %v, counting says %v", trial, w, got, want)
			}
		}
	}
}

// idles replays idle times (minutes) into a fresh history of p, with
// calls per arrival, and returns the decision after the last.
func idles(h History, calls int64, gaps ...float64) Decision {
	at := 0.0
	h.(Counted).ObserveN(min_(at), calls)
	for _, g := range gaps {
		at += g
		h.(Counted).ObserveN(min_(at), calls)
	}
	return h.Decide(min_(at))
}

// drifting is a timer of about two hours whose firings drift by up to
// half an hour: idle times 95–145 minutes.
var drifting = []float64{120, 97, 141, 118, 104, 133, 126, 95, 145, 112, 121, 108, 137, 99, 130}

// random is an app called at random, about once an hour (exponential
// idle times, mean 54 minutes, the longest 211): a warm start costs about
// one mean idle time of warm memory however it is timed.
var random = []float64{48, 21, 127, 10, 93, 56, 8, 86, 6, 69, 10, 12, 67, 211, 17, 31}

// TestHybridPricePerCall: a cold start is priced at ExchangeIdle (4) mean
// times between calls, so a random app called about once an hour is kept
// warm for hours after each call (each warm start costs about one mean
// idle time; it may be unloaded for the few minutes no call came in), which
// a fixed price of 30 minutes does not buy.
func TestHybridPricePerCall(t *testing.T) {
	d := idles(DefaultHybrid().New(), 1, random...)
	if d.WarmFrom().After(d.Last.Add(6*time.Minute)) || d.UnloadAt.Before(d.Last.Add(2*time.Hour)) {
		t.Fatalf("random hourly app: %s window %v–%v after the call, want warm from 6m or less to 2h or more",
			d.Why, d.PrewarmAt.Sub(d.Last), d.UnloadAt.Sub(d.Last))
	}
	fixedPrice, _ := Parse("hybrid:exchange=30m,exchange-idle=0")
	if d := idles(fixedPrice.New(), 1, random...); d.UnloadAt.After(d.Last.Add(30 * time.Minute)) {
		t.Fatalf("random hourly app at a fixed 30m price: %s, unload %v after the call, want 30m or less", d.Why, d.UnloadAt.Sub(d.Last))
	}
}

// TestHybridPriceMemoryAndCalls: the same idle times are worth keeping
// warm for an app of the reference memory and not for one ten times
// larger, nor for one whose arrivals each stand for 100 calls (a cold
// start is then a hundredth of the share of its calls it is otherwise).
func TestHybridPriceMemoryAndCalls(t *testing.T) {
	p := DefaultHybrid()
	short := func(d Decision) bool { return d.UnloadAt.Sub(d.WarmFrom()) <= 30*time.Minute }
	if d := idles(p.NewSized(170), 1, random...); short(d) {
		t.Fatalf("170 MB: %s %v warm, want hours", d.Why, d.UnloadAt.Sub(d.WarmFrom()))
	}
	if d := idles(p.NewSized(1700), 1, random...); !short(d) {
		t.Fatalf("1700 MB: %s %v warm, want 30m or less", d.Why, d.UnloadAt.Sub(d.WarmFrom()))
	}
	if d := idles(p.New(), 100, random...); !short(d) {
		t.Fatalf("100 calls an arrival: %s %v warm, want 30m or less", d.Why, d.UnloadAt.Sub(d.WarmFrom()))
	}
	if h := NewHistory(p, 1700); h.(*hybridHistory).scale != 0.1 {
		t.Fatalf("NewHistory(1700 MB) scales the price by %v, want 0.1", h.(*hybridHistory).scale)
	}
}

// TestHybridSearchOnOff: an app called in bursts of five calls a minute
// apart, with silences of two to three hours between them, stays warm
// through a burst's gaps but not through the silences. Without search the
// candidates are the paper's window (up to its 90th percentile, in the
// silences), the whole range and the 10-minute fallback, and the cheapest
// of them keeps it warm longer after each burst.
func TestHybridSearchOnOff(t *testing.T) {
	var gaps []float64
	for b := range 8 {
		gaps = append(gaps, 1, 1, 1, 1, float64(120+10*b))
	}
	gaps = append(gaps, 1, 1)
	d := idles(DefaultHybrid().New(), 1, gaps...)
	if !d.PrewarmAt.IsZero() || d.UnloadAt.After(d.Last.Add(5*time.Minute)) || d.UnloadAt.Before(d.Last.Add(time.Minute)) {
		t.Fatalf("on/off: %s %v–%v, want warm from the call for 1–5 minutes", d.Why, d.PrewarmAt.Sub(d.Last), d.UnloadAt.Sub(d.Last))
	}
	noSearch, _ := Parse("hybrid:search=false")
	if d2 := idles(noSearch.New(), 1, gaps...); !d2.UnloadAt.After(d.UnloadAt) {
		t.Fatalf("on/off without search: %s unload %v after the call, want longer than with search (%v)", d2.Why, d2.UnloadAt.Sub(d2.Last), d.UnloadAt.Sub(d.Last))
	}
}
