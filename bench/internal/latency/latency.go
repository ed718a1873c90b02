// Package latency summarises the samples of ebb's benchmark programs
// (bench/coldstart, bench/baseline) the same way, so that their RESULT lines
// compare.
package latency

import (
	"math"
	"time"
)

// Percentile is the nearest-rank p-th percentile (0-100) of sorted samples;
// 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Mean is the average of d; 0 for none.
func Mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return sum / time.Duration(len(d))
}

// MS is d in milliseconds.
func MS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
