package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/respguard"
	"github.com/ebb-run/ebb/internal/shadow"
	"github.com/ebb-run/ebb/internal/usage"
)

// maxVersionRetries bounds how often a request follows a redeploy: a request
// that reaches a version as it starts draining tries the new one.
const maxVersionRetries = 3

// acquire admits a request onto the version t resolves to, making its pool
// if it has none yet.
func (p *Platform) acquire(ctx context.Context, t gateway.Target) (*deployment, *dispatch.Lease[*instance.Instance], error) {
	d, lease, _, err := p.acquireShadow(ctx, t)
	return d, lease, err
}

// acquireShadow is acquire that also returns the function's shadow run, for
// an unqualified request.
func (p *Platform) acquireShadow(ctx context.Context, t gateway.Target) (*deployment, *dispatch.Lease[*instance.Instance], *shadow.Run, error) {
	for range maxVersionRetries {
		v, run, err := p.resolveShadow(t)
		if err != nil {
			return nil, nil, nil, err
		}
		d := v.dep.Load()
		if d == nil {
			if d, err = p.activate(v); errors.Is(err, ebb.ErrDraining) {
				continue
			} else if err != nil {
				return nil, nil, nil, err
			}
		}
		// An arrival, for the adaptive keep-alive: observed once the lease
		// holds its instance, so that the decision it makes (unload right
		// after the call) cannot stop the instance the call is about to get.
		k := d.keeper
		var arrived time.Time
		if k != nil {
			arrived = p.cfg.Now()
		}
		if p.slotted() {
			// A node of a cluster runs the request only within the
			// instance slots it holds or can claim (forward.go).
			// Nothing ran here, so nothing is recorded (d is nil).
			if err := p.admit(ctx, t.Name, v); err != nil {
				return nil, nil, nil, err
			}
		}
		lease, err := d.pool.Acquire(ctx)
		if errors.Is(err, ebb.ErrDraining) {
			continue
		}
		if k != nil {
			// It found the version warm: a warm instance, or a spare
			// started ahead (a python fork, an onnx process).
			k.Observe(arrived, err == nil && (!lease.Cold || lease.Instance.ColdStart().Spare))
		}
		if err != nil {
			return d, nil, nil, err
		}
		return d, lease, run, nil
	}
	return nil, nil, nil, fmt.Errorf("acquire %s: %w", t.Name, ebb.ErrOverloaded)
}

// Invoke implements gateway.Backend: it runs one event through the function,
// under its timeout, and records the invocation.
func (p *Platform) Invoke(ctx context.Context, t gateway.Target, requestID string, payload []byte) (*gateway.Result, error) {
	start := p.cfg.Now()
	ctx, tr := p.traceInvocation(ctx, t.Name, requestID)
	d, lease, run, err := p.acquireShadow(ctx, t)
	tr.admitted(d, lease)
	if err != nil {
		if d != nil {
			p.record(ctx, d, nil, requestID, start, start, 0, err)
		}
		tr.end(err, 0, false)
		return nil, err
	}
	inst := lease.Instance
	if inst.IsHTTP() {
		lease.Release()
		err := &gateway.BadRequestError{Msg: fmt.Sprintf("function %q serves HTTP; call it at /fn/%s/", t.Name, t.Name)}
		tr.end(err, 0, false)
		return nil, err
	}
	timeout := d.fn.Spec.Timeout
	began := p.cfg.Now()
	p.usage.Begin(d.fn.Spec.Name, d.fn.Version, began)
	deadline := began.Add(timeout)
	// The handler's span (or the caller's, untraced) goes to the function.
	ictx, cancel := context.WithDeadline(tr.handler(ctx), deadline)
	body, err := inst.Invoke(ictx, requestID, payload, deadline)
	end := p.cfg.Now()
	cancel()
	err = p.settle(lease, inst, ctx, ictx, err, timeout)
	p.record(ctx, d, lease, requestID, start, began, end.Sub(began), err)
	tr.end(err, end.Sub(began), true)
	if err == nil {
		p.monitorInvoke(d, end, payload, body)
	}
	if run != nil && err == nil {
		p.mirror(run, t.Name, d, requestID, payload, body, end.Sub(start))
	}
	return &gateway.Result{Body: body, ColdStart: lease.Cold, Version: d.fn.Version}, err
}

// settle gives the lease back and says what an invocation error means. An
// instance that timed out or died is discarded: its state cannot be trusted.
func (p *Platform) settle(lease *dispatch.Lease[*instance.Instance], inst *instance.Instance, ctx, ictx context.Context, err error, timeout time.Duration) error {
	var he *ebb.HandlerError
	switch {
	case err == nil || errors.As(err, &he):
		lease.Release()
		return err
	case ictx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		inst.Kill()
		lease.Discard("timeout")
		return fmt.Errorf("%w: task timed out after %.2f seconds", ebb.ErrTimeout, timeout.Seconds())
	case ctx.Err() != nil:
		// The client went away while the handler ran. The handler is still
		// busy with it, so the slot cannot be handed out again.
		inst.Kill()
		lease.Discard("canceled")
		return ctx.Err()
	default:
		lease.Discard("crashed")
		return err
	}
}

// Proxy implements gateway.Backend for http and onnx functions.
func (p *Platform) Proxy(ctx context.Context, t gateway.Target, requestID string, w http.ResponseWriter, r *http.Request, admitted func(cold bool, version int)) error {
	start := p.cfg.Now()
	ctx, tr := p.traceInvocation(ctx, t.Name, requestID)
	d, lease, run, err := p.acquireShadow(ctx, t)
	tr.admitted(d, lease)
	if err != nil {
		if d != nil {
			p.record(ctx, d, nil, requestID, start, start, 0, err)
		}
		tr.end(err, 0, false)
		return err
	}
	inst := lease.Instance
	if !inst.IsHTTP() {
		lease.Release()
		tr.end(ebb.ErrNotFound, 0, false)
		return ebb.ErrNotFound
	}
	var m *proxyMirror
	if run != nil {
		if m, err = p.startProxyMirror(run, d, r); err != nil {
			lease.Release()
			p.record(ctx, d, nil, requestID, start, start, 0, err)
			tr.end(err, 0, true)
			return err
		}
		if m != nil {
			w = m.tee(w)
		}
	}
	w, capture := p.captureProxy(d, w, r)
	admitted(lease.Cold, d.fn.Version)
	timeout := d.fn.Spec.Timeout
	began := p.cfg.Now()
	p.usage.Begin(d.fn.Spec.Name, d.fn.Version, began)
	tr.proxy(r)
	// The deadline goes on the instance connection itself: a context timer
	// per request would cost more than the rest of ebb's bookkeeping.
	err = inst.Proxy(w, r, began.Add(timeout))
	end := p.cfg.Now()
	if err != nil {
		switch {
		case errors.Is(err, ebb.ErrResponseStarted):
			// Cut mid-body: by the client going away or the instance closing
			// its side. Only a dead instance is let go.
			select {
			case <-inst.Done():
				lease.Discard("crashed")
			default:
				lease.Release()
			}
		case errors.As(err, new(*gateway.BodyError)), errors.As(err, new(*respguard.StatusError)):
			// The client's body failed, or the function's answer was
			// refused: the instance is fine, its connection was closed.
			lease.Release()
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			inst.Kill()
			lease.Discard("timeout")
			err = fmt.Errorf("%w: request timed out after %.2f seconds", ebb.ErrTimeout, timeout.Seconds())
		case ctx.Err() != nil:
			lease.Release() // the server saw the cancellation too
			err = ctx.Err()
		default:
			select {
			case <-inst.Done():
				err = inst.Err()
			case <-time.After(50 * time.Millisecond):
				// The process is alive but the connection failed: it is not
				// serving, so it is treated like a crash.
				inst.Kill()
				err = fmt.Errorf("%w: %v", ebb.ErrCrashed, err)
			}
			lease.Discard("crashed")
		}
	} else {
		lease.Release()
	}
	p.record(ctx, d, lease, requestID, start, began, end.Sub(began), err)
	tr.end(err, end.Sub(began), true)
	if capture != nil {
		p.finishCapture(capture, d, end, err)
	}
	if m != nil {
		p.finishProxyMirror(run, m, t.Name, requestID, err, end.Sub(start))
	}
	return err
}

// record emits the invocation's log line, metrics and usage record. lease
// is nil for an invocation that never ran (refused, or failed before its
// handler was called); one that ran was begun in the usage meter.
func (p *Platform) record(ctx context.Context, d *deployment, lease *dispatch.Lease[*instance.Instance], requestID string, start, began time.Time, dur time.Duration, err error) {
	inv := ebb.Invocation{Function: d.fn.Spec.Name, Version: d.fn.Version, RequestID: requestID, Start: start,
		Queued: began.Sub(start), Duration: dur, MemoryMiB: d.fn.Spec.MemoryMiB, Status: http.StatusOK, Trigger: ebb.TriggerOf(ctx)}
	var kind string
	if err != nil {
		inv.Status, _, kind = gateway.Classify(err)
		inv.ErrorType = kind
	}
	if lease != nil {
		inv.ColdStart, inv.Init, inv.InstanceID = lease.Cold, lease.Init, lease.InstanceID
		inv.PeakRSS = lease.Instance.PeakRSS()
	}
	if d.ver != nil {
		d.ver.stats.record(dur, lease != nil, inv.ColdStart, err != nil)
	}
	d.metrics.Record(&inv, kind)
	p.usage.Record(usage.RecordOf(&inv), lease != nil, began.Add(dur))
	if err == nil && !inv.ColdStart && p.cfg.InvocationLog != nil && p.log.Enabled(context.Background(), slog.LevelInfo) {
		writeInvocationLine(p.cfg.InvocationLog, p.cfg.Now(), &inv)
		return
	}
	level := slog.LevelInfo
	if err != nil && kind != "handler" {
		level = slog.LevelWarn
	}
	if !p.log.Enabled(context.Background(), level) {
		return
	}
	p.log.LogAttrs(context.Background(), level, "invocation", invocationAttrs(&inv, lease, kind, err)...)
}

// invocationAttrs are the attributes of an invocation's slog line, which
// writeInvocationLine must reproduce for warm successful invocations.
func invocationAttrs(inv *ebb.Invocation, lease *dispatch.Lease[*instance.Instance], kind string, err error) []slog.Attr {
	attrs := []slog.Attr{
		slog.String("function", inv.Function), slog.Int("version", inv.Version), slog.String("request_id", inv.RequestID),
		slog.Bool("cold_start", inv.ColdStart), slog.Float64("init_ms", ms(inv.Init)), slog.Float64("queued_ms", ms(inv.Queued)),
		slog.Float64("duration_ms", ms(inv.Duration)), slog.Int64("billed_ms", inv.BilledMS()),
		slog.Int("memory_mib", inv.MemoryMiB), slog.Float64("peak_rss_mib", float64(inv.PeakRSS)/(1<<20)),
		slog.Float64("gb_seconds", inv.GBSeconds()), slog.Int("status", inv.Status), slog.String("instance", inv.InstanceID),
	}
	attrs = append(attrs, coldStartAttrs(lease)...)
	if kind != "" {
		attrs = append(attrs, slog.String("error", kind))
		if err != nil {
			attrs = append(attrs, slog.String("cause", err.Error()))
		}
	}
	return attrs
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
