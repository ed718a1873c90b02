// Package events turns things that happen into async jobs: messages on NATS
// subjects that functions subscribe to, and uploads to ebb buckets (objects
// in JetStream object stores), which reach their subscribers as S3-shaped
// events so that an S3-triggered Lambda handler runs unchanged.
//
// Events go through the job queue, so they inherit its guarantees: once an
// upload is answered, its events are durably queued.
package events

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/route"
)

// Enqueue queues payload for fn under id; the queue implements it.
type Enqueue func(ctx context.Context, fn, id string, payload []byte, source string) error

// Config configures Events.
type Config struct {
	JetStream jetstream.JetStream
	Enqueue   Enqueue
	// MaxObjectBytes bounds an upload; default 64 MiB.
	MaxObjectBytes int64
	// MaxBucketBytes bounds what one bucket holds; default 1 GiB.
	MaxBucketBytes int64
	// MaxBuckets bounds how many buckets there are (each is a JetStream
	// stream); default 100.
	MaxBuckets int
	Replicas   int
	Logger     *slog.Logger
	Now        func() time.Time
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.JetStream == nil || c.Enqueue == nil {
		return errors.New("events config: JetStream and Enqueue are required")
	}
	if c.MaxObjectBytes <= 0 {
		c.MaxObjectBytes = 64 << 20
	}
	if c.MaxBucketBytes <= 0 {
		c.MaxBucketBytes = 1 << 30
	}
	if c.MaxObjectBytes > c.MaxBucketBytes {
		return fmt.Errorf("events config: MaxObjectBytes %d is larger than MaxBucketBytes %d", c.MaxObjectBytes, c.MaxBucketBytes)
	}
	if c.MaxBuckets <= 0 {
		c.MaxBuckets = 100
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

// bucketPrefix names the object store of an ebb bucket.
const bucketPrefix = "ebb_bucket_"

// Events routes subject messages and uploads to subscribed functions.
type Events struct {
	cfg Config
	nc  *nats.Conn

	mu      sync.Mutex                       // guards subs, buckets, stores and closed
	subs    map[string][]*nats.Subscription  // per function
	buckets map[string][]ebb.EventSource     // per function: its bucket sources
	stores  map[string]jetstream.ObjectStore // opened buckets
	closed  bool

	createMu sync.Mutex // serialises counting and creating buckets; guards no data
}

// Sentinels of a refused upload.
var (
	// ErrTooManyBuckets: a new bucket would pass MaxBuckets.
	ErrTooManyBuckets = errors.New("too many buckets")
	// ErrBucketFull: the object does not fit in what is left of its bucket
	// (MaxBucketBytes) or of the server's storage.
	ErrBucketFull = errors.New("bucket full")
)

// New returns Events with no subscriptions.
func New(cfg Config) (*Events, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Events{cfg: cfg, nc: cfg.JetStream.Conn(), subs: map[string][]*nats.Subscription{},
		buckets: map[string][]ebb.EventSource{}, stores: map[string]jetstream.ObjectStore{}}, nil
}

// Set replaces fn's subscriptions with srcs; nil removes them.
func (e *Events) Set(fn string, srcs []ebb.EventSource) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ebb.ErrClosed
	}
	for _, s := range e.subs[fn] {
		s.Unsubscribe()
	}
	delete(e.subs, fn)
	delete(e.buckets, fn)
	for _, src := range srcs {
		if src.Bucket != "" {
			e.buckets[fn] = append(e.buckets[fn], src)
			continue
		}
		// A queue group per function: on a cluster, one node takes each
		// message, not every node.
		sub, err := e.nc.QueueSubscribe(src.Subject, "ebb-events-"+fn, func(m *nats.Msg) { e.onMessage(fn, m) })
		if err != nil {
			return fmt.Errorf("subscribe %s to %s: %w", fn, src.Subject, err)
		}
		e.subs[fn] = append(e.subs[fn], sub)
	}
	return nil
}

// Close drops every subscription.
func (e *Events) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for _, subs := range e.subs {
		for _, s := range subs {
			s.Unsubscribe()
		}
	}
	e.subs = map[string][]*nats.Subscription{}
}

// subjectEvent is the event of a message that is not itself JSON.
type subjectEvent struct {
	Subject         string `json:"subject"`
	Data            string `json:"data"`
	IsBase64Encoded bool   `json:"isBase64Encoded"`
}

// onMessage queues a subject message for fn: a JSON message is the event as
// it is; anything else is wrapped with its subject.
func (e *Events) onMessage(fn string, m *nats.Msg) {
	payload := m.Data
	if !json.Valid(payload) {
		ev := subjectEvent{Subject: m.Subject}
		if utf8.Valid(m.Data) {
			ev.Data = string(m.Data)
		} else {
			ev.Data, ev.IsBase64Encoded = base64.StdEncoding.EncodeToString(m.Data), true
		}
		payload, _ = json.Marshal(ev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := e.cfg.Enqueue(ctx, fn, "ev-"+newID(), payload, "event")
	if m.Reply != "" {
		// A request gets to know whether its event was queued.
		if err != nil {
			m.Respond([]byte(`{"error":"not queued"}`))
		} else {
			m.Respond([]byte(`{"queued":true}`))
		}
	}
	if err != nil {
		e.cfg.Logger.Error("queue subject event", "function", fn, "subject", m.Subject, "err", err)
	}
}

// Routes are the bucket routes of the route table. Uploads trigger
// functions, so buckets are their own permission (admin keys only).
func (e *Events) Routes() []route.Route {
	return []route.Route{
		{Pattern: "PUT /v1/buckets/{bucket}/{key...}", Perm: auth.PermBuckets, Handler: e.put},
		{Pattern: "GET /v1/buckets/{bucket}/{key...}", Perm: auth.PermBuckets, Handler: e.get},
	}
}

func validKey(k string) bool {
	return k != "" && len(k) <= 1024 && utf8.ValidString(k) && !strings.ContainsRune(k, 0)
}

// store opens bucket's object store; with create, it makes one that does not
// exist yet (within MaxBuckets) and applies the current MaxBucketBytes to one
// that does.
func (e *Events) store(ctx context.Context, bucket string, create bool) (jetstream.ObjectStore, error) {
	e.mu.Lock()
	obs := e.stores[bucket]
	e.mu.Unlock()
	if obs != nil {
		return obs, nil
	}
	cfg := jetstream.ObjectStoreConfig{
		Bucket: bucketPrefix + bucket, Description: "ebb bucket " + bucket, Storage: jetstream.FileStorage,
		Replicas: e.cfg.Replicas, MaxBytes: e.cfg.MaxBucketBytes,
	}
	obs, err := e.cfg.JetStream.ObjectStore(ctx, bucketPrefix+bucket)
	switch {
	case err == nil && create:
		obs, err = e.cfg.JetStream.CreateOrUpdateObjectStore(ctx, cfg)
	case errors.Is(err, jetstream.ErrBucketNotFound) && create:
		e.createMu.Lock()
		defer e.createMu.Unlock()
		n, cerr := e.countBuckets(ctx)
		if cerr != nil {
			return nil, cerr
		}
		if n >= e.cfg.MaxBuckets {
			return nil, ErrTooManyBuckets
		}
		obs, err = e.cfg.JetStream.CreateOrUpdateObjectStore(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.stores[bucket] = obs
	e.mu.Unlock()
	return obs, nil
}

// countBuckets counts the object stores that are ebb buckets.
func (e *Events) countBuckets(ctx context.Context) (int, error) {
	names := e.cfg.JetStream.ObjectStoreNames(ctx)
	n := 0
	for name := range names.Name() {
		if strings.HasPrefix(name, bucketPrefix) {
			n++
		}
	}
	if err := names.Error(); err != nil {
		return 0, fmt.Errorf("count buckets: %w", err)
	}
	return n, nil
}

// full says whether a store error means there is no room: the bucket's
// MaxBytes, or the server's storage.
func full(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) && (strings.Contains(ae.Description, "maximum bytes") || strings.Contains(ae.Description, "insufficient resources")) {
		return true
	}
	return strings.Contains(err.Error(), "maximum bytes exceeded") || strings.Contains(err.Error(), "insufficient resources")
}

// Object is what a PUT answers.
type Object struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	ETag   string `json:"etag"`
	// Jobs are the async jobs queued for subscribed functions.
	Jobs []string `json:"jobs"`
}

func (e *Events) put(w http.ResponseWriter, r *http.Request) {
	bucket, key := r.PathValue("bucket"), r.PathValue("key")
	if !ebb.ValidBucketName(bucket) || !validKey(key) {
		writeError(w, http.StatusBadRequest, "InvalidRequestContent", "bucket must be 3-63 characters of a-z, 0-9 and '-'; key 1-1024 bytes of UTF-8")
		return
	}
	if r.ContentLength > e.cfg.MaxObjectBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "RequestTooLarge", "the object is larger than "+strconv.FormatInt(e.cfg.MaxObjectBytes, 10)+" bytes (ebb serve --max-object-bytes)")
		return
	}
	obs, err := e.store(r.Context(), bucket, true)
	if errors.Is(err, ErrTooManyBuckets) {
		writeError(w, http.StatusInsufficientStorage, "TooManyBuckets",
			"there are "+strconv.Itoa(e.cfg.MaxBuckets)+" buckets already, the most this server allows (ebb serve --max-buckets)")
		return
	}
	if err != nil {
		e.internal(w, "open bucket", err)
		return
	}
	sum := md5.New()
	body := io.TeeReader(http.MaxBytesReader(w, r.Body, e.cfg.MaxObjectBytes), sum)
	info, err := obs.Put(r.Context(), jetstream.ObjectMeta{Name: key}, body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "RequestTooLarge", "the object is larger than "+strconv.FormatInt(e.cfg.MaxObjectBytes, 10)+" bytes (ebb serve --max-object-bytes)")
			return
		}
		if full(err) {
			writeError(w, http.StatusInsufficientStorage, "BucketFull",
				"bucket "+bucket+" has no room for the object: it holds at most "+strconv.FormatInt(e.cfg.MaxBucketBytes, 10)+" bytes (ebb serve --max-bucket-bytes)")
			return
		}
		e.internal(w, "store object", err)
		return
	}
	obj := Object{Bucket: bucket, Key: key, Size: int64(info.Size), ETag: hex.EncodeToString(sum.Sum(nil)), Jobs: []string{}}
	for _, fn := range e.subscribers(bucket, key) {
		id := "s3-" + newID()
		if err := e.cfg.Enqueue(r.Context(), fn, id, s3Event(bucket, key, obj.Size, obj.ETag, e.cfg.Now()), "event"); err != nil {
			// The object is stored but an event is not: the client
			// must retry the (idempotent) PUT.
			e.internal(w, "queue upload event", err)
			return
		}
		obj.Jobs = append(obj.Jobs, id)
	}
	writeJSON(w, http.StatusOK, obj)
}

// subscribers returns the functions whose bucket filters match key.
func (e *Events) subscribers(bucket, key string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for fn, srcs := range e.buckets {
		for _, s := range srcs {
			if s.Bucket == bucket && strings.HasPrefix(key, s.Prefix) && strings.HasSuffix(key, s.Suffix) {
				out = append(out, fn)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

func (e *Events) get(w http.ResponseWriter, r *http.Request) {
	bucket, key := r.PathValue("bucket"), r.PathValue("key")
	if !ebb.ValidBucketName(bucket) || !validKey(key) {
		writeError(w, http.StatusNotFound, "NoSuchKey", "no such object")
		return
	}
	obs, err := e.store(r.Context(), bucket, false)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		writeError(w, http.StatusNotFound, "NoSuchBucket", "no such bucket")
		return
	}
	if err != nil {
		e.internal(w, "open bucket", err)
		return
	}
	res, err := obs.Get(r.Context(), key)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		writeError(w, http.StatusNotFound, "NoSuchKey", "no such object")
		return
	}
	if err != nil {
		e.internal(w, "read object", err)
		return
	}
	defer res.Close()
	info, err := res.Info()
	if err == nil {
		w.Header().Set("Content-Length", strconv.FormatUint(info.Size, 10))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	io.Copy(w, res)
}

func (e *Events) internal(w http.ResponseWriter, what string, err error) {
	e.cfg.Logger.Error("bucket request failed", "op", what, "err", err)
	writeError(w, http.StatusInternalServerError, "Ebb.InternalError", "internal error")
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	route.Write(w, route.Native, &route.Error{Status: status, Type: typ, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) { route.JSON(w, status, v) }

// s3Event is the S3 notification event (as Lambda receives it) of one upload.
func s3Event(bucket, key string, size int64, etag string, now time.Time) []byte {
	type object struct {
		Key       string `json:"key"`
		Size      int64  `json:"size"`
		ETag      string `json:"eTag"`
		Sequencer string `json:"sequencer"`
	}
	type record struct {
		EventVersion string `json:"eventVersion"`
		EventSource  string `json:"eventSource"`
		AWSRegion    string `json:"awsRegion"`
		EventTime    string `json:"eventTime"`
		EventName    string `json:"eventName"`
		S3           struct {
			SchemaVersion   string `json:"s3SchemaVersion"`
			ConfigurationID string `json:"configurationId"`
			Bucket          struct {
				Name string `json:"name"`
				ARN  string `json:"arn"`
			} `json:"bucket"`
			Object object `json:"object"`
		} `json:"s3"`
	}
	r := record{EventVersion: "2.1", EventSource: "aws:s3", AWSRegion: "local",
		EventTime: now.UTC().Format("2006-01-02T15:04:05.000Z"), EventName: "ObjectCreated:Put"}
	r.S3.SchemaVersion, r.S3.ConfigurationID = "1.0", "ebb"
	r.S3.Bucket.Name, r.S3.Bucket.ARN = bucket, "arn:aws:s3:::"+bucket
	// S3 URL-encodes keys in events (form style, '/' kept).
	r.S3.Object = object{Key: strings.ReplaceAll(url.QueryEscape(key), "%2F", "/"), Size: size, ETag: etag,
		Sequencer: strconv.FormatInt(now.UnixNano(), 16)}
	b, _ := json.Marshal(struct {
		Records []record `json:"Records"`
	}{[]record{r}})
	return b
}

// newID returns a random job id suffix.
func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
