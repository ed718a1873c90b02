// Package metrics exposes ebb's Prometheus metrics. Per-function series are
// resolved once per function (For) so that recording an invocation on the hot
// path is a few atomic adds, not label lookups.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ebb-run/ebb"
)

// PoolStats is what the instances/queue gauges are read from at scrape time.
type PoolStats struct {
	Function string
	Phases   map[string]int // instances by phase: starting, idle, busy, stopping
	Waiting  int
	// Zygote is the memory of the function's python fork-server; nil
	// when it has none running.
	Zygote *ZygoteMemory
	// Spare is the memory of the function's onnx spare process; nil when
	// none waits.
	Spare *ZygoteMemory
}

// ZygoteMemory is a fork-server's memory in bytes (/proc/PID/smaps_rollup).
type ZygoteMemory struct {
	RSS, PSS uint64
}

// StatsFunc returns the current pool stats of every function.
type StatsFunc func() []PoolStats

// Metrics holds ebb's collectors.
type Metrics struct {
	reg          *prometheus.Registry
	invocations  *prometheus.CounterVec
	errors       *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	initDuration *prometheus.HistogramVec
	coldStarts   *prometheus.CounterVec
	billedMS     *prometheus.CounterVec
	gbSeconds    *prometheus.CounterVec
	starts       *prometheus.CounterVec
	startFails   *prometheus.CounterVec
	stops        *prometheus.CounterVec
	rateLimited  *prometheus.CounterVec
	refused      *prometheus.CounterVec
	// Per version: the same counts with a version label, in series of
	// their own so that the per-function ones keep their shape.
	verInvocations *prometheus.CounterVec
	verErrors      *prometheus.CounterVec
	verColdStarts  *prometheus.CounterVec
	verDuration    *prometheus.HistogramVec
}

// New creates the metrics; stats is read on every scrape for the gauges.
func New(stats StatsFunc) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	fn := []string{"function"}
	m.invocations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_invocations_total", Help: "Invocations by function and HTTP status code."}, []string{"function", "code"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_invocation_errors_total", Help: "Failed invocations by function and kind (handler, timeout, crashed, oom, overloaded, init, payload)."}, []string{"function", "kind"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ebb_invocation_duration_seconds", Help: "Handler run time.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, fn)
	m.initDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ebb_cold_start_init_seconds", Help: "Instance start to ready, for cold starts.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, fn)
	m.coldStarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_cold_starts_total", Help: "Invocations that waited for a new instance."}, fn)
	m.billedMS = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_billed_milliseconds_total", Help: "Billed handler time (rounded up to 1 ms per invocation)."}, fn)
	m.gbSeconds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_gb_seconds_total", Help: "Billed GB-seconds (billed time × configured memory)."}, fn)
	m.starts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_instance_starts_total", Help: "Instances started."}, fn)
	m.startFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_instance_start_failures_total", Help: "Instance starts that failed."}, fn)
	m.stops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_instance_stops_total", Help: "Instances stopped, by reason."}, []string{"function", "reason"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_rate_limited_total", Help: "Requests refused with 429 by a rate limit: a function's rate_limit (scope function) or a key's rps (scope key, name the key ID)."}, []string{"scope", "name"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_requests_refused_total", Help: "Requests refused before any handler ran, by reason (unauthorized, forbidden, misdirected, not_found)."}, []string{"reason"})
	fv := []string{"function", "version"}
	m.verInvocations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_version_invocations_total", Help: "Invocations admitted, by function and version."}, fv)
	m.verErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_version_errors_total", Help: "Failed invocations by function and version."}, fv)
	m.verColdStarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebb_version_cold_starts_total", Help: "Invocations that waited for a new instance, by function and version."}, fv)
	m.verDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ebb_version_duration_seconds", Help: "Handler run time by function and version.",
		Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 30}}, fv)
	m.reg.MustRegister(m.verInvocations, m.verErrors, m.verColdStarts, m.verDuration, m.rateLimited, m.refused, m.invocations, m.errors, m.duration, m.initDuration, m.coldStarts, m.billedMS, m.gbSeconds,
		m.starts, m.startFails, m.stops, &poolCollector{stats: stats},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Register adds collectors that other packages own (the monitor's
// counters).
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// RateLimited counts a request refused by a rate limit.
func (m *Metrics) RateLimited(scope, name string) { m.rateLimited.WithLabelValues(scope, name).Inc() }

// Refused counts a request refused at the edge.
func (m *Metrics) Refused(reason string) { m.refused.WithLabelValues(reason).Inc() }

// Function is the per-function series, resolved once.
type Function struct {
	name       string
	m          *Metrics
	ok         prometheus.Counter
	duration   prometheus.Observer
	initDur    prometheus.Observer
	coldStarts prometheus.Counter
	billed     prometheus.Counter
	gbs        prometheus.Counter
}

// For returns fn's series.
func (m *Metrics) For(fn string) *Function {
	return &Function{
		name: fn, m: m,
		ok:         m.invocations.WithLabelValues(fn, "200"),
		duration:   m.duration.WithLabelValues(fn),
		initDur:    m.initDuration.WithLabelValues(fn),
		coldStarts: m.coldStarts.WithLabelValues(fn),
		billed:     m.billedMS.WithLabelValues(fn),
		gbs:        m.gbSeconds.WithLabelValues(fn),
	}
}

// Forget removes fn's series (the function was removed).
func (m *Metrics) Forget(fn string) {
	l := prometheus.Labels{"function": fn}
	for _, v := range []*prometheus.CounterVec{m.invocations, m.errors, m.coldStarts, m.billedMS, m.gbSeconds, m.starts, m.startFails, m.stops,
		m.verInvocations, m.verErrors, m.verColdStarts} {
		v.DeletePartialMatch(l)
	}
	m.duration.DeletePartialMatch(l)
	m.verDuration.DeletePartialMatch(l)
	m.initDuration.DeletePartialMatch(l)
}

// Version is one function version's series, resolved once per pool.
type Version struct {
	invocations, errors, coldStarts prometheus.Counter
	duration                        prometheus.Observer
}

// ForVersion returns the series of version v of fn.
func (m *Metrics) ForVersion(fn string, v int) *Version {
	l := []string{fn, strconv.Itoa(v)}
	return &Version{invocations: m.verInvocations.WithLabelValues(l...), errors: m.verErrors.WithLabelValues(l...),
		coldStarts: m.verColdStarts.WithLabelValues(l...), duration: m.verDuration.WithLabelValues(l...)}
}

// ForgetVersion removes the series of a removed version.
func (m *Metrics) ForgetVersion(fn string, v int) {
	l := prometheus.Labels{"function": fn, "version": strconv.Itoa(v)}
	m.verInvocations.Delete(l)
	m.verErrors.Delete(l)
	m.verColdStarts.Delete(l)
	m.verDuration.Delete(l)
}

// Record counts one request to the version: admitted says it ran.
func (v *Version) Record(dur time.Duration, admitted, cold, failed bool) {
	if failed {
		v.errors.Inc()
	}
	if !admitted {
		return
	}
	v.invocations.Inc()
	if cold {
		v.coldStarts.Inc()
	}
	v.duration.Observe(dur.Seconds())
}

// Record counts one invocation. errKind is "" for success.
func (f *Function) Record(inv *ebb.Invocation, errKind string) {
	if inv.Status == http.StatusOK {
		f.ok.Inc()
	} else {
		f.m.invocations.WithLabelValues(f.name, statusText(inv.Status)).Inc()
	}
	if errKind != "" {
		f.m.errors.WithLabelValues(f.name, errKind).Inc()
	}
	if inv.Duration > 0 {
		f.duration.Observe(inv.Duration.Seconds())
		f.billed.Add(float64(inv.BilledMS()))
		f.gbs.Add(inv.GBSeconds())
	}
	if inv.ColdStart {
		f.coldStarts.Inc()
		f.initDur.Observe(inv.Init.Seconds())
	}
}

func statusText(code int) string {
	var b [3]byte
	b[0], b[1], b[2] = byte('0'+code/100%10), byte('0'+code/10%10), byte('0'+code%10)
	return string(b[:])
}

// InstanceStarted, InstanceStartFailed, InstanceStopped and QueueDepth make
// Metrics a dispatch.Observer.
func (m *Metrics) InstanceStarted(fn, id string, took time.Duration) {
	m.starts.WithLabelValues(fn).Inc()
}

// InstanceStartFailed counts a failed start.
func (m *Metrics) InstanceStartFailed(fn string, err error) { m.startFails.WithLabelValues(fn).Inc() }

// InstanceStopped counts a stop by reason.
func (m *Metrics) InstanceStopped(fn, id, reason string) { m.stops.WithLabelValues(fn, reason).Inc() }

// QueueDepth is read from pool stats at scrape time instead.
func (m *Metrics) QueueDepth(fn string, n int) {}

type poolCollector struct{ stats StatsFunc }

var (
	instancesDesc = prometheus.NewDesc("ebb_instances", "Instances by function and state.", []string{"function", "state"}, nil)
	queueDesc     = prometheus.NewDesc("ebb_queue_depth", "Requests waiting for an instance slot.", []string{"function"}, nil)
	zygoteDesc    = prometheus.NewDesc("ebb_zygote_memory_bytes", "Memory of a python function's fork-server (kind: rss, or pss with shared pages divided among its children).", []string{"function", "kind"}, nil)
	spareDesc     = prometheus.NewDesc("ebb_spare_memory_bytes", "Memory of an onnx function's spare process, ONNX Runtime started and no model loaded (kind: rss, or pss with shared pages divided among their users).", []string{"function", "kind"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- queueDesc
	ch <- zygoteDesc
	ch <- spareDesc
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	if c.stats == nil {
		return
	}
	for _, s := range c.stats() {
		for _, phase := range []string{"starting", "idle", "busy", "stopping"} {
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(s.Phases[phase]), s.Function, phase)
		}
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(s.Waiting), s.Function)
		if z := s.Zygote; z != nil {
			ch <- prometheus.MustNewConstMetric(zygoteDesc, prometheus.GaugeValue, float64(z.RSS), s.Function, "rss")
			ch <- prometheus.MustNewConstMetric(zygoteDesc, prometheus.GaugeValue, float64(z.PSS), s.Function, "pss")
		}
		if sp := s.Spare; sp != nil {
			ch <- prometheus.MustNewConstMetric(spareDesc, prometheus.GaugeValue, float64(sp.RSS), s.Function, "rss")
			ch <- prometheus.MustNewConstMetric(spareDesc, prometheus.GaugeValue, float64(sp.PSS), s.Function, "pss")
		}
	}
}
