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
// standard keep-alive (warm for the whole Range) and the window, priced on
// the idle times seen so far at one minute per idle warm minute and
// Exchange per cold start. The CV test alone takes any sparse histogram
// for a pattern (n samples spread evenly over B bins have a CV of about
// √(B/n)), and keeps a random app called every few hours warm for hours
// at a time; pricing keeps it warm only where that buys warm starts at
// less than Exchange of idle memory each. Exchange 0 is the paper's rule.
type Hybrid struct {
	Bin            time.Duration // histogram bin width (1m)
	Range          time.Duration // histogram range (4h)
	Head           float64       // head percentile for the pre-warm window
	Tail           float64       // tail percentile for the keep-alive window
	Margin         float64       // fraction taken off the head, added to the tail (0.10)
	MinSamples     int           // idle times needed before the histogram is trusted
	CV             float64       // coefficient of variation of bin counts needed (2)
	Exchange       time.Duration // idle warm time worth one cold start (0: the paper's rule, see Decide)
	OOB            float64       // fraction of out-of-bounds idle times that switches to the forecast (0.5)
	Alpha          float64       // exponential smoothing weight of the newest out-of-bounds idle time
	ForecastMargin float64       // fraction around the forecast (0.15)
	Fallback       time.Duration // keep-alive while the histogram is not representative
	MinPrewarm     time.Duration // shorter pre-warm windows keep warm instead (1m)
}

// DefaultHybrid is the hybrid policy as tuned for ebb (docs/keepalive.md
// has the measurements behind the choices): the paper's bins, range, CV
// threshold and margins, with the tail percentile and fallback chosen on
// the synthetic mix.
func DefaultHybrid() *Hybrid {
	return &Hybrid{
		Bin:            time.Minute,
		Range:          4 * time.Hour,
		Head:           5,
		Tail:           90,
		Margin:         0.10,
		MinSamples:     5,
		CV:             2,
		Exchange:       30 * time.Minute,
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
			return fmt.Errorf("unknown setting %q (bin, range, head, tail, margin, min-samples, cv, exchange, oob, alpha, forecast-margin, fallback, min-prewarm)", k)
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
func (h *Hybrid) New() History {
	n := int(h.Range / h.Bin)
	return &hybridHistory{p: h, bins: make([]uint32, n), cnt: make([]float64, n+1), sum: make([]float64, n+1)}
}

type hybridHistory struct {
	p        *Hybrid
	last     time.Time
	bins     []uint32
	inRange  int
	sumSq    float64       // Σ count², for the coefficient of variation in O(1)
	oob      int           // idle times beyond Range
	forecast time.Duration // smoothed out-of-bounds idle time; 0: none yet

	cnt, sum []float64 // Fenwick trees over the bins (see add)
}

func (h *hybridHistory) Observe(at time.Time) {
	if h.last.IsZero() {
		h.last = at
		return
	}
	if at.Before(h.last) {
		return
	}
	idle := at.Sub(h.last)
	h.last = at
	if b := int(idle / h.p.Bin); b < len(h.bins) {
		c := float64(h.bins[b])
		h.sumSq += 2*c + 1 // (c+1)² − c²
		h.bins[b]++
		h.inRange++
		h.add(b)
		return
	}
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
		return h.window(time.Duration(f*(1-p.ForecastMargin)), time.Duration(f*(1+p.ForecastMargin)), "forecast")
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
	return best
}

// cost is what d would have cost over the idle times seen so far, in
// bins: the idle warm time, plus Exchange for each arrival it would have
// found cold. Idle times are taken at their bin's middle; out of bounds
// ones as longer than any window.
func (h *hybridHistory) cost(d Decision) float64 {
	bin := float64(h.p.Bin)
	x := float64(h.p.Exchange) / bin
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
	after := float64(h.inRange) - upTo + float64(h.oob)
	return x*before + (inSum - from*in) + (x+to-from)*after
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
