package monitor

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestSummaryMoments(t *testing.T) {
	var s Summary
	for _, v := range []float64{2, 4, 4, 4, 5, 5, 7, 9} {
		s.Add(v)
	}
	if s.Count != 8 || s.Mean != 5 || s.Std() != 2 || s.Min != 2 || s.Max != 9 {
		t.Fatalf("summary = %+v std %v; want count 8, mean 5, std 2, min 2, max 9", s, s.Std())
	}
	s.Add(math.NaN())
	s.Add(math.Inf(-1))
	if s.Count != 8 || s.NonFinite != 2 || s.Min != 2 {
		t.Fatalf("non-finite values changed the summary: %+v", s)
	}
}

func TestSummaryMergeEqualsSequential(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var all, a, b Summary
	for i := range 1000 {
		v := r.NormFloat64()*3 + 10
		all.Add(v)
		if i%3 == 0 {
			a.Add(v)
		} else {
			b.Add(v)
		}
	}
	var m Summary
	m.Merge(&a)
	m.Merge(&b)
	if m.Count != all.Count || !near(m.Mean, all.Mean, 1e-12) || !near(m.Std(), all.Std(), 1e-12) || m.Min != all.Min || m.Max != all.Max {
		t.Fatalf("merged %+v (std %v) != sequential %+v (std %v)", m, m.Std(), all, all.Std())
	}
}

func TestEdgesAndBins(t *testing.T) {
	sample := []float64{9, 1, 5, 3, 7, 2, 4, 6, 8, 10, 0}
	e := Edges(sample, 10)
	if want := []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; !slices.Equal(e, want) {
		t.Fatalf("edges = %v, want %v", e, want)
	}
	for _, c := range []struct {
		v   float64
		bin int
	}{{-1, 0}, {0, 1}, {0.5, 1}, {1, 2}, {9.99, 10}, {10, 11}, {1e9, 11}} {
		if got := Bin(e, c.v); got != c.bin {
			t.Errorf("Bin(%v) = %d, want %d", c.v, got, c.bin)
		}
	}
	// Discrete values get a bin each: labels 0 and 1.
	if e := Edges([]float64{1, 0, 0, 1, 1, 0, 0, 0}, 10); !slices.Equal(e, []float64{0, 1}) {
		t.Fatalf("edges of labels = %v, want [0 1]", e)
	}
}

func TestPSIValues(t *testing.T) {
	if got := PSI([]int64{50, 50}, []int64{90, 10}); !near(got, 0.8788898309344878, 1e-12) {
		t.Errorf("PSI = %v, want 0.87889", got)
	}
	// An empty bin counts as psiFloor.
	if got := PSI([]int64{10, 0}, []int64{5, 5}); !near(got, 4.60431846666895, 1e-12) {
		t.Errorf("PSI with an empty bin = %v, want 4.60432", got)
	}
	if got := PSI([]int64{3, 7, 0}, []int64{30, 70, 0}); got != 0 {
		t.Errorf("PSI of equal shares = %v, want 0", got)
	}
	if got := PSI(nil, []int64{1}); !math.IsNaN(got) {
		t.Errorf("PSI against nothing = %v, want NaN", got)
	}
	if got := classPSI(map[string]int64{"a": 50, "b": 50}, map[string]int64{"a": 90, "b": 10}); !near(got, 0.8788898309344878, 1e-12) {
		t.Errorf("class PSI = %v", got)
	}
}

// binned draws n values of dist into the bins of edges.
func binned(edges []float64, n int, dist func() float64) []int64 {
	h := make([]int64, len(edges)+1)
	for range n {
		h[Bin(edges, dist())]++
	}
	return h
}

func TestPSISameDistributionIsSmallShiftIsLarge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	learn := make([]float64, 256)
	for i := range learn {
		learn[i] = r.NormFloat64()
	}
	edges := Edges(learn, 10)
	base := binned(edges, 5000, r.NormFloat64)
	same := binned(edges, 5000, r.NormFloat64)
	shift := binned(edges, 5000, func() float64 { return r.NormFloat64() + 1 })
	if p := PSI(same, base); p > 0.02 {
		t.Errorf("PSI of the same distribution = %v, want about 0", p)
	}
	if p := PSI(shift, base); p < 0.5 {
		t.Errorf("PSI of a one-sigma shift = %v, want well above 0.25", p)
	}
}
