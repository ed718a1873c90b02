package upstream

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/ebbtest"
)

// rawBackend answers each request on a connection with the bytes in next
// and closes it: an http instance that writes anything at all.
func rawBackend(t testing.TB, next *atomic.Pointer[[]byte]) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				c.Write(*next.Load())
			}()
		}
	}()
	return ln.Addr().String()
}

// serveProxy runs ebb's HTTP server with /fn proxied through u (answering
// 502 when the exchange fails before the response started, as the gateway
// does) and /real answering REAL.
func serveProxy(t testing.TB, u *Client) string {
	mux := http.NewServeMux()
	mux.HandleFunc("/fn", func(w http.ResponseWriter, r *http.Request) {
		err := u.roundTrip(w, r, time.Now().Add(5*time.Second))
		if err != nil && !errors.Is(err, ebb.ErrResponseStarted) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, err.Error())
		}
	})
	mux.HandleFunc("/real", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "REAL") })
	return ebbtest.ServeH1(t, mux)
}

// FuzzUpstreamResponse feeds arbitrary bytes as an http instance's answer.
func FuzzUpstreamResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T, Content-Length\r\n\r\n2\r\nok\r\n0\r\nX-T: a\x00b\r\nContent-Length: 9\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nEVIL!",
		"HTTP/1.1 200 OK\r\nX-A: b\rc\r\nConnection: close, X-A\r\n\r\nbody until close",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 999 What\r\n\r\n",
		"garbage",
	} {
		f.Add([]byte(s), false)
	}
	var next atomic.Pointer[[]byte]
	u := New(Config{Addr: rawBackend(f, &next)})
	f.Cleanup(u.Close)
	addr := serveProxy(f, u)
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		next.Store(&raw)
		method := "GET"
		if head {
			method = "HEAD"
		}
		ebbtest.FrontProxy(t, addr, method, "/fn", "/real", true)
	})
}

// TestUpstreamCannotSplitResponses is issue 10's attempt through an http
// instance, and the statuses that are not an answer.
func TestUpstreamCannotSplitResponses(t *testing.T) {
	var next atomic.Pointer[[]byte]
	u := New(Config{Addr: rawBackend(t, &next)})
	t.Cleanup(u.Close)
	addr := serveProxy(t, u)
	for _, tt := range []struct {
		name, raw  string
		wantStatus int
		wantBody   string
	}{
		{"chunked with a response inside", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!", 200, ""},
		{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!", 502, "status 101"},
		{"100 then the answer", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", 201, "x"},
		{"control characters", "HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nX-Ok: 1\r\nContent-Length: 2\r\n\r\nok", 502, "malformed"},
		{"after a split attempt, the next answer is its own", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine", 200, "mine"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte(tt.raw)
			next.Store(&b)
			r, body := ebbtest.FrontProxy(t, addr, "GET", "/fn", "/real", true)
			if r.StatusCode != tt.wantStatus || !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("got %d %q, want %d with %q", r.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			if r.Header.Get("X-A") != "" {
				t.Errorf("a field with a control character was passed on: %q", r.Header.Get("X-A"))
			}
		})
	}
}
