package ebb

import (
	"context"
	"time"
)

// Invocation is the record of one invocation: what the log line, the metrics
// and metering are made of.
type Invocation struct {
	Function   string        `json:"function"`
	Version    int           `json:"version"`
	RequestID  string        `json:"request_id"`
	ColdStart  bool          `json:"cold_start"`
	Start      time.Time     `json:"start"`
	Init       time.Duration `json:"-"` // instance start to ready, for a cold start
	Queued     time.Duration `json:"-"` // waiting for a slot (includes Init for a cold start)
	Duration   time.Duration `json:"-"` // handler run time
	MemoryMiB  int           `json:"memory_mib"`
	PeakRSS    uint64        `json:"peak_rss_bytes"`
	Status     int           `json:"status"`
	ErrorType  string        `json:"error_type,omitempty"`
	InstanceID string        `json:"instance_id,omitempty"`
	Trigger    Trigger       `json:"trigger"`
}

// BilledMS is the billed duration: handler time rounded up to the next whole
// millisecond, at least 1.
func (inv *Invocation) BilledMS() int64 {
	ms := int64((inv.Duration + time.Millisecond - 1) / time.Millisecond)
	return max(ms, 1)
}

// GBSeconds is the billed duration times the configured memory, in GB-seconds
// (1 GB = 1024 MiB, as Lambda bills).
func (inv *Invocation) GBSeconds() float64 {
	return float64(inv.BilledMS()) / 1000 * float64(inv.MemoryMiB) / 1024
}

// Trigger says what caused an invocation.
type Trigger string

// The triggers of an invocation.
const (
	TriggerSync     Trigger = "sync"     // a caller waiting for the answer
	TriggerAsync    Trigger = "async"    // a queued job
	TriggerSchedule Trigger = "schedule" // a schedule's tick
	TriggerEvent    Trigger = "event"    // a bucket or subject event
	TriggerShadow   Trigger = "shadow"   // a mirrored request to a shadow version
)

type triggerKey struct{}

// WithTrigger returns ctx carrying t, for the invocation made under it.
func WithTrigger(ctx context.Context, t Trigger) context.Context {
	return context.WithValue(ctx, triggerKey{}, t)
}

// TriggerOf returns the trigger ctx carries; a request with none is sync.
func TriggerOf(ctx context.Context) Trigger {
	if t, ok := ctx.Value(triggerKey{}).(Trigger); ok {
		return t
	}
	return TriggerSync
}

type logSyncKey struct{}

// WithLogSync returns ctx asking that the invocation made under it answer
// only once every log line its function wrote has been taken in, so that
// what follows can read them all (Lambda's LogType Tail).
func WithLogSync(ctx context.Context) context.Context {
	return context.WithValue(ctx, logSyncKey{}, true)
}

// LogSync says whether ctx asks for WithLogSync.
func LogSync(ctx context.Context) bool {
	v, _ := ctx.Value(logSyncKey{}).(bool)
	return v
}

// TraceHeaders are a W3C trace context as traceparent and tracestate carry
// it: how an async job keeps its caller's trace until it runs.
type TraceHeaders struct {
	Parent string `json:"traceparent,omitempty"`
	State  string `json:"tracestate,omitempty"`
}

type traceHeadersKey struct{}

// WithTraceHeaders returns ctx carrying h, for the invocation made under it.
func WithTraceHeaders(ctx context.Context, h TraceHeaders) context.Context {
	return context.WithValue(ctx, traceHeadersKey{}, h)
}

// TraceHeadersOf returns the trace headers ctx carries, if any.
func TraceHeadersOf(ctx context.Context) (TraceHeaders, bool) {
	h, ok := ctx.Value(traceHeadersKey{}).(TraceHeaders)
	return h, ok && h.Parent != ""
}
