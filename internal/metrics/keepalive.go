package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// KeepAlive counts what live keep-alive policies do (internal/keepalive/live
// calls it as its Observer).
type KeepAlive struct {
	prewarms, used, unused, idle *prometheus.CounterVec
}

// KeepAlive registers the keep-alive counters and returns them.
func (m *Metrics) KeepAlive() *KeepAlive {
	fn := []string{"function"}
	k := &KeepAlive{
		prewarms: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_keepalive_prewarms_total", Help: "Pre-warms ahead of a predicted call (keep_alive: adaptive)."}, fn),
		used:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_keepalive_prewarmed_starts_total", Help: "Calls that found their pre-warm in place."}, fn),
		unused:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_keepalive_prewarms_unused_total", Help: "Pre-warms unloaded with no call."}, fn),
		idle:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_keepalive_idle_warm_seconds_total", Help: "Time the keep-alive policy kept a function warm with no call."}, fn),
	}
	m.reg.MustRegister(k.prewarms, k.used, k.unused, k.idle)
	return k
}

// Prewarmed implements live.Observer.
func (k *KeepAlive) Prewarmed(fn string) { k.prewarms.WithLabelValues(fn).Inc() }

// PrewarmUsed implements live.Observer.
func (k *KeepAlive) PrewarmUsed(fn string) { k.used.WithLabelValues(fn).Inc() }

// PrewarmUnused implements live.Observer.
func (k *KeepAlive) PrewarmUnused(fn string) { k.unused.WithLabelValues(fn).Inc() }

// IdleWarm implements live.Observer.
func (k *KeepAlive) IdleWarm(fn string, d time.Duration) { k.idle.WithLabelValues(fn).Add(d.Seconds()) }

// Forget removes fn's series (the function was removed).
func (k *KeepAlive) Forget(fn string) {
	l := prometheus.Labels{"function": fn}
	for _, v := range []*prometheus.CounterVec{k.prewarms, k.used, k.unused, k.idle} {
		v.DeletePartialMatch(l)
	}
}
