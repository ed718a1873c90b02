// Package h1 is the HTTP/1.1 server behind ebb's listener. It serves any
// http.Handler, like net/http's Server, but spends less per request: no
// background read goroutine per request (net/http starts one to notice
// clients that go away), 16 KiB write buffers instead of 4 KiB (a response
// of a few KiB is one write), and pooled buffers per connection. On the warm
// proxy path those are a large share of ebb's own cost.
//
// Every read and write has a deadline (Config): a request's head and body
// must keep arriving (ReadTimeout), a response must keep leaving
// (WriteTimeout), an idle connection is closed (KeepAliveTimeout), and past
// MaxConns a connection is refused at once. A request whose body the handler
// refused (left unread) gets a lingering close: the answer, a half-close,
// and what the client still sends discarded for a bounded time, so that a
// client that writes its whole body before reading sees the answer and not a
// connection reset.
//
// What it leaves out on purpose: HTTP/2 and TLS (ebb serves plain HTTP; put a
// TLS terminator in front), and noticing on every request a client that
// closes its connection while a handler runs (the request's context ends
// when the handler returns or the server shuts down; a proxied request still
// fails at its first write to a gone client). A long-lived handler that must
// notice asks for it: ClientGone.
package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Server serves HTTP/1.x on listeners.
type Server struct {
	Handler http.Handler
	Config  // timeouts and limits; zero values are defaults

	mu        sync.Mutex // guards listeners, conns, closing and initErr
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	initErr   error
	wg        sync.WaitGroup // connection goroutines
	baseCtx   context.Context
	cancel    context.CancelFunc
	refused   atomic.Uint64 // connections refused past MaxConns
	lastWarn  atomic.Int64  // unix seconds of the last "refused" log line
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = http.ErrServerClosed

// init fills the defaults once; s.mu is held.
func (s *Server) init() error {
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.baseCtx, s.cancel = context.WithCancel(context.Background())
		s.initErr = s.Config.Validate()
	}
	return s.initErr
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if err := s.init(); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		cn := newConn(s, c)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		if len(s.conns) >= s.MaxConns {
			s.mu.Unlock()
			s.refuse(c)
			continue
		}
		s.conns[cn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go cn.serve()
	}
}

// refuse answers a connection past MaxConns with 503 and closes it, without
// reading its request: cheaply, on the accept loop.
func (s *Server) refuse(c net.Conn) {
	n := s.refused.Add(1)
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 40\r\n\r\n503 Service Unavailable: too many conns\n")
	c.Close()
	if now := time.Now().Unix(); s.lastWarn.Swap(now) != now {
		s.Logger.Warn("refusing connections: at the connection limit", "max_conns", s.MaxConns, "refused_total", n)
	}
}

// Shutdown stops accepting, closes idle connections, and waits for busy ones
// to finish their request, until ctx ends; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.init()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		for c := range s.conns {
			if c.idle.Load() {
				c.c.Close()
			}
		}
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			s.cancel()
			return nil
		}
		select {
		case <-ctx.Done():
			s.cancel()
			s.mu.Lock()
			for c := range s.conns {
				c.c.Close()
			}
			s.mu.Unlock()
			s.wg.Wait()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// conn is one client connection.
type conn struct {
	s    *Server
	c    net.Conn
	io   connIO      // c with the server's deadlines; the reader and writer use it
	idle atomic.Bool // between requests or lingering: Shutdown may close it
}

func newConn(s *Server, c net.Conn) *conn {
	cn := &conn{s: s, c: c}
	cn.io = connIO{Conn: c, headLeft: -1, writeGap: s.WriteTimeout}
	return cn
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
)

// connIO is a connection with the server's timeouts on each read and write,
// and a bound on how much a request's head may read. Only the connection's
// goroutine uses it (the handler runs there), so it needs no lock.
//
// A deadline is moved only when it would move by more than 1/16 of its gap:
// setting one costs more than the rest of a small read or write, and a
// deadline up to 1/16 early does not matter.
type connIO struct {
	net.Conn
	headLeft int64         // bytes the head may still read; < 0: unlimited
	readGap  time.Duration // each read waits at most this long; 0: the deadline stays as set
	readCap  time.Time     // and never past this (the head's whole bound); zero: none
	readSet  time.Time     // the read deadline last set
	writeGap time.Duration // each write may make no progress for this long; 0: none
	writeSet time.Time     // the write deadline last set
}

func (c *connIO) Read(p []byte) (int, error) {
	if c.headLeft == 0 {
		return 0, errHeaderTooLarge
	}
	if c.headLeft > 0 && int64(len(p)) > c.headLeft {
		p = p[:c.headLeft]
	}
	if c.readGap > 0 {
		d := time.Now().Add(c.readGap)
		if !c.readCap.IsZero() && c.readCap.Before(d) {
			d = c.readCap
		}
		if d.Before(c.readSet) || d.Sub(c.readSet) > c.readGap/16 {
			c.setRead(d)
		}
	}
	n, err := c.Conn.Read(p)
	if c.headLeft > 0 {
		c.headLeft -= int64(n)
	}
	return n, err
}

func (c *connIO) setRead(d time.Time) {
	c.readSet = d
	c.Conn.SetReadDeadline(d)
}

// Write writes p, failing only when no byte went out for writeGap: a slow
// but moving client is served, a stopped one is not waited on.
func (c *connIO) Write(p []byte) (int, error) {
	if c.writeGap <= 0 {
		return c.Conn.Write(p)
	}
	total := 0
	for {
		if d := time.Now().Add(c.writeGap); d.Sub(c.writeSet) > c.writeGap/16 || d.Before(c.writeSet) {
			c.writeSet = d
			c.Conn.SetWriteDeadline(d)
		}
		n, err := c.Conn.Write(p[total:])
		total += n
		if err == nil || total == len(p) {
			return total, err
		}
		if n == 0 || !isTimeout(err) {
			return total, err
		}
		// Progress before the deadline: another gap for the rest.
	}
}

// unlimited turns the deadlines off (a hijacked connection is the
// handler's to time).
func (c *connIO) unlimited() {
	c.readGap, c.readCap, c.writeGap = 0, time.Time{}, 0
	c.readSet, c.writeSet = time.Time{}, time.Time{}
	c.Conn.SetDeadline(time.Time{})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var errHeaderTooLarge = errors.New("request header too large")

// maxDrain is how much of a request body the handler left unread the server
// reads (and discards) to keep the connection for the next request; more is
// not worth it, and the connection gets a lingering close instead.
const maxDrain = 256 << 10

func (cn *conn) serve() {
	s := cn.s
	cio := &cn.io
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(cio)
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(cio)
	hijacked := false
	defer func() {
		if v := recover(); v != nil && v != http.ErrAbortHandler {
			s.Logger.Error("panic serving connection", "remote", cn.c.RemoteAddr().String(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
		if !hijacked {
			cn.c.Close()
			br.Reset(nil)
			bw.Reset(nil)
			readerPool.Put(br)
			writerPool.Put(bw)
		}
		s.mu.Lock()
		delete(s.conns, cn)
		s.mu.Unlock()
		s.wg.Done()
	}()
	remote := cn.c.RemoteAddr().String()
	first := true
	for {
		cn.idle.Store(true)
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			return
		}
		cio.readGap, cio.readCap = 0, time.Time{}
		if !first && br.Buffered() == 0 {
			// Wait for the next request's first byte with the keep-alive
			// timeout; its head then has ReadHeaderTimeout.
			cio.setRead(time.Now().Add(s.KeepAliveTimeout))
			if _, err := br.Peek(1); err != nil {
				return
			}
		}
		cn.idle.Store(false)
		first = false
		cio.readGap, cio.readCap = s.ReadTimeout, time.Now().Add(s.ReadHeaderTimeout)
		cio.headLeft = int64(s.MaxHeaderBytes) + int64(br.Buffered()) + 4096
		req, err := http.ReadRequest(br)
		cio.headLeft = -1
		// The body: each read waits at most ReadTimeout, however long.
		cio.readCap = time.Time{}
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF) && br.Buffered() == 0:
			case errors.Is(err, errHeaderTooLarge):
				io.WriteString(cio, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large")
			default:
				if !isTimeout(err) {
					io.WriteString(cio, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
				}
			}
			return
		}
		if req.ProtoMajor != 1 {
			io.WriteString(cio, "HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n\r\n")
			return
		}
		if req.ProtoMinor == 1 && req.Host == "" && len(req.Header["Host"]) == 0 {
			io.WriteString(cio, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header")
			return
		}
		req.RemoteAddr = remote
		// The server's own context: it ends at shutdown. A per-request
		// cancel would register every request with that shared parent.
		req = req.WithContext(s.baseCtx)
		w := &response{conn: cn, bw: bw, br: br, req: req, header: make(http.Header, 4), status: 0}
		w.body.init(req)
		if w.body.pending() {
			req.Body = &w.body
			if req.Header.Get("Expect") == "100-continue" && req.ProtoAtLeast(1, 1) {
				w.expect = &expectContinue{r: req.Body, w: w}
				req.Body = w.expect
			}
		}
		s.Handler.ServeHTTP(w, req)
		w.stopWatching()
		if w.hijacked {
			hijacked = true
			return
		}
		if err := w.finish(); err != nil {
			return
		}
		body := &w.body
		if body.err != nil {
			return // the body stopped arriving or was malformed: nothing to wait for
		}
		if body.pending() {
			// The handler left part of the body. A small rest is read to
			// keep the connection; otherwise (or when the answer said
			// close) the client, which may be writing it still, gets a
			// lingering close so that it reads the answer.
			unasked := w.expect != nil && !w.expect.sent // the client may never send it
			if w.closeAfter || req.Close || !keepAlive(req) || unasked || !body.drain(maxDrain) {
				if body.err == nil {
					cn.linger(br)
				}
				return
			}
		}
		if w.closeAfter || req.Close || !keepAlive(req) {
			return
		}
	}
}

// linger half-closes the connection after its answer and discards what the
// client still sends, for at most LingerTimeout and LingerBytes, so that a
// client writing a refused body reads the answer instead of a reset (closing
// a socket with unread data makes the kernel send a reset, which discards
// the answer at the client). The caller then closes the connection.
func (cn *conn) linger(br *bufio.Reader) {
	s := cn.s
	if cw, ok := cn.c.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() != nil {
			return
		}
	}
	cn.idle.Store(true) // Shutdown need not wait for it
	cn.io.readGap = min(s.ReadTimeout, s.LingerTimeout)
	cn.io.readCap = time.Now().Add(s.LingerTimeout)
	io.CopyN(io.Discard, br, s.LingerBytes)
}

// requestBody is a request's body as the handler reads it: it notes how
// much was read and how reading ended, for what the connection does next.
type requestBody struct {
	r      io.ReadCloser
	length int64 // declared, or -1 (chunked)
	n      int64 // read so far
	eof    bool
	err    error // a read that failed other than at the end (timeout, bad framing)
}

func (b *requestBody) init(req *http.Request) {
	b.length = req.ContentLength
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 {
		b.eof = true
		return
	}
	b.r = req.Body
}

// pending says whether part of the body is still unread and readable.
func (b *requestBody) pending() bool { return !b.eof && b.err == nil }

// large says whether what is left is more than the connection would read to
// be kept (or of unknown size).
func (b *requestBody) large() bool { return b.length < 0 || b.length-b.n > maxDrain }

func (b *requestBody) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

func (b *requestBody) Close() error { return nil }

// drain reads and discards up to limit bytes of what is left; it says
// whether the body ended.
func (b *requestBody) drain(limit int64) bool {
	if !b.pending() {
		return b.eof
	}
	io.CopyN(io.Discard, b, limit+1)
	return b.eof
}

func keepAlive(r *http.Request) bool {
	if r.ProtoAtLeast(1, 1) {
		return true
	}
	for _, v := range r.Header["Connection"] {
		if asciiEqualFold(v, "keep-alive") {
			return true
		}
	}
	return false
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// expectContinue sends "100 Continue" when the handler first reads the body.
type expectContinue struct {
	r    io.ReadCloser
	w    *response
	sent bool // "100 Continue" went out, or the answer did first
}

func (e *expectContinue) Read(p []byte) (int, error) {
	if !e.sent {
		e.sent = true
		if !e.w.wroteHeader {
			e.w.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			e.w.bw.Flush()
		}
	}
	return e.r.Read(p)
}

func (e *expectContinue) Close() error { return e.r.Close() }

var statusLines sync.Map // int -> string

func statusLine(code int) string {
	if v, ok := statusLines.Load(code); ok {
		return v.(string)
	}
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	line := "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n"
	statusLines.Store(code, line)
	return line
}
