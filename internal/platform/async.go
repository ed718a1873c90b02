package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/events"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/queue"
	"github.com/ebb-run/ebb/internal/route"
	"github.com/ebb-run/ebb/internal/schedule"
	"github.com/ebb-run/ebb/internal/store"
	"go.opentelemetry.io/otel/propagation"
)

// AsyncOptions tune asynchronous invocations; zero values are the queue's
// defaults.
type AsyncOptions struct {
	MaxPayload      int64         // default 1 MiB
	AckWait         time.Duration // how soon a crashed node's jobs resume; default 10s
	RetryBase       time.Duration // first retry delay; default 1s
	RetryMax        time.Duration // longest retry delay; default 5m
	WebhookAttempts int           // default 4
	// Retention of jobs: records and dead letters are kept for JobRetention
	// (default 7 days) within MaxRecordBytes (default 256 MiB; the oldest
	// go first); queued jobs may take MaxQueuedBytes (default 1 GiB), past
	// which new ones are refused with 429.
	JobRetention   time.Duration
	MaxRecordBytes int64
	MaxQueuedBytes int64
	// Buckets: at most MaxBuckets (default 100), each holding at most
	// MaxBucketBytes (default 1 GiB), objects of at most MaxObjectBytes
	// (default 64 MiB).
	MaxBuckets     int
	MaxBucketBytes int64
	MaxObjectBytes int64
}

// async is the part of the platform that runs jobs, schedules and events.
type async struct {
	queue  *queue.Queue
	sched  *schedule.Scheduler
	events *events.Events
	// stopWatch ends the registry watch; watchDone is closed when it has.
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// startAsync opens the queue and follows the function registry, starting and
// stopping each function's workers as it is deployed and removed. Following
// the registry rather than local deploys keeps every node of a cluster in
// step with every deploy.
func (p *Platform) startAsync(ctx context.Context) error {
	o := p.cfg.Async
	q, err := queue.New(ctx, queue.Config{
		JetStream: p.store.JetStream(), Invoker: asyncInvoker{p}, MaxPayload: o.MaxPayload, AckWait: o.AckWait,
		RetryBase: o.RetryBase, RetryMax: o.RetryMax, WebhookAttempts: o.WebhookAttempts, Logger: p.log, Now: p.cfg.Now,
		RecordTTL: o.JobRetention, MaxRecordBytes: o.MaxRecordBytes, MaxQueuedBytes: o.MaxQueuedBytes, Replicas: p.cfg.NATSReplicas,
	})
	if err != nil {
		return fmt.Errorf("start async queue: %w", err)
	}
	a := &async{queue: q, watchDone: make(chan struct{})}
	a.sched, err = schedule.New(ctx, schedule.Config{JetStream: p.store.JetStream(), Fire: p.fireSchedule, Leader: p.cluster.Leader,
		Replicas: p.cfg.NATSReplicas, Logger: p.log, Now: p.cfg.Now})
	if err != nil {
		q.Close(ctx)
		return fmt.Errorf("start scheduler: %w", err)
	}
	a.events, err = events.New(events.Config{JetStream: p.store.JetStream(), Logger: p.log, Now: p.cfg.Now, Replicas: p.cfg.NATSReplicas,
		MaxBuckets: o.MaxBuckets, MaxBucketBytes: o.MaxBucketBytes, MaxObjectBytes: o.MaxObjectBytes,
		Enqueue: func(ctx context.Context, fn, id string, payload []byte, source string) error {
			v, err := p.pinnedVersion(fn)
			if err != nil {
				return err
			}
			_, err = q.Enqueue(ctx, fn, id, payload, queue.EnqueueOptions{Source: source, Version: v})
			return err
		}})
	if err != nil {
		a.sched.Close(ctx)
		q.Close(ctx)
		return fmt.Errorf("start events: %w", err)
	}
	wctx, cancel := context.WithCancel(p.ctx)
	changes, err := p.store.WatchFunctions(wctx)
	if err != nil {
		cancel()
		a.events.Close()
		a.sched.Close(ctx)
		q.Close(ctx)
		return fmt.Errorf("watch functions: %w", err)
	}
	// On a cluster, changes to routes and the removal of single versions
	// are followed too; a node alone makes them all itself.
	var routes <-chan store.RouteEvent
	if p.clustered() {
		if routes, err = p.store.WatchRoutes(wctx); err != nil {
			cancel()
			for range changes {
			}
			a.events.Close()
			a.sched.Close(ctx)
			q.Close(ctx)
			return fmt.Errorf("watch routes: %w", err)
		}
	}
	a.stopWatch = cancel
	p.async = a
	go p.followRegistry(wctx, changes, routes)
	return nil
}

// scheduledEvent is the EventBridge "Scheduled Event" shape, which scheduled
// Lambda handlers expect.
type scheduledEvent struct {
	Version    string   `json:"version"`
	ID         string   `json:"id"`
	DetailType string   `json:"detail-type"`
	Source     string   `json:"source"`
	Account    string   `json:"account"`
	Time       string   `json:"time"`
	Region     string   `json:"region"`
	Resources  []string `json:"resources"`
	Detail     struct {
		CatchUp bool `json:"catch_up"`
	} `json:"detail"`
}

// fireSchedule queues one tick. Its job id is derived from the tick, so that
// every node of a cluster (and a node that fires again after a crash) queues
// the same job, which the queue keeps once.
func (p *Platform) fireSchedule(ctx context.Context, fn string, tick time.Time, catchUp bool) error {
	id := "s-" + fn + "-" + strconv.FormatInt(tick.Unix(), 10)
	ev := scheduledEvent{Version: "0", ID: id, DetailType: "Scheduled Event", Source: "ebb.schedule", Account: "000000000000",
		Time: tick.UTC().Format(time.RFC3339), Region: "local", Resources: []string{"ebb:schedule:" + fn}}
	ev.Detail.CatchUp = catchUp
	b, _ := json.Marshal(ev)
	v, err := p.pinnedVersion(fn)
	if err != nil {
		return err
	}
	_, err = p.async.queue.Enqueue(ctx, fn, id, b, queue.EnqueueOptions{Source: "schedule", Version: v})
	return err
}

// pinnedVersion is the version that a job of fn's schedule or events runs
// on: 0 when fn's newest ebb.yaml names no target (the route decides when
// the job runs), else the version its target (an alias or a version)
// resolves to now, which the job records.
func (p *Platform) pinnedVersion(fn string) (int, error) {
	p.mu.RLock()
	var target string
	if f := p.fns[fn]; f != nil {
		target = f.latest.fn.Spec.Target
	}
	p.mu.RUnlock()
	if target == "" {
		return 0, nil
	}
	v, err := p.resolve(gateway.Target{Name: fn, Qualifier: target})
	if err != nil {
		return 0, fmt.Errorf("resolve target %q of %s: %w", target, fn, err)
	}
	return v.fn.Version, nil
}

func (p *Platform) followRegistry(ctx context.Context, events <-chan store.FunctionEvent, routes <-chan store.RouteEvent) {
	defer close(p.async.watchDone)
	for {
		var ev store.FunctionEvent
		var ok bool
		select {
		case ev, ok = <-events:
			if !ok {
				return
			}
		case rev, ok := <-routes: // nil, and never ready, on a node alone
			if !ok {
				routes = nil
			} else {
				p.followRoutes(ctx, rev)
			}
			continue
		case <-ctx.Done():
			// Unblock the store's watchers, which may be handing us an event.
			for range events {
			}
			if routes != nil { // ranging over nil would block for ever
				for range routes {
				}
			}
			return
		}
		a := p.async
		// Deploys and removals made through other nodes of a cluster
		// reach this one here. A node alone has no others: it skips this,
		// which also keeps a lagging event of its own (a version it has
		// removed since) from being taken up again.
		switch {
		case !p.clustered():
		case ev.Function == nil:
			p.forget(ev.Name)
		default:
			if err := p.adopt(ctx, ev.Function); err != nil && ctx.Err() == nil {
				p.log.Error("take up a version deployed through another node", "function", ev.Name, "version", ev.Function.Version, "err", err)
			}
		}
		if ev.Function == nil {
			if err := a.queue.Remove(ctx, ev.Name); err != nil && ctx.Err() == nil {
				p.log.Warn("remove async jobs", "function", ev.Name, "err", err)
			}
			a.sched.Set(ev.Name, "")
			a.events.Set(ev.Name, nil)
			continue
		}
		spec := &ev.Function.Spec
		if err := a.queue.Start(ctx, ev.Name, queue.SettingsOf(spec)); err != nil && ctx.Err() == nil {
			p.log.Error("start async workers", "function", ev.Name, "err", err)
		}
		if err := a.sched.Set(ev.Name, spec.Schedule); err != nil {
			p.log.Error("schedule function", "function", ev.Name, "err", err)
		}
		if err := a.events.Set(ev.Name, spec.Events); err != nil && ctx.Err() == nil {
			p.log.Error("subscribe function to events", "function", ev.Name, "err", err)
		}
	}
}

// stopAsync lets running jobs finish until ctx ends, then cancels them.
func (p *Platform) stopAsync(ctx context.Context) {
	if p.async == nil {
		return
	}
	p.async.stopWatch()
	<-p.async.watchDone
	p.async.events.Close()
	if err := p.async.sched.Close(ctx); err != nil {
		p.log.Warn("close scheduler", "err", err)
	}
	if err := p.async.queue.Close(ctx); err != nil {
		p.log.Warn("close async queue", "err", err)
	}
}

// Enqueue implements gateway.Enqueuer. A job for NAME:QUALIFIER records the
// version the qualifier resolves to now, and runs on it (the 202 says
// which); an unqualified job follows the function's route when it runs.
func (p *Platform) Enqueue(ctx context.Context, t gateway.Target, id string, payload []byte) (int, error) {
	v, err := p.resolve(t)
	if err != nil {
		return 0, err
	}
	var opt queue.EnqueueOptions
	if t.Qualifier != "" {
		opt.Version = v.fn.Version
	}
	var end func(error)
	opt.Trace, end = p.traceEnqueue(ctx, t.Name, id)
	_, err = p.async.queue.Enqueue(ctx, t.Name, id, payload, opt)
	end(err)
	return opt.Version, err
}

// elsewhereWait is how long a node's workers of a function leave its jobs
// to the nodes holding its instance slots: as long as a refused claim is
// remembered (half a heartbeat interval), after which the node asks the
// bucket again (the holder may have let its slot go, or died).
const elsewhereWait = cluster.DefaultInterval / 2

// asyncInvoker runs jobs through the synchronous invoke path.
type asyncInvoker struct{ p *Platform }

func (a asyncInvoker) Invoke(ctx context.Context, name string, version int, id string, payload []byte) ([]byte, error) {
	t := gateway.Target{Name: name}
	if version > 0 {
		t.Qualifier = strconv.Itoa(version)
	}
	// The queue put the job's trigger in ctx, and its caller's trace.
	if h, ok := ebb.TraceHeadersOf(ctx); ok {
		ctx = traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": h.Parent, "tracestate": h.State})
	}
	res, err := a.p.Invoke(ctx, t, id, payload)
	var br *gateway.BadRequestError
	var gone *ebb.NotFoundError
	var elsewhere *elsewhereError
	switch {
	case errors.As(err, &elsewhere):
		// Every instance slot is held by other nodes: back to the shared
		// consumer, for their workers (this node's pause while a refused
		// claim is remembered, then it asks again).
		return nil, &queue.HeldElsewhere{Wait: elsewhereWait, Err: err}
	case errors.As(err, &gone):
		// The job's version (or alias) was removed: no retry will help.
		return nil, &queue.PermanentError{Err: err}
	case errors.Is(err, ebb.ErrNotFound):
		// Deployed but not yet swapped in on this node (the registry watch
		// can run ahead of the deploy that caused it), or being redeployed:
		// try again later. Gone from the registry: no retry will help.
		if _, gerr := a.p.store.GetFunction(ctx, name); gerr == nil {
			return nil, ebb.ErrOverloaded
		}
		return nil, &queue.PermanentError{Err: err}
	case errors.As(err, &br):
		return nil, &queue.PermanentError{Err: err}
	}
	if res == nil {
		return nil, err
	}
	return res.Body, err
}

// asyncRoutes are the jobs and bucket routes.
func (p *Platform) asyncRoutes() []route.Route {
	name := func(r *http.Request) string { return r.PathValue("name") }
	return append([]route.Route{
		// A job's function is known only once it is read: getJob checks.
		{Pattern: "GET /v1/jobs/{id}", Perm: auth.PermJobs, Handler: p.getJob},
		{Pattern: "GET /v1/functions/{name}/jobs", Perm: auth.PermJobs, Function: name, Handler: p.listJobs},
		{Pattern: "POST /v1/functions/{name}/jobs/redrive", Perm: auth.PermDeploy, Function: name, Audit: "jobs.redrive", Handler: p.redrive},
	}, p.async.events.Routes()...)
}

func (p *Platform) getJob(w http.ResponseWriter, r *http.Request) {
	j, err := p.async.queue.Get(r.Context(), r.PathValue("id"))
	if err == nil {
		// Out of scope reads as absent: a key learns nothing of other
		// functions' jobs, not even that an id exists.
		if auth.Check(r.Context(), auth.PermJobs, j.Function) != nil {
			err = ebb.ErrNotFound
		}
	}
	if err != nil {
		p.jobError(w, err, "job not found")
		return
	}
	writeAsyncJSON(w, http.StatusOK, j)
}

func (p *Platform) listJobs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	status := queue.Status(r.URL.Query().Get("status"))
	switch status {
	case "", queue.StatusQueued, queue.StatusRunning, queue.StatusFailed, queue.StatusSucceeded, queue.StatusDead:
	default:
		route.Write(w, route.Native, &route.Error{Status: http.StatusBadRequest, Type: "InvalidRequestContent",
			Message: "status must be queued, running, failed, succeeded or dead"})
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	switch {
	case limit <= 0:
		limit = 100
	case limit > 10000:
		limit = 10000 // a larger ask gets the most there is, not the default
	}
	var before uint64
	if c := r.URL.Query().Get("before"); c != "" {
		var err error
		if before, err = strconv.ParseUint(c, 10, 64); err != nil || before == 0 {
			route.Write(w, route.Native, &route.Error{Status: http.StatusBadRequest, Type: "InvalidRequestContent",
				Message: "before must be the next cursor of an earlier page"})
			return
		}
	}
	jobs, next, err := p.async.queue.ListPage(r.Context(), name, status, limit, before)
	if err != nil {
		p.jobError(w, err, "")
		return
	}
	if jobs == nil {
		jobs = []*queue.Job{}
	}
	out := map[string]any{"jobs": jobs}
	if next != 0 {
		out["next"] = strconv.FormatUint(next, 10)
	}
	writeAsyncJSON(w, http.StatusOK, out)
}

func (p *Platform) redrive(w http.ResponseWriter, r *http.Request) {
	n, err := p.async.queue.Redrive(r.Context(), r.PathValue("name"))
	if err != nil {
		p.jobError(w, err, "")
		return
	}
	writeAsyncJSON(w, http.StatusOK, map[string]int{"redriven": n})
}

func (p *Platform) jobError(w http.ResponseWriter, err error, notFound string) {
	if errors.Is(err, ebb.ErrNotFound) && notFound != "" {
		route.Write(w, route.Native, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: notFound})
		return
	}
	p.log.Error("jobs request failed", "err", err)
	route.Write(w, route.Native, &route.Error{Status: http.StatusInternalServerError, Type: "Ebb.InternalError", Message: "internal error"})
}

func writeAsyncJSON(w http.ResponseWriter, status int, v any) { route.Pretty(w, status, v) }
