// Package queue runs asynchronous invocations on NATS JetStream so that no
// job is ever silently lost.
//
// A job is a message in a work-queue stream (written, and acknowledged by the
// server, before the caller hears its id) plus a record in a KV bucket that
// says how it is going. Each function has a durable pull consumer; its
// workers take at most as many jobs as the function can run at once, keep
// the message's ack deadline alive while the handler runs, store the outcome,
// and only then acknowledge the message. If ebb dies at any point before that
// acknowledgement, the server hands the message out again after AckWait:
// delivery is at least once, and the job id (the request id the handler sees
// on every attempt) lets a handler deduplicate.
//
// Failed attempts are retried with exponential backoff and jitter up to the
// function's max_retries and within its max_age; then the job goes to a
// dead-letter stream with its last error, from which Redrive re-queues it.
// Outcomes can be sent to a webhook or another function (destinations).
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

// Names in JetStream. They are part of the on-disk format.
const (
	JobsStream     = "EBB_JOBS"
	DeadStream     = "EBB_DEAD"
	RecordsBucket  = "ebb_jobs"
	PayloadsBucket = "ebb_job_payloads"
	jobsPrefix     = "ebb.jobs."
	deadPrefix     = "ebb.dead."
)

// Message headers of a job.
const (
	hdrID       = "Ebb-Job-Id"
	hdrFunction = "Ebb-Function"
	hdrEnqueued = "Ebb-Enqueued"
	hdrSource   = "Ebb-Source"
	hdrObject   = "Ebb-Payload-Object"
	hdrRedrive  = "Ebb-Redrive"
	hdrHops     = "Ebb-Hops"
	hdrVersion  = "Ebb-Version"
	// The caller's W3C trace context, under the names HTTP gives it.
	hdrTraceParent = "Traceparent"
	hdrTraceState  = "Tracestate"
)

// MaxHops bounds a chain of destinations: a job made by delivering an
// outcome to a function is one hop further than the job it reports on, and
// one that would pass MaxHops is not made. Loops are refused at deploy; this
// stops what the registry could not see (a loop formed by two deploys racing,
// or through an event source).
const MaxHops = 8

// Invoker runs one invocation synchronously; the platform implements it.
// requestID is what the handler sees as its request id.
type Invoker interface {
	// version is the version the job was pinned to when it was queued
	// (NAME:alias or NAME:N), 0 when it follows the function's route.
	Invoke(ctx context.Context, name string, version int, requestID string, payload []byte) ([]byte, error)
}

// PermanentError marks an invocation error that no retry can fix (the
// function does not exist, or cannot take events): the job goes straight to
// the dead letters.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Config configures a Queue.
type Config struct {
	JetStream jetstream.JetStream
	Invoker   Invoker
	// MaxPayload bounds an async payload; default 1 MiB. Payloads that do
	// not fit in one NATS message go to an object store.
	MaxPayload int64
	// MaxResultBytes bounds the result kept in a job record; default 256 KiB.
	MaxResultBytes int
	// AckWait is how long the server waits for a sign of life from a worker
	// before handing its job to another; workers send one every AckWait/3
	// while a handler runs. It bounds how soon jobs resume after a crash.
	// Default 10s.
	AckWait time.Duration
	// RetryBase and RetryMax shape the backoff between attempts:
	// RetryBase·2^(n-1), with ±50% jitter, capped at RetryMax. Defaults 1s
	// and 5m. Webhook deliveries use the same shape.
	RetryBase time.Duration
	RetryMax  time.Duration
	// OverloadDelay is how long a job waits when the function is at
	// capacity; default 250ms. It does not count as an attempt.
	OverloadDelay time.Duration
	// RecordTTL is how long job records (and dead letters) are kept;
	// default 7 days.
	RecordTTL time.Duration
	// MaxQueuedBytes bounds the jobs waiting to run (the job stream, and
	// the store of payloads too large for one message, each); default
	// 1 GiB. A full queue refuses new jobs with ebb.ErrOverloaded.
	MaxQueuedBytes int64
	// MaxRecordBytes bounds the job records and, separately, the dead
	// letters; default 256 MiB. Past it the oldest go first, as past
	// RecordTTL.
	MaxRecordBytes int64
	// WebhookAttempts bounds deliveries to a webhook destination; default 4.
	WebhookAttempts int
	// HTTPClient posts to webhooks; default a client with a 10s timeout.
	HTTPClient *http.Client
	// Replicas of the streams and buckets (external NATS); default 1.
	Replicas int
	Logger   *slog.Logger
	Now      func() time.Time
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.JetStream == nil || c.Invoker == nil {
		return errors.New("queue config: JetStream and Invoker are required")
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = 1 << 20
	}
	if c.MaxResultBytes <= 0 {
		c.MaxResultBytes = 256 << 10
	}
	if c.AckWait <= 0 {
		c.AckWait = 10 * time.Second
	}
	if c.AckWait < 300*time.Millisecond {
		return fmt.Errorf("queue config: AckWait %s is below 300ms", c.AckWait)
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.RetryMax < c.RetryBase {
		c.RetryMax = c.RetryBase
	}
	if c.OverloadDelay <= 0 {
		c.OverloadDelay = 250 * time.Millisecond
	}
	if c.RecordTTL <= 0 {
		c.RecordTTL = 7 * 24 * time.Hour
	}
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = 1 << 30
	}
	if c.MaxRecordBytes <= 0 {
		c.MaxRecordBytes = 256 << 20
	}
	if c.MaxQueuedBytes < 2*c.MaxPayload || c.MaxRecordBytes < 2*int64(c.MaxResultBytes) {
		return fmt.Errorf("queue config: MaxQueuedBytes %d and MaxRecordBytes %d must hold at least two payloads (%d) and results (%d)",
			c.MaxQueuedBytes, c.MaxRecordBytes, c.MaxPayload, c.MaxResultBytes)
	}
	if c.WebhookAttempts <= 0 {
		c.WebhookAttempts = 4
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Settings are one function's async settings.
type Settings struct {
	// Workers bounds the function's jobs in flight (its concurrency times
	// its max instances).
	Workers    int
	MaxRetries int
	MaxAge     time.Duration
	OnSuccess  string
	OnFailure  string
}

// SettingsOf derives a function's Settings from its spec.
func SettingsOf(s *ebb.Spec) Settings {
	set := Settings{Workers: s.Concurrency * s.MaxInstances, MaxRetries: ebb.DefaultAsyncMaxRetries, MaxAge: ebb.DefaultAsyncMaxAge}
	if a := s.Async; a != nil {
		set.MaxRetries, set.OnSuccess, set.OnFailure = a.MaxRetries, a.OnSuccess, a.OnFailure
		if a.MaxAge > 0 {
			set.MaxAge = a.MaxAge
		}
	}
	set.Workers = min(max(set.Workers, 1), maxWorkers)
	return set
}

// maxWorkers caps one function's workers: beyond it the pool's own queue
// absorbs bursts, and goroutines are not free.
const maxWorkers = 512

// Queue is the async job system.
type Queue struct {
	cfg      Config
	log      *slog.Logger
	js       jetstream.JetStream
	jobs     jetstream.Stream
	dead     jetstream.Stream
	records  jetstream.KeyValue
	payloads jetstream.ObjectStore
	// inlineMax is the largest payload carried in the message itself.
	inlineMax int

	// runCtx is the parent of every handler; it is cancelled only when
	// Close's deadline passes, so that a redeploy or a graceful stop lets
	// running jobs finish.
	runCtx    context.Context
	runCancel context.CancelFunc
	handlers  sync.WaitGroup // running jobs

	mu     sync.Mutex // guards groups and closed
	groups map[string]*group
	closed bool
	loops  sync.WaitGroup // fetch loops
}

// group is one function's workers under one set of Settings.
type group struct {
	name   string
	set    Settings
	cancel context.CancelFunc
	done   chan struct{}
	// pausedUntil (unix nanoseconds) is when the group may pull again
	// after a job was found to belong on another node (HeldElsewhere).
	pausedUntil atomic.Int64
}

// HeldElsewhere is an Invoker's answer that a job cannot start on this
// node now: every instance slot of its function is held by other nodes of
// the cluster. The job goes back to the stream at once, not counted as an
// attempt, and this node's workers of the function pull nothing for Wait,
// so that the holders' workers, which share the consumer, take its jobs.
type HeldElsewhere struct {
	Wait time.Duration
	Err  error
}

func (e *HeldElsewhere) Error() string { return "held by another node: " + e.Err.Error() }
func (e *HeldElsewhere) Unwrap() error { return e.Err }

// New creates or binds the streams and buckets and returns a Queue with no
// workers; Start runs them per function.
func New(ctx context.Context, cfg Config) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	q := &Queue{cfg: cfg, log: cfg.Logger, js: cfg.JetStream, groups: map[string]*group{}}
	var err error
	q.jobs, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: JobsStream, Description: "ebb async jobs", Subjects: []string{jobsPrefix + "*"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
		MaxAge: ebb.MaxAsyncAge + 24*time.Hour, Duplicates: 2 * time.Minute,
		// A full queue refuses new jobs; dropping queued ones would lose
		// jobs whose callers were told they are stored.
		MaxBytes: cfg.MaxQueuedBytes, Discard: jetstream.DiscardNew,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", JobsStream, err)
	}
	q.dead, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: DeadStream, Description: "ebb dead-letter jobs", Subjects: []string{deadPrefix + "*"},
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas, MaxAge: cfg.RecordTTL, Duplicates: 2 * time.Minute,
		MaxBytes: cfg.MaxRecordBytes, Discard: jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", DeadStream, err)
	}
	q.records, err = q.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: RecordsBucket, Description: "ebb async job records", History: 1, TTL: cfg.RecordTTL,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas, MaxBytes: cfg.MaxRecordBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", RecordsBucket, err)
	}
	if err := q.dropOldRecords(ctx); err != nil {
		return nil, err
	}
	q.payloads, err = q.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: PayloadsBucket, Description: "ebb async payloads too large for one message", TTL: cfg.RecordTTL,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas, MaxBytes: cfg.MaxQueuedBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("create object store %s: %w", PayloadsBucket, err)
	}
	// Headers and the protocol need room beside the payload.
	q.inlineMax = int(q.js.Conn().MaxPayload()) - 8<<10
	q.runCtx, q.runCancel = context.WithCancel(context.Background())
	return q, nil
}

// dropOldRecords makes the records bucket drop its oldest records when it
// reaches MaxRecordBytes, as it does past RecordTTL: a KV bucket refuses new
// writes by default, which would leave new jobs without a record.
func (q *Queue) dropOldRecords(ctx context.Context) error {
	name := "KV_" + RecordsBucket // the stream behind the bucket
	st, err := q.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("bind stream %s: %w", name, err)
	}
	cfg := st.CachedInfo().Config
	if cfg.Discard == jetstream.DiscardOld {
		return nil
	}
	cfg.Discard = jetstream.DiscardOld
	if _, err := q.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("update stream %s: %w", name, err)
	}
	return nil
}

// full says whether a store error means a stream is at its MaxBytes (or
// the server out of storage).
func full(err error) bool {
	s := err.Error()
	return strings.Contains(s, "maximum bytes exceeded") || strings.Contains(s, "insufficient resources")
}

// MaxPayload is the largest payload Enqueue accepts.
func (q *Queue) MaxPayload() int64 { return q.cfg.MaxPayload }

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// ValidID reports whether id can name a job.
func ValidID(id string) bool { return idRE.MatchString(id) }

func recordKey(fn, id string) string { return fn + "." + id }

// EnqueueOptions are the optional parts of a job.
type EnqueueOptions struct {
	// Source says what made the job ("invoke" when empty).
	Source string
	// Hops counts the destinations that led to this job (0: none).
	Hops int
	// Version pins the job to one version of fn (0: none).
	Version int
	// Trace is the caller's trace context, handed to the job's run.
	Trace ebb.TraceHeaders
}

// Enqueue durably queues payload for fn under id and records it. It returns
// once the server has stored the job, so an id given to a caller always
// names a job that will run. Enqueueing an id already queued in the last
// two minutes is a no-op that returns the existing record: retries of the
// same request do not double the work.
func (q *Queue) Enqueue(ctx context.Context, fn, id string, payload []byte, opt EnqueueOptions) (*Job, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("enqueue job: id %q is not 1-128 characters of A-Z, a-z, 0-9, '-' and '_'", id)
	}
	if int64(len(payload)) > q.cfg.MaxPayload {
		return nil, fmt.Errorf("enqueue job: %d bytes: %w", len(payload), ebb.ErrPayloadTooLarge)
	}
	if opt.Source == "" {
		opt.Source = "invoke"
	}
	now := q.cfg.Now().UTC()
	job := &Job{ID: id, Function: fn, Version: opt.Version, Status: StatusQueued, Source: opt.Source, EnqueuedAt: now, Hops: opt.Hops,
		Trace: opt.Trace}
	msg := q.message(jobsPrefix+fn, job, nil)
	if len(payload) > q.inlineMax {
		if _, err := q.payloads.PutBytes(ctx, id, payload); err != nil {
			if full(err) {
				return nil, fmt.Errorf("enqueue job: the job queue is full (%d bytes): %w", q.cfg.MaxQueuedBytes, ebb.ErrOverloaded)
			}
			return nil, fmt.Errorf("enqueue job: store payload: %w", err)
		}
		msg.Header.Set(hdrObject, id)
	} else {
		msg.Data = payload
	}
	ack, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(JobsStream))
	if err != nil {
		if full(err) {
			return nil, fmt.Errorf("enqueue job: the job queue is full (%d bytes): %w", q.cfg.MaxQueuedBytes, ebb.ErrOverloaded)
		}
		return nil, fmt.Errorf("enqueue job: publish: %w", err)
	}
	if ack.Duplicate {
		if cur, err := q.get(ctx, fn, id); err == nil {
			return cur, nil
		}
		return job, nil
	}
	// The message is the job; the record is its status. A worker may have
	// written the record already: Create then fails, and that is right,
	// since the worker's record is newer.
	if b, err := json.Marshal(job); err == nil {
		if _, err := q.records.Create(ctx, recordKey(fn, id), b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			q.log.Warn("record queued job", "job", id, "function", fn, "err", err)
		}
	}
	return job, nil
}

// message builds the stream message of job; data is the payload carried in it.
func (q *Queue) message(subject string, job *Job, data []byte) *nats.Msg {
	msg := nats.NewMsg(subject)
	msg.Header.Set(hdrID, job.ID)
	msg.Header.Set(hdrFunction, job.Function)
	msg.Header.Set(hdrEnqueued, job.EnqueuedAt.Format(time.RFC3339Nano))
	msg.Header.Set(hdrSource, job.Source)
	if job.Hops > 0 {
		msg.Header.Set(hdrHops, strconv.Itoa(job.Hops))
	}
	if job.Version > 0 {
		msg.Header.Set(hdrVersion, strconv.Itoa(job.Version))
	}
	if job.Trace.Parent != "" {
		msg.Header.Set(hdrTraceParent, job.Trace.Parent)
		if job.Trace.State != "" {
			msg.Header.Set(hdrTraceState, job.Trace.State)
		}
	}
	msg.Data = data
	return msg
}

// Get returns the record of job id.
func (q *Queue) Get(ctx context.Context, id string) (*Job, error) {
	if !ValidID(id) {
		return nil, jobNotFound(id)
	}
	// The listing is an ordered consumer over the records' last values; one
	// that ran while the job's worker wrote its record once came back
	// without it (the full suite: a job found nowhere right after its
	// PUT returned, though both writes were done). A second look costs only
	// an unknown id.
	var key string
	for try := 0; key == "" && try < 2; try++ {
		keys, err := q.records.ListKeysFiltered(ctx, "*."+id)
		if err != nil {
			return nil, fmt.Errorf("get job: %w", err)
		}
		for k := range keys.Keys() {
			if key == "" {
				key = k
			}
		}
	}
	if key == "" {
		return nil, jobNotFound(id)
	}
	e, err := q.records.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, jobNotFound(id)
		}
		return nil, fmt.Errorf("get job: %w", err)
	}
	return decodeJob(e.Value())
}

func (q *Queue) get(ctx context.Context, fn, id string) (*Job, error) {
	e, err := q.records.Get(ctx, recordKey(fn, id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, jobNotFound(id)
		}
		return nil, err
	}
	return decodeJob(e.Value())
}

func decodeJob(b []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("decode job record: %w", err)
	}
	return &j, nil
}

type notFoundError struct{ id string }

func (e *notFoundError) Error() string        { return fmt.Sprintf("job %q not found", e.id) }
func (e *notFoundError) Is(target error) bool { return target == ebb.ErrNotFound }

func jobNotFound(id string) error { return &notFoundError{id} }

// put stores job's record. It is what every state change goes through, and
// a message is acknowledged only after the put of its final state returned.
func (q *Queue) put(ctx context.Context, job *Job) error {
	b, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("encode job record: %w", err)
	}
	if _, err := q.records.Put(ctx, recordKey(job.Function, job.ID), b); err != nil {
		return fmt.Errorf("store job record: %w", err)
	}
	return nil
}

// List returns the first page of fn's job records; see ListPage.
func (q *Queue) List(ctx context.Context, fn string, status Status, limit int) ([]*Job, error) {
	jobs, _, err := q.ListPage(ctx, fn, status, limit, 0)
	return jobs, err
}

// listWindow is how many sequence numbers of the records' stream ListPage
// reads at a time, and listScanMax how many records it reads for one page
// at most (a rare status may need more: the cursor lets the caller go on).
const (
	listWindow  = 512
	listScanMax = 20000
	// listConsumerIdle is how long the server keeps a listing's consumer
	// whose deletion failed.
	listConsumerIdle = 30 * time.Second
)

// ListPage returns up to limit (default 100) of fn's job records, only those
// with status when it is not empty, most recently updated first, from below
// the cursor before (0: from the newest), and the cursor of the next page
// (0: there is none). It reads the records' stream backwards a window at a
// time and stops when the page is full, so a page costs about its own size,
// not the number of jobs kept.
func (q *Queue) ListPage(ctx context.Context, fn string, status Status, limit int, before uint64) ([]*Job, uint64, error) {
	if limit <= 0 {
		limit = 100
	}
	st, err := q.js.Stream(ctx, "KV_"+RecordsBucket)
	if err != nil {
		return nil, 0, fmt.Errorf("list jobs: %w", err)
	}
	state := st.CachedInfo().State
	hi := state.LastSeq
	if before > 0 && before-1 < hi {
		hi = before - 1
	}
	var out []*Job
	scanned := 0
	for hi >= state.FirstSeq && hi > 0 {
		lo := state.FirstSeq
		if hi >= listWindow && hi-listWindow+1 > lo {
			lo = hi - listWindow + 1
		}
		window, n, err := q.readWindow(ctx, st, fn, lo, hi)
		if err != nil {
			return nil, 0, fmt.Errorf("list jobs: %w", err)
		}
		scanned += n
		for k := len(window) - 1; k >= 0; k-- {
			w := window[k]
			if status != "" && w.job.Status != status {
				continue
			}
			out = append(out, w.job)
			if len(out) == limit {
				return out, w.seq, nil
			}
		}
		if scanned >= listScanMax && lo > state.FirstSeq {
			return out, lo, nil
		}
		hi = lo - 1
	}
	return out, 0, nil
}

type seqJob struct {
	seq uint64
	job *Job
}

// deleteConsumer deletes an ordered consumer once read. The server caps a
// stream's consumers (1000 by default since nats-server 2.15), and an
// ordered consumer left to expire stays 5 minutes: a client polling the
// jobs listing (a dashboard, a test waiting for its jobs) made a thousand
// of them in seconds, and every later listing and job lookup failed with
// "maximum consumers limit reached" until they expired. A failed delete
// leaves it to its InactiveThreshold (listConsumerIdle).
func deleteConsumer(st jetstream.Stream, cons jetstream.Consumer) {
	if info := cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		st.DeleteConsumer(ctx, info.Name)
		cancel()
	}
}

// readWindow returns fn's records stored at sequences lo to hi, oldest first,
// and how many messages it read.
func (q *Queue) readWindow(ctx context.Context, st jetstream.Stream, fn string, lo, hi uint64) ([]seqJob, int, error) {
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$KV." + RecordsBucket + "." + fn + ".*"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: lo,
		InactiveThreshold: listConsumerIdle,
	})
	if err != nil {
		return nil, 0, err
	}
	defer deleteConsumer(st, cons)
	pending := cons.CachedInfo().NumPending
	var out []seqJob
	read, tries := 0, 0
	// On a clustered stream the ordered consumer just made may not yet be
	// known to the server that a pull request reaches, which answers that
	// nobody serves it: asked again a little later, it does.
	retry := func(err error) bool {
		if !errors.Is(err, nats.ErrNoResponders) || tries == 20 {
			return false
		}
		tries++
		select {
		case <-time.After(time.Duration(tries) * 10 * time.Millisecond):
			return true
		case <-ctx.Done():
			return false
		}
	}
	for uint64(read) < pending {
		batch, err := cons.FetchNoWait(min(int(pending)-read, 256))
		if err != nil {
			if retry(err) {
				continue
			}
			return nil, read, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			read++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if md.Sequence.Stream > hi {
				return out, read, nil
			}
			if op := m.Headers().Get("KV-Operation"); op != "" {
				continue // a deleted or purged record
			}
			if j, err := decodeJob(m.Data()); err == nil {
				out = append(out, seqJob{md.Sequence.Stream, j})
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			if got == 0 && retry(err) {
				continue
			}
			return nil, read, err
		}
		if got == 0 {
			break
		}
	}
	return out, read, nil
}

// Close stops taking jobs, lets running ones finish until ctx ends, then
// cancels them (their messages are redelivered on the next start) and waits.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	q.closed = true
	for _, g := range q.groups {
		g.cancel()
	}
	q.groups = map[string]*group{}
	q.mu.Unlock()
	q.loops.Wait()
	done := make(chan struct{})
	go func() {
		q.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
		q.runCancel()
		return nil
	case <-ctx.Done():
	}
	q.runCancel()
	<-done
	return fmt.Errorf("close queue: running jobs cancelled: %w", ctx.Err())
}
