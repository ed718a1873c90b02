package shadow

import (
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/metrics"
)

// MaxExamples is how many differing pairs a run keeps.
const MaxExamples = 20

// maxExampleBytes bounds each answer kept in an example.
const maxExampleBytes = 1024

// Config is what a shadow run mirrors: a share of a function's unqualified
// requests to one version.
type Config = ebb.Shadow

// Run tallies one shadow run. It is safe for concurrent use.
type Run struct {
	cfg      Config
	started  time.Time
	limit    int64
	inflight atomic.Int64

	mirrored, equal, differ, errors, dropped atomic.Uint64
	primary, shadow                          metrics.Latency

	mu       sync.Mutex
	examples []Example
}

// Example is one pair that did not agree.
type Example struct {
	RequestID string `json:"request_id"`
	// Path is where the answers first differ ("$" for the whole answer).
	Path string `json:"path,omitempty"`
	// Error is the shadow's failure, for a shadow error.
	Error   string `json:"error,omitempty"`
	Primary string `json:"primary"`
	Shadow  string `json:"shadow,omitempty"`
}

// Report is what `ebb shadow report` shows.
type Report struct {
	Config
	Active       bool      `json:"active"`
	Since        time.Time `json:"since"`
	Mirrored     uint64    `json:"mirrored"`
	Equal        uint64    `json:"equal"`
	Differ       uint64    `json:"differ"`
	ShadowErrors uint64    `json:"shadow_errors"`
	// Dropped counts requests chosen for mirroring that were not mirrored
	// because too many mirrors were already in flight.
	Dropped      uint64    `json:"dropped"`
	PrimaryP50MS float64   `json:"primary_p50_ms"`
	PrimaryP99MS float64   `json:"primary_p99_ms"`
	ShadowP50MS  float64   `json:"shadow_p50_ms"`
	ShadowP99MS  float64   `json:"shadow_p99_ms"`
	Examples     []Example `json:"examples"`
	// OutputPSI, for a monitored function, is the largest population
	// stability index of the shadow's outputs (features and classes)
	// against the primary's since the run began: how far the shadow's
	// predictions drift from the primary's as distributions, where
	// Differ counts answers that differ one by one.
	OutputPSI *float64 `json:"output_psi,omitempty"`
}

// NewRun starts a run of cfg; at most limit mirrors are in flight at once.
func NewRun(cfg Config, now time.Time, limit int) *Run {
	return &Run{cfg: cfg, started: now, limit: int64(max(limit, 1))}
}

// Config returns the run's configuration.
func (r *Run) Config() Config { return r.cfg }

// Pick says whether a request with draw (uniform) is mirrored.
func (r *Run) Pick(draw uint32) bool {
	return r.cfg.Percent >= 100 || int(draw%100) < r.cfg.Percent
}

// Begin takes an in-flight slot for one mirror; false (counted as dropped)
// when the run is at its limit: a slow shadow must not pile up work.
func (r *Run) Begin() bool {
	if r.inflight.Add(1) > r.limit {
		r.inflight.Add(-1)
		r.dropped.Add(1)
		return false
	}
	return true
}

// End gives back the slot Begin took.
func (r *Run) End() { r.inflight.Add(-1) }

// Record compares one mirrored pair: the primary's answer and latency, and
// the shadow's (or its error).
func (r *Run) Record(requestID string, primary []byte, primaryDur time.Duration, shadow []byte, shadowDur time.Duration, shadowErr error) {
	r.mirrored.Add(1)
	r.primary.Observe(primaryDur)
	r.shadow.Observe(shadowDur)
	if shadowErr != nil {
		r.errors.Add(1)
		r.example(Example{RequestID: requestID, Error: shadowErr.Error(), Primary: clip(primary)})
		return
	}
	if ok, path := Compare(primary, shadow, r.cfg.Tol()); !ok {
		r.differ.Add(1)
		r.example(Example{RequestID: requestID, Path: path, Primary: clip(primary), Shadow: clip(shadow)})
		return
	}
	r.equal.Add(1)
}

func (r *Run) example(e Example) {
	r.mu.Lock()
	if len(r.examples) < MaxExamples {
		r.examples = append(r.examples, e)
	}
	r.mu.Unlock()
}

// clip keeps the start of an answer, cut at a rune boundary.
func clip(b []byte) string {
	if len(b) <= maxExampleBytes {
		return string(b)
	}
	b = b[:maxExampleBytes]
	for len(b) > 0 && !utf8.Valid(b) {
		b = b[:len(b)-1]
	}
	return string(b) + "…"
}

// Report returns the run's tallies.
func (r *Run) Report(active bool) Report {
	rep := Report{Config: r.cfg, Active: active, Since: r.started,
		Mirrored: r.mirrored.Load(), Equal: r.equal.Load(), Differ: r.differ.Load(), ShadowErrors: r.errors.Load(), Dropped: r.dropped.Load(),
		PrimaryP50MS: r.primary.QuantileMS(0.5), PrimaryP99MS: r.primary.QuantileMS(0.99),
		ShadowP50MS: r.shadow.QuantileMS(0.5), ShadowP99MS: r.shadow.QuantileMS(0.99)}
	tol := r.cfg.Tol()
	rep.Config.Tolerance = &tol
	r.mu.Lock()
	rep.Examples = append([]Example{}, r.examples...)
	r.mu.Unlock()
	return rep
}
