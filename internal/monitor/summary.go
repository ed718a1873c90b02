package monitor

import (
	"math"
	"slices"
	"sort"
	"strconv"
)

// Summary is the running summary of one feature over one window: moments
// (merged exactly with Chan et al.'s parallel formula), extremes, and counts
// over the feature's frozen bin edges.
type Summary struct {
	Count     int64
	Mean, M2  float64 // running mean and sum of squared deviations
	Min, Max  float64
	NonFinite int64   // NaN and ±Inf values, left out of everything else
	Hist      []int64 // len(edges)+1 once the feature's edges are frozen
	pending   []float64
}

// Add folds one value into the moments; binning is the caller's (it needs
// the feature's edges).
func (s *Summary) Add(v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		s.NonFinite++
		return false
	}
	if s.Count == 0 {
		s.Min, s.Max = v, v
	} else {
		s.Min, s.Max = min(s.Min, v), max(s.Max, v)
	}
	s.Count++
	d := v - s.Mean
	s.Mean += d / float64(s.Count)
	s.M2 += d * (v - s.Mean)
	return true
}

// Merge adds o into s. Both must have histograms over the same edges (or
// none).
func (s *Summary) Merge(o *Summary) {
	s.NonFinite += o.NonFinite
	if o.Count > 0 {
		if s.Count == 0 {
			s.Min, s.Max = o.Min, o.Max
		} else {
			s.Min, s.Max = min(s.Min, o.Min), max(s.Max, o.Max)
		}
		n := s.Count + o.Count
		d := o.Mean - s.Mean
		s.M2 += o.M2 + d*d*float64(s.Count)*float64(o.Count)/float64(n)
		s.Mean += d * float64(o.Count) / float64(n)
		s.Count = n
	}
	if len(o.Hist) > 0 {
		if len(s.Hist) < len(o.Hist) {
			s.Hist = append(s.Hist, make([]int64, len(o.Hist)-len(s.Hist))...)
		}
		for i, c := range o.Hist {
			s.Hist[i] += c
		}
	}
}

// Std is the population standard deviation.
func (s *Summary) Std() float64 {
	if s.Count == 0 {
		return 0
	}
	return math.Sqrt(max(s.M2, 0) / float64(s.Count))
}

// Bin is the histogram bin of v over edges: 0 is below edges[0] (underflow),
// i is [edges[i-1], edges[i]), and len(edges) is at or above the last edge
// (overflow).
func Bin(edges []float64, v float64) int {
	if len(edges) > 16 {
		return sort.Search(len(edges), func(i int) bool { return edges[i] > v })
	}
	i := 0
	for i < len(edges) && edges[i] <= v {
		i++
	}
	return i
}

// Edges freezes bin edges from a sample: its quantiles at 0, 1/bins, …, 1
// (nearest rank), with repeats removed, so that the sample falls into bins of
// about equal mass and discrete values (labels, flags) get a bin each. The
// sample is sorted in place.
func Edges(sample []float64, bins int) []float64 {
	if len(sample) == 0 {
		return nil
	}
	slices.Sort(sample)
	edges := make([]float64, 0, bins+1)
	n := len(sample)
	for i := 0; i <= bins; i++ {
		v := sample[i*(n-1)/bins]
		if len(edges) == 0 || v != edges[len(edges)-1] {
			edges = append(edges, v)
		}
	}
	return edges
}

// psiFloor stands in for a bin's share when the bin is empty, so that PSI
// stays finite (the usual convention; 1e-4 is a bin that holds one value in
// ten thousand).
const psiFloor = 1e-4

// PSI is the population stability index of actual against expected, two
// count vectors over the same bins: Σ (a−e)·ln(a/e) over the bins' shares,
// an empty bin's share taken as psiFloor. NaN when either is empty.
// Reading: below 0.1 no real shift, 0.1 to 0.25 a moderate one, above 0.25
// a major one.
func PSI(actual, expected []int64) float64 {
	var na, ne int64
	for _, c := range actual {
		na += c
	}
	for _, c := range expected {
		ne += c
	}
	if na == 0 || ne == 0 {
		return math.NaN()
	}
	psi := 0.0
	for i := range max(len(actual), len(expected)) {
		a, e := psiFloor, psiFloor
		if i < len(actual) && actual[i] > 0 {
			a = float64(actual[i]) / float64(na)
		}
		if i < len(expected) && expected[i] > 0 {
			e = float64(expected[i]) / float64(ne)
		}
		psi += (a - e) * math.Log(a/e)
	}
	return psi
}

// classPSI is PSI over class counts: the bins are the union of the classes.
func classPSI(actual, expected map[string]int64) float64 {
	keys := make([]string, 0, len(actual)+len(expected))
	for k := range actual {
		keys = append(keys, k)
	}
	for k := range expected {
		if _, ok := actual[k]; !ok {
			keys = append(keys, k)
		}
	}
	a, e := make([]int64, len(keys)), make([]int64, len(keys))
	for i, k := range keys {
		a[i], e[i] = actual[k], expected[k]
	}
	return PSI(a, e)
}

// otherClass collects the classes past MaxClasses.
const otherClass = "other"

func classKey(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
