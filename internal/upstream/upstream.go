// Package upstream forwards HTTP requests to one instance that serves HTTP
// (an http or onnx function): HTTP/1.1 over kept-alive connections on the
// caller's goroutine for ordinary requests, httputil.ReverseProxy for
// protocol upgrades. How a connection is made is the caller's (Config.Dial),
// since an instance may live in a network namespace of its own.
package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/respguard"
)

// Config says where a Client's instance is.
type Config struct {
	// Addr is the instance's host:port; it names the upstream in requests
	// and is where the default Dial connects.
	Addr string
	// Dial opens one connection to the instance; nil means TCP to Addr.
	Dial func(ctx context.Context) (net.Conn, error)
	// Logger hears of response fields dropped from what the instance
	// answered (respguard); nil: nobody.
	Logger *slog.Logger
}

// Client forwards requests to one instance over keep-alive connections, on
// the caller's goroutine. net/http's Transport hands every request to a
// writer goroutine and every response back from a reader goroutine; on the
// warm path those two hand-offs cost more than the rest of the proxying, so
// ebb speaks HTTP/1.1 to its own instances directly. Upgrades (WebSocket)
// still go through httputil.ReverseProxy. Safe for concurrent use.
type Client struct {
	addr  string
	dial  func(ctx context.Context) (net.Conn, error)
	proxy *httputil.ReverseProxy // for protocol upgrades
	log   *slog.Logger           // dropped response fields; nil: none

	mu     sync.Mutex // guards idle and closed
	idle   []*upConn  // LIFO: the most recently used connection is warmest
	closed bool

	// busy counts requests in flight, for the decision to spin (awaitReply).
	busy atomic.Int32
	// replyNs is a moving average of how long the instance takes to start
	// answering (ns): spinning for an answer is worth it only when it
	// usually comes within the spin.
	replyNs atomic.Int64
}

type upConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer // streamed request bodies
	head []byte        // the request line and header, reused
	bufs net.Buffers   // head and body, for one writev
}

const maxIdleUpstream = 1024

// New returns a Client for the instance cfg names.
func New(cfg Config) *Client {
	dial := cfg.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		addr := cfg.Addr
		dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return &Client{addr: cfg.Addr, dial: dial, proxy: newProxy(cfg.Addr, dial), log: cfg.Logger}
}

// Dial opens a connection to the instance, as the Client does: for a
// readiness probe that must reach it the same way.
func (u *Client) Dial(ctx context.Context) (net.Conn, error) { return u.dial(ctx) }

// Addr is the instance's address, as Config gave it.
func (u *Client) Addr() string { return u.addr }

func (u *Client) get(ctx context.Context) (*upConn, bool, error) {
	u.mu.Lock()
	if n := len(u.idle); n > 0 {
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		return c, true, nil
	}
	u.mu.Unlock()
	c, err := u.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}, false, nil
}

// Keep adds c, a connection to the instance that the caller made (the
// readiness probe's), to the idle ones, so that the first request does not
// dial again: on a cold start that is a handshake, and for an instance in a
// network namespace of its own a namespace switch, saved. Should it have
// gone stale, the request is retried on a new one, as for any reused one.
func (u *Client) Keep(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	u.put(&upConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)})
}

// spinFor is how long awaitReply polls for an instance's answer before
// letting the goroutine park.
const spinFor = 40 * time.Microsecond

// awaitReply polls, for a few tens of microseconds, for the instance's answer
// when this is the only request in flight on the instance and its answers
// usually come that fast. Parking the goroutine and having the netpoller wake
// it costs more than that on the warm path of a quiet function; under load
// (several in flight) there is other work for the CPU, and a function that
// takes milliseconds (a model run) would only lose a core to the spin, so
// the goroutine parks at once.
func (u *Client) awaitReply(c *upConn) {
	if !u.spinWorthIt() || c.br.Buffered() > 0 {
		return
	}
	rc, ok := c.c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := rc.SyscallConn()
	if err != nil {
		return
	}
	var b [1]byte
	raw.Read(func(fd uintptr) bool {
		deadline := time.Now().Add(spinFor)
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if n > 0 || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR) || n == 0 && err == nil {
				return true // readable, closed or failed: the real read will see it
			}
			if time.Now().After(deadline) {
				return true
			}
		}
	})
}

// spinWorthIt says whether polling for the next answer may pay: one request
// in flight, and answers that usually come within the spin.
func (u *Client) spinWorthIt() bool {
	return u.busy.Load() <= 1 && u.replyNs.Load() <= int64(2*spinFor)
}

// observeReply folds one answer's wait into replyNs (weight 1/8). Concurrent
// callers may lose each other's update; an average is all the spin needs.
func (u *Client) observeReply(d time.Duration) {
	old := u.replyNs.Load()
	u.replyNs.Store(old - old/8 + int64(d)/8)
}

func (u *Client) put(c *upConn) {
	c.c.SetDeadline(time.Time{})
	u.mu.Lock()
	if u.closed || len(u.idle) >= maxIdleUpstream {
		u.mu.Unlock()
		c.c.Close()
		return
	}
	u.idle = append(u.idle, c)
	u.mu.Unlock()
}

// Close closes the idle connections and every one given back later; the
// instance is gone or going. Requests in flight finish on their own.
func (u *Client) Close() {
	u.proxy.Transport.(*http.Transport).CloseIdleConnections()
	u.mu.Lock()
	u.closed = true
	idle := u.idle
	u.idle = nil
	u.mu.Unlock()
	for _, c := range idle {
		c.c.Close()
	}
}

// hopHeaders are meaningful for one connection only and are not forwarded
// (RFC 9110 §7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHop(h http.Header) {
	if c := h["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = textprotoTrim(f); f != "" {
					h.Del(f)
				}
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

func textprotoTrim(s string) string { return strings.TrimSpace(s) }

// upstreamError says whether the response had started (written) when the
// exchange failed: before that the caller may still answer with an error
// status, after it nothing more can be said to the client.
type upstreamError struct {
	err     error
	written bool
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

var (
	xfProtoHTTP  = []string{"http"}
	xfProtoHTTPS = []string{"https"}
)

// maxReplayBody is the largest request body read whole before it is sent,
// in one writev with its header, and kept so that a request that met a
// connection the instance had just closed can be sent again. Larger or
// unannounced bodies are streamed: holding them whole would cost ebb memory
// per slow client, and a 1 MiB limit measured no faster for 64 KiB
// inference requests.
const maxReplayBody = 64 << 10

// bodyPool lends whole-body buffers in power-of-four size classes from 4 KiB
// up to maxReplayBody, so that request bodies do not feed the garbage
// collector.
var bodyPool [3]sync.Pool

func bodyClass(n int64) int {
	c, size := 0, int64(4<<10)
	for size < n {
		c, size = c+1, size*4
	}
	return c
}

func getBody(n int64) []byte {
	c := bodyClass(n)
	if v := bodyPool[c].Get(); v != nil {
		return (*v.(*[]byte))[:n]
	}
	return make([]byte, n, int64(4<<10)<<(2*c))
}

func putBody(b []byte) {
	c := bodyClass(int64(cap(b)))
	if c < len(bodyPool) && int64(4<<10)<<(2*c) == int64(cap(b)) {
		bodyPool[c].Put(&b)
	}
}

// roundTrip forwards r and writes the response to w.
func (u *Client) roundTrip(w http.ResponseWriter, r *http.Request, deadline time.Time) error {
	u.busy.Add(1)
	defer u.busy.Add(-1)
	ctx := r.Context()
	// The request's own header map is written out as it is, less the
	// hop-by-hop fields: copying it would be the largest allocation here.
	removeHop(r.Header)
	if te := r.Header.Values("Te"); len(te) > 0 && strings.Contains(strings.Join(te, ","), "trailers") {
		r.Header["Te"] = []string{"trailers"}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		r.Header["X-Forwarded-For"] = []string{ip}
	}
	r.Header["X-Forwarded-Host"] = []string{r.Host}
	if r.TLS != nil {
		r.Header["X-Forwarded-Proto"] = xfProtoHTTPS
	} else {
		r.Header["X-Forwarded-Proto"] = xfProtoHTTP
	}
	out := r.Header

	// A small body is read first so that the request can be replayed on a
	// fresh connection if a kept-alive one turns out to be dead.
	var body []byte
	replayable := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	if !replayable && r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		buf := getBody(r.ContentLength)
		defer putBody(buf)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return &upstreamError{err: fmt.Errorf("read request body: %w", err)}
		}
		body, replayable = buf, true
	}
	for attempt := 0; ; attempt++ {
		c, reused, err := u.get(ctx)
		if err != nil {
			return &upstreamError{err: err}
		}
		err = u.send(ctx, c, w, r, out, body, deadline)
		if err == nil {
			return nil
		}
		c.c.Close()
		var ue *upstreamError
		if errors.As(err, &ue) && !ue.written && reused && replayable && attempt == 0 && ctx.Err() == nil {
			continue // the instance closed an idle connection: try a fresh one
		}
		if errors.As(err, &ue) && ue.written {
			return fmt.Errorf("%w: %v", ebb.ErrResponseStarted, ue.err)
		}
		// The connection's deadline is the request's: its expiry is the
		// request timing out, even if ctx's own timer has not fired yet.
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
		}
		return err
	}
}

// send writes the request on c and copies the response to w. On success it
// returns c to the pool or closes it; on error the caller closes it.
func (u *Client) send(ctx context.Context, c *upConn, w http.ResponseWriter, r *http.Request, h http.Header, body []byte, deadline time.Time) error {
	c.c.SetDeadline(deadline)
	// A client that goes away unblocks the connection's reads and writes.
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	head := append(c.head[:0], r.Method...)
	head = append(head, ' ')
	head = append(head, r.URL.RequestURI()...)
	head = append(head, " HTTP/1.1\r\nHost: "...)
	head = append(head, r.Host...)
	head = append(head, "\r\n"...)
	streamed := body == nil && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	chunked := streamed && r.ContentLength < 0
	switch {
	case body != nil:
		h["Content-Length"] = []string{itoa(len(body))}
	case chunked:
		h["Transfer-Encoding"] = []string{"chunked"}
		delete(h, "Content-Length")
	case streamed:
		h["Content-Length"] = []string{itoa64(r.ContentLength)}
	default:
		delete(h, "Content-Length")
	}
	hw := headWriter{&head}
	if err := h.Write(hw); err != nil {
		return &upstreamError{err: err}
	}
	head = append(head, "\r\n"...)
	c.head = head
	if !streamed {
		// The whole request in one writev.
		c.bufs = append(c.bufs[:0], head, body)
		if _, err := c.bufs.WriteTo(c.c); err != nil {
			return &upstreamError{err: err}
		}
	} else {
		bw := c.bw
		bw.Write(head)
		if chunked {
			cw := newChunkedWriter(bw)
			if _, err := io.Copy(cw, r.Body); err != nil {
				return &upstreamError{err: fmt.Errorf("send request body: %w", err)}
			}
			cw.Close()
		} else if _, err := io.CopyN(bw, r.Body, r.ContentLength); err != nil {
			return &upstreamError{err: fmt.Errorf("send request body: %w", err)}
		}
		if err := bw.Flush(); err != nil {
			return &upstreamError{err: err}
		}
	}

	sent := time.Now()
	u.awaitReply(c)
	resp, err := http.ReadResponse(c.br, r)
	for n := 0; err == nil && resp.StatusCode < 200 && resp.StatusCode != 101 && n < 8; n++ {
		resp, err = http.ReadResponse(c.br, r) // informational (100 Continue, 103): the answer follows
	}
	if err != nil {
		return &upstreamError{err: err}
	}
	u.observeReply(time.Since(sent))
	defer resp.Body.Close()
	// What the function may not send (framing, hop-by-hop, split attempts,
	// a status that is not an answer) is dropped or refused; ebb frames.
	if err := respguard.Status(resp.StatusCode); err != nil {
		return err
	}
	cl := resp.Header["Content-Length"] // as parsed and checked by ReadResponse
	u.dropped(r, respguard.Header(resp.Header))
	u.dropped(r, respguard.Trailer(resp.Trailer))
	wh := w.Header()
	for k, v := range resp.Header {
		wh[k] = v
	}
	if resp.ContentLength >= 0 {
		if n, err := strconv.ParseInt(firstOr(cl), 10, 64); err != nil || n != resp.ContentLength || len(cl) != 1 {
			cl = []string{itoa64(resp.ContentLength)}
		}
		wh["Content-Length"] = cl
	}
	announced := len(resp.Trailer) > 0
	if announced {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		wh["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	// Responses of unknown length are streamed: each read is flushed at once
	// (server-sent events, token streams).
	streaming := resp.ContentLength < 0
	buf := buffers.Get()
	defer buffers.Put(buf)
	var werr error
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				werr = err
				break
			}
			if streaming {
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Headers are out: the client sees a cut response, as from any
			// proxy whose upstream failed mid-body.
			return &upstreamError{err: rerr, written: true}
		}
	}
	if werr != nil {
		return &upstreamError{err: werr, written: true}
	}
	u.dropped(r, respguard.Trailer(resp.Trailer))
	for k, v := range resp.Trailer {
		if announced {
			wh[k] = v
		} else {
			wh[http.TrailerPrefix+k] = v
		}
	}
	if !stop() || resp.Close || r.Close || c.br.Buffered() > 0 {
		// Complete, but the connection is done (bytes after the answer
		// belong to no request: the next one must not read them).
		c.c.Close()
		return nil
	}
	u.put(c)
	return nil
}

func firstOr(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// dropped logs the response fields respguard removed.
func (u *Client) dropped(r *http.Request, drops []respguard.Drop) {
	for _, d := range drops {
		if u.log != nil {
			u.log.Warn("dropped a function response header", "instance_addr", u.addr, "request_id", r.Header.Get("Ebb-Request-Id"), "field", d.Name, "reason", d.Reason)
		}
	}
}

// headWriter appends what http.Header.Write writes to a request head.
type headWriter struct{ b *[]byte }

func (w headWriter) Write(p []byte) (int, error) {
	*w.b = append(*w.b, p...)
	return len(p), nil
}

func (w headWriter) WriteString(s string) (int, error) {
	*w.b = append(*w.b, s...)
	return len(s), nil
}

func itoa(n int) string { return itoa64(int64(n)) }

func itoa64(n int64) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// chunkedWriter writes HTTP/1.1 chunked transfer coding.
type chunkedWriter struct{ w *bufio.Writer }

func newChunkedWriter(w *bufio.Writer) *chunkedWriter { return &chunkedWriter{w: w} }

func (c *chunkedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	fmt.Fprintf(c.w, "%x\r\n", len(p))
	c.w.Write(p)
	_, err := c.w.WriteString("\r\n")
	if err != nil {
		return 0, err
	}
	// Flush so that a streamed request body reaches the instance as it comes.
	return len(p), c.w.Flush()
}

func (c *chunkedWriter) Close() error {
	_, err := c.w.WriteString("0\r\n\r\n")
	return err
}
