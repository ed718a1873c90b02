// Package runtimeapi is the server side of the AWS Lambda Runtime API for one
// instance of a function. The instance's process polls it for invocations at
// AWS_LAMBDA_RUNTIME_API and posts results back, exactly as it would inside
// Lambda, so that an unmodified aws-lambda-go binary (or ebb's Python shim)
// runs as an ebb function.
//
// Each Server listens on its own loopback port: the connection target alone
// says which instance a request comes from, and nothing needs to be
// authenticated or routed by function.
package runtimeapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ebb-run/ebb"
)

// Request is one invocation handed to the runtime.
type Request struct {
	// ID is the request id; the caller supplies it and keeps it unique among
	// the invocations in flight on this Server. It must be 1-256 printable
	// ASCII characters without '/', '?', '#' or '%', as it travels in URL paths.
	ID string
	// Payload is the event JSON; empty means "{}".
	Payload []byte
	// Deadline is when the invocation times out, as the handler sees it. Zero
	// means the deadline of Invoke's ctx, or ebb.MaxTimeout from now.
	Deadline time.Time
	// Optional values passed on as the Lambda-Runtime-* headers of those names.
	TraceID, ClientContext, CognitoIdentity string
	// TraceParent and TraceState, when set, are the invocation's W3C trace
	// context, passed on as the traceparent and tracestate headers so that
	// an OpenTelemetry SDK in the function joins the caller's trace.
	TraceParent, TraceState string
}

// maxRequestIDBytes bounds a request id so that it always fits a URL and a header.
const maxRequestIDBytes = 256

// closeTimeout bounds how long Close waits for in-flight runtime requests
// (a runtime slowly uploading a response) before cutting their connections.
const closeTimeout = 2 * time.Second

// callState is where an invocation is in its hand-off to the runtime.
type callState uint8

const (
	stateQueued callState = iota // waiting for a /next poll
	stateSent                    // handed to a poll; waiting for /response or /error
	stateDone                    // finished, failed or abandoned by Invoke
)

// call is one invocation in flight.
type call struct {
	req        Request
	deadlineMS int64
	// done is closed once body and err are final.
	done  chan struct{}
	body  []byte
	err   error
	state callState // guarded by Server.mu
}

// poll is one /next request waiting for an invocation. Its channel has room
// for exactly one call so that dispatching never blocks while holding the lock.
type poll struct {
	ch chan *call
}

// pollPool recycles polls; a poll goes back only with an empty channel.
var pollPool = sync.Pool{New: func() any { return &poll{ch: make(chan *call, 1)} }}

// Server is the Runtime API of one instance.
type Server struct {
	cfg    Config
	log    *slog.Logger
	arn    string
	arnHdr []string // shared, read-only header value

	ln        net.Listener
	srv       *http.Server
	serveDone chan struct{} // closed when the serving goroutine has returned
	closeOnce sync.Once
	closeErr  error

	// ready is closed once readyErr is final: nil when the runtime first
	// polled /next, the failure if the instance failed before that.
	ready chan struct{}
	// failed is closed once failErr is set.
	failed chan struct{}

	mu       sync.Mutex // guards calls, queue, polls, isReady, readyErr, failErr and every call's state
	calls    map[string]*call
	queue    fifo[*call] // invocations waiting for a poll, oldest first
	polls    fifo[*poll] // /next requests waiting for an invocation, oldest first
	isReady  bool
	readyErr error
	failErr  error
}

// New starts a Runtime API server on cfg.Listener, or on 127.0.0.1:0 when
// that is nil; it serves at once.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return nil, fmt.Errorf("validate runtime api config: %w", err)
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("listen runtime api: %w", err)
		}
	}
	s := newServer(cfg)
	s.ln = ln
	s.srv = &http.Server{
		Handler: http.HandlerFunc(s.serveHTTP),
		// No read, write or idle timeouts: a /next poll legitimately waits for
		// as long as the instance stays idle, and the runtime is local.
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.serveDone)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve runtime api", "err", err)
			s.Fail(fmt.Errorf("serve runtime api: %w", err))
		}
	}()
	return s, nil
}

// newServer builds a Server's state without a listener; cfg must be validated.
func newServer(cfg Config) *Server {
	arn := "arn:aws:lambda:" + cfg.Region + ":" + cfg.AccountID + ":function:" + cfg.FunctionName + ":" + cfg.FunctionVersion
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("function", cfg.FunctionName, "version", cfg.FunctionVersion),
		arn:       arn,
		arnHdr:    []string{arn},
		serveDone: make(chan struct{}),
		ready:     make(chan struct{}),
		failed:    make(chan struct{}),
		calls:     make(map[string]*call),
	}
}

// Addr is the server's "127.0.0.1:PORT", the value for AWS_LAMBDA_RUNTIME_API.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// FunctionARN is the ARN the handler sees:
// arn:aws:lambda:REGION:ACCOUNT:function:NAME:VERSION.
func (s *Server) FunctionARN() string { return s.arn }

// WaitReady blocks until the runtime first polls /next (nil), the runtime
// reports an init error (*ebb.InitError), Fail is called (its error), or ctx
// ends (ctx.Err()). Whichever of the first three happens first decides.
func (s *Server) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return s.readyErr
	default:
	}
	select {
	case <-s.ready:
		return s.readyErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Invoke hands req to the runtime's next /next poll (or one already waiting)
// and returns the body the runtime posts to /response. A body posted to
// /error comes back as a *ebb.HandlerError. If Fail was called, Invoke returns
// its error. If ctx ends first, Invoke returns ctx.Err() and a late result for
// req.ID is refused and dropped.
func (s *Server) Invoke(ctx context.Context, req Request) ([]byte, error) {
	if err := checkRequestID(req.ID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := s.submit(ctx, req)
	if err != nil {
		return nil, err
	}
	select {
	case <-c.done:
		return c.body, c.err
	case <-ctx.Done():
		return s.abandon(c, ctx.Err())
	}
}

// submit registers req and hands it to a waiting poll, or queues it for the
// next one.
func (s *Server) submit(ctx context.Context, req Request) (*call, error) {
	c := &call{req: req, deadlineMS: deadlineMS(ctx, req.Deadline), done: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failErr != nil {
		return nil, s.failErr
	}
	if _, dup := s.calls[req.ID]; dup {
		return nil, fmt.Errorf("invoke %s: request id is already in flight", req.ID)
	}
	s.calls[req.ID] = c
	s.dispatchLocked(c, false)
	return c, nil
}

// dispatchLocked gives c to the oldest waiting poll, or queues it (at the
// front when it is being handed back by a poll that went away).
func (s *Server) dispatchLocked(c *call, front bool) {
	if p, ok := s.polls.pop(); ok {
		c.state = stateSent
		p.ch <- c // never blocks: a waiting poll's channel is empty
		return
	}
	c.state = stateQueued
	if front {
		s.queue.pushFront(c)
	} else {
		s.queue.push(c)
	}
}

// abandon withdraws c after its Invoke gave up with err, unless the result
// arrived in the meantime, which then wins.
func (s *Server) abandon(c *call, err error) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.state == stateDone {
		return c.body, c.err
	}
	if c.state == stateQueued {
		s.queue.remove(c)
	}
	// A sent call may still sit in a poll's channel; that poll sees stateDone
	// and skips it.
	c.state = stateDone
	c.err = err
	delete(s.calls, c.req.ID)
	return nil, err
}

// complete finishes the sent invocation id with body or err. It reports false
// when id is unknown, not yet sent, or already finished.
func (s *Server) complete(id string, body []byte, err error) bool {
	s.mu.Lock()
	c := s.calls[id]
	if c == nil || c.state != stateSent {
		s.mu.Unlock()
		return false
	}
	delete(s.calls, id)
	c.state = stateDone
	c.body, c.err = body, err
	s.mu.Unlock()
	close(c.done)
	return true
}

// isSent reports whether id is an invocation the runtime may answer now.
func (s *Server) isSent(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls[id]
	return c != nil && c.state == stateSent
}

// nextCall waits for an invocation for a /next poll whose request context is
// ctx, and marks the runtime ready. It returns the failure error once the
// server failed, or ctx.Err() when the poll's connection went away.
func (s *Server) nextCall(ctx context.Context) (*call, error) {
	s.mu.Lock()
	s.markReadyLocked(nil)
	for {
		if s.failErr != nil {
			err := s.failErr
			s.mu.Unlock()
			return nil, err
		}
		if c, ok := s.queue.pop(); ok {
			c.state = stateSent
			s.mu.Unlock()
			return c, nil
		}
		p := pollPool.Get().(*poll)
		s.polls.push(p)
		s.mu.Unlock()

		select {
		case c := <-p.ch:
			pollPool.Put(p)
			s.mu.Lock()
			if c.state == stateSent {
				s.mu.Unlock()
				return c, nil
			}
			// Its Invoke gave up before this poll picked it up: wait on.
		case <-ctx.Done():
			s.mu.Lock()
			s.dropPollLocked(p)
			s.mu.Unlock()
			return nil, ctx.Err()
		case <-s.failed:
			s.mu.Lock()
			s.dropPollLocked(p)
			err := s.failErr
			s.mu.Unlock()
			return nil, err
		}
	}
}

// dropPollLocked withdraws a poll that stops waiting. If an invocation was
// handed to it in the meantime, the invocation goes to another poll or back to
// the front of the queue, so that it is not lost with a dead connection.
func (s *Server) dropPollLocked(p *poll) {
	if !s.polls.remove(p) {
		// Not waiting any more means a call was put in its channel under mu.
		c := <-p.ch
		if c.state == stateSent && s.failErr == nil {
			s.dispatchLocked(c, true)
		}
	}
	pollPool.Put(p)
}

// markReadyLocked decides WaitReady's answer, once.
func (s *Server) markReadyLocked(err error) {
	if s.isReady {
		return
	}
	s.isReady = true
	s.readyErr = err
	close(s.ready)
}

// Fail makes every pending and future Invoke, and WaitReady if the runtime
// was not ready yet, return err: the instance's process died (ebb.ErrCrashed,
// ebb.ErrOutOfMemory …) or could not start. A nil err means ebb.ErrCrashed.
// Only the first call has an effect.
func (s *Server) Fail(err error) {
	if err == nil {
		err = ebb.ErrCrashed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failErr != nil {
		return
	}
	s.failErr = err
	s.markReadyLocked(err)
	for id, c := range s.calls {
		delete(s.calls, id)
		if c.state == stateDone {
			continue
		}
		c.state = stateDone
		c.err = err
		close(c.done)
	}
	s.queue.clear()
	close(s.failed)
}

// Close stops the listener, fails pending invocations with ebb.ErrClosed
// (unless Fail came first) and waits for the server to stop.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		// Failing first wakes every /next poll, so Shutdown only waits for
		// requests that are actually transferring data.
		s.Fail(ebb.ErrClosed)
		if s.srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.closeErr = fmt.Errorf("shut down runtime api: %w", err)
			s.srv.Close()
		}
		<-s.serveDone
	})
	return s.closeErr
}

// deadlineMS is the invocation's deadline in Unix milliseconds, as the
// Lambda-Runtime-Deadline-Ms header carries it.
func deadlineMS(ctx context.Context, d time.Time) int64 {
	if d.IsZero() {
		var ok bool
		if d, ok = ctx.Deadline(); !ok {
			d = time.Now().Add(ebb.MaxTimeout)
		}
	}
	return d.UnixMilli()
}

// checkRequestID refuses ids that could not travel in a URL path or header.
func checkRequestID(id string) error {
	if id == "" || len(id) > maxRequestIDBytes {
		return fmt.Errorf("invoke: request id must be 1-%d bytes, got %d", maxRequestIDBytes, len(id))
	}
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case b <= ' ' || b >= 0x7f, b == '/', b == '?', b == '#', b == '%':
			return fmt.Errorf("invoke: request id %q has a forbidden character %q", id, b)
		}
	}
	return nil
}
