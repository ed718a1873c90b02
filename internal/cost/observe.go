package cost

import (
	"errors"
	"time"

	"github.com/ebb-run/ebb/internal/usage"
)

// Observation is the measured traffic an estimate was made from.
type Observation struct {
	Since       time.Time `json:"since"`
	Until       time.Time `json:"until"`
	Invocations uint64    `json:"invocations"`
	// Scale is the factor from the period to a 30-day month.
	Scale float64 `json:"scale"`
}

// ToDate is what the observed period itself cost, each way: the monthly
// prices scaled back to the period.
type ToDate struct {
	LambdaUSD    float64  `json:"lambda_usd"`
	CloudRunUSD  float64  `json:"cloud_run_usd"`
	DedicatedUSD float64  `json:"dedicated_usd"`
	EbbUSD       *float64 `json:"ebb_usd,omitempty"`
}

// FromUsage makes a month's workload from usage over [since, until): the
// period's traffic scaled to 30 days, several functions' as one workload
// (their peaks added up). Memory is what the invocations were billed at,
// concurrency 1: a caller that knows the function's spec sets both. The
// needs it fills are the measured ones: latency, cold starts, and the
// traffic's shape when the reports carry series.
func FromUsage(reps []usage.Report, since, until time.Time) (Workload, Needs, Observation, error) {
	var w Workload
	var n Needs
	period := until.Sub(since)
	if period <= 0 {
		return w, n, Observation{}, errors.New("observe usage: empty period")
	}
	ob := Observation{Since: since, Until: until, Scale: float64(DaysPerMonth*24*time.Hour) / float64(period)}
	var billedMS, mibMS, idle, busy float64
	var cold uint64
	var counts []float64
	for _, r := range reps {
		ob.Invocations += r.Invocations
		cold += r.ColdStarts
		billedMS += float64(r.BilledMS)
		mibMS += r.GBSeconds * 1024 * 1000
		idle += r.IdleMiBs
		busy += r.BusySeconds
		w.PeakConcurrency += r.Peak
		n.P99MS = max(n.P99MS, r.Duration.P99)
		n.ColdStartP99MS = max(n.ColdStartP99MS, r.ColdStart.P99)
		for i, p := range r.Series {
			if i >= len(counts) {
				counts = append(counts, 0)
			}
			counts[i] += float64(p.Invocations)
		}
	}
	w.Requests = float64(ob.Invocations) * ob.Scale
	w.BusySeconds, w.IdleMiBSeconds = busy*ob.Scale, idle*ob.Scale
	w.MemoryMB, w.Concurrency = 128, 1
	if ob.Invocations > 0 {
		w.DurationMS = billedMS / float64(ob.Invocations)
		n.ColdShare = float64(cold) / float64(ob.Invocations)
	}
	if billedMS > 0 {
		w.MemoryMB = mibMS / billedMS
	}
	n.Shape = ShapeOf(counts)
	return w, n, ob, nil
}

// SeriesStep is the step to ask usage series at for a shape over period.
func SeriesStep(period time.Duration) time.Duration {
	if period < 24*time.Hour {
		return 5 * time.Minute
	}
	return time.Hour
}

// Back scales e's monthly prices back to the observation's period.
func Back(e *Estimate, ob Observation) ToDate {
	f := 1 / ob.Scale
	t := ToDate{LambdaUSD: cents(e.Lambda.MonthlyUSD * f), CloudRunUSD: cents(e.CloudRun.MonthlyUSD * f),
		DedicatedUSD: cents(e.Dedicated.MonthlyUSD * f)}
	if e.Ebb != nil {
		v := cents(e.Ebb.MonthlyUSD * f)
		t.EbbUSD = &v
	}
	return t
}

// Report is an estimate of observed (or described) traffic with the
// recommendation: what ebb cost --json prints and GET
// /v1/functions/{name}/cost answers.
type Report struct {
	*Estimate
	Function       string         `json:"function,omitempty"`
	Observed       *Observation   `json:"observed,omitempty"`
	ToDate         *ToDate        `json:"to_date,omitempty"`
	Needs          Needs          `json:"needs"`
	Recommendation Recommendation `json:"recommendation"`
}
