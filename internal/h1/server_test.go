package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h}
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-done
	})
	return ln.Addr().String()
}

func TestThroughNetHTTPClient(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Len", fmt.Sprint(len(b)))
		w.Write(b)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(bytes.Repeat([]byte("x"), 100000)) })
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	// /stream writes its first chunk and then holds until the client has
	// read it: only a flushed chunk can be read while the handler holds. If
	// the client never reads it, the handler gives up after a generous
	// while and says so, and the test fails.
	firstRead := make(chan struct{})
	var gaveUp atomic.Bool
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "chunk 0\n")
		w.(http.Flusher).Flush()
		select {
		case <-firstRead:
		case <-time.After(30 * time.Second):
			gaveUp.Store(true)
		}
		io.WriteString(w, "chunk 1\n")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.(http.Flusher).Flush()
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
	})
	addr := serve(t, mux)
	c := &http.Client{}
	tests := []struct {
		name, method, path, body string
		chunkedBody              bool
		wantStatus               int
		wantBody                 string
		wantLen                  int64
	}{
		{"get", "GET", "/hello", "", false, 200, "hello", 5},
		{"post", "POST", "/echo", "payload", false, 200, "payload", 7},
		{"chunked request", "POST", "/echo", strings.Repeat("z", 70000), true, 200, strings.Repeat("z", 70000), -1},
		{"big response is chunked", "GET", "/big", "", false, 200, strings.Repeat("x", 100000), -1},
		{"204", "GET", "/empty", "", false, 204, "", 0},
		{"404", "GET", "/nope", "", false, 404, "404 page not found\n", 19},
		{"head", "HEAD", "/hello", "", false, 200, "", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if tt.chunkedBody {
					body = io.MultiReader(body) // hides the length: sent chunked
				}
			}
			req, _ := http.NewRequest(tt.method, "http://"+addr+tt.path, body)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || string(b) != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, b, tt.wantStatus, tt.wantBody)
			}
			if resp.ContentLength != tt.wantLen {
				t.Errorf("Content-Length = %d, want %d", resp.ContentLength, tt.wantLen)
			}
		})
	}
	// Streaming: the first chunk arrives before the handler is done.
	resp, err := c.Get("http://" + addr + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	line, _ := br.ReadString('\n')
	if line != "chunk 0\n" || gaveUp.Load() {
		t.Errorf("first chunk %q (handler gave up waiting for it to be read: %v)", line, gaveUp.Load())
	}
	close(firstRead)
	if rest, _ := io.ReadAll(br); string(rest) != "chunk 1\n" {
		t.Errorf("rest of the stream = %q, want chunk 1", rest)
	}
	resp.Body.Close()
	resp, err = c.Get("http://" + addr + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailer = %v, want X-Sum: 42", resp.Trailer)
	}
}

// raw sends bytes on a fresh connection and returns what comes back until
// the server closes it or 1 s passes.
func raw(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(c, req)
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestRawProtocol(t *testing.T) {
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
	}))
	tests := []struct{ name, req, want string }{
		{"keep-alive twice", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "GET /b 0"},
		{"expect continue", "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nabc", "HTTP/1.1 100 Continue"},
		{"garbage", "NOT HTTP\r\n\r\n", "400 Bad Request"},
		{"no host", "GET / HTTP/1.1\r\n\r\n", "400 Bad Request"},
		{"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", "431"},
		{"http/1.0 closes", "GET /d HTTP/1.0\r\n\r\n", "GET /d 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := raw(t, addr, tt.req); !strings.Contains(got, tt.want) {
				t.Errorf("response %q lacks %q", got, tt.want)
			}
		})
	}
	if got := raw(t, addr, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); strings.Count(got, "HTTP/1.1 200") != 2 {
		t.Errorf("two requests on one connection answered %q", got)
	}
}

func TestHijack(t *testing.T) {
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		rw.WriteString("echo: " + line)
		rw.Flush()
	}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nping\n")
	b, _ := io.ReadAll(c)
	if !strings.Contains(string(b), "101 Switching") || !strings.HasSuffix(string(b), "echo: ping\n") {
		t.Errorf("upgrade answered %q", b)
	}
}

func TestShutdownWaitsForBusyRequests(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	var handled atomic.Bool
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "done")
		handled.Store(true)
	})}
	go s.Serve(ln)
	got := make(chan string)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-started
	// Whether the request was handled is read the moment Shutdown returns.
	type result struct {
		err     error
		handled bool
	}
	shut := make(chan result, 1)
	go func() {
		err := s.Shutdown(context.Background())
		shut <- result{err, handled.Load()}
	}()
	// The request is let go only once Shutdown has begun (the listener no
	// longer accepts), so Shutdown is what has to wait for it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts 10s after Shutdown began")
		}
	}
	close(release)
	if r := <-shut; r.err != nil || !r.handled {
		t.Fatalf("Shutdown = %v, returned with the request handled: %v; want nil, true", r.err, r.handled)
	}
	if g := <-got; g != "done" {
		t.Errorf("busy request during shutdown = %q, want done", g)
	}
}
