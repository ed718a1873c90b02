package usage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query asks for usage over a time range.
type Query struct {
	// Function is the function asked about; "" is every function.
	Function string
	// Version narrows to one version; 0 is all of them.
	Version int
	// Since and Until bound the range; they are rounded out to whole
	// minutes.
	Since, Until time.Time
	// Step is the width of a series point, a whole number of minutes;
	// zero asks for no series.
	Step time.Duration
}

// MaxPoints bounds a series.
const MaxPoints = 10000

// Percentiles are latency percentiles in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// Totals are usage summed over a range.
type Totals struct {
	Invocations uint64      `json:"invocations"`
	Errors      uint64      `json:"errors"`
	ColdStarts  uint64      `json:"cold_starts"`
	BilledMS    int64       `json:"billed_ms"`
	GBSeconds   float64     `json:"gb_seconds"`
	VCPUSeconds float64     `json:"vcpu_seconds"`
	Duration    Percentiles `json:"duration_ms"`
	// ColdStart is the init time of cold starts.
	ColdStart   Percentiles       `json:"cold_start_ms"`
	Peak        int               `json:"peak_concurrency"`
	BusySeconds float64           `json:"busy_seconds"`
	IdleMiBs    float64           `json:"idle_mib_seconds"`
	Triggers    map[string]uint64 `json:"triggers"`
}

// Point is one step of a series.
type Point struct {
	Time        time.Time `json:"time"`
	Invocations uint64    `json:"invocations"`
	Errors      uint64    `json:"errors"`
	ColdStarts  uint64    `json:"cold_starts"`
	BilledMS    int64     `json:"billed_ms"`
	GBSeconds   float64   `json:"gb_seconds"`
	P50MS       float64   `json:"p50_ms"`
	P95MS       float64   `json:"p95_ms"`
	P99MS       float64   `json:"p99_ms"`
	Peak        int       `json:"peak_concurrency"`
	IdleMiBs    float64   `json:"idle_mib_seconds"`
}

// Report is one function's usage over a range: what GET
// /v1/functions/{name}/usage answers.
type Report struct {
	Function    string    `json:"function"`
	Version     int       `json:"version"`
	Since       time.Time `json:"since"`
	Until       time.Time `json:"until"`
	StepSeconds int       `json:"step_seconds,omitempty"`
	Totals
	Series []Point `json:"series,omitempty"`
}

// acc accumulates buckets into totals and points.
type acc struct {
	total  Bucket
	points []Bucket
}

// Report answers q, one report per function that had usage in the range
// (or the one asked for, even with none), sorted by name.
func (m *Meter) Report(ctx context.Context, q Query) ([]Report, error) {
	if q.Until.IsZero() {
		q.Until = m.cfg.Now()
	}
	from, to := unixMinute(q.Since), unixMinute(q.Until.Add(59*time.Second)) // [from, to)
	if to <= from {
		to = from + 1
	}
	var stepMin int64
	if q.Step > 0 {
		stepMin = int64(q.Step / time.Minute)
		if stepMin < 1 || q.Step%time.Minute != 0 {
			return nil, fmt.Errorf("report usage: step %s is not a whole number of minutes", q.Step)
		}
		if (to-from+stepMin-1)/stepMin > MaxPoints {
			return nil, fmt.Errorf("report usage: step %s makes more than %d points", q.Step, MaxPoints)
		}
	}
	if time.Duration(to-from)*time.Minute >= m.cfg.LongRange {
		select {
		case m.longScans <- struct{}{}:
			defer func() { <-m.longScans }()
		case <-ctx.Done():
			return nil, fmt.Errorf("report usage: wait for a long report to end: %w", ctx.Err())
		}
	}
	// This meter's minutes still in memory win over its minutes in the
	// store: one being written as this runs may be read from both. Other
	// meters' minutes (other nodes') add up.
	mem := m.snapshot()
	byFn := map[string]*acc{}
	fold := func(min int64, bs []Bucket) {
		if min < from || min >= to {
			return
		}
		for i := range bs {
			b := &bs[i]
			if q.Function != "" && b.Function != q.Function {
				continue
			}
			whole := b.Version == 0
			if q.Version != 0 && b.Version != q.Version {
				continue
			}
			if q.Version == 0 && whole {
				// The function-wide entry speaks for busy time and peak;
				// the versions' own are dropped below.
			} else if q.Version == 0 {
				b = &Bucket{Invocations: b.Invocations, Errors: b.Errors, ColdStarts: b.ColdStarts, BilledMS: b.BilledMS,
					GBSeconds: b.GBSeconds, Triggers: b.Triggers, Latency: b.Latency, Init: b.Init, IdleMiBs: b.IdleMiBs}
			}
			a := byFn[bs[i].Function]
			if a == nil {
				a = &acc{}
				if stepMin > 0 {
					a.points = make([]Bucket, (to-from+stepMin-1)/stepMin)
				}
				byFn[bs[i].Function] = a
			}
			a.total.merge(b)
			if stepMin > 0 {
				a.points[(min-from)/stepMin].merge(b)
			}
		}
	}
	err := m.cfg.Sink.UsageMinutes(ctx, time.Unix(from*60, 0), func(data []byte) error {
		var mi Minute
		if err := json.Unmarshal(data, &mi); err != nil {
			return nil // not ours to fail a report on; skipped
		}
		min := unixMinute(mi.Time)
		if _, ok := mem[min]; ok && mi.Writer == m.id {
			return nil
		}
		if min >= to {
			return errStop
		}
		fold(min, mi.Buckets)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("report usage: %w", err)
	}
	for min, bs := range mem {
		fold(min, bs)
	}
	if q.Function != "" && byFn[q.Function] == nil {
		byFn[q.Function] = &acc{}
		if stepMin > 0 {
			byFn[q.Function].points = make([]Bucket, (to-from+stepMin-1)/stepMin)
		}
	}
	out := make([]Report, 0, len(byFn))
	for fn, a := range byFn {
		r := Report{Function: fn, Version: q.Version, Since: time.Unix(from*60, 0).UTC(), Until: time.Unix(to*60, 0).UTC(),
			Totals: totals(&a.total)}
		if stepMin > 0 {
			r.StepSeconds = int(stepMin * 60)
			r.Series = make([]Point, len(a.points))
			for i := range a.points {
				b := &a.points[i]
				r.Series[i] = Point{Time: time.Unix((from+int64(i)*stepMin)*60, 0).UTC(), Invocations: b.Invocations,
					Errors: b.Errors, ColdStarts: b.ColdStarts, BilledMS: b.BilledMS, GBSeconds: round6(b.GBSeconds),
					P50MS: b.Latency.Quantile(0.50), P95MS: b.Latency.Quantile(0.95), P99MS: b.Latency.Quantile(0.99),
					Peak: b.Peak, IdleMiBs: round3(b.IdleMiBs)}
			}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Report) int {
		if a.Function < b.Function {
			return -1
		}
		if a.Function > b.Function {
			return 1
		}
		return 0
	})
	return out, nil
}

var errStop = errors.New("stop")

func totals(b *Bucket) Totals {
	t := Totals{Invocations: b.Invocations, Errors: b.Errors, ColdStarts: b.ColdStarts, BilledMS: b.BilledMS,
		GBSeconds: round6(b.GBSeconds), VCPUSeconds: float64(b.BilledMS) / 1000, Peak: b.Peak,
		BusySeconds: round3(b.BusyMS / 1000), IdleMiBs: round3(b.IdleMiBs), Triggers: b.Triggers,
		Duration:  Percentiles{P50: b.Latency.Quantile(0.50), P95: b.Latency.Quantile(0.95), P99: b.Latency.Quantile(0.99)},
		ColdStart: Percentiles{P50: b.Init.Quantile(0.50), P95: b.Init.Quantile(0.95), P99: b.Init.Quantile(0.99)}}
	if t.Triggers == nil {
		t.Triggers = map[string]uint64{}
	}
	return t
}

func round6(f float64) float64 { return math.Round(f*1e6) / 1e6 }

// Records calls each with every stored record of fn (every function when
// fn is "") that started in [since, until), oldest write first, until each
// returns false. Records still in memory are not included: Flush first.
func (m *Meter) Records(ctx context.Context, fn string, since, until time.Time, each func(*Record) bool) error {
	err := m.cfg.Sink.UsageRecords(ctx, fn, since, func(data []byte) error {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			var r Record
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			if (fn != "" && r.Function != fn) || r.Start.Before(since) || (!until.IsZero() && !r.Start.Before(until)) {
				continue
			}
			if !each(&r) {
				return errStop
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("read usage records: %w", err)
	}
	return nil
}

// ParseSince reads a point in time: an RFC 3339 time, or an age back from
// now as a Go duration ("90m", "24h") or in days ("30d"). Empty is now minus
// def.
func ParseSince(s string, now time.Time, def time.Duration) (time.Time, error) {
	if s == "" {
		return now.Add(-def), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*366 {
			return time.Time{}, fmt.Errorf("%q is not a number of days", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d < 0 {
			return time.Time{}, fmt.Errorf("%q is not a duration (90m, 24h, 30d) or an RFC 3339 time", s)
		}
	}
	return now.Add(-d), nil
}

// DefaultStep is the step that gives a range of length d about 120 points
// or fewer, in a round number of minutes.
func DefaultStep(d time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour,
		3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if d/s <= 120 {
			return s
		}
	}
	return 7 * 24 * time.Hour
}
