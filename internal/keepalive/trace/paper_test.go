package trace

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestGammaRenewal: the gamma draws have the asked mean and CV (the
// paper mix's burstiness rests on it), and a CV at most cvPeriodic is an
// exact period.
func TestGammaRenewal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, cv := range []float64{0.3, 1, 2, 4} {
		shape := 1 / (cv * cv)
		var n, sum, sumSq float64
		for range 400_000 {
			x := gamma(rng, shape) / shape // mean 1
			n, sum, sumSq = n+1, sum+x, sumSq+x*x
		}
		mean := sum / n
		got := math.Sqrt(sumSq/n-mean*mean) / mean
		if math.Abs(mean-1) > 0.03*cv || math.Abs(got-cv) > 0.05*cv {
			t.Errorf("gamma with CV %v: mean %.3f, CV %.3f", cv, mean, got)
		}
	}
	counts := make([]uint32, 100)
	renewal(rng, counts, 10, 0)
	calls, last := 0, -1
	for m, c := range counts {
		if c == 0 {
			continue
		}
		if c != 1 || last >= 0 && m-last != 10 {
			t.Fatalf("period 10: calls at %v", counts)
		}
		calls, last = calls+1, m
	}
	if calls != 10 {
		t.Fatalf("period 10 over 100 minutes: %d calls, want 10", calls)
	}
}

// TestPaperDistributions: the inverted CDFs give the figures' shares: the
// paper's takeaway that 40% of apps have a CV above 1 (Figure 6: 65% of
// apps without timers, 6.5% of timer-only apps), and the two anchors of
// Figure 5(a) once timers are mixed in.
func TestPaperDistributions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 200_000
	var noTimerAbove1, timerAbove1, hour, minute int
	for range n {
		if fromCDF(noTimerCV, rng.Float64()) > 1 {
			noTimerAbove1++
		}
		if fromCDF(onlyTimerCV, rng.Float64()) > 1 {
			timerAbove1++
		}
		// an app's daily invocations, as Synthesize draws them
		perDay := 0.0
		u := rng.Float64()
		if u < shareTimerOnly+shareTimerOther {
			perDay += MinutesPerDay / float64(pickPeriod(rng.Float64()))
		}
		if u >= shareTimerOnly {
			perDay += logFromCDF(otherRateCDF, rng.Float64())
		}
		if perDay <= 24*1.000001 {
			hour++
		}
		if perDay <= MinutesPerDay*1.000001 {
			minute++
		}
	}
	share := func(k int) float64 { return float64(k) / n }
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"no-timer apps with CV > 1", share(noTimerAbove1), 0.655},
		{"timer-only apps with CV > 1", share(timerAbove1), 0.065},
		{"apps at most once an hour", share(hour), 0.45},
		{"apps at most once a minute", share(minute), 0.81},
	} {
		if math.Abs(c.got-c.want) > 0.01 {
			t.Errorf("%s: %.3f, want %.3f", c.what, c.got, c.want)
		}
	}
}

func TestSynthesizeNamed(t *testing.T) {
	s, err := SynthesizeNamed(MixPoissonRare, 30, 1, 5)
	if err != nil || len(s.Kinds) != 30 {
		t.Fatalf("poisson-rare: %v", err)
	}
	for _, k := range s.Kinds {
		if k == Other || k == TimerOnly || k == TimerOther {
			t.Fatalf("poisson-rare made a paper-mix app (%s)", k)
		}
	}
	if _, err := SynthesizeNamed("azure", 30, 1, 5); err == nil {
		t.Fatal("an unknown mix was accepted")
	}
}
