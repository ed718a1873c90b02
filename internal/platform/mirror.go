package platform

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/shadow"
)

// Shadow runs of http and onnx functions: the request is buffered (its body
// is bounded by the payload limit already), the primary's response is
// captured as it goes to the caller, and the same request is proxied to the
// shadow version once the caller has its answer.

// maxCapturedResponse bounds what is kept of each answer for comparison; a
// longer answer is compared by its first bytes and its length.
const maxCapturedResponse = 8 << 20

// proxyMirror is one mirrored proxied request.
type proxyMirror struct {
	method, path, rawQuery, host, remote string
	header                               http.Header
	body                                 []byte
	capture                              *captureWriter
}

// startProxyMirror decides whether the run mirrors r and, if so, buffers its
// body (putting a reader of the copy back) and copies its head, before the
// primary's proxy changes them. nil, nil: not mirrored.
func (p *Platform) startProxyMirror(run *shadow.Run, primary *deployment, r *http.Request) (*proxyMirror, error) {
	if primary.fn.Version == run.Config().Version || !run.Pick(rand.Uint32()) || !run.Begin() {
		return nil, nil
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			run.End()
			return nil, err // a *gateway.BodyError: the client's doing
		}
		body = b
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	h := r.Header.Clone()
	// The shadow gets the request less any credential, the function's own
	// included: a shadow is an experiment, not a second caller.
	for _, k := range []string{"Authorization", "Proxy-Authorization", "X-Api-Key", "Cookie", "X-Amz-Security-Token"} {
		delete(h, k)
	}
	// Nor is it part of the caller's trace, as a copy of an event is not.
	delete(h, "Traceparent")
	delete(h, "Tracestate")
	return &proxyMirror{method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, host: r.Host, remote: r.RemoteAddr,
		header: h, body: body}, nil
}

// tee returns w, keeping a copy of what the primary answers.
func (m *proxyMirror) tee(w http.ResponseWriter) http.ResponseWriter {
	m.capture = &captureWriter{ResponseWriter: w}
	return m.capture
}

// finishProxyMirror sends the request to the shadow version in the
// background, once the primary has answered (err nil), and compares.
func (p *Platform) finishProxyMirror(run *shadow.Run, m *proxyMirror, name, requestID string, primaryErr error, took time.Duration) {
	if primaryErr != nil {
		run.End()
		return
	}
	primary := m.capture.answer()
	go func() {
		defer run.End()
		ctx := ebb.WithTrigger(p.ctx, ebb.TriggerShadow)
		req, err := http.NewRequestWithContext(ctx, m.method, "http://shadow"+m.path, bytes.NewReader(m.body))
		if err != nil {
			return
		}
		req.URL.RawQuery, req.Host, req.RemoteAddr, req.Header = m.rawQuery, m.host, m.remote, m.header
		rid := gateway.NewRequestID()
		req.Header["Ebb-Request-Id"] = []string{rid}
		rec := &captureWriter{ResponseWriter: discardWriter{h: http.Header{}}}
		start := time.Now()
		t := gateway.Target{Name: name, Qualifier: strconv.Itoa(run.Config().Version)}
		err = p.Proxy(ctx, t, rid, rec, req, func(bool, int) {})
		if ctx.Err() != nil {
			return // ebb is stopping: not the shadow's failure
		}
		run.Record(requestID, primary, took, rec.answer(), time.Since(start), err)
	}()
}

// captureWriter passes a response on and keeps its status and the start of
// its body.
type captureWriter struct {
	http.ResponseWriter
	status    int
	buf       bytes.Buffer
	truncated int64
}

func (c *captureWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n := min(len(b), max(maxCapturedResponse-c.buf.Len(), 0))
	c.buf.Write(b[:n])
	c.truncated += int64(len(b) - n)
	return c.ResponseWriter.Write(b)
}

func (c *captureWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// answer is what is compared: the body when the status is 2xx, else the
// status and body, so that a different status is a difference.
func (c *captureWriter) answer() []byte {
	b := c.buf.Bytes()
	if c.truncated > 0 {
		b = append(bytes.Clone(b), []byte("…["+strconv.FormatInt(c.truncated, 10)+" more bytes]")...)
	}
	if c.status/100 == 2 {
		return b
	}
	return append([]byte("HTTP "+strconv.Itoa(c.status)+"\n"), b...)
}

// discardWriter is the shadow's client: its answer goes only to the
// comparison.
type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d discardWriter) WriteHeader(int)             {}
