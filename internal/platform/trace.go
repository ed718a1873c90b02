package platform

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/instance"
)

// This file is tracing as the platform does it: the caller's W3C trace
// context is read off every request (withTraceContext) and passed on to the
// function; with a TracerProvider configured, each invocation is a span
// ("invoke NAME") with children for its queue wait, its cold start (process
// start and init) and its handler run or proxy hop, and the function gets
// the handler's or proxy hop's span as its parent. Without one nothing is
// recorded and nothing is spent on spans: the caller's context is passed on
// as it came (propagation without export), so a traced caller and a traced
// function still share one trace.

// tracerName names ebb's spans' instrumentation scope.
const tracerName = "github.com/ebb-run/ebb"

// traceContext reads and writes W3C traceparent and tracestate headers.
var traceContext propagation.TraceContext

// withTraceContext puts the caller's W3C trace context (traceparent and
// tracestate) into each request's context, where an invocation finds its
// parent. A malformed traceparent is ignored, as if absent (with tracing, the
// invocation is a new root), and taken off the request so that no function
// sees it; no request fails for it. A request without one costs a map
// lookup.
func withTraceContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["Traceparent"]; ok {
			ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
				if sc.TraceState().Len() == 0 {
					delete(r.Header, "Tracestate") // malformed, if there was one
				}
				r = r.WithContext(ctx)
			} else {
				delete(r.Header, "Traceparent")
				delete(r.Header, "Tracestate")
			}
		}
		next.ServeHTTP(w, r)
	})
}

// invocationTrace is one invocation's spans. A nil *invocationTrace (tracing
// off) does nothing, so the invoke path calls its methods unconditionally.
type invocationTrace struct {
	tracer trace.Tracer
	ctx    context.Context // carries span
	span   trace.Span      // "invoke NAME"
	queue  trace.Span      // admission, and waiting for a slot
	run    trace.Span      // the handler run or the proxy hop; nil before
}

// traceInvocation starts the span of an invocation of function name, and
// its queue wait, when tracing is on; ctx's span (the caller's, from its
// traceparent) is the parent. The returned context carries the span.
func (p *Platform) traceInvocation(ctx context.Context, name, requestID string) (context.Context, *invocationTrace) {
	if p.tracer == nil {
		return ctx, nil
	}
	trigger := ebb.TriggerOf(ctx) // the ebb.trigger attribute: sync, async, schedule, event, shadow
	kind := trace.SpanKindServer
	if trigger != ebb.TriggerSync {
		kind = trace.SpanKindConsumer
	}
	ctx, span := p.tracer.Start(ctx, "invoke "+name, trace.WithSpanKind(kind), trace.WithAttributes(
		attribute.String("faas.name", name), attribute.String("faas.invocation_id", requestID),
		attribute.String("ebb.trigger", string(trigger))))
	_, queue := p.tracer.Start(ctx, "queue wait")
	return ctx, &invocationTrace{tracer: p.tracer, ctx: ctx, span: span, queue: queue}
}

// admitted ends the queue wait, once acquire returned d (nil if the function
// was not found) and lease (nil if none was granted), and adds a cold
// start's spans.
func (it *invocationTrace) admitted(d *deployment, lease *dispatch.Lease[*instance.Instance]) {
	if it == nil {
		return
	}
	it.queue.End()
	if d == nil {
		// Nothing resolved (no such function or version, or it could
		// not be activated): the name, which may be any caller's
		// choice, stays an attribute, out of the span names a backend
		// groups by.
		it.span.SetName("invoke")
	} else {
		it.span.SetAttributes(attribute.String("faas.version", strconv.Itoa(d.fn.Version)))
	}
	if lease == nil {
		return
	}
	it.span.SetAttributes(attribute.Bool("faas.coldstart", lease.Cold), attribute.String("faas.instance", lease.InstanceID))
	if lease.Cold {
		it.coldStart(lease.Instance)
	}
}

// coldStart adds the span of inst's start, which this invocation waited
// for: the process start (a sandbox set up and the process exec'd, a fork
// from the zygote, building the zygote when this start had to, or a spare
// claimed) and the function's init (until it polled for its first event, or
// listened on its port), from the times the instance noted.
func (it *invocationTrace) coldStart(inst *instance.Instance) {
	started, spawned, ready := inst.StartTimes()
	if started.IsZero() || ready.IsZero() {
		return
	}
	cs := inst.ColdStart()
	attrs := []attribute.KeyValue{attribute.Bool("ebb.zygote", cs.Zygote), attribute.Bool("ebb.spare", cs.Spare)}
	if cs.ZygoteBuild > 0 {
		attrs = append(attrs, attribute.Float64("ebb.zygote_build_ms", ms(cs.ZygoteBuild)))
	}
	ctx, span := it.tracer.Start(it.ctx, "cold start", trace.WithTimestamp(started), trace.WithAttributes(attrs...))
	if !spawned.IsZero() {
		endAt(it.tracer, ctx, "process start", started, spawned)
		endAt(it.tracer, ctx, "init", spawned, ready)
	}
	span.End(trace.WithTimestamp(ready))
}

// endAt records a span that began and ended at the given times.
func endAt(t trace.Tracer, ctx context.Context, name string, from, to time.Time) {
	_, s := t.Start(ctx, name, trace.WithTimestamp(from))
	s.End(trace.WithTimestamp(to))
}

// handler starts the span of the handler's run (exec and python functions);
// the returned context carries it to the function, whose runtime gets it as
// its trace context. Without tracing ctx is returned: the caller's own
// context, if any, is what the function gets.
func (it *invocationTrace) handler(ctx context.Context) context.Context {
	if it == nil {
		return ctx
	}
	ctx, it.run = it.tracer.Start(ctx, "handler")
	return ctx
}

// proxy starts the span of the proxy hop to an http or onnx function and
// sets r's traceparent and tracestate to it, so that the function's own
// server span is its child. Without tracing r keeps the caller's headers
// (withTraceContext took off malformed ones).
func (it *invocationTrace) proxy(r *http.Request) {
	if it == nil {
		return
	}
	var ctx context.Context
	ctx, it.run = it.tracer.Start(it.ctx, "proxy", trace.WithSpanKind(trace.SpanKindClient))
	delete(r.Header, "Tracestate") // the caller's goes on with the span's context, if it had one
	traceContext.Inject(ctx, propagation.HeaderCarrier(r.Header))
}

// end ends the invocation's spans: err is its outcome, dur its run (billed,
// when admitted says it ran at all).
func (it *invocationTrace) end(err error, dur time.Duration, admitted bool) {
	if it == nil {
		return
	}
	status := http.StatusOK
	var kind string
	if err != nil {
		status, _, kind = gateway.Classify(err)
		it.span.SetStatus(codes.Error, kind+": "+err.Error())
	}
	if it.run != nil {
		if err != nil {
			it.run.SetStatus(codes.Error, kind)
		}
		it.run.End()
	}
	attrs := []attribute.KeyValue{attribute.Int("ebb.status", status)}
	if admitted {
		inv := ebb.Invocation{Duration: dur}
		attrs = append(attrs, attribute.Int64("ebb.billed_ms", inv.BilledMS()))
	}
	if kind != "" {
		attrs = append(attrs, attribute.String("ebb.error", kind))
	}
	it.span.SetAttributes(attrs...)
	it.span.End()
}

// tracingShutdownTimeout bounds flushing the spans still held at Close: a
// collector that does not answer must not hold up ebb's exit.
const tracingShutdownTimeout = 5 * time.Second

// shutdownTracing flushes and stops the configured TracerProvider, if it
// can be shut down, within ctx and tracingShutdownTimeout.
func (p *Platform) shutdownTracing(ctx context.Context) {
	s, ok := p.cfg.TracerProvider.(interface{ Shutdown(context.Context) error })
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, tracingShutdownTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		p.log.Warn("flush trace spans", "err", err)
	}
}

// traceEnqueue returns the trace context a job queued under ctx carries to
// its run, so that the run joins the caller's trace: with tracing on, that
// of an "enqueue NAME" producer span (ended by the returned func, with the
// enqueue's error), else the caller's as it came (none for an untraced
// caller).
func (p *Platform) traceEnqueue(ctx context.Context, name, id string) (ebb.TraceHeaders, func(error)) {
	end := func(error) {}
	if p.tracer != nil {
		var span trace.Span
		ctx, span = p.tracer.Start(ctx, "enqueue "+name, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
			attribute.String("faas.name", name), attribute.String("faas.invocation_id", id)))
		end = func(err error) {
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}
	}
	c := propagation.MapCarrier{}
	traceContext.Inject(ctx, c)
	return ebb.TraceHeaders{Parent: c["traceparent"], State: c["tracestate"]}, end
}
