package trace

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
)

// Kind is an app's arrival pattern in a synthetic trace.
type Kind string

// The kinds of the poisson-rare mix (PoissonRareMix).
const (
	Timer   Kind = "timer"   // a fixed or jittered period
	Poisson Kind = "poisson" // steady random traffic, 10⁻² to 10² per minute
	OnOff   Kind = "onoff"   // bursts of traffic between long silences
	Rare    Kind = "rare"    // random, at most once an hour on average
)

// Share is the share of apps of one kind in a synthetic trace.
type Share struct {
	Kind  Kind
	Share float64
}

// PoissonRareMix is ebb's first synthetic mix, kept as a stress case
// ("poisson-rare"): its shares land near the paper's two anchor numbers
// (45% of apps invoked at most once an hour, 81% at most once a minute;
// Stats measures them), but every app that is neither a timer nor on/off
// is Poisson, memoryless, so only 15% of apps have a CV of inter-arrival
// times above 1 where the paper measures 40% (Figure 6), and a third of
// the apps are rare and Poisson, which no policy that learns from the past
// can predict. Synthesize follows the paper's distributions instead.
var PoissonRareMix = []Share{
	{Timer, 0.25},
	{Poisson, 0.28},
	{OnOff, 0.15},
	{Rare, 0.32},
}

// timerPeriods are timer periods in minutes and their weights: cron
// schedules cluster on round numbers, most of them an hour or less.
var timerPeriods = []struct {
	minutes int
	weight  float64
}{
	{1, 0.10}, {5, 0.15}, {10, 0.10}, {15, 0.15}, {30, 0.15}, {60, 0.15},
	{120, 0.05}, {360, 0.05}, {720, 0.05}, {1440, 0.05},
}

// Function is one synthetic function with its per-minute counts over all
// days.
type Function struct {
	AppKey
	Name    string
	Trigger string
	Kind    Kind
	Counts  []uint32
}

// Synthetic is a generated trace.
type Synthetic struct {
	Days      int
	Functions []Function
	Memory    map[AppKey]float64
	Kinds     map[AppKey]Kind
}

// SynthesizeMix generates apps apps over days days of the kinds of
// PoissonRareMix in the given shares (the shares should add up to 1),
// deterministically for a seed:
//   - timer (25%): period from timerPeriods, random phase; 60% fire exactly
//     on the period, 40% jitter each firing by up to ±5% of the period (at
//     least ±1 minute);
//   - poisson (28%): a Poisson process, rate log-uniform over four orders of
//     magnitude, 10⁻² to 10² per minute;
//   - onoff (15%): bursts with exponential lengths (mean 20 minutes) at a
//     rate log-uniform in 0.2–20 per minute, separated by exponential
//     silences (mean 3 hours);
//   - rare (32%): a Poisson process at a rate log-uniform from once a day
//     to once an hour.
//
// Apps other than timers split their traffic over 1–4 functions (54% of
// apps have one function in the paper). Memory per app is log-normal with
// median 170 MB and 90th percentile 400 MB (the paper's Figure 8).
func SynthesizeMix(apps, days int, seed uint64, mix []Share) *Synthetic {
	rng := rand.New(rand.NewPCG(seed, 0x6562625f73696d)) // "ebb_sim"
	minutes := days * MinutesPerDay
	s := &Synthetic{Days: days, Memory: map[AppKey]float64{}, Kinds: map[AppKey]Kind{}}
	for i := range apps {
		key := AppKey{Owner: fmt.Sprintf("owner%04d", i), App: fmt.Sprintf("app%04d", i)}
		kind := pickKind(mix, rng.Float64())
		counts := make([]uint32, minutes)
		trigger := "http"
		switch kind {
		case Timer:
			trigger = "timer"
			period := pickPeriod(rng.Float64())
			jitter := 0
			if rng.Float64() < 0.4 {
				jitter = max(1, period/20)
			}
			for t := rng.IntN(period); t < minutes; t += period {
				at := t
				if jitter > 0 {
					at += rng.IntN(2*jitter+1) - jitter
				}
				if at >= 0 && at < minutes {
					counts[at]++
				}
			}
		case Poisson:
			rate := logUniform(rng, 1e-2, 1e2)
			for t := range counts {
				counts[t] = poisson(rng, rate)
			}
		case OnOff:
			trigger = "queue"
			rate := logUniform(rng, 0.2, 20)
			t := int(rng.ExpFloat64() * 180)
			for t < minutes {
				end := t + 1 + int(rng.ExpFloat64()*20)
				for ; t < end && t < minutes; t++ {
					counts[t] = poisson(rng, rate)
				}
				t += 1 + int(rng.ExpFloat64()*180)
			}
		case Rare:
			rate := logUniform(rng, 1.0/1440, 1.0/60)
			for t := range counts {
				counts[t] = poisson(rng, rate)
			}
		}
		nfn := 1
		if kind != Timer && rng.Float64() >= 0.54 {
			nfn = 2 + rng.IntN(3)
		}
		fns := make([]Function, nfn)
		for j := range fns {
			fns[j] = Function{AppKey: key, Name: fmt.Sprintf("fn%04d_%d", i, j), Trigger: trigger, Kind: kind, Counts: make([]uint32, minutes)}
		}
		for t, c := range counts {
			for range c { // each invocation to one of the app's functions
				fns[rng.IntN(nfn)].Counts[t]++
			}
		}
		s.Functions = append(s.Functions, fns...)
		s.Kinds[key] = kind
		s.Memory[key] = math.Round(170 * math.Exp(0.667*rng.NormFloat64()))
	}
	return s
}

func pickKind(mix []Share, u float64) Kind {
	for _, m := range mix {
		if u < m.Share {
			return m.Kind
		}
		u -= m.Share
	}
	return mix[len(mix)-1].Kind
}

func pickPeriod(u float64) int {
	for _, p := range timerPeriods {
		if u < p.weight {
			return p.minutes
		}
		u -= p.weight
	}
	return timerPeriods[len(timerPeriods)-1].minutes
}

func logUniform(rng *rand.Rand, lo, hi float64) float64 {
	return math.Exp(math.Log(lo) + rng.Float64()*(math.Log(hi)-math.Log(lo)))
}

// poisson draws a Poisson count: Knuth's product method for small means, a
// rounded normal approximation for large ones.
func poisson(rng *rand.Rand, mean float64) uint32 {
	if mean > 30 {
		return uint32(max(0, math.Round(mean+math.Sqrt(mean)*rng.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), uint32(0), rng.Float64()
	for p > l {
		k++
		p *= rng.Float64()
	}
	return k
}

// WriteDay writes day (0-based) in the invocations schema.
func (s *Synthetic) WriteDay(w io.Writer, day int) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("HashOwner,HashApp,HashFunction,Trigger")
	for m := 1; m <= MinutesPerDay; m++ {
		bw.WriteByte(',')
		bw.WriteString(strconv.Itoa(m))
	}
	bw.WriteByte('\n')
	var buf []byte
	for _, f := range s.Functions {
		buf = append(buf[:0], f.Owner...)
		buf = append(buf, ',')
		buf = append(buf, f.App...)
		buf = append(buf, ',')
		buf = append(buf, f.Name...)
		buf = append(buf, ',')
		buf = append(buf, f.Trigger...)
		for _, c := range f.Counts[day*MinutesPerDay : (day+1)*MinutesPerDay] {
			buf = append(buf, ',')
			buf = strconv.AppendUint(buf, uint64(c), 10)
		}
		buf = append(buf, '\n')
		bw.Write(buf)
	}
	return bw.Flush()
}

// WriteMemory writes the memory file (HashOwner,HashApp,AverageAllocatedMb).
func (s *Synthetic) WriteMemory(w io.Writer) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("HashOwner,HashApp,AverageAllocatedMb\n")
	seen := map[AppKey]bool{}
	for _, f := range s.Functions {
		if seen[f.AppKey] {
			continue
		}
		seen[f.AppKey] = true
		fmt.Fprintf(bw, "%s,%s,%s\n", f.Owner, f.App, strconv.FormatFloat(s.Memory[f.AppKey], 'f', -1, 64))
	}
	return bw.Flush()
}

// MixStats measures a synthetic mix against the paper's numbers.
type MixStats struct {
	// PerHour and PerMinute are the shares of apps invoked on average at
	// most once an hour and at most once a minute (the paper: 0.45, 0.81).
	PerHour, PerMinute float64
	// CVApps is the number of apps invoked at most once a minute on
	// average with at least two inter-arrival times; CVAbove1 and
	// CVPeriodic are the shares of them whose inter-arrival times have a
	// CV above 1 and at most 0.05 (Figure 6, over all apps: 0.43 and
	// about 0.24). Inter-arrival times are taken between the minutes with
	// calls, as a keep-alive policy sees them; busier apps are left out
	// because at that resolution they look periodic.
	CVApps               int
	CVAbove1, CVPeriodic float64
}

// Stats measures the mix.
func (s *Synthetic) Stats() MixStats {
	per := map[AppKey][]uint64{}
	for _, f := range s.Functions {
		c := per[f.AppKey]
		if c == nil {
			c = make([]uint64, len(f.Counts))
			per[f.AppKey] = c
		}
		for t, n := range f.Counts {
			c[t] += uint64(n)
		}
	}
	minutes := float64(s.Days * MinutesPerDay)
	var st MixStats
	var h, m, above, periodic int
	for k := range s.Kinds {
		var total uint64
		var n, sum, sumSq float64
		last := -1
		for t, c := range per[k] {
			if c == 0 {
				continue
			}
			total += c
			if last >= 0 {
				d := float64(t - last)
				n, sum, sumSq = n+1, sum+d, sumSq+d*d
			}
			last = t
		}
		rate := float64(total) / minutes
		if rate <= 1.0/60 {
			h++
		}
		if rate <= 1 {
			m++
		}
		if n >= 2 && rate <= 1 {
			st.CVApps++
			mean := sum / n
			cv := 0.0
			if mean > 0 {
				cv = math.Sqrt(max(0, sumSq/n-mean*mean)) / mean
			}
			if cv > 1 {
				above++
			}
			if cv <= cvPeriodic {
				periodic++
			}
		}
	}
	napps := float64(len(s.Kinds))
	st.PerHour, st.PerMinute = float64(h)/napps, float64(m)/napps
	if st.CVApps > 0 {
		st.CVAbove1, st.CVPeriodic = float64(above)/float64(st.CVApps), float64(periodic)/float64(st.CVApps)
	}
	return st
}
