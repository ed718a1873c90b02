package ebb

import "time"

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
