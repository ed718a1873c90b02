// Package h1 is the HTTP/1.1 server behind ebb's listener. It serves any
// http.Handler, like net/http's Server, but spends less per request: no
// background read goroutine per request (net/http starts one to notice
// clients that go away), 16 KiB write buffers instead of 4 KiB (a response
// of a few KiB is one write), and pooled buffers per connection. On the warm
// proxy path those are a large share of ebb's own cost.
//
// What it leaves out on purpose: HTTP/2 and TLS (ebb serves plain HTTP; put a
// TLS terminator in front), and noticing a client that closes its connection
// while a handler runs (the request's context ends when the handler returns
// or the server shuts down; a proxied request still fails at its first write
// to a gone client).
package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	Handler           http.Handler
	ReadHeaderTimeout time.Duration // default 10s
	IdleTimeout       time.Duration // default 120s
	MaxHeaderBytes    int           // default 1 MiB
	Logger            *slog.Logger

	mu        sync.Mutex // guards listeners, conns and closing
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	wg        sync.WaitGroup // connection goroutines
	baseCtx   context.Context
	cancel    context.CancelFunc
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = http.ErrServerClosed

func (s *Server) init() {
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.baseCtx, s.cancel = context.WithCancel(context.Background())
		if s.ReadHeaderTimeout <= 0 {
			s.ReadHeaderTimeout = 10 * time.Second
		}
		if s.IdleTimeout <= 0 {
			s.IdleTimeout = 120 * time.Second
		}
		if s.MaxHeaderBytes <= 0 {
			s.MaxHeaderBytes = 1 << 20
		}
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
	}
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.init()
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
		cn := &conn{s: s, c: c}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.conns[cn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go cn.serve()
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
	idle atomic.Bool // between requests: Shutdown may close it
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
)

// limitedConn bounds how much a request's header may read.
type limitedConn struct {
	net.Conn
	left int64 // < 0: unlimited
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, errHeaderTooLarge
	}
	if l.left > 0 && int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.Conn.Read(p)
	if l.left > 0 {
		l.left -= int64(n)
	}
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

func (cn *conn) serve() {
	s := cn.s
	lc := &limitedConn{Conn: cn.c, left: -1}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(lc)
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(cn.c)
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
		if first {
			cn.c.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
		} else {
			cn.c.SetReadDeadline(time.Now().Add(s.IdleTimeout))
			// Wait for the next request's first byte with the idle
			// timeout, then give its header ReadHeaderTimeout.
			if _, err := br.Peek(1); err != nil {
				return
			}
			cn.c.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
		}
		cn.idle.Store(false)
		first = false
		lc.left = int64(s.MaxHeaderBytes) + int64(br.Buffered()) + 4096
		req, err := http.ReadRequest(br)
		lc.left = -1
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF) && br.Buffered() == 0:
			case errors.Is(err, errHeaderTooLarge):
				io.WriteString(cn.c, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large")
			default:
				var ne net.Error
				if !(errors.As(err, &ne) && ne.Timeout()) {
					io.WriteString(cn.c, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
				}
			}
			return
		}
		cn.c.SetReadDeadline(time.Time{})
		if req.ProtoMajor != 1 {
			io.WriteString(cn.c, "HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n\r\n")
			return
		}
		if req.ProtoMinor == 1 && req.Host == "" && len(req.Header["Host"]) == 0 {
			io.WriteString(cn.c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header")
			return
		}
		req.RemoteAddr = remote
		// The server's own context: it ends at shutdown. A per-request
		// cancel would register every request with that shared parent.
		req = req.WithContext(s.baseCtx)
		w := &response{conn: cn, bw: bw, br: br, req: req, header: make(http.Header, 4), status: 0}
		if req.Header.Get("Expect") == "100-continue" && req.ProtoAtLeast(1, 1) && req.ContentLength != 0 {
			req.Body = &expectContinue{r: req.Body, w: w}
		}
		s.Handler.ServeHTTP(w, req)
		if w.hijacked {
			hijacked = true
			return
		}
		if err := w.finish(); err != nil {
			return
		}
		if w.closeAfter || req.Close || !keepAlive(req) {
			return
		}
		// Whatever the handler left of the body must be read before the
		// next request; a large remainder is not worth it.
		if req.Body != nil {
			n, _ := io.CopyN(io.Discard, req.Body, 256<<10+1)
			if n > 256<<10 {
				return
			}
			req.Body.Close()
		}
	}
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
	sent bool
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
