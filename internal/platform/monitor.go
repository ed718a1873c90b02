package platform

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/monitor"
	"github.com/ebb-run/ebb/internal/onnx"
	"github.com/ebb-run/ebb/internal/shadow"
)

// Monitoring of inputs and predictions (internal/monitor). The request path
// does no decoding: an event's bodies go to the monitor's queue as they are
// (python and exec: the payload and result, which nothing changes after the
// invocation) or as copies taken while the proxy passes them on (onnx: the
// proxy reads the request into a buffer it recycles and writes the
// response in recycled chunks, so those bytes cannot be kept). A body is
// copied only when the monitor admits it (its queue has room and its byte
// budget is not spent), so that a summariser that falls behind, or a flood
// of requests, costs the request path no more than the decision.

// startMonitor creates the platform's monitor and publishes its counters.
func (p *Platform) startMonitor() error {
	m, err := monitor.New(p.cfg.Monitor)
	if err != nil {
		return err
	}
	p.mon = m
	counter := func(name, help string, v func(monitor.Counts) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v(m.Counts())) })
	}
	p.metrics.Register(
		counter("ebb_monitor_events_total", "Invocations summarised for input and prediction monitoring.", func(c monitor.Counts) uint64 { return c.Events }),
		counter("ebb_monitor_dropped_total", "Invocations not summarised because the summariser was behind (its queue was full).", func(c monitor.Counts) uint64 { return c.Dropped }),
		counter("ebb_monitor_sampled_out_total", "Invocations not summarised because the summariser's byte budget was spent.", func(c monitor.Counts) uint64 { return c.SampledOut }),
		counter("ebb_monitor_failed_total", "Invocations whose bodies could not be decoded for monitoring.", func(c monitor.Counts) uint64 { return c.Failed }))
	return nil
}

// monitorInvoke hands a python or exec invocation's event and result to the
// monitor.
func (p *Platform) monitorInvoke(d *deployment, at time.Time, payload, result []byte) {
	if p.mon == nil || !d.fn.Spec.Monitored() || !p.mon.Admit(len(payload)+len(result)) {
		return
	}
	p.mon.Offer(monitor.Event{Function: d.fn.Spec.Name, Version: d.fn.Version, At: at, Kind: monitor.KindJSON,
		Request: payload, Response: result})
}

// proxyCapture copies an onnx inference request's body and its response as
// they pass.
type proxyCapture struct {
	http.ResponseWriter
	m       *monitor.Monitor
	body    io.ReadCloser
	req     []byte
	reqHL   int
	resp    []byte
	respHL  int
	status  int
	tooLong bool
}

// captureProxy wraps w and r's body for monitoring when d is monitored and r
// is an inference request; nil when it is not captured.
func (p *Platform) captureProxy(d *deployment, w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *proxyCapture) {
	m := p.mon
	if m == nil || !d.fn.Spec.Monitored() || r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/infer") ||
		r.Body == nil || r.Body == http.NoBody || r.ContentLength > int64(m.Config().MaxBody) || !m.Admit(int(2*max(r.ContentLength, 0))) {
		return w, nil
	}
	c := &proxyCapture{ResponseWriter: w, m: m, body: r.Body, req: m.Buffer(int(max(r.ContentLength, 0)))}
	if h := r.Header.Get(onnx.HeaderContentLength); h != "" {
		n, err := strconv.Atoi(h)
		if err != nil {
			return w, nil // the server will refuse it
		}
		c.reqHL = n
	}
	r.Body = c
	return c, c
}

// Read copies what the proxy reads of the request body.
func (c *proxyCapture) Read(b []byte) (int, error) {
	n, err := c.body.Read(b)
	if !c.tooLong {
		if len(c.req)+n > c.m.Config().MaxBody {
			c.tooLong = true
		} else {
			c.req = append(c.req, b[:n]...)
		}
	}
	return n, err
}

func (c *proxyCapture) Close() error { return c.body.Close() }

func (c *proxyCapture) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
		if h := c.Header().Get(onnx.HeaderContentLength); h != "" {
			c.respHL, _ = strconv.Atoi(h)
		}
		if n, err := strconv.Atoi(c.Header().Get("Content-Length")); err == nil && n > c.m.Config().MaxBody {
			c.tooLong = true
		}
		if c.resp == nil && !c.tooLong {
			c.resp = c.m.Buffer(4 << 10)
		}
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *proxyCapture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	if !c.tooLong {
		if len(c.resp)+len(b) > c.m.Config().MaxBody {
			c.tooLong = true
		} else {
			c.resp = append(c.resp, b...)
		}
	}
	return c.ResponseWriter.Write(b)
}

func (c *proxyCapture) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *proxyCapture) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// finishCapture offers a captured inference that succeeded to the monitor.
func (p *Platform) finishCapture(c *proxyCapture, d *deployment, at time.Time, err error) {
	ev := monitor.Event{Function: d.fn.Spec.Name, Version: d.fn.Version, At: at, Kind: monitor.KindOIP,
		Request: c.req, Response: c.resp, RequestHeaderLen: c.reqHL, ResponseHeaderLen: c.respHL, Pooled: true}
	if err != nil || c.status != http.StatusOK || c.tooLong {
		c.m.Recycle(&ev)
		return
	}
	c.m.Offer(ev)
}

// MonitorReport implements api.Monitor: q.Version 0 is the function's
// newest version.
func (p *Platform) MonitorReport(ctx context.Context, name string, q monitor.Query) (*monitor.Report, error) {
	if p.mon == nil {
		return nil, ebb.ErrNotFound
	}
	fn, err := p.Function(gateway.Target{Name: name})
	if err != nil {
		return nil, err
	}
	q.Function = name
	if q.Version == 0 {
		q.Version = fn.Version
	}
	return p.mon.Report(q), nil
}

// shadowPSI compares a monitored function's shadow version's outputs with
// its primary's (the version with the largest share of its route) over the
// run so far; nil when the function is not monitored or there is no data.
func (p *Platform) shadowPSI(f *function, run *shadow.Run) *float64 {
	p.mu.RLock()
	latest, route := f.latest, slices.Clone(f.traffic.Route)
	p.mu.RUnlock()
	if p.mon == nil || latest == nil || !latest.fn.Spec.Monitored() {
		return nil
	}
	primary := latest.fn.Version
	best := -1
	for _, w := range route {
		if w.Percent > best {
			primary, best = w.Version, w.Percent
		}
	}
	rep := run.Report(false)
	now := p.cfg.Now()
	return p.mon.Report(monitor.Query{Function: f.name, Version: rep.Version, Since: rep.Since, Until: now.Add(time.Minute),
		BaselineVersion: primary, BaselineSince: rep.Since, BaselineUntil: now.Add(time.Minute)}).OutputPSI()
}
