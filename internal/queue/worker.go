package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

// fetchWait bounds one pull request, so that a stopped group notices soon.
const fetchWait = 2 * time.Second

// storeTimeout bounds one bookkeeping call to JetStream.
const storeTimeout = 10 * time.Second

// Start runs fn's workers with set, replacing workers started with other
// settings. Jobs already running under the old settings finish.
func (q *Queue) Start(ctx context.Context, fn string, set Settings) error {
	set.Workers = min(max(set.Workers, 1), maxWorkers)
	cons, err := q.js.CreateOrUpdateConsumer(ctx, JobsStream, jetstream.ConsumerConfig{
		Durable: "fn-" + fn, Description: "ebb async workers of " + fn, FilterSubject: jobsPrefix + fn,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: q.cfg.AckWait, MaxDeliver: -1,
		// Jobs waiting out a retry backoff are pending too; the workers,
		// not this, bound the jobs in flight.
		MaxAckPending: 100000, MaxRequestBatch: maxWorkers,
	})
	if err != nil {
		return fmt.Errorf("start workers of %s: %w", fn, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ebb.ErrClosed
	}
	if old := q.groups[fn]; old != nil {
		if old.set == set {
			return nil
		}
		old.cancel()
	}
	gctx, cancel := context.WithCancel(q.runCtx)
	g := &group{name: fn, set: set, cancel: cancel, done: make(chan struct{})}
	q.groups[fn] = g
	q.loops.Add(1)
	go q.fetchLoop(gctx, g, cons)
	return nil
}

// Stop stops fn's workers; its queued jobs stay queued for a later Start.
func (q *Queue) Stop(fn string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if g := q.groups[fn]; g != nil {
		g.cancel()
		delete(q.groups, fn)
	}
}

// Remove is for a function that was removed: its workers stop, its consumer
// is deleted (a removed function must not hold a consumer slot of the jobs
// stream forever) and its queued jobs are purged, since nothing can run them.
// Their records stay readable with their last status.
func (q *Queue) Remove(ctx context.Context, fn string) error {
	q.Stop(fn)
	if err := q.js.DeleteConsumer(ctx, JobsStream, "fn-"+fn); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer of %s: %w", fn, err)
	}
	st, err := q.js.Stream(ctx, JobsStream)
	if err != nil {
		return fmt.Errorf("open jobs stream: %w", err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(jobsPrefix+fn)); err != nil {
		return fmt.Errorf("purge jobs of %s: %w", fn, err)
	}
	return nil
}

// fetchLoop pulls only as many jobs as there are idle workers, so that no
// job waits in a local buffer while its ack deadline runs.
func (q *Queue) fetchLoop(ctx context.Context, g *group, cons jetstream.Consumer) {
	defer q.loops.Done()
	defer close(g.done)
	slots := make(chan struct{}, g.set.Workers)
	var pause *time.Timer
	defer func() {
		if pause != nil {
			pause.Stop()
		}
	}()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if d := time.Until(time.Unix(0, g.pausedUntil.Load())); d > 0 {
			// This node's jobs of the function belong on another node
			// for now: leave them to its workers. (Checked with a worker
			// free, so that a job that just set the pause is seen.)
			<-slots
			if pause == nil {
				pause = time.NewTimer(d)
			} else {
				pause.Reset(d)
			}
			select {
			case <-pause.C:
			case <-ctx.Done():
				return
			}
			continue
		}
		held := 1
		for held < g.set.Workers {
			select {
			case slots <- struct{}{}:
				held++
				continue
			default:
			}
			break
		}
		fctx, cancel := context.WithTimeout(ctx, fetchWait)
		batch, err := cons.Fetch(held, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				held--
				q.handlers.Add(1)
				go func() {
					defer q.handlers.Done()
					defer func() { <-slots }()
					q.handle(g, msg)
				}()
			}
			err = batch.Error()
		}
		cancel()
		for ; held > 0; held-- {
			<-slots
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			q.log.Warn("fetch jobs", "function", g.name, "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
		}
	}
}

// handle runs one delivery of a job to its end: a stored outcome and an ack,
// a scheduled retry and a nak, or nothing at all if ebb is stopping.
func (q *Queue) handle(g *group, msg jetstream.Msg) {
	ctx := q.runCtx
	id := msg.Headers().Get(hdrID)
	if !ValidID(id) {
		q.log.Error("job message without a valid id; dropped", "subject", msg.Subject())
		msg.Term()
		return
	}
	bctx, cancel := context.WithTimeout(ctx, storeTimeout)
	job, err := q.get(bctx, g.name, id)
	cancel()
	if errors.Is(err, ebb.ErrNotFound) {
		job = q.jobFromHeaders(g.name, id, msg)
	} else if err != nil {
		q.log.Warn("read job record; retrying", "job", id, "err", err)
		msg.NakWithDelay(q.cfg.OverloadDelay)
		return
	}
	if r, _ := strconv.Atoi(msg.Headers().Get(hdrRedrive)); job.Status.Final() && r > job.Redrives {
		// A redriven job that overtook Redrive's own record update.
		job.redriven(r, job.EnqueuedAt)
	}
	if job.Status.Final() {
		// A redelivery of a job whose outcome is stored: ebb stopped
		// between storing it and the ack. Finish what was left.
		q.finish(ctx, g, job, msg, nil)
		return
	}
	now := q.cfg.Now().UTC()
	if age := now.Sub(job.since()); age > g.set.MaxAge {
		job.Error = &JobError{Type: "Ebb.JobExpired", Message: fmt.Sprintf("the job is %s old, past the function's max_age of %s", age.Round(time.Second), g.set.MaxAge)}
		q.kill(ctx, g, job, msg)
		return
	}
	payload, err := q.payload(ctx, msg)
	if err != nil {
		job.Error = &JobError{Type: "Ebb.PayloadLost", Message: err.Error()}
		q.kill(ctx, g, job, msg)
		return
	}
	job.Status, job.Attempts, job.StartedAt, job.NextAttemptAt = StatusRunning, job.Attempts+1, now, time.Time{}
	if err := q.putCtx(ctx, job); err != nil {
		q.log.Warn("record running job; retrying", "job", id, "err", err)
		msg.NakWithDelay(q.cfg.OverloadDelay)
		return
	}
	stop := q.heartbeat(msg)
	ictx := ebb.WithTrigger(ctx, job.trigger())
	if job.Trace.Parent != "" {
		ictx = ebb.WithTraceHeaders(ictx, job.Trace)
	}
	result, err := q.cfg.Invoker.Invoke(ictx, g.name, job.Version, id, payload)
	stop()
	end := q.cfg.Now().UTC()
	var perm *PermanentError
	var elsewhere *HeldElsewhere
	switch {
	case ctx.Err() != nil:
		// ebb is stopping: the attempt did not finish, through no fault of
		// the function. The message comes back on the next start.
		job.Status = StatusQueued
		bctx, cancel := context.WithTimeout(context.Background(), time.Second)
		q.put(bctx, job)
		cancel()
		msg.Nak()
	case err == nil:
		job.Status, job.FinishedAt, job.Error = StatusSucceeded, end, nil
		if len(result) > q.cfg.MaxResultBytes {
			job.Result, job.ResultTruncated = nil, true
		} else if json.Valid(result) {
			job.Result = json.RawMessage(result)
		} else {
			job.Result, _ = json.Marshal(string(result))
		}
		q.finish(ctx, g, job, msg, payload)
	case errors.As(err, &elsewhere):
		// Never started here: not an attempt, and at once back to the
		// workers of the node that may run it.
		g.pausedUntil.Store(time.Now().Add(elsewhere.Wait).UnixNano())
		job.Status, job.Attempts = StatusQueued, job.Attempts-1
		q.putCtx(ctx, job)
		msg.Nak()
	case errors.Is(err, ebb.ErrOverloaded) || errors.Is(err, ebb.ErrDraining):
		// Never started: not an attempt.
		job.Status, job.Attempts = StatusQueued, job.Attempts-1
		q.putCtx(ctx, job)
		msg.NakWithDelay(jitter(q.cfg.OverloadDelay))
	case errors.As(err, &perm):
		job.Error = jobError(err)
		q.kill(ctx, g, job, msg)
	default:
		job.Failures++
		job.Error = jobError(err)
		if job.Failures > g.set.MaxRetries {
			q.kill(ctx, g, job, msg)
			return
		}
		delay := Backoff(q.cfg.RetryBase, q.cfg.RetryMax, job.Failures)
		if left := g.set.MaxAge - end.Sub(job.since()); delay > left {
			// The retry would come after max_age; give up now rather
			// than hold the job only to expire it.
			q.kill(ctx, g, job, msg)
			return
		}
		job.Status, job.NextAttemptAt = StatusFailed, end.Add(delay)
		if err := q.putCtx(ctx, job); err != nil {
			q.log.Warn("record failed attempt", "job", id, "err", err)
		}
		msg.NakWithDelay(delay)
	}
}

func (j *Job) since() time.Time { return j.EnqueuedAt }

func (q *Queue) putCtx(ctx context.Context, job *Job) error {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	return q.put(ctx, job)
}

func (q *Queue) jobFromHeaders(fn, id string, msg jetstream.Msg) *Job {
	h := msg.Headers()
	job := &Job{ID: id, Function: fn, Status: StatusQueued, Source: h.Get(hdrSource)}
	job.Hops, _ = strconv.Atoi(h.Get(hdrHops))
	job.Version, _ = strconv.Atoi(h.Get(hdrVersion))
	job.Trace = ebb.TraceHeaders{Parent: h.Get(hdrTraceParent), State: h.Get(hdrTraceState)}
	job.EnqueuedAt, _ = time.Parse(time.RFC3339Nano, h.Get(hdrEnqueued))
	if job.EnqueuedAt.IsZero() {
		job.EnqueuedAt = q.cfg.Now().UTC()
	}
	return job
}

func (q *Queue) payload(ctx context.Context, msg jetstream.Msg) ([]byte, error) {
	obj := msg.Headers().Get(hdrObject)
	if obj == "" {
		return msg.Data(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	b, err := q.payloads.GetBytes(ctx, obj)
	if err != nil {
		return nil, fmt.Errorf("read payload object: %w", err)
	}
	return b, nil
}

// heartbeat tells the server, every AckWait/3, that the job is still being
// worked on, so that a long handler is not mistaken for a dead worker.
func (q *Queue) heartbeat(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(q.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				msg.InProgress()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// kill moves a job to the dead letters: the dead-letter message first (so
// that a dead record always has one to redrive), then the record, then the
// failure destination, then the ack.
func (q *Queue) kill(ctx context.Context, g *group, job *Job, msg jetstream.Msg) {
	job.Status, job.FinishedAt, job.NextAttemptAt = StatusDead, q.cfg.Now().UTC(), time.Time{}
	q.finish(ctx, g, job, msg, nil)
}

// finish stores a final outcome, delivers it to its destination and acks.
// It is idempotent: a redelivered final job goes through it again and only
// does what is missing.
func (q *Queue) finish(ctx context.Context, g *group, job *Job, msg jetstream.Msg, payload []byte) {
	if job.Status == StatusDead {
		dm := q.message(deadPrefix+job.Function, job, nil)
		if obj := msg.Headers().Get(hdrObject); obj != "" {
			dm.Header.Set(hdrObject, obj)
		} else {
			dm.Data = msg.Data()
		}
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		_, err := q.js.PublishMsg(pctx, dm, jetstream.WithMsgID("dead-"+job.ID+"-"+strconv.Itoa(job.Redrives)))
		cancel()
		if err != nil {
			q.log.Warn("write dead letter; retrying", "job", job.ID, "err", err)
			msg.NakWithDelay(q.cfg.OverloadDelay)
			return
		}
	}
	target := g.set.OnSuccess
	if job.Status == StatusDead {
		target = g.set.OnFailure
	}
	if target != "" && job.Destination == nil {
		job.Destination = &Delivery{Target: target}
	}
	if err := q.putCtx(ctx, job); err != nil {
		q.log.Warn("record finished job; retrying", "job", job.ID, "err", err)
		msg.NakWithDelay(q.cfg.OverloadDelay)
		return
	}
	if d := job.Destination; d != nil && !d.Delivered && d.Error == "" {
		q.deliver(ctx, job)
		q.putCtx(ctx, job)
	}
	if job.Status == StatusSucceeded {
		if obj := msg.Headers().Get(hdrObject); obj != "" {
			dctx, cancel := context.WithTimeout(ctx, storeTimeout)
			q.payloads.Delete(dctx, obj)
			cancel()
		}
	}
	actx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	// DoubleAck waits for the server to confirm, so that a lost ack is
	// known (and logged) rather than silently turned into a rerun.
	if err := msg.DoubleAck(actx); err != nil {
		q.log.Warn("ack job; it may run again", "job", job.ID, "err", err)
	}
}

// deliver sends a finished job to its destination: a webhook gets the record
// as JSON (retried with backoff), a function gets it as an async job whose id
// is derived from this one, so that a redelivery does not send it twice.
func (q *Queue) deliver(ctx context.Context, job *Job) {
	d := job.Destination
	body, _ := json.Marshal(job)
	if ebb.IsWebhook(d.Target) {
		var last error
		for attempt := 1; attempt <= q.cfg.WebhookAttempts; attempt++ {
			d.Attempts = attempt
			if last = q.post(ctx, d.Target, job.ID, body); last == nil {
				d.Delivered, d.Error, d.At = true, "", q.cfg.Now().UTC()
				return
			}
			if attempt == q.cfg.WebhookAttempts {
				break
			}
			select {
			case <-time.After(Backoff(q.cfg.RetryBase, q.cfg.RetryMax, attempt)):
			case <-ctx.Done():
				return
			}
		}
		d.Error, d.At = last.Error(), q.cfg.Now().UTC()
		q.log.Warn("webhook destination failed", "job", job.ID, "target", d.Target, "attempts", d.Attempts, "err", last)
		return
	}
	if strings.Contains(d.Target, ":") {
		// Neither a webhook nor a function: validation refuses these, so
		// only an old record can hold one.
		d.Error, d.At = "destination "+strconv.Quote(d.Target)+" is neither an http(s) URL nor a function", q.cfg.Now().UTC()
		return
	}
	if job.Hops+1 > MaxHops {
		d.Error, d.At = fmt.Sprintf("not delivered: the chain of destinations is %d hops long, the most allowed (a loop?)", MaxHops), q.cfg.Now().UTC()
		q.log.Warn("destination chain too long; not delivered", "job", job.ID, "target", d.Target, "hops", job.Hops)
		return
	}
	d.Attempts++
	id := "d-" + job.ID
	if len(id) > 128 {
		id = id[:128]
	}
	ectx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if _, err := q.Enqueue(ectx, d.Target, id, body, EnqueueOptions{Source: "destination", Hops: job.Hops + 1, Trace: job.Trace}); err != nil {
		d.Error, d.At = err.Error(), q.cfg.Now().UTC()
		return
	}
	d.Delivered, d.JobID, d.At = true, id, q.cfg.Now().UTC()
}

func (q *Queue) post(ctx context.Context, url, id string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Ebb-Job-Id", id)
	resp, err := q.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// Backoff is the delay before retry n (from 1): base·2^(n-1) with ±50%
// jitter, capped at max. Jitter spreads retries of a burst of jobs that
// failed together, so they do not fail together again.
func Backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return jitter(min(d, max))
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d/2 + rand.N(d)
}

// jobError converts an invocation error into the record's error.
func jobError(err error) *JobError {
	var he *ebb.HandlerError
	var ie *ebb.InitError
	switch {
	case errors.As(err, &he):
		return &JobError{Type: he.Type, Message: he.Message}
	case errors.As(err, &ie):
		return &JobError{Type: ie.Type, Message: ie.Message}
	case errors.Is(err, ebb.ErrTimeout):
		return &JobError{Type: "Sandbox.Timedout", Message: err.Error()}
	case errors.Is(err, ebb.ErrOutOfMemory):
		return &JobError{Type: "Runtime.OutOfMemory", Message: "the instance exceeded its memory limit and was stopped"}
	case errors.Is(err, ebb.ErrCrashed):
		return &JobError{Type: "Runtime.ExitError", Message: "the instance crashed while handling the job"}
	case errors.Is(err, ebb.ErrNotFound):
		return &JobError{Type: "ResourceNotFound", Message: "function not found"}
	}
	return &JobError{Type: "Ebb.InvokeError", Message: err.Error()}
}

func sortJobs(js []*Job) {
	sort.Slice(js, func(a, b int) bool {
		if !js[a].EnqueuedAt.Equal(js[b].EnqueuedAt) {
			return js[a].EnqueuedAt.After(js[b].EnqueuedAt)
		}
		return js[a].ID < js[b].ID
	})
}

// Redrive re-queues fn's dead letters and returns how many. Each keeps its
// id and history; its failures are reset, and its age counts from now.
func (q *Queue) Redrive(ctx context.Context, fn string) (int, error) {
	cons, err := q.dead.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{deadPrefix + fn}, InactiveThreshold: listConsumerIdle})
	if err != nil {
		return 0, fmt.Errorf("redrive %s: %w", fn, err)
	}
	defer deleteConsumer(q.dead, cons)
	n := 0
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err != nil {
			if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				return n, nil
			}
			return n, fmt.Errorf("redrive %s: %w", fn, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return n, fmt.Errorf("redrive %s: %w", fn, err)
		}
		if ok, err := q.redriveOne(ctx, fn, msg); err != nil {
			return n, err
		} else if ok {
			n++
		}
		if err := q.dead.DeleteMsg(ctx, meta.Sequence.Stream); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, fmt.Errorf("redrive %s: delete dead letter: %w", fn, err)
		}
		if meta.NumPending == 0 {
			return n, nil
		}
	}
}

// redriven resets job for its redrive number n.
func (j *Job) redriven(n int, at time.Time) {
	j.Redrives, j.EnqueuedAt = n, at
	j.Status, j.Failures, j.NextAttemptAt, j.Destination = StatusQueued, 0, time.Time{}, nil
}

func (q *Queue) redriveOne(ctx context.Context, fn string, msg jetstream.Msg) (bool, error) {
	id := msg.Headers().Get(hdrID)
	if !ValidID(id) {
		return false, nil
	}
	entry, err := q.records.Get(ctx, recordKey(fn, id))
	if err != nil {
		return false, nil // its record expired
	}
	job, err := decodeJob(entry.Value())
	if err != nil || job.Status != StatusDead {
		// Already redriven (a dead letter left by a crash mid-redrive).
		return false, nil
	}
	job.redriven(job.Redrives+1, q.cfg.Now().UTC())
	m := q.message(jobsPrefix+fn, job, msg.Data())
	m.Header.Set(hdrRedrive, strconv.Itoa(job.Redrives))
	if obj := msg.Headers().Get(hdrObject); obj != "" {
		m.Header.Set(hdrObject, obj)
	}
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(id+"-r"+strconv.Itoa(job.Redrives))); err != nil {
		return false, fmt.Errorf("redrive job %s: %w", id, err)
	}
	// A worker may already have taken the job and written a newer record
	// (running, succeeded): the queued record goes in only over the dead one
	// it replaces, never over the worker's.
	b, err := json.Marshal(job)
	if err != nil {
		return false, fmt.Errorf("redrive job %s: encode record: %w", id, err)
	}
	if _, err := q.records.Update(ctx, recordKey(fn, id), b, entry.Revision()); err != nil {
		q.log.Debug("redriven job's record already moved on", "job", id, "function", fn, "err", err)
	}
	return true, nil
}
