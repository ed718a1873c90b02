package runtimeapi

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ebb-run/ebb"
)

// Paths of the Runtime API, version 2018-06-01.
const (
	nextPath      = "/2018-06-01/runtime/invocation/next"
	invokePrefix  = "/2018-06-01/runtime/invocation/"
	initErrorPath = "/2018-06-01/runtime/init/error"
)

// Headers of the Runtime API.
const (
	hdrRequestID       = "Lambda-Runtime-Aws-Request-Id"
	hdrDeadlineMS      = "Lambda-Runtime-Deadline-Ms"
	hdrFunctionARN     = "Lambda-Runtime-Invoked-Function-Arn"
	hdrTraceID         = "Lambda-Runtime-Trace-Id"
	hdrClientContext   = "Lambda-Runtime-Client-Context"
	hdrCognitoIdentity = "Lambda-Runtime-Cognito-Identity"
	hdrTraceParent     = "Traceparent" // W3C trace context, canonical form
	hdrTraceState      = "Tracestate"
	hdrErrorType       = "Lambda-Runtime-Function-Error-Type"
	hdrErrorBody       = "Lambda-Runtime-Function-Error-Body" // trailer, base64 JSON
)

// Shared, read-only header values and bodies of the hot path.
var (
	jsonContentType = []string{"application/json"}
	acceptedBody    = []byte(`{"status":"OK"}` + "\n")
	acceptedLength  = []string{strconv.Itoa(len(acceptedBody))}
	emptyEvent      = []byte("{}")
)

// maxErrorMessageBytes bounds an error message taken from a raw, non-JSON
// /error body, which may be anything the runtime printed.
const maxErrorMessageBytes = 4096

// bufPool holds buffers for bodies of unknown length (chunked uploads, which
// is how aws-lambda-go always posts).
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledBuffer keeps one huge response from pinning its buffer forever.
const maxPooledBuffer = 1 << 20

// serveHTTP routes a runtime's request. It must answer anything, however
// malformed, with a JSON error rather than fail.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL == nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", "missing request URL")
		return
	}
	path := r.URL.Path
	switch {
	case path == nextPath:
		if r.Method != http.MethodGet {
			methodNotAllowed(w, http.MethodGet)
			return
		}
		s.serveNext(w, r)
	case path == initErrorPath:
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		s.serveInitError(w, r)
	case strings.HasPrefix(path, invokePrefix):
		rest := path[len(invokePrefix):]
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 {
			notFound(w, path)
			return
		}
		id, verb := rest[:i], rest[i+1:]
		if verb != "response" && verb != "error" {
			notFound(w, path)
			return
		}
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		s.serveResult(w, r, id, verb == "error")
	default:
		notFound(w, path)
	}
}

// serveNext blocks until an invocation is available and writes it.
func (s *Server) serveNext(w http.ResponseWriter, r *http.Request) {
	c, err := s.nextCall(r.Context())
	if err != nil {
		if r.Context().Err() != nil {
			return // the runtime hung up; nobody reads an answer
		}
		// Lambda's 500 means "non-recoverable state, exit promptly", which
		// is what a failed or closed instance wants of its runtime.
		writeError(w, http.StatusInternalServerError, "Runtime.InstanceStopped", err.Error())
		return
	}
	payload := c.req.Payload
	if len(payload) == 0 {
		payload = emptyEvent
	}
	trace := c.req.TraceID
	if trace == "" {
		trace = newTraceID()
	}
	// One allocation holds every per-invocation header value.
	v := new([8]string)
	v[0] = c.req.ID
	v[1] = strconv.FormatInt(c.deadlineMS, 10)
	v[2] = trace
	v[3] = strconv.Itoa(len(payload))
	v[4] = c.req.ClientContext
	v[5] = c.req.CognitoIdentity
	v[6] = c.req.TraceParent
	v[7] = c.req.TraceState
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h[hdrRequestID] = v[0:1:1]
	h[hdrDeadlineMS] = v[1:2:2]
	h[hdrFunctionARN] = s.arnHdr
	h[hdrTraceID] = v[2:3:3]
	h["Content-Length"] = v[3:4:4]
	if v[4] != "" {
		h[hdrClientContext] = v[4:5:5]
	}
	if v[5] != "" {
		h[hdrCognitoIdentity] = v[5:6:6]
	}
	if v[6] != "" {
		h[hdrTraceParent] = v[6:7:7]
		if v[7] != "" {
			h[hdrTraceState] = v[7:8:8]
		}
	}
	w.WriteHeader(http.StatusOK)
	// A failed write is the runtime's problem: the invocation was handed out
	// and will time out if the runtime never answers it.
	_, _ = w.Write(payload)
}

// serveResult takes a /response or /error for invocation id.
func (s *Server) serveResult(w http.ResponseWriter, r *http.Request, id string, isError bool) {
	// Checked before reading so that a stray upload is not buffered; complete
	// checks again because the invocation may be abandoned meanwhile.
	if !s.isSent(id) {
		s.log.Debug("runtime answered an unknown invocation", "request_id", id)
		writeError(w, http.StatusBadRequest, "InvalidRequestID", "unknown or already completed request id")
		return
	}
	body, tooLarge, err := readBody(r, s.cfg.MaxResponseBytes)
	if err != nil {
		// The upload broke off; the runtime will not see any answer either.
		s.log.Debug("read runtime result", "request_id", id, "err", err)
		writeError(w, http.StatusBadRequest, "InvalidRequest", "read body: "+err.Error())
		return
	}
	if tooLarge {
		s.complete(id, nil, &ebb.HandlerError{
			Type:    "Function.ResponseSizeTooLarge",
			Message: "Response payload size exceeded maximum allowed payload size (" + strconv.FormatInt(s.cfg.MaxResponseBytes, 10) + " bytes).",
		})
		writeError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
			"body exceeds "+strconv.FormatInt(s.cfg.MaxResponseBytes, 10)+" bytes")
		return
	}
	var result error
	switch {
	case isError:
		result = parseHandlerError(body, r.Header.Get(hdrErrorType), "Unhandled")
	case r.Trailer.Get(hdrErrorType) != "":
		// A streamed response whose producer failed midway reports the
		// failure in trailers; what was streamed so far is not a result.
		result = trailerError(r.Trailer)
	}
	if result != nil {
		body = nil
	}
	if !s.complete(id, body, result) {
		writeError(w, http.StatusBadRequest, "InvalidRequestID", "unknown or already completed request id")
		return
	}
	writeAccepted(w)
}

// serveInitError takes the runtime's report that it could not start.
func (s *Server) serveInitError(w http.ResponseWriter, r *http.Request) {
	body, tooLarge, err := readBody(r, s.cfg.MaxResponseBytes)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", "read body: "+err.Error())
		return
	}
	if tooLarge {
		// Still an init failure, whatever it had to say.
		s.Fail(&ebb.InitError{Type: "Runtime.Unknown", Message: "init error report exceeds the size limit"})
		writeError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
			"body exceeds "+strconv.FormatInt(s.cfg.MaxResponseBytes, 10)+" bytes")
		return
	}
	he := parseHandlerError(body, r.Header.Get(hdrErrorType), "Runtime.Unknown")
	ie := &ebb.InitError{Type: he.Type, Message: he.Message}
	s.log.Debug("runtime reported an init error", "type", ie.Type, "message", ie.Message)
	s.Fail(ie)
	writeAccepted(w)
}

// firstBodyBuffer bounds the buffer a declared Content-Length sizes before
// any of the body has arrived.
const firstBodyBuffer = 64 << 10

// readBody reads r's body up to limit bytes into a slice the caller owns.
func readBody(r *http.Request, limit int64) (body []byte, tooLarge bool, err error) {
	if r.Body == nil {
		return []byte{}, false, nil
	}
	if r.ContentLength > limit {
		return nil, true, nil
	}
	if r.ContentLength >= 0 && r.ContentLength <= firstBodyBuffer {
		body = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, false, err
		}
		return body, false, nil
	}
	if r.ContentLength > firstBodyBuffer {
		// The function's code declared the length: memory follows what
		// arrives, so one that declares megabytes and sends nothing holds
		// firstBodyBuffer, not what it declared.
		var b bytes.Buffer
		b.Grow(firstBodyBuffer)
		if _, err := io.CopyN(&b, r.Body, r.ContentLength); err != nil {
			return nil, false, err
		}
		return b.Bytes(), false, nil
	}
	bp := bufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= maxPooledBuffer {
			*bp = buf[:0]
			bufPool.Put(bp)
		}
	}()
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		// One byte beyond the limit tells "exactly at the limit" from "over it".
		room := buf[len(buf):min(int64(cap(buf)), limit+1)]
		n, err := r.Body.Read(room)
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, true, nil
		}
		if err == io.EOF {
			return append([]byte{}, buf...), false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
}

// errorPayload is Lambda's error document. stackTrace varies by runtime:
// Python sends strings, aws-lambda-go sends {path, line, label} objects.
type errorPayload struct {
	Type       string          `json:"errorType"`
	Message    string          `json:"errorMessage"`
	StackTrace json.RawMessage `json:"stackTrace"`
}

// parseHandlerError turns an error document into a HandlerError. The type
// comes from the document, else from the header, else fallback; a body that is
// not an error document becomes the message, as the runtime's best words.
func parseHandlerError(body []byte, headerType, fallback string) *ebb.HandlerError {
	var p errorPayload
	he := &ebb.HandlerError{}
	if err := json.Unmarshal(body, &p); err == nil {
		he.Type, he.Message, he.Trace = p.Type, p.Message, parseStackTrace(p.StackTrace)
	} else if t := bytes.TrimSpace(body); len(t) > 0 {
		if len(t) > maxErrorMessageBytes {
			t = t[:maxErrorMessageBytes]
		}
		he.Message = strings.ToValidUTF8(string(t), "\uFFFD")
	}
	if he.Type == "" {
		he.Type = headerType
	}
	if he.Type == "" {
		he.Type = fallback
	}
	return he
}

// parseStackTrace flattens the runtime's stack trace into one string per frame.
func parseStackTrace(raw json.RawMessage) []string {
	if len(raw) == 0 {
		return nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		if one == "" {
			return nil
		}
		return strings.Split(strings.TrimRight(one, "\n"), "\n")
	}
	var frames []json.RawMessage
	if json.Unmarshal(raw, &frames) != nil {
		return nil
	}
	trace := make([]string, 0, len(frames))
	for _, f := range frames {
		var str string
		if json.Unmarshal(f, &str) == nil {
			trace = append(trace, str)
			continue
		}
		var gf struct {
			Path  string `json:"path"`
			Line  int64  `json:"line"`
			Label string `json:"label"`
		}
		if json.Unmarshal(f, &gf) == nil && gf.Path != "" {
			trace = append(trace, gf.Path+":"+strconv.FormatInt(gf.Line, 10)+" "+gf.Label)
			continue
		}
		var compact bytes.Buffer
		if json.Compact(&compact, f) == nil {
			trace = append(trace, compact.String())
		}
	}
	return trace
}

// trailerError is the failure a streamed response reported in its trailers.
func trailerError(tr http.Header) *ebb.HandlerError {
	typ := tr.Get(hdrErrorType)
	if b, err := base64.StdEncoding.DecodeString(tr.Get(hdrErrorBody)); err == nil && len(b) > 0 {
		return parseHandlerError(b, typ, "Unhandled")
	}
	return &ebb.HandlerError{Type: typ, Message: "the response stream failed"}
}

// newTraceID makes an X-Ray style trace header for an invocation the caller
// did not trace, since runtimes expect one on every invocation.
func newTraceID() string {
	var b [7 + 8 + 1 + 24 + 10]byte
	n := copy(b[:], "Root=1-")
	var t [4]byte
	sec := uint32(time.Now().Unix())
	t[0], t[1], t[2], t[3] = byte(sec>>24), byte(sec>>16), byte(sec>>8), byte(sec)
	n += hex.Encode(b[n:], t[:])
	b[n] = '-'
	n++
	var r [12]byte
	x, y := rand.Uint64(), rand.Uint32()
	for i := range 8 {
		r[i] = byte(x >> (8 * i))
	}
	for i := range 4 {
		r[8+i] = byte(y >> (8 * i))
	}
	n += hex.Encode(b[n:], r[:])
	n += copy(b[n:], ";Sampled=0")
	return string(b[:n])
}

func writeAccepted(w http.ResponseWriter) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = acceptedLength
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(acceptedBody)
}

// writeError answers with Lambda's error document.
func writeError(w http.ResponseWriter, status int, typ, msg string) {
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "\uFFFD")
	}
	b, err := json.Marshal(struct {
		Message string `json:"errorMessage"`
		Type    string `json:"errorType"`
	}{msg, typ})
	if err != nil {
		// Two strings always marshal; keep the answer well-formed regardless.
		b = []byte(`{"errorMessage":"internal error","errorType":"ServiceException"}`)
	}
	b = append(b, '\n')
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func notFound(w http.ResponseWriter, path string) {
	writeError(w, http.StatusNotFound, "NotFound", "no such resource: "+truncate(path, 256))
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header()["Allow"] = []string{allow}
	writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use "+allow)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
