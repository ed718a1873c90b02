package keepalive

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Hybrid is the hybrid histogram policy (Shahrad et al., ATC'20, §4.2).
// Per app it keeps a histogram of idle times (the time from one arrival to
// the next) in Bin-wide bins up to Range; idle times beyond Range are
// counted as out of bounds. After each arrival:
//
//   - fewer than MinSamples idle times: keep warm for Fallback, no
//     pre-warm;
//   - more than OOB of the idle times out of bounds: forecast the next idle
//     time by exponential smoothing of the out-of-bounds ones (weight Alpha
//     on the newest; the paper uses ARIMA here), pre-warm at the forecast
//     less ForecastMargin and keep warm until it plus ForecastMargin;
//   - otherwise the histogram's window: pre-warm at the Head percentile's
//     bin, less Margin, and keep warm until the end of the Tail
//     percentile's bin, plus Margin. A pre-warm window under MinPrewarm
//     keeps the instance warm instead (unloading and reloading within a
//     minute saves nothing). The paper takes the window when the bin
//     counts' coefficient of variation is at least CV (a pattern), and the
//     fallback otherwise.
//
// With Exchange set (ebb's default), the CV test only admits the window as
// a candidate: the decision is the cheapest of the fallback, the paper's
// standard keep-alive (warm for the whole Range), the window and, with
// Search, windows between other percentiles of the histogram, priced on
// the idle times seen so far at one minute per idle warm minute and a
// price per cold start. The CV test alone takes any sparse histogram for
// a pattern (n samples spread evenly over B bins have a CV of about
// √(B/n)), and keeps a random app called every few hours warm for hours at
// a time; pricing keeps it warm only where that buys warm starts at less
// than the price of a cold start each. Exchange 0 is the paper's rule.
//
// The price of a cold start is Exchange, raised to ExchangeIdle times the
// app's mean time between calls, and scaled by ExchangeMemory over the
// app's memory when the history knows it (NewSized). The measure is each
// app's share of cold calls, as in the paper, and that share moves by
// 1/calls per cold start: a cold start matters more for an app called
// twice an hour than for one called every second, and an idle minute costs
// in proportion to the app's memory. Pricing a cold start at K mean times
// between calls, per MB, spends memory where it buys the most of that
// share; a memoryless (Poisson) app buys a warm start at one mean idle time
// of warm memory however it is kept, so with K above 1 it is kept warm and
// with K below 1 it is not.
type Hybrid struct {
	Bin        time.Duration // histogram bin width (1m)
	Range      time.Duration // histogram range (4h)
	Head       float64       // head percentile for the pre-warm window
	Tail       float64       // tail percentile for the keep-alive window
	Margin     float64       // fraction taken off the head, added to the tail (0.10)
	MinSamples int           // idle times needed before the histogram is trusted
	CV         float64       // coefficient of variation of bin counts needed (2)
	Exchange   time.Duration // idle warm time worth one cold start, at least (0: the paper's rule)
	// ExchangeIdle, when above 0, raises the price of a cold start to
	// ExchangeIdle times the app's mean time between calls (the idle
	// times over the calls after the first; a Counted history counts every
	// call, else one per arrival).
	ExchangeIdle float64
	// ExchangeMemory, when above 0, is the memory (MB) at which the price
	// is as set: an app of m MB prices a cold start at ExchangeMemory/m
	// times that. Only histories made by NewSized know m.
	ExchangeMemory float64
	OOB            float64       // fraction of out-of-bounds idle times that switches to the forecast (0.5)
	Alpha          float64       // exponential smoothing weight of the newest out-of-bounds idle time
	ForecastMargin float64       // fraction around the forecast (0.15)
	Fallback       time.Duration // keep-alive while the histogram is not representative
	MinPrewarm     time.Duration // shorter pre-warm windows keep warm instead (1m)
	// Search, with Exchange set, also prices the windows between other
	// percentiles of the histogram (searchHeads, searchTails), whether or
	// not it passes the CV test, and takes the cheapest.
	Search bool
}

// DefaultHybrid is the hybrid policy as tuned for ebb (docs/keepalive.md
// has the measurements behind the choices): the paper's bins, range, CV
// threshold and margins; cold starts priced at 4 mean times between calls
// (ExchangeIdle, chosen on seeds 1–3 of the paper mix and checked on seeds
// 4–6) per 170 MB (the paper's median app, Figure 8), at least a minute;
// windows searched among percentiles.
func DefaultHybrid() *Hybrid {
	return &Hybrid{
		Bin:            time.Minute,
		Range:          4 * time.Hour,
		Head:           5,
		Tail:           90,
		Margin:         0.10,
		MinSamples:     5,
		CV:             2,
		Exchange:       time.Minute,
		ExchangeIdle:   4,
		ExchangeMemory: 170,
		Search:         true,
		OOB:            0.5,
		Alpha:          0.5,
		ForecastMargin: 0.15,
		Fallback:       10 * time.Minute,
		MinPrewarm:     time.Minute,
	}
}

// Validate reports a setting out of its range, naming it.
func (h *Hybrid) Validate() error {
	switch {
	case h.Bin <= 0:
		return errors.New("bin must be positive")
	case h.Range < h.Bin || h.Range/h.Bin > 100_000:
		return errors.New("range must be at least one bin and at most 100000 bins")
	case !(h.Head >= 0 && h.Head <= 100):
		return errors.New("head must be a percentile in [0, 100]")
	case !(h.Tail >= h.Head && h.Tail <= 100):
		return errors.New("tail must be a percentile in [head, 100]")
	case !(h.Margin >= 0 && h.Margin < 1):
		return errors.New("margin must be in [0, 1)")
	case h.MinSamples < 1:
		return errors.New("min-samples must be at least 1")
	case !(h.CV >= 0) || math.IsInf(h.CV, 0):
		return errors.New("cv must be a non-negative number")
	case h.Exchange < 0:
		return errors.New("exchange must not be negative")
	case !(h.ExchangeIdle >= 0) || math.IsInf(h.ExchangeIdle, 0):
		return errors.New("exchange-idle must be a non-negative number")
	case !(h.ExchangeMemory >= 0) || math.IsInf(h.ExchangeMemory, 0):
		return errors.New("exchange-memory must be a non-negative number")
	case !(h.OOB >= 0 && h.OOB <= 1):
		return errors.New("oob must be in [0, 1]")
	case !(h.Alpha > 0 && h.Alpha <= 1):
		return errors.New("alpha must be in (0, 1]")
	case !(h.ForecastMargin >= 0 && h.ForecastMargin < 1):
		return errors.New("forecast-margin must be in [0, 1)")
	case h.Fallback <= 0:
		return errors.New("fallback must be positive")
	case h.MinPrewarm < 0:
		return errors.New("min-prewarm must not be negative")
	}
	return nil
}

// set applies "key=value,key=value" settings.
func (h *Hybrid) set(arg string) error {
	for kv := range strings.SplitSeq(arg, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("setting %q: want key=value", kv)
		}
		var err error
		switch k {
		case "bin":
			h.Bin, err = time.ParseDuration(v)
		case "range":
			h.Range, err = time.ParseDuration(v)
		case "head":
			h.Head, err = strconv.ParseFloat(v, 64)
		case "tail":
			h.Tail, err = strconv.ParseFloat(v, 64)
		case "margin":
			h.Margin, err = strconv.ParseFloat(v, 64)
		case "min-samples":
			h.MinSamples, err = strconv.Atoi(v)
		case "cv":
			h.CV, err = strconv.ParseFloat(v, 64)
		case "exchange":
			h.Exchange, err = time.ParseDuration(v)
		case "exchange-idle":
			h.ExchangeIdle, err = strconv.ParseFloat(v, 64)
		case "exchange-memory":
			h.ExchangeMemory, err = strconv.ParseFloat(v, 64)
		case "search":
			h.Search, err = strconv.ParseBool(v)
		case "oob":
			h.OOB, err = strconv.ParseFloat(v, 64)
		case "alpha":
			h.Alpha, err = strconv.ParseFloat(v, 64)
		case "forecast-margin":
			h.ForecastMargin, err = strconv.ParseFloat(v, 64)
		case "fallback":
			h.Fallback, err = time.ParseDuration(v)
		case "min-prewarm":
			h.MinPrewarm, err = time.ParseDuration(v)
		default:
			return fmt.Errorf("unknown setting %q (bin, range, head, tail, margin, min-samples, cv, exchange, exchange-idle, exchange-memory, search, oob, alpha, forecast-margin, fallback, min-prewarm)", k)
		}
		if err != nil {
			return fmt.Errorf("setting %s: %q is not a valid value", k, v)
		}
	}
	return nil
}

// Name implements Policy: "hybrid", with the settings that differ from
// DefaultHybrid.
func (h *Hybrid) Name() string {
	d := DefaultHybrid()
	var diff []string
	add := func(differs bool, k, v string) {
		if differs {
			diff = append(diff, k+"="+v)
		}
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	add(h.Bin != d.Bin, "bin", fmtDuration(h.Bin))
	add(h.Range != d.Range, "range", fmtDuration(h.Range))
	add(h.Head != d.Head, "head", f(h.Head))
	add(h.Tail != d.Tail, "tail", f(h.Tail))
	add(h.Margin != d.Margin, "margin", f(h.Margin))
	add(h.MinSamples != d.MinSamples, "min-samples", strconv.Itoa(h.MinSamples))
	add(h.CV != d.CV, "cv", f(h.CV))
	add(h.Exchange != d.Exchange, "exchange", fmtDuration(h.Exchange))
	add(h.ExchangeIdle != d.ExchangeIdle, "exchange-idle", f(h.ExchangeIdle))
	add(h.ExchangeMemory != d.ExchangeMemory, "exchange-memory", f(h.ExchangeMemory))
	add(h.Search != d.Search, "search", strconv.FormatBool(h.Search))
	add(h.OOB != d.OOB, "oob", f(h.OOB))
	add(h.Alpha != d.Alpha, "alpha", f(h.Alpha))
	add(h.ForecastMargin != d.ForecastMargin, "forecast-margin", f(h.ForecastMargin))
	add(h.Fallback != d.Fallback, "fallback", fmtDuration(h.Fallback))
	add(h.MinPrewarm != d.MinPrewarm, "min-prewarm", fmtDuration(h.MinPrewarm))
	if len(diff) == 0 {
		return "hybrid"
	}
	return "hybrid:" + strings.Join(diff, ",")
}

// New implements Policy.
func (h *Hybrid) New() History { return h.NewSized(0) }

// NewSized implements Sized: a history for an app of mb MB (0: unknown).
func (h *Hybrid) NewSized(mb float64) History {
	n := int(h.Range / h.Bin)
	scale := 1.0
	if h.ExchangeMemory > 0 && mb > 0 {
		scale = h.ExchangeMemory / mb
	}
	return &hybridHistory{p: h, scale: scale, bins: make([]uint32, n), cnt: make([]float64, n+1), sum: make([]float64, n+1)}
}

// oobKeep is how many out-of-bounds idle times a history keeps to price
// the forecast: the newest ones, as the forecast follows them too.
const oobKeep = 16

type hybridHistory struct {
	p       *Hybrid
	scale   float64 // of the price of a cold start, by the app's memory
	last    time.Time
	bins    []uint32
	inRange int
	sumSq   float64       // Σ count², for the coefficient of variation in O(1)
	oob     int           // idle times beyond Range
	idleSum time.Duration // all idle times, for their mean
	calls   int64         // calls after the first arrival (ObserveN), ≥ one per idle time
	// oobRecent holds the latest out-of-bounds idle times, in bins (a
	// ring indexed by oob), to price the forecast's window.
	oobRecent [oobKeep]float64
	forecast  time.Duration // smoothed out-of-bounds idle time; 0: none yet

	cnt, sum []float64 // Fenwick trees over the bins (see add)
}

func (h *hybridHistory) Observe(at time.Time) { h.ObserveN(at, 1) }

// ObserveN implements keepalive.Counted.
func (h *hybridHistory) ObserveN(at time.Time, calls int64) {
	if h.last.IsZero() {
		h.last = at
		return
	}
	if at.Before(h.last) {
		return
	}
	h.calls += max(1, calls)
	idle := at.Sub(h.last)
	h.last = at
	h.idleSum += idle
	if b := int(idle / h.p.Bin); b < len(h.bins) {
		c := float64(h.bins[b])
		h.sumSq += 2*c + 1 // (c+1)² − c²
		h.bins[b]++
		h.inRange++
		h.add(b)
		return
	}
	h.oobRecent[h.oob%oobKeep] = float64(idle) / float64(h.p.Bin)
	h.oob++
	if h.forecast == 0 {
		h.forecast = idle
	} else {
		h.forecast = time.Duration(h.p.Alpha*float64(idle) + (1-h.p.Alpha)*float64(h.forecast))
	}
}

func (h *hybridHistory) Decide(time.Time) Decision {
	p := h.p
	if h.last.IsZero() {
		return Decision{Why: "none"}
	}
	fallback := Decision{Last: h.last, UnloadAt: h.last.Add(p.Fallback), Why: "fallback"}
	n := h.inRange + h.oob
	if n < p.MinSamples {
		return fallback
	}
	if float64(h.oob) > p.OOB*float64(n) && h.forecast > 0 {
		f := float64(h.forecast)
		fc := h.window(time.Duration(f*(1-p.ForecastMargin)), time.Duration(f*(1+p.ForecastMargin)), "forecast")
		// Priced, the forecast's window must buy its warm starts at less
		// than Exchange each, like the histogram's: a random app called
		// every few hours is warm in it for 30% of a mean idle time per
		// call and rarely called in it.
		if p.Exchange == 0 || h.cost(fc) < h.cost(fallback) {
			return fc
		}
		return fallback
	}
	if h.inRange == 0 {
		return fallback
	}
	head := time.Duration(h.bin(p.Head)) * p.Bin
	tail := time.Duration(h.bin(p.Tail)+1) * p.Bin
	hist := h.window(time.Duration(float64(head)*(1-p.Margin)), time.Duration(float64(tail)*(1+p.Margin)), "histogram")
	representative := h.cv() >= p.CV
	if p.Exchange == 0 {
		if !representative {
			return fallback
		}
		return hist
	}
	// Pick the cheapest of the fallback, the paper's standard keep-alive
	// (warm for the whole range) and, if representative, the histogram's
	// window, on the idle times seen so far.
	// On a tie the shorter warm span wins: the idle times seen so far do
	// not show what a longer one wastes after the last call of a burst.
	best, bestCost := fallback, h.cost(fallback)
	consider := func(d Decision) {
		c := h.cost(d)
		if c < bestCost || c == bestCost && d.UnloadAt.Sub(d.WarmFrom()) < best.UnloadAt.Sub(best.WarmFrom()) {
			best, bestCost = d, c
		}
	}
	consider(Decision{Last: h.last, UnloadAt: h.last.Add(p.Range), Why: "range"})
	if representative {
		consider(hist)
	}
	if p.Search {
		// Windows between other percentiles, priced the same way: an
		// on/off app's tail is better cut before its silences, a drifting
		// timer's head and tail lie where its histogram says, not at 5/90.
		var tails [len(searchTails)]time.Duration
		for i, tp := range searchTails {
			tails[i] = time.Duration(float64(h.bin(tp)+1) * (1 + p.Margin) * float64(p.Bin))
		}
		for _, hp := range searchHeads {
			var from time.Duration
			if hp >= 0 {
				from = time.Duration(float64(h.bin(hp)) * (1 - p.Margin) * float64(p.Bin))
			}
			for _, to := range tails {
				if to > from {
					consider(h.window(from, to, "search"))
				}
			}
		}
	}
	return best
}

// searchHeads and searchTails are the percentiles the Search windows
// start and end at (a head of −1: no pre-warm).
var (
	searchHeads = [...]float64{-1, 1, 5, 10, 25, 50}
	searchTails = [...]float64{25, 50, 75, 90, 95, 99, 100}
)

// cost is what d would have cost over the idle times seen so far, in
// bins: the idle warm time, plus Exchange for each arrival it would have
// found cold. Idle times in range are taken at their bin's middle; out of
// bounds ones as the latest oobKeep of them, weighted up to their count.
func (h *hybridHistory) cost(d Decision) float64 {
	bin := float64(h.p.Bin)
	x := float64(h.p.Exchange) / bin
	if h.p.ExchangeIdle > 0 && h.calls > 0 {
		x = max(x, h.p.ExchangeIdle*float64(h.idleSum)/float64(h.calls)/bin)
	}
	x *= h.scale
	from := 0.0
	if !d.PrewarmAt.IsZero() {
		from = float64(d.PrewarmAt.Sub(d.Last)) / bin
	}
	to := float64(d.UnloadAt.Sub(d.Last)) / bin
	nb := len(h.bins)
	// bins [0, lo) have their middle before from, [lo, hi) inside the window
	lo := min(max(int(math.Ceil(from-0.5)), 0), nb)
	hi := min(max(int(math.Floor(to-0.5))+1, lo), nb)
	before, beforeSum := h.below(lo)
	upTo, upToSum := h.below(hi)
	in, inSum := upTo-before, upToSum-beforeSum
	after := float64(h.inRange) - upTo
	c := x*before + (inSum - from*in) + (x+to-from)*after
	if h.oob > 0 {
		kept := min(h.oob, oobKeep)
		var oc float64
		for _, v := range h.oobRecent[:kept] {
			switch {
			case v < from:
				oc += x
			case v <= to:
				oc += v - from
			default:
				oc += x + to - from
			}
		}
		c += oc * float64(h.oob) / float64(kept)
	}
	return c
}

// The idle times per bin are also kept in two Fenwick trees (counts, and
// counts times the bin's middle), so that Decide reads the count and sum
// below any bin in O(log bins) instead of walking all 240 bins.

// add records one idle time in bin b.
func (h *hybridHistory) add(b int) {
	mid := float64(b) + 0.5
	for i := b + 1; i < len(h.cnt); i += i & -i {
		h.cnt[i]++
		h.sum[i] += mid
	}
}

// below returns the count and the sum of middles of the bins below k.
func (h *hybridHistory) below(k int) (n, sum float64) {
	for i := k; i > 0; i -= i & -i {
		n += h.cnt[i]
		sum += h.sum[i]
	}
	return n, sum
}

// window builds a decision that pre-warms prewarm after the last arrival
// and unloads keep after it.
func (h *hybridHistory) window(prewarm, keep time.Duration, why string) Decision {
	d := Decision{Last: h.last, UnloadAt: h.last.Add(keep), Why: why}
	if prewarm >= h.p.MinPrewarm && prewarm > 0 {
		d.PrewarmAt = h.last.Add(prewarm)
	}
	return d
}

// cv is the coefficient of variation of the bin counts.
func (h *hybridHistory) cv() float64 {
	nb := float64(len(h.bins))
	mean := float64(h.inRange) / nb
	variance := h.sumSq/nb - mean*mean
	if variance < 0 {
		variance = 0
	}
	return math.Sqrt(variance) / mean
}

// bin is the bin holding the pct-th percentile of the in-range idle times
// (nearest rank): the first bin whose count from 0 reaches the rank, found
// by descending the count tree.
func (h *hybridHistory) bin(pct float64) int {
	rem := max(1, math.Ceil(pct/100*float64(h.inRange)))
	pos := 0
	for step := 1 << bits.Len(uint(len(h.bins))); step > 0; step >>= 1 {
		if next := pos + step; next <= len(h.bins) && h.cnt[next] < rem {
			pos = next
			rem -= h.cnt[next]
		}
	}
	return min(pos, len(h.bins)-1)
}
