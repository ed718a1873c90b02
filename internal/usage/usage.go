// Package usage meters what functions use: every invocation's record, kept
// in a stream for the retention period, and per-minute rollups per function
// and version, kept longer, from which usage reports and cost estimates are
// made. It also counts what warm capacity costs while it waits: idle
// instances, zygotes and spares, as MiB-seconds.
//
// The request path only appends to memory under a short lock; a flusher
// owned by the Meter writes batches to the store once a second, so metering
// costs an invocation no store round trip.
package usage

import (
	"math"
	"slices"
	"time"

	"github.com/ebb-run/ebb"
)

// Record is one invocation as the usage stream keeps it.
type Record struct {
	Function   string      `json:"function"`
	Version    int         `json:"version"`
	RequestID  string      `json:"request_id,omitempty"`
	Start      time.Time   `json:"start"`
	InitMS     float64     `json:"init_ms"`
	QueuedMS   float64     `json:"queued_ms"`
	DurationMS float64     `json:"duration_ms"`
	BilledMS   int64       `json:"billed_ms"`
	MemoryMiB  int         `json:"memory_mib"`
	PeakRSSMiB float64     `json:"peak_rss_mib"`
	GBSeconds  float64     `json:"gb_seconds"`
	Cold       bool        `json:"cold"`
	Status     int         `json:"status"`
	Trigger    ebb.Trigger `json:"trigger"`
}

// Error says whether the record is a failed invocation.
func (r *Record) Error() bool { return r.Status >= 400 }

// RecordOf makes the usage record of an invocation.
func RecordOf(inv *ebb.Invocation) Record {
	return Record{Function: inv.Function, Version: inv.Version, RequestID: inv.RequestID, Start: inv.Start.UTC(),
		InitMS: ms(inv.Init), QueuedMS: ms(inv.Queued), DurationMS: ms(inv.Duration), BilledMS: inv.BilledMS(),
		MemoryMiB: inv.MemoryMiB, PeakRSSMiB: float64(inv.PeakRSS) / (1 << 20), GBSeconds: inv.GBSeconds(),
		Cold: inv.ColdStart, Status: inv.Status, Trigger: inv.Trigger}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Bucket is one function version's usage in one minute. The entry with
// Version 0 is the function as a whole: it carries only what cannot be summed
// over versions (busy time and peak concurrency, measured over all of them).
type Bucket struct {
	Function    string            `json:"f"`
	Version     int               `json:"v"`
	Invocations uint64            `json:"n,omitempty"`
	Errors      uint64            `json:"e,omitempty"`
	ColdStarts  uint64            `json:"c,omitempty"`
	BilledMS    int64             `json:"b,omitempty"`
	GBSeconds   float64           `json:"g,omitempty"`
	Triggers    map[string]uint64 `json:"t,omitempty"`
	Latency     Histogram         `json:"l,omitempty"`
	// Init holds cold starts' init times.
	Init     Histogram `json:"i,omitempty"`
	BusyMS   float64   `json:"busy,omitempty"`
	Peak     int       `json:"peak,omitempty"`
	IdleMiBs float64   `json:"idle,omitempty"`
}

// add folds r into b.
func (b *Bucket) add(r *Record) {
	b.Invocations++
	if r.Error() {
		b.Errors++
	}
	if r.Cold {
		b.ColdStarts++
	}
	b.BilledMS += r.BilledMS
	b.GBSeconds += r.GBSeconds
	if b.Triggers == nil {
		b.Triggers = map[string]uint64{}
	}
	b.Triggers[string(r.Trigger)]++
	if b.Latency == nil {
		b.Latency = Histogram{}
	}
	b.Latency.Add(r.DurationMS)
	if r.Cold {
		if b.Init == nil {
			b.Init = Histogram{}
		}
		b.Init.Add(r.InitMS)
	}
}

// merge folds o into b: counts add, peaks take the larger.
func (b *Bucket) merge(o *Bucket) {
	b.Invocations += o.Invocations
	b.Errors += o.Errors
	b.ColdStarts += o.ColdStarts
	b.BilledMS += o.BilledMS
	b.GBSeconds += o.GBSeconds
	for k, n := range o.Triggers {
		if b.Triggers == nil {
			b.Triggers = map[string]uint64{}
		}
		b.Triggers[k] += n
	}
	if len(o.Latency) > 0 && b.Latency == nil {
		b.Latency = Histogram{}
	}
	b.Latency.Merge(o.Latency)
	if len(o.Init) > 0 && b.Init == nil {
		b.Init = Histogram{}
	}
	b.Init.Merge(o.Init)
	b.BusyMS += o.BusyMS
	b.Peak = max(b.Peak, o.Peak)
	b.IdleMiBs += o.IdleMiBs
}

// Minute is every bucket of one minute: one message of the rollup stream.
type Minute struct {
	Time    time.Time `json:"time"`
	Buckets []Bucket  `json:"buckets"`
}

// Histogram counts durations in logarithmic bins 2% wide, so that
// percentiles read from it are within 2% of the exact ones whatever the
// scale, and histograms of different minutes merge by adding.
type Histogram map[int32]uint64

const (
	histBase  = 1.02
	histFloor = 0.001 // ms: everything shorter shares bin 0
)

var logBase = math.Log(histBase)

// bin is the bin of a duration in milliseconds: bin i holds (upper(i-1), upper(i)].
func bin(ms float64) int32 {
	if !(ms > histFloor) { // NaN too
		return 0
	}
	return int32(min(math.Ceil(math.Log(ms/histFloor)/logBase), maxBin))
}

// maxBin is the last bin: about 10^17 ms; longer is clamped into it.
const maxBin = 2000

// upper is the largest duration bin i holds.
func upper(i int32) float64 { return histFloor * math.Pow(histBase, float64(i)) }

// Add counts one duration.
func (h Histogram) Add(ms float64) { h[bin(ms)]++ }

// Merge adds o's counts to h.
func (h Histogram) Merge(o Histogram) {
	for k, n := range o {
		h[k] += n
	}
}

// Quantile returns the q-quantile (0 < q ≤ 1) as the upper bound of the bin
// it falls in; 0 for an empty histogram.
func (h Histogram) Quantile(q float64) float64 {
	type kv struct {
		bin int32
		n   uint64
	}
	var bins []kv
	var total uint64
	for i, n := range h {
		if n == 0 || i < 0 || i > maxBin {
			continue // not a bin this package writes
		}
		bins = append(bins, kv{i, n})
		total += n
	}
	if total == 0 {
		return 0
	}
	slices.SortFunc(bins, func(a, b kv) int { return int(a.bin - b.bin) })
	rank := uint64(math.Ceil(q * float64(total)))
	rank = max(rank, 1)
	var seen uint64
	for _, b := range bins {
		seen += b.n
		if seen >= rank {
			return round3(upper(b.bin))
		}
	}
	return round3(upper(bins[len(bins)-1].bin))
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
