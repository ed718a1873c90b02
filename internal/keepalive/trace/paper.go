package trace

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// The paper mix follows the distributions that Shahrad et al. ("Serverless
// in the Wild", USENIX ATC'20, §3) measured on Azure Functions, read off
// their figures as reproduced for the public trace by the dataset's own
// notebook (AzurePublicDataset, analysis/AzureFunctionsDataset2019-Trace_Analysis.md):
//
//   - triggers (§3, Figure 3): 13% of apps have only timer triggers and
//     29% at least one timer, so 16% combine timers with other triggers
//     and 71% have no timer;
//   - rates (§3, Figure 5(a)): the average daily invocations of apps,
//     including the two numbers the text states (45% of apps at most once
//     an hour, 81% at most once a minute);
//   - burstiness (§3, Figure 6): the coefficient of variation (CV) of
//     each app's inter-arrival times, separately for apps with only timers
//     and apps without timers (the paper's text: 40% of apps have a CV
//     above 1; read off the figure, 43% of all apps and 65% of those
//     without timers).
//
// Each app's non-timer traffic is a renewal process whose inter-arrival
// times are gamma distributed with the app's mean and CV (shape 1/CV²): a
// CV of 1 is Poisson, below 1 more regular, above 1 bursty (calls come in
// clusters separated by long silences). A CV of at most cvPeriodic is a
// fixed period. Assumptions, as the paper gives no joint distribution:
// an app's rate and its CV are independent; a gamma renewal process is the
// shape behind a CV; timer-only apps with a CV above 0 are timers whose
// firings drift (gamma around the period) rather than several timers.

// cvPoint is one point of a CDF read off a figure: the share of apps at or
// below X.
type cvPoint struct{ X, P float64 }

// otherRateCDF is the average daily invocations of an app's non-timer
// traffic. Figure 5(a) gives the CDF over all apps (ATC curve: 0.063 at
// 0.2/day, 0.124 at 0.5/day, 0.21 at 1/day, 0.45 at 24/day, 0.67 at
// 288/day, 0.81 at 1440/day, 0.94 at 14,400/day, 0.978 at 86,400/day);
// timers contribute to it, so these points are that curve with the
// timer-only apps' periods (timerPeriods) and the timers of timer+other
// apps taken out (solved numerically, so that the mix as a whole lands on
// the figure; Stats measures it). Between points rates are log-uniform;
// the figure starts at one call in two weeks and is cut at 10 per second
// (864,000 a day), above which fewer than 2.2% of apps lie.
var otherRateCDF = []cvPoint{
	{1.0 / 14, 0}, {0.2, 0.089}, {0.5, 0.175}, {1, 0.287}, {24, 0.546},
	{288, 0.667}, {1440, 0.797}, {14400, 0.931}, {86400, 0.975}, {864000, 1},
}

// noTimerCV is Figure 6's "No Timers" curve (midpoint of the ATC and
// released curves): 12% of apps at CV 0, 34.5% at most 1, 55% at most 2,
// 91% at most 10. The figure stops at 10; the 9% beyond are drawn from 10
// to 20 (assumption).
var noTimerCV = []cvPoint{
	{0, 0.12}, {0.05, 0.13}, {0.1, 0.15}, {0.25, 0.19}, {0.5, 0.24},
	{0.75, 0.295}, {1, 0.345}, {1.25, 0.415}, {1.5, 0.465}, {2, 0.55},
	{3, 0.68}, {4, 0.77}, {6, 0.85}, {8, 0.89}, {10, 0.91}, {20, 1},
}

// onlyTimerCV is Figure 6's "Only Timers" curve: half the timer-only apps
// are exactly periodic, 93.5% have a CV of at most 1.
var onlyTimerCV = []cvPoint{
	{0, 0.51}, {0.05, 0.575}, {0.1, 0.65}, {0.25, 0.735}, {0.5, 0.845},
	{0.75, 0.89}, {1, 0.935}, {1.25, 0.95}, {1.5, 0.965}, {2, 0.98},
	{3, 0.99}, {6, 1},
}

// Trigger groups of the paper mix (Figure 3(b)).
const (
	shareTimerOnly  = 0.13 // only timer triggers
	shareTimerOther = 0.16 // 29% with a timer, less the 13% with only timers
)

// cvPeriodic: a CV at or below it is a fixed period (Figure 6's step at 0
// reaches to about 0.05 on either curve).
const cvPeriodic = 0.05

// Kinds of the paper mix.
const (
	TimerOnly  Kind = "timer-only"  // only timer triggers
	TimerOther Kind = "timer+other" // a timer and traffic of other triggers
	Other      Kind = "other"       // no timer (HTTP, queue, event, …)
)

// MixPaper and MixPoissonRare name the synthetic mixes (SynthesizeNamed).
const (
	MixPaper       = "paper"
	MixPoissonRare = "poisson-rare"
)

// SynthesizeNamed synthesizes the named mix: "paper" (Synthesize) or
// "poisson-rare" (the earlier mix, PoissonRareMix, kept as a stress case).
func SynthesizeNamed(mix string, apps, days int, seed uint64) (*Synthetic, error) {
	switch mix {
	case MixPaper:
		return Synthesize(apps, days, seed), nil
	case MixPoissonRare:
		return SynthesizeMix(apps, days, seed, PoissonRareMix), nil
	}
	return nil, fmt.Errorf("unknown mix %q (want %s or %s)", mix, MixPaper, MixPoissonRare)
}

// Synthesize generates the paper mix (see the comment at the top of this
// file) for apps apps over days days, deterministically for a seed:
//   - 13% timer-only apps: one timer, its period from timerPeriods, its CV
//     from Figure 6's "Only Timers" curve;
//   - 16% timer+other apps: a timer as above (exact) plus other traffic as
//     below, on 1–3 further functions;
//   - 71% other apps: traffic with a rate from otherRateCDF and a CV from
//     Figure 6's "No Timers" curve, over 1–4 functions (54% of apps have
//     one function, Figure 1).
//
// Memory per app is log-normal with median 170 MB and 90th percentile
// 400 MB (the paper's Figure 8).
func Synthesize(apps, days int, seed uint64) *Synthetic {
	rng := rand.New(rand.NewPCG(seed, 0x70617065725f6d78)) // "paper_mx"
	minutes := days * MinutesPerDay
	s := &Synthetic{Days: days, Memory: map[AppKey]float64{}, Kinds: map[AppKey]Kind{}}
	for i := range apps {
		key := AppKey{Owner: fmt.Sprintf("owner%04d", i), App: fmt.Sprintf("app%04d", i)}
		var fns []Function
		newFn := func(trigger string, kind Kind) *Function {
			fns = append(fns, Function{AppKey: key, Name: fmt.Sprintf("fn%04d_%d", i, len(fns)), Trigger: trigger, Kind: kind, Counts: make([]uint32, minutes)})
			return &fns[len(fns)-1]
		}
		kind := Other
		switch u := rng.Float64(); {
		case u < shareTimerOnly:
			kind = TimerOnly
		case u < shareTimerOnly+shareTimerOther:
			kind = TimerOther
		}
		if kind != Other {
			period := float64(pickPeriod(rng.Float64()))
			cv := 0.0
			if kind == TimerOnly {
				cv = fromCDF(onlyTimerCV, rng.Float64())
			}
			renewal(rng, newFn("timer", kind).Counts, period, cv)
		}
		if kind != TimerOnly {
			perDay := logFromCDF(otherRateCDF, rng.Float64())
			cv := fromCDF(noTimerCV, rng.Float64())
			counts := make([]uint32, minutes)
			renewal(rng, counts, MinutesPerDay/perDay, cv)
			n := 1
			if kind == TimerOther {
				n = 1 + rng.IntN(3)
			} else if rng.Float64() >= 0.54 {
				n = 2 + rng.IntN(3)
			}
			first := len(fns)
			for range n {
				newFn("http", kind)
			}
			for t, c := range counts {
				for range c { // each invocation to one of the app's other functions
					fns[first+rng.IntN(n)].Counts[t]++
				}
			}
		}
		s.Functions = append(s.Functions, fns...)
		s.Kinds[key] = kind
		s.Memory[key] = math.Round(170 * math.Exp(0.667*rng.NormFloat64()))
	}
	return s
}

// renewal adds to counts the arrivals of a renewal process with the given
// mean inter-arrival time (minutes) and CV: a fixed period (random phase)
// at CV ≤ cvPeriodic, gamma inter-arrival times otherwise. The first
// arrival is a random fraction of a drawn inter-arrival time into the
// trace, so the process is already running when the trace starts.
func renewal(rng *rand.Rand, counts []uint32, mean, cv float64) {
	end := float64(len(counts))
	next := func() float64 { return mean }
	if cv > cvPeriodic {
		shape := 1 / (cv * cv)
		next = func() float64 { return gamma(rng, shape) * mean / shape }
	}
	for t := rng.Float64() * next(); t < end; t += next() {
		counts[int(t)]++
	}
}

// gamma draws from a gamma distribution with the given shape and scale 1
// (Marsaglia and Tsang; for a shape below 1, Gamma(shape+1)·U^(1/shape)).
func gamma(rng *rand.Rand, shape float64) float64 {
	if shape < 1 {
		return gamma(rng, shape+1) * math.Pow(rng.Float64(), 1/shape)
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if u < 1-0.0331*x*x*x*x || math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}

// fromCDF inverts a piecewise linear CDF at u; below the first point's
// share it returns the first X (a step there).
func fromCDF(cdf []cvPoint, u float64) float64 {
	if u <= cdf[0].P {
		return cdf[0].X
	}
	for i := 1; i < len(cdf); i++ {
		if a, b := cdf[i-1], cdf[i]; u <= b.P && b.P > a.P {
			return a.X + (u-a.P)/(b.P-a.P)*(b.X-a.X)
		}
	}
	return cdf[len(cdf)-1].X
}

// logFromCDF inverts a CDF that is linear in log X between its points.
func logFromCDF(cdf []cvPoint, u float64) float64 {
	for i := 1; i < len(cdf); i++ {
		if a, b := cdf[i-1], cdf[i]; u <= b.P && b.P > a.P {
			f := (u - a.P) / (b.P - a.P)
			return math.Exp(math.Log(a.X) + f*(math.Log(b.X)-math.Log(a.X)))
		}
	}
	return cdf[len(cdf)-1].X
}
