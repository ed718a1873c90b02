// Package gateway is the invoke path's HTTP edge: the native invoke API, the
// Lambda Invoke API, function URLs and the Open Inference Protocol routes. It
// parses and bounds requests, hands them to a Backend, and turns results and
// errors into responses. The client gets a clear message; the log gets the
// cause. Admission, scaling and instances are the Backend's business.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/respguard"
	"github.com/ebb-run/ebb/internal/route"
)

// Result is what the backend says about a finished invocation.
type Result struct {
	Body      []byte
	ColdStart bool
	Version   int
}

// Target is what a request addresses: a function, an alias or version of
// it (NAME:QUALIFIER), and the caller's routing key (the Ebb-Routing-Key
// header), which keeps a caller on one version of a split route.
type Target struct {
	Name      string
	Qualifier string
	Key       string
}

// targetOf reads the target of a request whose path names s (NAME or
// NAME:QUALIFIER).
func targetOf(r *http.Request, s string) Target {
	name, q := ebb.SplitQualified(s)
	return Target{Name: name, Qualifier: q, Key: r.Header.Get(ebb.RoutingKeyHeader)}
}

// Backend runs invocations on the version of a function that a target
// resolves to.
type Backend interface {
	// Invoke runs payload (a JSON event) through the target's handler.
	Invoke(ctx context.Context, t Target, requestID string, payload []byte) (*Result, error)
	// Proxy forwards r to an instance of the target (an http or onnx
	// function) and writes the response to w, calling admitted once an
	// instance slot is held (before anything is written). On error nothing
	// has been written.
	Proxy(ctx context.Context, t Target, requestID string, w http.ResponseWriter, r *http.Request, admitted func(cold bool, version int)) error
	// Runtime returns the target's runtime, or an error matching
	// ebb.ErrNotFound.
	Runtime(t Target) (ebb.Runtime, error)
}

// Enqueuer queues asynchronous invocations (invocation type Event).
type Enqueuer interface {
	// Enqueue durably queues payload for t under id, returning only once
	// the job is stored; ebb.ErrNotFound if there is no such function. It
	// returns the version the job will run on when t's qualifier fixed
	// it, 0 when the job follows the function's route when it runs.
	Enqueue(ctx context.Context, t Target, id string, payload []byte) (version int, err error)
}

// Config configures the gateway.
type Config struct {
	Backend        Backend
	MaxSyncPayload int64 // bytes; default 6 MiB (Lambda's limit)
	// Enqueuer takes Event invocations; nil answers them with 400.
	Enqueuer Enqueuer
	// MaxAsyncPayload bounds an Event invocation; default 1 MiB.
	MaxAsyncPayload int64
	// Catalog answers the Lambda API's GetFunction, GetFunctionConfiguration
	// and ListFunctions, and LogType Tail; nil leaves those routes out.
	Catalog Catalog
	Logger  *slog.Logger
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Backend == nil {
		return errors.New("gateway config: Backend is required")
	}
	if c.MaxSyncPayload <= 0 {
		c.MaxSyncPayload = 6 << 20
	}
	if c.MaxAsyncPayload <= 0 {
		c.MaxAsyncPayload = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Gateway serves the invoke routes.
type Gateway struct {
	cfg Config
}

// New returns a Gateway.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Gateway{cfg: cfg}, nil
}

// Routes are the gateway's entries in the route table.
func (g *Gateway) Routes() []route.Route {
	// Scope, public URLs and rate limits are the function's, whichever of
	// its versions or aliases a request names.
	name := func(r *http.Request) string { n, _ := ebb.SplitQualified(r.PathValue("name")); return n }
	model := func(r *http.Request) string { return r.PathValue("model") }
	lambda := func(r *http.Request) string { return LambdaName(r.PathValue("name")) }
	rs := []route.Route{
		{Pattern: "POST /v1/functions/{name}/invoke", Perm: auth.PermInvoke, Function: name, Invoke: true, Handler: g.invoke},
		{Pattern: "POST /2015-03-31/functions/{name}/invocations", Perm: auth.PermInvoke, Function: lambda, Dialect: route.Lambda, Invoke: true, Handler: g.lambdaInvoke},
		{Pattern: "/fn/{name}/{path...}", Perm: auth.PermInvoke, Function: name, Invoke: true, PublicURL: true, Handler: g.functionURL},
		{Pattern: "/fn/{name}", Perm: auth.PermInvoke, Function: name, Invoke: true, PublicURL: true, Handler: g.functionURL},
		{Pattern: "GET /v2", Perm: auth.PermDescribe, Dialect: route.OIP, Handler: g.serverMetadata},
		{Pattern: "GET /v2/health/live", Dialect: route.OIP, Handler: g.health},
		{Pattern: "GET /v2/health/ready", Dialect: route.OIP, Handler: g.health},
		{Pattern: "POST /v2/models/{model}/{rest...}", Perm: auth.PermInvoke, Function: model, Dialect: route.OIP, Invoke: true, Handler: g.inference},
		{Pattern: "GET /v2/models/{model}/{rest...}", Perm: auth.PermInvoke, Function: model, Dialect: route.OIP, Handler: g.inference},
		{Pattern: "GET /v2/models/{model}", Perm: auth.PermInvoke, Function: model, Dialect: route.OIP, Handler: g.inference},
	}
	if g.cfg.Catalog != nil {
		rs = append(rs,
			route.Route{Pattern: "GET /2015-03-31/functions/{name}", Perm: auth.PermDescribe, Function: lambda, Dialect: route.Lambda, Handler: g.lambdaGetFunction},
			route.Route{Pattern: "GET /2015-03-31/functions/{name}/configuration", Perm: auth.PermDescribe, Function: lambda, Dialect: route.Lambda, Handler: g.lambdaGetConfiguration},
			route.Route{Pattern: "GET /2015-03-31/functions", Perm: auth.PermDescribe, Dialect: route.Lambda, Handler: g.lambdaListFunctions},
			route.Route{Pattern: "GET /2015-03-31/functions/{$}", Perm: auth.PermDescribe, Dialect: route.Lambda, Handler: g.lambdaListFunctions})
	}
	return rs
}

// NewRequestID returns a random UUID (v4), the shape Lambda uses.
func NewRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// readPayload reads a bounded JSON body. An empty body is the event {}.
func (g *Gateway) readPayload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return readJSON(r, g.cfg.MaxSyncPayload)
}

func readJSON(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, ebb.ErrPayloadTooLarge
	}
	body, err := readBody(r.Body, r.ContentLength, limit)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return []byte("{}"), nil
	}
	if !json.Valid(body) {
		return nil, &BadRequestError{"the request body is not valid JSON"}
	}
	return body, nil
}

// firstBodyBuffer bounds the buffer a declared Content-Length sizes before
// any of the body has arrived: a client that declares megabytes and sends
// nothing costs no more than this.
const firstBodyBuffer = 64 << 10

// readBody reads a body of at most limit bytes into a buffer that grows
// with what arrives; more than limit is ebb.ErrPayloadTooLarge, and the rest
// is left unread (the server answers and closes). declared (-1: unknown)
// sizes only the first buffer.
func readBody(body io.Reader, declared, limit int64) ([]byte, error) {
	if body == nil || body == http.NoBody {
		return nil, nil
	}
	size := int64(512)
	if declared > 0 {
		size = min(declared, firstBodyBuffer, limit+1)
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) == declared {
				// Full at the declared length: the end is expected now,
				// and growing would double the buffer for nothing.
				var probe [1]byte
				n, err := body.Read(probe[:])
				if n == 0 && err == io.EOF {
					return buf, nil
				}
				if err != nil && err != io.EOF {
					return nil, readError(err)
				}
				buf = append(buf, probe[:n]...)
			} else {
				buf = append(buf, 0)[:len(buf)]
			}
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, ebb.ErrPayloadTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, readError(err)
		}
	}
}

func readError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return ebb.ErrPayloadTooLarge
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &BadRequestError{"the request body stopped arriving (read timeout)"}
	}
	return &BadRequestError{"could not read the request body"}
}

// BodyError is a failure reading the client's request body while it was
// passed on to a function (it stopped arriving, was malformed or too
// large): the client's doing, not the function's. It does not unwrap: a
// timeout reading the client must not read as the function timing out.
type BodyError struct{ Err error }

func (e *BodyError) Error() string { return "read request body: " + e.Err.Error() }

// clientBody marks the errors of a request body it reads as *BodyError.
type clientBody struct{ r io.ReadCloser }

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &BodyError{err}
	}
	return n, err
}

func (b *clientBody) Close() error { return b.r.Close() }

// BadRequestError is a request the client must fix; its message is for them.
type BadRequestError struct{ Msg string }

func (e *BadRequestError) Error() string { return e.Msg }

func (g *Gateway) invoke(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r, r.PathValue("name"))
	name := t.Name
	rid := NewRequestID()
	h := w.Header()
	h["Ebb-Request-Id"] = []string{rid}
	it := r.Header.Get("Ebb-Invocation-Type")
	if it == "" {
		it = r.Header.Get("X-Amz-Invocation-Type")
	}
	if strings.EqualFold(it, "Event") {
		g.enqueue(w, r, t, rid, route.Native)
		return
	}
	if it != "" && !strings.EqualFold(it, "RequestResponse") {
		g.fail(w, route.Native, name, &BadRequestError{fmt.Sprintf("invocation type %q is not supported (use RequestResponse or Event)", it)})
		return
	}
	payload, err := g.readPayload(w, r)
	if err != nil {
		g.fail(w, route.Native, name, err)
		return
	}
	res, err := g.cfg.Backend.Invoke(r.Context(), t, rid, payload)
	if err != nil {
		if res != nil {
			h["Ebb-Cold-Start"] = []string{strconv.FormatBool(res.ColdStart)}
			h["Ebb-Version"] = []string{strconv.Itoa(res.Version)}
		}
		g.fail(w, route.Native, name, err)
		return
	}
	h["Ebb-Cold-Start"] = []string{strconv.FormatBool(res.ColdStart)}
	h["Ebb-Version"] = []string{strconv.Itoa(res.Version)}
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(res.Body))}
	w.WriteHeader(http.StatusOK)
	w.Write(res.Body)
}

// enqueue answers an Event invocation: 202 {"id"} once the job is stored.
func (g *Gateway) enqueue(w http.ResponseWriter, r *http.Request, t Target, rid string, d route.Dialect) {
	name := t.Name
	if g.cfg.Enqueuer == nil {
		g.fail(w, d, name, &BadRequestError{"asynchronous invocations are not enabled on this server"})
		return
	}
	payload, err := readJSON(r, g.cfg.MaxAsyncPayload)
	if err != nil {
		g.fail(w, d, name, err)
		return
	}
	version, err := g.cfg.Enqueuer.Enqueue(r.Context(), t, rid, payload)
	if err != nil {
		g.fail(w, d, name, err)
		return
	}
	if version > 0 {
		w.Header()["Ebb-Version"] = []string{strconv.Itoa(version)}
	}
	route.JSON(w, http.StatusAccepted, struct {
		ID string `json:"id"`
	}{rid})
}

// errorBody is Lambda's function error shape.
type errorBody struct {
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
}

// Classify maps an invocation error to its HTTP status, the body the client
// sees, and a short kind for metrics.
func Classify(err error) (status int, body errorBody, kind string) {
	var he *ebb.HandlerError
	var ie *ebb.InitError
	var br *BadRequestError
	var mbe *http.MaxBytesError
	var se *respguard.StatusError
	var ire *InvalidResponseError
	var be *BodyError
	var nf *ebb.NotFoundError
	if errors.As(err, &be) {
		err = readError(be.Err)
	}
	switch {
	case errors.As(err, &nf):
		return http.StatusNotFound, errorBody{"ResourceNotFound", nf.Message}, "not_found"
	case errors.As(err, &he):
		return http.StatusInternalServerError, errorBody{he.Type, he.Message}, "handler"
	case errors.As(err, &ie):
		return http.StatusBadGateway, errorBody{ie.Type, ie.Message}, "init"
	case errors.As(err, &br):
		return http.StatusBadRequest, errorBody{"InvalidRequestContent", br.Msg}, "bad_request"
	case errors.As(err, &se):
		return http.StatusBadGateway, errorBody{"Runtime.InvalidResponse", se.Error()}, "invalid_response"
	case errors.As(err, &ire):
		return http.StatusBadGateway, errorBody{"Runtime.InvalidResponse", ire.Error()}, "invalid_response"
	case errors.Is(err, ebb.ErrNotFound):
		return http.StatusNotFound, errorBody{"ResourceNotFound", "function not found"}, "not_found"
	case errors.Is(err, ebb.ErrPayloadTooLarge), errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, errorBody{"RequestTooLarge", "the request payload is larger than the limit"}, "payload"
	case errors.Is(err, ebb.ErrOverloaded):
		return http.StatusTooManyRequests, errorBody{"TooManyRequests", "the function is at its maximum instances and its queue is full or was waited on too long; retry later"}, "overloaded"
	case errors.Is(err, ebb.ErrTimeout):
		return http.StatusGatewayTimeout, errorBody{"Sandbox.Timedout", err.Error()}, "timeout"
	case errors.Is(err, ebb.ErrOutOfMemory):
		return http.StatusBadGateway, errorBody{"Runtime.OutOfMemory", "the instance exceeded its memory limit and was stopped"}, "oom"
	case errors.Is(err, ebb.ErrCrashed):
		return http.StatusBadGateway, errorBody{"Runtime.ExitError", "the instance crashed while handling the request"}, "crashed"
	case errors.Is(err, context.Canceled):
		return 499, errorBody{"ClientClosedRequest", "the client went away"}, "canceled"
	}
	return http.StatusInternalServerError, errorBody{"Ebb.InternalError", "internal error"}, "internal"
}

// fail writes err in dialect d: the client gets a clear message, the log
// the cause of anything that is ebb's fault.
func (g *Gateway) fail(w http.ResponseWriter, d route.Dialect, name string, err error) {
	status, body, kind := Classify(err)
	switch kind {
	case "internal":
		g.cfg.Logger.Error("invoke failed", "function", name, "err", err)
	case "invalid_response":
		g.cfg.Logger.Warn("function response refused", "function", name, "err", err)
	}
	e := &route.Error{Status: status, Type: body.Type, Message: body.Message}
	if status == http.StatusTooManyRequests {
		e.RetryAfter = time.Second
	}
	route.Write(w, d, e)
}

// serverMetadata answers the Open Inference Protocol's server metadata
// (GET /v2), which clients call first: the server's name, its version (the
// ebb module's, from the build) and the protocol extensions it supports.
func (g *Gateway) serverMetadata(w http.ResponseWriter, r *http.Request) {
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	route.JSON(w, http.StatusOK, struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}{"ebb", v, []string{}})
}

func (g *Gateway) health(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
}
