// Package sim replays an invocation trace through keep-alive policies in
// simulated time, at the trace's minute resolution as in Shahrad et al.
// (ATC'20): an app is warm in a minute when its policy's last decision has
// it warm at the start of that minute; of the invocations in a minute only
// the first can be cold; a minute in which an app is warm and not invoked
// is wasted memory time, weighted by the app's memory.
package sim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/ebb-run/ebb/internal/keepalive"
	"github.com/ebb-run/ebb/internal/keepalive/trace"
)

// Baseline is the policy every report is normalised to.
const Baseline = "fixed:10m"

// epoch is minute 0 of a trace in simulated time.
var epoch = time.Date(2019, 7, 15, 0, 0, 0, 0, time.UTC)

// Percentiles of the per-app cold-start percentage.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P75 float64 `json:"p75"`
	P99 float64 `json:"p99"`
}

// Result is one policy's outcome over a trace.
type Result struct {
	Policy                string      `json:"policy"`
	Apps                  int         `json:"apps"`
	Invocations           int64       `json:"invocations"`
	ColdStarts            int64       `json:"cold_starts"`
	ColdStartPct          Percentiles `json:"cold_start_pct"`
	WastedMemoryMBMinutes float64     `json:"wasted_memory_mb_minutes"`
	Prewarms              int64       `json:"prewarms"`
	// VsBaseline is this policy over fixed:10m: the 75th-percentile app's
	// cold-start % and the wasted memory time (nil when fixed:10m had
	// none, so no ratio exists).
	VsBaseline struct {
		ColdStartPctP75       *float64 `json:"cold_start_pct_p75"`
		WastedMemoryMBMinutes *float64 `json:"wasted_memory_mb_minutes"`
	} `json:"vs_fixed_10m"`
	// PolicyNsPerInvocation is the time spent in the policy's Observe and
	// Decide calls over the trace's invocations (one pair per minute with
	// invocations), measured in this process.
	PolicyNsPerInvocation float64 `json:"policy_ns_per_invocation"`
}

// Report is the outcome of every policy over one trace.
type Report struct {
	Days       int      `json:"days"`
	Minutes    int      `json:"minutes"`
	MemoryUnit string   `json:"memory_unit"` // "MB", or "app" (1 per app: no memory file)
	Results    []Result `json:"policies"`
}

// Run replays apps (a trace of `minutes` minutes) through each policy and
// through fixed:10m if it is not among them (it is listed first then).
// Memory gives each app's MB; nil counts every app as 1 unit, and an app
// missing from a non-nil map counts as the map's median.
func Run(apps []trace.App, minutes, days int, memory map[trace.AppKey]float64, policies []keepalive.Policy) Report {
	if !slices.ContainsFunc(policies, func(p keepalive.Policy) bool { return p.Name() == Baseline }) {
		policies = append([]keepalive.Policy{keepalive.Fixed(10 * time.Minute)}, policies...)
	}
	rep := Report{Days: days, Minutes: minutes, MemoryUnit: "MB"}
	mem := make([]float64, len(apps))
	if memory == nil {
		rep.MemoryUnit = "app"
		for i := range mem {
			mem[i] = 1
		}
	} else {
		med := median(memory)
		for i, a := range apps {
			mb, ok := memory[a.AppKey]
			if !ok {
				mb = med
			}
			mem[i] = mb
		}
	}
	for _, p := range policies {
		rep.Results = append(rep.Results, replay(apps, minutes, mem, memory != nil, p))
	}
	var base *Result
	for i := range rep.Results {
		if rep.Results[i].Policy == Baseline {
			base = &rep.Results[i]
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		r.VsBaseline.ColdStartPctP75 = ratio(r.ColdStartPct.P75, base.ColdStartPct.P75)
		r.VsBaseline.WastedMemoryMBMinutes = ratio(r.WastedMemoryMBMinutes, base.WastedMemoryMBMinutes)
	}
	return rep
}

func ratio(a, b float64) *float64 {
	if b == 0 {
		return nil
	}
	r := a / b
	return &r
}

func median(m map[trace.AppKey]float64) float64 {
	if len(m) == 0 {
		return 1
	}
	v := make([]float64, 0, len(m))
	for _, x := range m {
		v = append(v, x)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// at is minute m in simulated time.
func at(m int) time.Time { return epoch.Add(time.Duration(m) * time.Minute) }

// window is the minutes [from, to] in which a decision has the app warm at
// the start of the minute.
func window(d keepalive.Decision, last int) (from, to int) {
	if d.Last.IsZero() {
		return 1, 0
	}
	from = last + 1
	if !d.PrewarmAt.IsZero() {
		// ceil: warm at the start of the first minute at or after PrewarmAt
		from = max(from, int((d.PrewarmAt.Sub(epoch)+time.Minute-1)/time.Minute))
	}
	return from, int(d.UnloadAt.Sub(epoch) / time.Minute)
}

// AppResult is one app's outcome under a policy.
type AppResult struct {
	Cold      int64         // minutes whose first invocation found the app cold
	Idle      int64         // minutes warm and not invoked
	Prewarms  int64         // pre-warms that happened (before the next arrival or the end)
	Decisions int64         // Observe+Decide pairs
	Spent     time.Duration // in Observe and Decide
}

// ReplayApp replays one app through a fresh history of p.
func ReplayApp(app trace.App, minutes int, p keepalive.Policy) AppResult {
	return replayApp(app, minutes, p.New())
}

func replayApp(app trace.App, minutes int, h keepalive.History) AppResult {
	var r AppResult
	c, _ := h.(keepalive.Counted)
	last, from, to := -1, 1, 0
	for _, a := range app.Arrivals {
		m := a.Minute
		if last >= 0 {
			// warm minutes strictly between the two arrivals are waste
			r.Idle += int64(max(0, min(to, m-1)-max(from, last+1)+1))
			if from > last+1 && from <= to && from <= m {
				r.Prewarms++
			}
		}
		if !(from <= m && m <= to) {
			r.Cold++
		}
		start := time.Now()
		if c != nil {
			c.ObserveN(at(m), a.Count)
		} else {
			h.Observe(at(m))
		}
		dec := h.Decide(at(m))
		r.Spent += time.Since(start)
		r.Decisions++
		last = m
		from, to = window(dec, last)
	}
	if last >= 0 {
		r.Idle += int64(max(0, min(to, minutes-1)-max(from, last+1)+1))
		if from > last+1 && from <= to && from < minutes {
			r.Prewarms++
		}
	}
	return r
}

func replay(apps []trace.App, minutes int, mem []float64, memKnown bool, p keepalive.Policy) Result {
	res := Result{Policy: p.Name(), Apps: len(apps)}
	pct := make([]float64, 0, len(apps))
	var spent time.Duration
	var wasted float64
	for i, app := range apps {
		// A policy that weighs memory gets the app's only from a memory
		// file (the unit weight of 1 says nothing of the app).
		mb := 0.0
		if memKnown {
			mb = mem[i]
		}
		r := replayApp(app, minutes, keepalive.NewHistory(p, mb))
		spent += r.Spent
		res.Invocations += app.Invocations
		res.ColdStarts += r.Cold
		res.Prewarms += r.Prewarms
		wasted += float64(r.Idle) * mem[i]
		if app.Invocations > 0 {
			pct = append(pct, 100*float64(r.Cold)/float64(app.Invocations))
		}
	}
	res.WastedMemoryMBMinutes = math.Round(wasted*100) / 100
	slices.Sort(pct)
	res.ColdStartPct = Percentiles{P50: rank(pct, 50), P75: rank(pct, 75), P99: rank(pct, 99)}
	if res.Invocations > 0 {
		res.PolicyNsPerInvocation = float64(spent.Nanoseconds()) / float64(res.Invocations)
	}
	return res
}

// rank is the nearest-rank percentile of sorted values.
func rank(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return math.Round(sorted[max(0, i)]*1000) / 1000
}

// Text writes the report as a table.
func (r Report) Text() string {
	unit := "MB·minutes"
	if r.MemoryUnit == "app" {
		unit = "app·minutes (no memory file: every app weighs 1)"
	}
	s := fmt.Sprintf("%d day(s), %d minutes; wasted memory in %s\n", r.Days, r.Minutes, unit)
	s += fmt.Sprintf("%-24s %6s %12s %8s %8s %8s %16s %10s %10s %8s\n", "policy", "apps", "invocations", "cold p50", "cold p75", "cold p99", "wasted memory", "p75 vs 10m", "waste vs 10m", "ns/inv")
	f := func(p *float64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%.3f", *p)
	}
	for _, x := range r.Results {
		s += fmt.Sprintf("%-24s %6d %12d %7.2f%% %7.2f%% %7.2f%% %16.0f %10s %10s %8.1f\n", x.Policy, x.Apps, x.Invocations,
			x.ColdStartPct.P50, x.ColdStartPct.P75, x.ColdStartPct.P99, x.WastedMemoryMBMinutes,
			f(x.VsBaseline.ColdStartPctP75), f(x.VsBaseline.WastedMemoryMBMinutes), x.PolicyNsPerInvocation)
	}
	return s
}
