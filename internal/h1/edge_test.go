package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveWith runs a Server with cfg on a loopback port until the test ends.
func serveWith(t *testing.T, h http.Handler, cfg Config) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h, Config: cfg}
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String(), s
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads c until the server closes it (EOF or reset) and
// returns what came; it fails the test if that takes longer than d, a
// generous bound: the timeouts under test are a fraction of it.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if err != nil && isTimeout(err) {
		t.Fatalf("connection still open after %s (read %q)", d, b)
	}
	return string(b)
}

func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadTimeoutEndsStalledBodies(t *testing.T) {
	readErr := make(chan error, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
		w.WriteHeader(http.StatusBadRequest)
	})
	mux.HandleFunc("/ignore", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	addr, s := serveWith(t, mux, Config{ReadTimeout: 200 * time.Millisecond})

	t.Run("handler reading", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
		select {
		case err := <-readErr:
			if !isTimeout(err) {
				t.Errorf("body read error = %v, want a timeout", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the handler's body read did not end")
		}
		closedWithin(t, c, 10*time.Second)
	})
	t.Run("handler not reading, small rest", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
		if got := closedWithin(t, c, 10*time.Second); !strings.Contains(got, "200 OK") {
			t.Errorf("answer %q, want the 200", got)
		}
	})
	t.Run("chunked body stops", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "POST /ignore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
		closedWithin(t, c, 10*time.Second)
	})
	t.Run("head stops", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /ignore HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		closedWithin(t, c, 10*time.Second)
	})
	eventually(t, "every connection gone", func() bool { return s.connCount() == 0 })
}

func TestKeepAliveTimeoutClosesIdleConnections(t *testing.T) {
	addr, s := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		Config{KeepAliveTimeout: 200 * time.Millisecond})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("idle connection: read = %v, want the server to close it", err)
	}
	eventually(t, "the connection gone", func() bool { return s.connCount() == 0 })
}

func TestWriteTimeoutEndsResponsesToStoppedReaders(t *testing.T) {
	writeErr := make(chan error, 1)
	addr, _ := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
			w.(http.Flusher).Flush()
		}
	}), Config{WriteTimeout: 200 * time.Millisecond})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	// The client reads nothing: once the socket buffers are full the
	// handler's write must fail rather than wait for ever.
	select {
	case err := <-writeErr:
		if !isTimeout(err) {
			t.Errorf("write error = %v, want a timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's write to a stopped reader did not fail")
	}
}

func TestWriteTimeoutAllowsSlowProgress(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	cio := &connIO{Conn: server, headLeft: -1, writeGap: 500 * time.Millisecond}
	go func() {
		// 60 reads of 100 bytes, 20 ms apart: the whole write takes
		// longer than the gap, no pause comes near it.
		buf := make([]byte, 100)
		for range 60 {
			time.Sleep(20 * time.Millisecond)
			if _, err := io.ReadFull(client, buf); err != nil {
				return
			}
		}
	}()
	if n, err := cio.Write(make([]byte, 6000)); err != nil || n != 6000 {
		t.Errorf("slow but steady write = %d, %v; want 6000, nil", n, err)
	}
}

func TestMaxConnsRefusesPastTheLimit(t *testing.T) {
	addr, s := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		Config{MaxConns: 2})
	var held []net.Conn
	for range 2 {
		c := dial(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection within the limit: %v %v", resp, err)
		}
		held = append(held, c)
	}
	c := dial(t, addr)
	if got := closedWithin(t, c, 10*time.Second); !strings.HasPrefix(got, "HTTP/1.1 503") {
		t.Errorf("connection past the limit got %q, want a 503", got)
	}
	held[0].Close()
	eventually(t, "a closed connection leaves room", func() bool { return s.connCount() < 2 })
	c = dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if got := closedWithin(t, c, 10*time.Second); !strings.Contains(got, "200 OK") {
		t.Errorf("after a connection closed: got %q, want 200", got)
	}
}

func TestRefusedBodyGetsLingeringClose(t *testing.T) {
	addr, _ := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Refused unread, as the gateway refuses a body over its limit.
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "too large")
	}), Config{})
	body := bytes.Repeat([]byte("a"), 7<<20)
	for _, tt := range []struct{ name, head string }{
		{"content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7340032\r\n\r\n"},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n700000\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			// Like a client without Expect: 100-continue, the whole body
			// goes out before the answer is read.
			if _, err := io.WriteString(c, tt.head); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(body); err != nil {
				t.Fatalf("writing the body: %v (the server must read it, not reset)", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading the answer after the body: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || string(b) != "too large" || !resp.Close {
				t.Errorf("got %d %q close=%v, want 413 %q with Connection: close", resp.StatusCode, b, resp.Close, "too large")
			}
		})
	}
}

func TestExpectContinueRefusedBodyCloses(t *testing.T) {
	addr, _ := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}), Config{})
	c := dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 413 || !resp.Close {
		t.Errorf("got %d close=%v, want 413 without 100 Continue, and Connection: close", resp.StatusCode, resp.Close)
	}
}

// TestHandlerCannotSplitResponses: whatever framing fields a handler sets,
// the connection carries exactly its response, then the next one.
func TestHandlerCannotSplitResponses(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/split", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Set("Trailer", "X-Bad, X-Good, Content-Length")
		io.WriteString(w, "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Bad", "a\r\n\r\nHTTP/1.1 200 OK")
		w.Header().Set("X-Good", "fine")
		w.Header().Set("Content-Length", "0")
	})
	mux.HandleFunc("/next", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "REAL") })
	addr, _ := serveWith(t, mux, Config{})
	c := dial(t, addr)
	io.WriteString(c, "GET /split HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	out := closedWithin(t, c, 10*time.Second)
	br := bufio.NewReader(strings.NewReader(out))
	r1, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b1, err := io.ReadAll(r1.Body)
	if err != nil {
		t.Fatalf("first response: %v in %q", err, out)
	}
	if !strings.Contains(string(b1), "EVIL!") || r1.Trailer.Get("X-Good") != "fine" || r1.Trailer.Get("X-Bad") != "" {
		t.Errorf("first response body %q trailer %v: want the handler's bytes as body, X-Good only", b1, r1.Trailer)
	}
	r2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := io.ReadAll(r2.Body); string(b2) != "REAL" {
		t.Errorf("second response %q, want REAL (all: %q)", b2, out)
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Errorf("bytes after the second response: %q", rest)
	}
}
