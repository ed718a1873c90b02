// Package ebb holds the vocabulary of the ebb serverless platform: what a
// function is, how it is configured, what an invocation records, and the
// errors callers branch on. It imports only the standard library so that every
// other package can speak it without dragging in the rest of the system.
package ebb

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Runtime names how an instance of a function talks to ebb.
type Runtime string

const (
	// RuntimeExec runs any executable that speaks the AWS Lambda Runtime API.
	RuntimeExec Runtime = "exec"
	// RuntimePython runs handler "module.function" through ebb's Python shim.
	RuntimePython Runtime = "python"
	// RuntimeHTTP runs a program that serves HTTP on $PORT; requests are proxied.
	RuntimeHTTP Runtime = "http"
	// RuntimeONNX serves an ONNX model with no user code.
	RuntimeONNX Runtime = "onnx"
)

// Defaults applied to a Spec by Defaults. They mirror what a Lambda user
// expects: small memory, a short timeout, one request per instance.
const (
	DefaultMemoryMiB    = 256
	DefaultTimeout      = 30 * time.Second
	DefaultConcurrency  = 1
	DefaultMaxInstances = 10
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultMaxQueue     = 100
	DefaultQueueTimeout = 10 * time.Second
)

// Limits on a Spec; beyond them a manifest is refused rather than trusted.
const (
	MaxMemoryMiB    = 64 * 1024
	MaxTimeout      = 15 * time.Minute
	MaxConcurrency  = 1000
	MaxInstances    = 1000
	MaxQueueLength  = 100000
	maxNameLength   = 63
	maxHandlerBytes = 1024
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// Spec is a function's configuration: the parsed, defaulted ebb.yaml.
type Spec struct {
	Name         string            `json:"name"`
	Runtime      Runtime           `json:"runtime"`
	Handler      string            `json:"handler"`
	MemoryMiB    int               `json:"memory"`
	Timeout      time.Duration     `json:"timeout"`
	Concurrency  int               `json:"concurrency"`
	MinInstances int               `json:"min_instances"`
	MaxInstances int               `json:"max_instances"`
	IdleTimeout  time.Duration     `json:"idle_timeout"`
	MaxQueue     int               `json:"max_queue"`
	QueueTimeout time.Duration     `json:"queue_timeout"`
	Preload      []string          `json:"preload,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	Batching     *Batching         `json:"batching,omitempty"`
	// Zygote, when false, opts a python function out of the fork-server.
	Zygote *bool `json:"zygote,omitempty"`
	// Python is the interpreter for a python function; empty means ebb's default.
	Python string `json:"python,omitempty"`
	// Async configures asynchronous invocations (retries, age, destinations).
	Async *AsyncConfig `json:"async,omitempty"`
	// Schedule, when set, invokes the function on a cron schedule ("*/5 * * * *")
	// or an interval ("@every 30s"). Its syntax is checked by the manifest parser.
	Schedule string `json:"schedule,omitempty"`
	// Events subscribes the function to NATS subjects and bucket uploads.
	Events []EventSource `json:"events,omitempty"`
	// Target pins what Schedule and Events invoke to an alias or version
	// of the function (NAME:Target); empty follows the function's route.
	Target string `json:"target,omitempty"`
	// Warmup is an event (JSON) that a python instance started ahead of
	// need runs once before it is handed out, so that the first request
	// does not pay for the handler's first-call costs (lazy imports, page
	// faults in a forked child). Empty means no priming.
	Warmup json.RawMessage `json:"warmup,omitempty"`
	// Network is the sandbox's network: NetworkOutbound (the default) or
	// NetworkNone. Empty, as in specs stored before the field, is outbound.
	Network string `json:"network,omitempty"`
	// FunctionURL configures /fn/NAME; nil is the default (a key is needed
	// wherever the server requires keys).
	FunctionURL *FunctionURL `json:"function_url,omitempty"`
	// RateLimit bounds the invocations the function accepts, over every
	// protocol; nil is no limit beyond max_instances and max_queue.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	// KeepAlive is how the function's instances are kept warm after an
	// invocation: KeepAliveAdaptive (a policy that learns from the
	// function's arrivals, pre-warming before predicted calls), or
	// "fixed:DURATION" (IdleTimeout; what idle_timeout: D means too).
	// Empty follows the server's --keep-alive.
	KeepAlive string `json:"keep_alive,omitempty"`
	// Monitor keeps input and prediction distributions (GET
	// /v1/functions/NAME/monitor): nil is on for onnx functions and off
	// for the others; python and exec functions opt in with true.
	Monitor *bool `json:"monitor,omitempty"`
}

// Monitored says whether the function's distributions are kept.
func (s *Spec) Monitored() bool {
	if s.Monitor != nil {
		return *s.Monitor && s.Runtime != RuntimeHTTP
	}
	return s.Runtime == RuntimeONNX
}

// FunctionURL is how /fn/NAME is guarded, as Lambda's function URL AuthType.
type FunctionURL struct {
	// Auth is FunctionURLAuthKey (the default) or FunctionURLAuthNone.
	Auth string `json:"auth"`
}

// Function URL auth types.
const (
	// FunctionURLAuthKey needs an ebb key wherever the server requires keys.
	FunctionURLAuthKey = "key"
	// FunctionURLAuthNone makes the URL public, like Lambda's AuthType NONE:
	// anyone who can reach ebb can call it, and its Authorization header is
	// the function's own business.
	FunctionURLAuthNone = "none"
)

// PublicURL says whether the function's URL needs no key.
func (s *Spec) PublicURL() bool {
	return s.FunctionURL != nil && s.FunctionURL.Auth == FunctionURLAuthNone
}

// RateLimit is a token bucket: RPS tokens a second, at most Burst at once.
type RateLimit struct {
	RPS   float64 `json:"rps"`
	Burst int     `json:"burst"`
}

// MaxRateLimitRPS bounds rate_limit.rps (and a key's rps): past it a limit
// is no limit.
const MaxRateLimitRPS = 1_000_000

// Networks a function's sandbox may have.
const (
	// NetworkOutbound lets the function open connections to the internet.
	NetworkOutbound = "outbound"
	// NetworkNone gives the function loopback only.
	NetworkNone = "none"
)

// MaxWarmupBytes bounds the warmup event: it travels to the instance in an
// environment variable, and the kernel refuses one over 128 KiB.
const MaxWarmupBytes = 64 << 10

// Defaults and limits of asynchronous invocations.
const (
	DefaultAsyncMaxRetries = 2
	DefaultAsyncMaxAge     = 6 * time.Hour
	MaxAsyncRetries        = 100
	MaxAsyncAge            = 14 * 24 * time.Hour
	maxScheduleBytes       = 256
	maxEventSources        = 32
)

// AsyncConfig configures how asynchronous invocations of a function are retried
// and where their outcome is sent. OnSuccess and OnFailure name a webhook
// (http:// or https:// URL) or another function.
type AsyncConfig struct {
	MaxRetries int           `json:"max_retries"`
	MaxAge     time.Duration `json:"max_age"`
	OnSuccess  string        `json:"on_success,omitempty"`
	OnFailure  string        `json:"on_failure,omitempty"`
}

// EventSource is one subscription of a function: a NATS subject, or uploads to
// an ebb bucket whose keys match Prefix and Suffix.
type EventSource struct {
	Subject string `json:"subject,omitempty"`
	Bucket  string `json:"bucket,omitempty"`
	Prefix  string `json:"prefix,omitempty"`
	Suffix  string `json:"suffix,omitempty"`
}

// Batching configures dynamic batching for onnx functions.
type Batching struct {
	MaxBatchSize int           `json:"max_batch_size"`
	MaxDelay     time.Duration `json:"max_delay"`
}

// FieldError says which manifest field is wrong and why. Its message names the
// field first so that a user can find it in their ebb.yaml.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Defaults fills the zero fields of s with ebb's defaults.
func (s *Spec) Defaults() {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Concurrency == 0 {
		s.Concurrency = DefaultConcurrency
	}
	if s.MaxInstances == 0 {
		s.MaxInstances = max(DefaultMaxInstances, s.MinInstances)
	}
	if d, ok := s.FixedKeepAlive(); ok && s.IdleTimeout == 0 {
		s.IdleTimeout = d
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = DefaultIdleTimeout
	}
	if s.MaxQueue == 0 {
		s.MaxQueue = DefaultMaxQueue
	}
	if s.QueueTimeout == 0 {
		s.QueueTimeout = DefaultQueueTimeout
	}
	if s.Batching != nil && s.Batching.MaxBatchSize == 0 {
		s.Batching.MaxBatchSize = 32
	}
	if s.Async == nil {
		s.Async = &AsyncConfig{MaxRetries: DefaultAsyncMaxRetries}
	}
	if s.Async.MaxAge == 0 {
		s.Async.MaxAge = DefaultAsyncMaxAge
	}
	if s.Network == "" {
		s.Network = NetworkOutbound
	}
}

// Validate reports the first field of s that is out of range as a *FieldError.
func (s *Spec) Validate() error {
	switch {
	case s.Name == "":
		return &FieldError{"name", "is required"}
	case len(s.Name) > maxNameLength || !nameRE.MatchString(s.Name):
		return &FieldError{"name", fmt.Sprintf("%q must be 1-%d characters of a-z, 0-9 and '-', not starting or ending with '-'", s.Name, maxNameLength)}
	}
	switch s.Runtime {
	case RuntimeExec, RuntimePython, RuntimeHTTP, RuntimeONNX:
	case "":
		return &FieldError{"runtime", "is required (python, exec, http or onnx)"}
	default:
		return &FieldError{"runtime", fmt.Sprintf("unknown runtime %q (want python, exec, http or onnx)", s.Runtime)}
	}
	if s.Handler == "" {
		return &FieldError{"handler", "is required"}
	}
	if len(s.Handler) > maxHandlerBytes {
		return &FieldError{"handler", "is too long"}
	}
	if s.Runtime == RuntimePython && !pyHandlerRE.MatchString(s.Handler) {
		return &FieldError{"handler", fmt.Sprintf("%q must be module.function", s.Handler)}
	}
	switch {
	case s.MemoryMiB < 16 || s.MemoryMiB > MaxMemoryMiB:
		return &FieldError{"memory", fmt.Sprintf("%d MiB is out of range (16 to %d)", s.MemoryMiB, MaxMemoryMiB)}
	case s.Timeout < time.Millisecond || s.Timeout > MaxTimeout:
		return &FieldError{"timeout", fmt.Sprintf("%s is out of range (1ms to %s)", s.Timeout, MaxTimeout)}
	case s.Concurrency < 1 || s.Concurrency > MaxConcurrency:
		return &FieldError{"concurrency", fmt.Sprintf("%d is out of range (1 to %d)", s.Concurrency, MaxConcurrency)}
	case s.MinInstances < 0 || s.MinInstances > MaxInstances:
		return &FieldError{"min_instances", fmt.Sprintf("%d is out of range (0 to %d)", s.MinInstances, MaxInstances)}
	case s.MaxInstances < 1 || s.MaxInstances > MaxInstances:
		return &FieldError{"max_instances", fmt.Sprintf("%d is out of range (1 to %d)", s.MaxInstances, MaxInstances)}
	case s.MinInstances > s.MaxInstances:
		return &FieldError{"min_instances", fmt.Sprintf("%d is more than max_instances (%d)", s.MinInstances, s.MaxInstances)}
	case s.IdleTimeout < time.Millisecond:
		return &FieldError{"idle_timeout", fmt.Sprintf("%s must be at least 1ms", s.IdleTimeout)}
	case s.MaxQueue < 0 || s.MaxQueue > MaxQueueLength:
		return &FieldError{"max_queue", fmt.Sprintf("%d is out of range (0 to %d)", s.MaxQueue, MaxQueueLength)}
	case s.QueueTimeout < 0:
		return &FieldError{"queue_timeout", "must not be negative"}
	}
	for k := range s.Env {
		if !envRE.MatchString(k) {
			return &FieldError{"env." + k, "is not a valid environment variable name"}
		}
	}
	if b := s.Batching; b != nil {
		if b.MaxBatchSize < 1 || b.MaxBatchSize > 4096 {
			return &FieldError{"batching.max_batch_size", fmt.Sprintf("%d is out of range (1 to 4096)", b.MaxBatchSize)}
		}
		if b.MaxDelay < 0 || b.MaxDelay > time.Second {
			return &FieldError{"batching.max_delay", fmt.Sprintf("%s is out of range (0 to 1s)", b.MaxDelay)}
		}
	}
	if a := s.Async; a != nil {
		if err := a.validate(s.Name); err != nil {
			return err
		}
	}
	if len(s.Schedule) > maxScheduleBytes {
		return &FieldError{"schedule", "is too long"}
	}
	if s.Target != "" && s.Target != "latest" && s.Target != "$LATEST" {
		if n, err := strconv.Atoi(s.Target); err != nil || n < 1 {
			if ValidAlias(s.Target) != nil {
				return &FieldError{"target", fmt.Sprintf("%q is not an alias name or a version number", s.Target)}
			}
		}
	}
	if len(s.Events) > maxEventSources {
		return &FieldError{"events", fmt.Sprintf("has %d entries; the limit is %d", len(s.Events), maxEventSources)}
	}
	for i := range s.Events {
		if err := s.Events[i].validate(fmt.Sprintf("events[%d]", i)); err != nil {
			return err
		}
	}
	switch s.Network {
	case "", NetworkOutbound, NetworkNone:
	default:
		return &FieldError{"network", fmt.Sprintf("%q is not outbound or none", s.Network)}
	}
	if u := s.FunctionURL; u != nil && u.Auth != FunctionURLAuthKey && u.Auth != FunctionURLAuthNone {
		return &FieldError{"function_url.auth", fmt.Sprintf("%q is not key or none", u.Auth)}
	}
	if l := s.RateLimit; l != nil {
		switch {
		case !(l.RPS > 0) || l.RPS > MaxRateLimitRPS:
			return &FieldError{"rate_limit.rps", fmt.Sprintf("%v is out of range (above 0, at most %d)", l.RPS, MaxRateLimitRPS)}
		case l.Burst < 1 || l.Burst > MaxRateLimitRPS:
			return &FieldError{"rate_limit.burst", fmt.Sprintf("%d is out of range (1 to %d)", l.Burst, MaxRateLimitRPS)}
		}
	}
	if err := s.validateKeepAlive(); err != nil {
		return err
	}
	if s.Monitor != nil && *s.Monitor && s.Runtime == RuntimeHTTP {
		return &FieldError{"monitor", "applies to python, exec and onnx functions, not runtime http (its bodies are free-form)"}
	}
	if len(s.Warmup) > 0 {
		switch {
		case s.Runtime != RuntimePython:
			return &FieldError{"warmup", fmt.Sprintf("applies only to python functions, not runtime %s", s.Runtime)}
		case len(s.Warmup) > MaxWarmupBytes:
			return &FieldError{"warmup", fmt.Sprintf("is %d bytes as JSON; the limit is %d", len(s.Warmup), MaxWarmupBytes)}
		case !json.Valid(s.Warmup):
			return &FieldError{"warmup", "is not valid JSON"}
		}
	}
	return nil
}

// KeepAliveAdaptive is the keep_alive that learns from the function's
// arrivals (the hybrid histogram policy, docs/keepalive.md).
const KeepAliveAdaptive = "adaptive"

// maxKeepAliveBytes bounds keep_alive's text.
const maxKeepAliveBytes = 64

// ParseKeepAlive reads a keep_alive: KeepAliveAdaptive, or "fixed:D" with D
// a Go duration of at least 1ms; it returns the canonical form (fixed:600s
// is fixed:10m) and, for fixed, D.
func ParseKeepAlive(v string) (canonical string, fixed time.Duration, err error) {
	if v == KeepAliveAdaptive {
		return v, 0, nil
	}
	arg, ok := strings.CutPrefix(v, "fixed:")
	if !ok || len(v) > maxKeepAliveBytes {
		return "", 0, fmt.Errorf("%q is not adaptive or fixed:DURATION (e.g. fixed:10m)", v)
	}
	d, perr := time.ParseDuration(arg)
	if perr != nil || d < time.Millisecond {
		return "", 0, fmt.Errorf("%q: %q is not a duration of at least 1ms (e.g. fixed:10m)", v, arg)
	}
	ds := d.String()
	if t, ok := strings.CutSuffix(ds, "m0s"); ok {
		ds = t + "m"
	}
	if t, ok := strings.CutSuffix(ds, "h0m"); ok {
		ds = t + "h"
	}
	return "fixed:" + ds, d, nil
}

// FixedKeepAlive returns D when KeepAlive is "fixed:D".
func (s *Spec) FixedKeepAlive() (time.Duration, bool) {
	if !strings.HasPrefix(s.KeepAlive, "fixed:") {
		return 0, false
	}
	_, d, err := ParseKeepAlive(s.KeepAlive)
	return d, err == nil
}

func (s *Spec) validateKeepAlive() error {
	if s.KeepAlive == "" {
		return nil
	}
	_, d, err := ParseKeepAlive(s.KeepAlive)
	switch {
	case err != nil:
		return &FieldError{"keep_alive", err.Error()}
	case d != 0 && d != s.IdleTimeout:
		return &FieldError{"keep_alive", fmt.Sprintf("%s differs from idle_timeout %s; give one of them", s.KeepAlive, s.IdleTimeout)}
	}
	return nil
}

func (a *AsyncConfig) validate(self string) error {
	switch {
	case a.MaxRetries < 0 || a.MaxRetries > MaxAsyncRetries:
		return &FieldError{"async.max_retries", fmt.Sprintf("%d is out of range (0 to %d)", a.MaxRetries, MaxAsyncRetries)}
	case a.MaxAge < time.Second || a.MaxAge > MaxAsyncAge:
		return &FieldError{"async.max_age", fmt.Sprintf("%s is out of range (1s to %s)", a.MaxAge, MaxAsyncAge)}
	}
	for _, d := range []struct{ field, v string }{{"async.on_success", a.OnSuccess}, {"async.on_failure", a.OnFailure}} {
		if d.v == "" {
			continue
		}
		if err := validDestination(d.v); err != "" {
			return &FieldError{d.field, err}
		}
		if d.v == self {
			// Each outcome would make another job of the same function,
			// without end.
			return &FieldError{d.field, "must not name the function itself"}
		}
	}
	return nil
}

// IsWebhook says whether an async destination is a webhook (an http or
// https URL) rather than a function name.
func IsWebhook(d string) bool {
	u, err := url.Parse(d)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https")
}

// validDestination returns why d is neither a webhook URL nor a function name.
// Webhooks must be http or https: any other scheme (file:, gopher:, …) is
// refused, and so are URLs with credentials in them.
func validDestination(d string) string {
	if strings.Contains(d, ":") {
		u, err := url.Parse(d)
		switch {
		case err != nil || len(d) > 2048:
			return fmt.Sprintf("%q is not a valid URL", d)
		case u.Scheme != "http" && u.Scheme != "https":
			return fmt.Sprintf("%q: a webhook must be an http:// or https:// URL", d)
		case u.Host == "" || u.Hostname() == "":
			return fmt.Sprintf("%q has no host", d)
		case u.User != nil:
			return fmt.Sprintf("%q carries credentials; put them in the query or a header the receiver checks", d)
		}
		return ""
	}
	if len(d) > maxNameLength || !nameRE.MatchString(d) {
		return fmt.Sprintf("%q is neither an http(s) URL nor a function name", d)
	}
	return ""
}

func (e *EventSource) validate(field string) error {
	switch {
	case e.Subject != "" && e.Bucket != "":
		return &FieldError{field, "has both subject and bucket; use one per entry"}
	case e.Subject == "" && e.Bucket == "":
		return &FieldError{field, "needs a subject or a bucket"}
	case e.Subject != "":
		if !ValidSubscribeSubject(e.Subject) {
			return &FieldError{field + ".subject", fmt.Sprintf("%q is not a NATS subject one may subscribe to (tokens of letters, digits, '-', '_', '*' or a final '>', not starting with $ or ebb.)", e.Subject)}
		}
		if e.Prefix != "" || e.Suffix != "" {
			return &FieldError{field, "prefix and suffix apply only to bucket events"}
		}
	default:
		if !ValidBucketName(e.Bucket) {
			return &FieldError{field + ".bucket", fmt.Sprintf("%q must be 3-63 characters of a-z, 0-9 and '-'", e.Bucket)}
		}
		if len(e.Prefix) > 1024 || len(e.Suffix) > 1024 {
			return &FieldError{field, "prefix and suffix must be at most 1024 bytes"}
		}
	}
	return nil
}

var (
	subjectTokenRE = regexp.MustCompile(`^([A-Za-z0-9_-]+|\*)$`)
	bucketRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$`)
)

// ValidBucketName reports whether b may name an ebb bucket.
func ValidBucketName(b string) bool { return bucketRE.MatchString(b) }

// ValidSubscribeSubject reports whether s is a NATS subject that a function
// may subscribe to. ebb's own subjects (ebb.…) and system subjects ($…,
// _INBOX…) are refused: a function must not read the job queue.
func ValidSubscribeSubject(s string) bool {
	if len(s) == 0 || len(s) > 255 || strings.HasPrefix(s, "$") || strings.HasPrefix(s, "_INBOX") ||
		s == "ebb" || strings.HasPrefix(s, "ebb.") || s == ">" || strings.HasPrefix(s, "*.") || s == "*" {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == ">" && i == len(toks)-1 {
			continue
		}
		if !subjectTokenRE.MatchString(t) {
			return false
		}
	}
	return true
}

var (
	pyHandlerRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$`)
	envRE       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Function is a deployed function version as the registry stores it.
type Function struct {
	Spec Spec `json:"spec"`
	// Version counts deploys of this name, from 1.
	Version int `json:"version"`
	// Digest is the hex sha256 of the bundle (tar.gz of the function directory).
	Digest string `json:"digest"`
	// Size is the bundle's size in bytes.
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}
