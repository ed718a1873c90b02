package metrics

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency is a histogram of durations in logarithmic buckets, four to
// each doubling (bounds within 19% of the truth), from 1 µs to past an
// hour: enough for p50 and p99 with a few atomic adds per observation.
type Latency struct {
	b [latBuckets]atomic.Uint64
}

const latBuckets = 4 * 33

// latBucket maps d to its bucket: the exponent of its microseconds and the
// next two bits of its mantissa.
func latBucket(d time.Duration) int {
	us := uint64(max(d, 0)/time.Microsecond) + 1
	e := bits.Len64(us) - 1
	var frac uint64
	if e >= 2 {
		frac = (us >> (e - 2)) & 3
	} else {
		frac = (us << (2 - e)) & 3
	}
	return min(e*4+int(frac), latBuckets-1)
}

// latUpperMS is the upper bound of bucket i in milliseconds.
func latUpperMS(i int) float64 {
	e, frac := i/4, i%4
	return math.Ldexp(float64(4+frac+1)/4, e) / 1000
}

// Observe adds one duration.
func (h *Latency) Observe(d time.Duration) { h.b[latBucket(d)].Add(1) }

// QuantileMS returns the q-quantile's bucket bound in milliseconds; 0 with
// no observations.
func (h *Latency) QuantileMS(q float64) float64 {
	var counts [latBuckets]uint64
	var total uint64
	for i := range h.b {
		counts[i] = h.b[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var acc uint64
	for i, c := range counts {
		acc += c
		if acc >= rank {
			return latUpperMS(i)
		}
	}
	return latUpperMS(latBuckets - 1)
}
