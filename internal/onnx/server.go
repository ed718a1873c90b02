package onnx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ebb-run/ebb"
)

// HeaderContentLength is the binary tensor data extension's header: the
// length of the JSON part of a body that continues with raw tensor bytes.
const HeaderContentLength = "Inference-Header-Content-Length"

// Server serves one model over the Open Inference Protocol. It implements
// http.Handler for the /v2 routes.
type Server struct {
	cfg     Config
	log     *slog.Logger
	model   *model
	sess    *session
	batch   *batcher // nil when batching is off
	mux     *http.ServeMux
	timings LoadTimings

	mu     sync.Mutex     // guards closed and adding to runs
	closed bool           // set by Close; requests then get 503
	runs   sync.WaitGroup // requests using the session
}

// NewServer loads the ONNX Runtime library (if no Server has), reads the
// model and creates its session. ctx bounds the load only between steps:
// ONNX Runtime cannot be interrupted while it builds a session.
func NewServer(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := InitLibrary(cfg.LibraryPath); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	initStart, initTime := libraryInitTimes()
	s.timings.LibraryInit = initTime
	if !cfg.SpawnedAt.IsZero() && initStart.After(cfg.SpawnedAt) {
		s.timings.ProcessStart = initStart.Sub(cfg.SpawnedAt)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	start := time.Now()
	m, err := loadModel(cfg.ModelPath)
	if err != nil {
		return nil, err
	}
	s.model = m
	s.timings.ModelRead = time.Since(start)
	for _, why := range m.unservable {
		s.log.Warn("onnx: model output left out", "model", cfg.ModelName, "reason", why)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	start = time.Now()
	s.sess, err = newSession(m, sessionOptions{threads: cfg.IntraOpThreads, level: cfg.GraphOptimization, spinning: cfg.Spinning, runs: cfg.MaxConcurrentRuns})
	if err != nil {
		return nil, err
	}
	s.timings.SessionCreate = time.Since(start)

	if cfg.MaxBatchSize > 1 {
		if m.batchable {
			s.batch = newBatcher(s.sess, cfg.MaxBatchSize, cfg.MaxDelay, s.log)
		} else {
			s.log.Warn("onnx: batching requested but the model's inputs and outputs do not all have a dynamic first dimension; requests run alone", "model", cfg.ModelName)
		}
	}
	s.routes()
	s.log.Info("onnx: model loaded", "model", cfg.ModelName, "bytes", m.size,
		"onnxruntime", LibraryVersion(), "threads", cfg.IntraOpThreads, "batching", s.batch != nil, "spare", cfg.Spare,
		"process_start", s.timings.ProcessStart, "library_init", s.timings.LibraryInit,
		"model_read", s.timings.ModelRead, "session_create", s.timings.SessionCreate)
	return s, nil
}

// Timings reports how long loading took, step by step.
func (s *Server) Timings() LoadTimings { return s.timings }

// BatchStats counts the batcher's work, for metrics.
type BatchStats struct {
	Enabled  bool  // batching is configured and the model allows it
	Disabled bool  // it turned itself off: an output did not follow the batch
	Runs     int64 // model runs made for batches
	Requests int64 // requests those runs answered
}

// BatchStats reports the batcher's counters so far.
func (s *Server) BatchStats() BatchStats {
	b := s.batch
	if b == nil {
		return BatchStats{}
	}
	return BatchStats{Enabled: true, Disabled: b.off.Load(), Runs: b.runs.Load(), Requests: b.jobs.Load()}
}

// Close stops serving: new requests get 503, runs in progress are told to
// terminate, and Close waits for them before freeing the session. The HTTP
// server in front should be shut down first so that requests finish
// normally.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.sess.terminate()
	if s.batch != nil {
		s.batch.stop()
	}
	s.runs.Wait()
	s.sess.destroy()
	s.log.Info("onnx: server closed", "model", s.cfg.ModelName)
	return nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A panic is a bug, but one request must not take the instance (and
	// every request batched with it) down, nor leave the client with a
	// dropped connection instead of an answer.
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("onnx: panic serving request", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
			writeError(w, http.StatusInternalServerError, "internal error")
		}
	}()
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	mux := http.NewServeMux()
	handle := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, h)
		// Without a method the pattern catches what the mux would answer
		// with a plain-text 405; the protocol's errors are JSON.
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed; use %s", r.Method, method))
		})
	}
	handle("GET", "/v2", s.serverMetadata)
	handle("GET", "/v2/health/live", s.live)
	handle("GET", "/v2/health/ready", s.ready)
	for _, prefix := range []string{"/v2/models/{model}", "/v2/models/{model}/versions/{version}"} {
		handle("GET", prefix, s.modelMetadata)
		handle("GET", prefix+"/ready", s.modelReady)
		handle("POST", prefix+"/infer", s.infer)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	s.mux = mux
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) serverMetadata(w http.ResponseWriter, r *http.Request) {
	b := []byte(`{"name":"ebb","version":`)
	b = appendJSONString(b, LibraryVersion())
	b = append(b, `,"extensions":["binary_tensor_data"]}`...)
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []byte(`{"live":true}`))
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if s.isClosed() {
		writeJSON(w, http.StatusServiceUnavailable, []byte(`{"ready":false}`))
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"ready":true}`))
}

// checkModel answers 404 unless the path names this model (and version 1,
// the only one an instance has).
func (s *Server) checkModel(w http.ResponseWriter, r *http.Request) bool {
	if name := r.PathValue("model"); name != s.cfg.ModelName {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found", name))
		return false
	}
	if v := r.PathValue("version"); v != "" && v != "1" {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q has no version %q", s.cfg.ModelName, v))
		return false
	}
	return true
}

func (s *Server) modelMetadata(w http.ResponseWriter, r *http.Request) {
	if !s.checkModel(w, r) {
		return
	}
	b := []byte(`{"name":`)
	b = appendJSONString(b, s.cfg.ModelName)
	b = append(b, `,"versions":["1"],"platform":"onnxruntime_onnx","inputs":`...)
	b = appendSpecs(b, s.model.inputs)
	b = append(b, `,"outputs":`...)
	b = appendSpecs(b, s.model.outputs)
	b = append(b, '}')
	writeJSON(w, http.StatusOK, b)
}

func appendSpecs(b []byte, specs []ioSpec) []byte {
	b = append(b, '[')
	for i := range specs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendJSONString(b, specs[i].name)
		b = append(b, `,"datatype":"`...)
		b = append(b, specs[i].dt.name...)
		b = append(b, `","shape":`...)
		b = appendShape(b, specs[i].shapeJSON())
		b = append(b, '}')
	}
	return append(b, ']')
}

func (s *Server) modelReady(w http.ResponseWriter, r *http.Request) {
	if !s.checkModel(w, r) {
		return
	}
	b := []byte(`{"name":`)
	b = appendJSONString(b, s.cfg.ModelName)
	if s.isClosed() {
		writeJSON(w, http.StatusServiceUnavailable, append(b, `,"ready":false}`...))
		return
	}
	writeJSON(w, http.StatusOK, append(b, `,"ready":true}`...))
}

// infer serves POST /v2/models/{m}/infer.
func (s *Server) infer(w http.ResponseWriter, r *http.Request) {
	if !s.checkModel(w, r) {
		return
	}
	body, err := s.readBody(w, r)
	if err != nil {
		writeErr(w, err)
		return
	}
	header, bin := body, []byte(nil)
	if h := r.Header.Get(HeaderContentLength); h != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(h), 10, 64)
		if err != nil || n < 0 || n > int64(len(body)) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s %q is not a length within the %d-byte body", HeaderContentLength, h, len(body)))
			return
		}
		header, bin = body[:n], body[n:]
	}
	req, err := parseRequest(header, bin)
	if err != nil {
		writeErr(w, err)
		return
	}
	inputs, sel, err := s.bind(req)
	if err != nil {
		writeErr(w, err)
		return
	}
	var st runStats
	outs, err := s.execute(r.Context(), inputs, &st)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header()["Server-Timing"] = []string{serverTiming(st)}
	s.writeResponse(w, req, outs, sel)
}

// readBody reads the request body within MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := s.cfg.MaxBodyBytes
	tooLarge := &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body is over the %d-byte limit", limit)}
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	// Trust Content-Length for sizing only up to a point: a client that
	// announces a large body and sends it slowly must not hold the memory.
	buf := make([]byte, 0, min(max(r.ContentLength+1, 4096), 1<<20))
	lr := io.LimitReader(r.Body, limit+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, badRequest("read body: %v", err)
		}
	}
	if int64(len(buf)) > limit {
		return nil, tooLarge
	}
	return buf, nil
}

// selected is an output to return and whether it goes in binary.
type selected struct {
	index  int // into model.outputs
	binary bool
}

// bind checks the request against the model and orders its inputs as the
// session wants them. Every answer to a wrong request is a 400 that names
// the input and the problem.
func (s *Server) bind(req *inferRequest) ([]*tensor, []selected, error) {
	m := s.model
	inputs := make([]*tensor, len(m.inputs))
	for i := range req.inputs {
		in := &req.inputs[i]
		idx := -1
		for k := range m.inputs {
			if m.inputs[k].name == in.name {
				idx = k
				break
			}
		}
		if idx < 0 {
			return nil, nil, badRequest("unknown input %q; the model's inputs are %s", in.name, names(m.inputs))
		}
		if inputs[idx] != nil {
			return nil, nil, badRequest("input %q is given twice", in.name)
		}
		inputs[idx] = &in.t
	}
	// Symbolic dimensions seen so far; a handful at most, so a slice.
	type symDim struct {
		param, from string
		value       int64
	}
	var seen []symDim
	for i, t := range inputs {
		spec := &m.inputs[i]
		if t == nil {
			return nil, nil, badRequest("missing input %q", spec.name)
		}
		if t.dt != spec.dt {
			return nil, nil, badRequest("input %q: datatype %s does not match the model's %s", spec.name, t.dt.name, spec.dt.name)
		}
		if !spec.ranked {
			continue
		}
		if len(t.shape) != len(spec.dims) {
			return nil, nil, badRequest("input %q: shape %s has %d dimensions, the model's shape %s has %d", spec.name, shapeString(t.shape), len(t.shape), shapeString(spec.dims), len(spec.dims))
		}
		for d, want := range spec.dims {
			got := t.shape[d]
			if want >= 0 && got != want {
				return nil, nil, badRequest("input %q: shape %s does not match the model's %s (dimension %d must be %d)", spec.name, shapeString(t.shape), shapeString(spec.dims), d, want)
			}
			p := spec.params[d]
			if want >= 0 || p == "" {
				continue
			}
			known := false
			for _, sd := range seen {
				if sd.param != p {
					continue
				}
				if sd.value != got {
					return nil, nil, badRequest("input %q: dimension %d (%s) is %d, but input %q has %s = %d", spec.name, d, p, got, sd.from, p, sd.value)
				}
				known = true
			}
			if !known {
				seen = append(seen, symDim{param: p, from: spec.name, value: got})
			}
		}
	}
	var sel []selected
	// An empty "outputs" list asks for nothing in particular, as an absent
	// one: every output, rather than a 200 that carries none.
	if len(req.outputs) == 0 {
		sel = make([]selected, len(m.outputs))
		for i := range m.outputs {
			sel[i] = selected{index: i, binary: req.binaryOutput}
		}
		return inputs, sel, nil
	}
	for _, o := range req.outputs {
		idx := -1
		for k := range m.outputs {
			if m.outputs[k].name == o.name {
				idx = k
				break
			}
		}
		if idx < 0 {
			for _, why := range m.unservable {
				if strings.HasPrefix(why, "output "+strconv.Quote(o.name)+" ") {
					return nil, nil, badRequest("%s", why)
				}
			}
			return nil, nil, badRequest("unknown output %q; the model's outputs are %s", o.name, names(m.outputs))
		}
		for _, prev := range sel {
			if prev.index == idx {
				return nil, nil, badRequest("output %q is requested twice", o.name)
			}
		}
		bin := o.binary == 1 || (o.binary == -1 && req.binaryOutput)
		sel = append(sel, selected{index: idx, binary: bin})
	}
	return inputs, sel, nil
}

func names(specs []ioSpec) string {
	q := make([]string, len(specs))
	for i := range specs {
		q[i] = strconv.Quote(specs[i].name)
	}
	return strings.Join(q, ", ")
}

// execute runs the inputs, batched with other requests when it can be.
func (s *Server) execute(ctx context.Context, inputs []*tensor, st *runStats) ([]tensor, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ebb.ErrClosed
	}
	s.runs.Add(1)
	s.mu.Unlock()
	defer s.runs.Done()
	if b := s.batch; b != nil && !b.off.Load() {
		if rows, ok := s.batchRows(inputs); ok {
			return b.submit(ctx, inputs, rows, st)
		}
	}
	return s.sess.run(ctx, inputs, st)
}

// batchRows says whether the request can join a batch, and with how many
// rows: all inputs agree on the first dimension, and it is smaller than a
// full batch (a full or larger request just runs).
func (s *Server) batchRows(inputs []*tensor) (int64, bool) {
	rows := inputs[0].shape[0]
	if rows < 1 || rows >= int64(s.cfg.MaxBatchSize) {
		return 0, false
	}
	for _, t := range inputs[1:] {
		if t.shape[0] != rows {
			return 0, false
		}
	}
	return rows, true
}

// serverTiming is the Server-Timing header of an answered inference: how
// long it waited (for a run slot, or for its batch), how long the model run
// took, and, when batching is on, how many rows that run had. Clients see
// where time went, and benchmarks can split the HTTP path from the model.
func serverTiming(st runStats) string {
	b := make([]byte, 0, 64)
	b = append(b, "queue;dur="...)
	b = strconv.AppendFloat(b, float64(st.queued.Microseconds())/1000, 'f', -1, 64)
	b = append(b, ", infer;dur="...)
	b = strconv.AppendFloat(b, float64(st.run.Microseconds())/1000, 'f', -1, 64)
	if st.rows > 0 {
		b = append(b, ", batch;desc="...)
		b = strconv.AppendInt(b, st.rows, 10)
	}
	return string(b)
}

// writeErr answers with the status an error calls for.
func writeErr(w http.ResponseWriter, err error) {
	var re *requestError
	var ie *errInput
	switch {
	case errors.As(err, &re):
		writeError(w, re.status, re.msg)
	case errors.As(err, &ie):
		writeError(w, http.StatusBadRequest, ie.msg)
	case errors.Is(err, ebb.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "model is shutting down")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "request cancelled")
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	b := []byte(`{"error":`)
	b = appendJSONString(b, msg)
	writeJSON(w, status, append(b, '}'))
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
