package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// countingListener counts the connections a test server accepts.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startBackend(t *testing.T, h http.Handler) (*Client, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &httptest.Server{Listener: cl, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	u := New(Config{Addr: ln.Addr().String()})
	t.Cleanup(u.Close)
	return u, cl
}

func proxyOnce(u *Client, method, target string, body io.Reader, hdr http.Header, timeout time.Duration) (*httptest.ResponseRecorder, error) {
	r := httptest.NewRequest(method, target, body)
	for k, v := range hdr {
		r.Header[k] = v
	}
	if body != nil && hdr.Get("X-Unknown-Length") != "" {
		r.ContentLength = -1
	}
	w := httptest.NewRecorder()
	err := u.roundTrip(w, r, time.Now().Add(timeout))
	return w, err
}

func TestUpstreamForwardsAndReusesConnections(t *testing.T) {
	var seen atomic.Value
	u, cl := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen.Store(r.Clone(context.Background()))
		w.Header().Set("Connection", "X-Drop")
		w.Header().Set("X-Drop", "hop")
		w.Header().Set("X-Kept", "yes")
		io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(b))
	}))
	tests := []struct {
		name, method, target, body string
		hdr                        http.Header
		want                       string
	}{
		{"get", "GET", "/a/b?x=1", "", nil, "GET /a/b?x=1 "},
		{"post", "POST", "/echo", "payload", nil, "POST /echo payload"},
		{"unknown length is sent chunked", "POST", "/echo", strings.Repeat("z", 100000), http.Header{"X-Unknown-Length": {"1"}}, "POST /echo " + strings.Repeat("z", 100000)},
		{"large known length, sent whole", "PUT", "/big", strings.Repeat("y", 200000), nil, "PUT /big " + strings.Repeat("y", 200000)},
		{"known length beyond the whole-body limit, streamed", "PUT", "/huge", strings.Repeat("h", maxReplayBody+1), nil, "PUT /huge " + strings.Repeat("h", maxReplayBody+1)},
		{"pooled buffer reused for a smaller body", "POST", "/echo", strings.Repeat("s", 5000), nil, "POST /echo " + strings.Repeat("s", 5000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			hdr := http.Header{"Connection": {"X-Secret"}, "X-Secret": {"hop"}, "Keep-Alive": {"timeout=5"}}
			for k, v := range tt.hdr {
				hdr[k] = v
			}
			w, err := proxyOnce(u, tt.method, tt.target, body, hdr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := w.Body.String(); got != tt.want {
				t.Errorf("body = %.80q, want %.80q", got, tt.want)
			}
			if w.Header().Get("X-Kept") != "yes" || w.Header().Get("X-Drop") != "" {
				t.Errorf("response headers = %v: want X-Kept, and no hop-by-hop X-Drop", w.Header())
			}
			r := seen.Load().(*http.Request)
			if r.Header.Get("X-Secret") != "" || r.Header.Get("Keep-Alive") != "" {
				t.Errorf("hop-by-hop request headers reached the instance: %v", r.Header)
			}
			if r.Header.Get("X-Forwarded-For") == "" || r.Header.Get("X-Forwarded-Proto") != "http" {
				t.Errorf("X-Forwarded-* missing: %v", r.Header)
			}
		})
	}
	if n := cl.n.Load(); n != 1 {
		t.Errorf("backend accepted %d connections for sequential requests, want 1 (keep-alive)", n)
	}
}

// A connection the instance closed while it sat idle is found dead on
// reuse; the request is sent again on a fresh one, not failed.
func TestUpstreamRetriesOnAStaleConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// Answer one request as if keeping the connection, then
				// close it, as a server with a short idle timeout does.
				br := bufio.NewReader(c)
				if req, err := http.ReadRequest(br); err == nil {
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				time.Sleep(20 * time.Millisecond)
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	u := New(Config{Addr: ln.Addr().String()})
	defer u.Close()
	for i := range 3 {
		w, err := proxyOnce(u, "POST", "/", strings.NewReader("body"), nil, 5*time.Second)
		if err != nil || w.Body.String() != "ok" {
			t.Fatalf("request %d: %v %q", i, err, w.Body.String())
		}
		<-closed // the server has closed the idle connection
	}
}

func TestUpstreamErrors(t *testing.T) {
	// /slow answers only when the test ends (or the proxy gives up and
	// closes the connection): the deadline is the only way out.
	ended := make(chan struct{})
	defer close(ended)
	u, _ := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-ended:
			case <-r.Context().Done():
			}
		case "/cut":
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}
	}))
	_, err := proxyOnce(u, "GET", "/slow", nil, nil, 100*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow instance: error = %v, want context.DeadlineExceeded", err)
	}
	w, err := proxyOnce(u, "GET", "/cut", nil, nil, 5*time.Second)
	if !errors.Is(err, ebb.ErrResponseStarted) {
		t.Errorf("cut response: error = %v, want ebb.ErrResponseStarted", err)
	}
	if w.Code != 200 || w.Body.String() != "partial" {
		t.Errorf("cut response wrote %d %q, want the status and the part that came", w.Code, w.Body.String())
	}
	dead := New(Config{Addr: "127.0.0.1:1"})
	if _, err := proxyOnce(dead, "GET", "/", nil, nil, time.Second); err == nil || errors.Is(err, ebb.ErrResponseStarted) {
		t.Errorf("refused connection: error = %v, want a dial error before any response", err)
	}
}

func TestBodyPoolClasses(t *testing.T) {
	for _, n := range []int64{1, 4 << 10, 4<<10 + 1, 16<<10 + 1, maxReplayBody} {
		b := getBody(n)
		if int64(len(b)) != n || int64(cap(b)) < n {
			t.Fatalf("getBody(%d): len %d cap %d", n, len(b), cap(b))
		}
		for i := range b {
			b[i] = 1
		}
		putBody(b)
		if again := getBody(n); int64(len(again)) != n {
			t.Errorf("getBody(%d) after put: len %d", n, len(again))
		}
	}
	if c := bodyClass(maxReplayBody); c >= len(bodyPool) {
		t.Errorf("bodyClass(maxReplayBody) = %d, want < %d", c, len(bodyPool))
	}
}

// TestSpinOnlyForQuickAnswers: the proxy polls for an answer only while the
// instance's answers come within the spin; a model run of milliseconds turns
// it off (the spin would take a core from it), and quick answers turn it on
// again.
func TestSpinOnlyForQuickAnswers(t *testing.T) {
	var slow atomic.Bool
	u, _ := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(3 * time.Millisecond)
		}
		w.Write([]byte("ok"))
	}))
	send := func(n int) {
		for range n {
			if _, err := proxyOnce(u, "GET", "/", nil, nil, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !u.spinWorthIt() {
		t.Fatal("no answers yet: want the spin on")
	}
	slow.Store(true)
	send(20)
	if u.spinWorthIt() {
		t.Errorf("after 3 ms answers: spin on (average %v), want off", time.Duration(u.replyNs.Load()))
	}
	// Quick answers (fed to the average directly: how quick a real server
	// answers depends on the machine's load) turn it on again.
	for range 60 {
		u.observeReply(10 * time.Microsecond)
	}
	if !u.spinWorthIt() {
		t.Errorf("after quick answers: spin off (average %v), want on", time.Duration(u.replyNs.Load()))
	}
	u.busy.Add(2)
	if u.spinWorthIt() {
		t.Error("with requests in flight: spin on, want off")
	}
	u.busy.Add(-2)
}

// Dial is the seam through which every connection is made (the sandbox dials
// into a function's network namespace); Addr only names the upstream.
func TestDialIsUsedForEveryConnection(t *testing.T) {
	_, cl := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	var dials atomic.Int32
	u := New(Config{Addr: "instance.invalid:80", Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", cl.Addr().String())
	}})
	defer u.Close()
	for i := range 2 {
		w, err := proxyOnce(u, "GET", "/", nil, nil, 5*time.Second)
		if err != nil || w.Body.String() != "ok" {
			t.Fatalf("request %d: %v %q", i, err, w.Body.String())
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("Dial called %d times for two requests, want 1 (kept alive)", n)
	}
}

// TestUpstreamKeepsTheProbeConnection: a connection handed over with Keep
// (a readiness probe's) carries the first request; no second one is made.
func TestUpstreamKeepsTheProbeConnection(t *testing.T) {
	u, cl := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	c, err := u.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	u.Keep(c)
	for i := range 3 {
		w, err := proxyOnce(u, "GET", "/", nil, nil, 5*time.Second)
		if err != nil || w.Body.String() != "ok" {
			t.Fatalf("request %d: %v %q", i, err, w.Body.String())
		}
	}
	if n := cl.n.Load(); n != 1 {
		t.Fatalf("backend accepted %d connections, want 1 (the probe's)", n)
	}
}
