package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/route"
)

// resultBackend answers every invocation of "real" with a plain 200 REAL and
// every other with the bytes in next: a python or exec function's result.
type resultBackend struct{ next atomic.Pointer[[]byte] }

func (b *resultBackend) Invoke(ctx context.Context, t Target, rid string, payload []byte) (*Result, error) {
	if t.Name == "real" {
		return &Result{Body: []byte(`{"statusCode":200,"body":"REAL"}`)}, nil
	}
	return &Result{Body: *b.next.Load()}, nil
}

func (b *resultBackend) Proxy(context.Context, Target, string, http.ResponseWriter, *http.Request, func(bool, int)) error {
	return ebb.ErrNotFound
}

func (b *resultBackend) Runtime(Target) (ebb.Runtime, error) { return ebb.RuntimePython, nil }

// openFunctions has no public URLs and no rate limits.
type openFunctions struct{}

func (openFunctions) PublicURL(string) bool                               { return false }
func (openFunctions) AllowInvoke(string, time.Time) (bool, time.Duration) { return true, 0 }

// serveGateway runs the gateway behind ebb's HTTP server on loopback.
func serveGateway(t testing.TB, b Backend) string {
	g, err := New(Config{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	table, err := route.New(route.Config{Functions: openFunctions{}}, g.Routes())
	if err != nil {
		t.Fatal(err)
	}
	return ebbtest.ServeH1(t, table)
}

// FuzzFunctionURLResult feeds arbitrary function URL results (a python or
// exec function's {statusCode, headers, body, cookies}) through the
// gateway and ebb's HTTP server.
func FuzzFunctionURLResult(f *testing.F) {
	f.Add([]byte(nil), 200, "Transfer-Encoding", "chunked", "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!", "", false, false)
	f.Add([]byte(nil), 200, "Content-Length", "0", "HTTP/1.1 200 OK\r\n\r\n", "a=b", false, true)

	f.Add([]byte(nil), 101, "Upgrade", "websocket", "", "", false, false)
	f.Add([]byte(nil), 200, "X-A", "b\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK", "", "x", false, false)
	f.Add([]byte(nil), 204, "Trailer", "X-T", "body", "c=d\r\nX: y", false, false)
	f.Add([]byte(nil), 200, "X-B\r\nX-C", "1", "aGVsbG8=", "", true, false)
	f.Add([]byte(`{"statusCode":200,"headers":{"connection":"keep-alive, x-h","x-h":"1","te":"trailers"},"body":"ok"}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`[1,2]`), 0, "", "", "", "", false, false)

	f.Add([]byte(`{"statusCode":99}`), 0, "", "", "", "", false, false)
	backend := &resultBackend{}
	addr := serveGateway(f, backend)
	f.Fuzz(func(t *testing.T, raw []byte, status int, hk, hv, body, cookie string, b64, head bool) {
		res := raw
		if len(raw) == 0 {
			res, _ = json.Marshal(map[string]any{"statusCode": status, "headers": map[string]string{hk: hv},
				"body": body, "cookies": []string{cookie}, "isBase64Encoded": b64})
		}
		backend.next.Store(&res)
		method := "GET"
		if head {
			method = "HEAD"
		}
		ebbtest.FrontProxy(t, addr, method, "/fn/f/x", "/fn/real/", false)
	})
}

// TestFunctionURLResponseSplitting is issue 10's attempt: a handler that
// frames its own body as chunked with a second response inside.
func TestFunctionURLResponseSplitting(t *testing.T) {
	backend := &resultBackend{}
	res := []byte(`{"statusCode":200,"headers":{"Transfer-Encoding":"chunked","X-Bad":"a\r\nSet-Cookie: s=1","X-Ok":"yes"},"body":"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"}`)
	backend.next.Store(&res)
	r1, b1 := ebbtest.FrontProxy(t, serveGateway(t, backend), "GET", "/fn/f/x", "/fn/real/", false)
	if want := "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"; string(b1) != want {
		t.Errorf("first body %q, want the function's bytes as the body, %q", b1, want)
	}
	if r1.Header.Get("X-Ok") != "yes" || r1.Header.Get("X-Bad") != "" || r1.Header.Get("Set-Cookie") != "" {
		t.Errorf("first header %v: want X-Ok kept and X-Bad dropped", r1.Header)
	}
	for _, tt := range []struct {
		res  string
		want int
	}{{`{"statusCode":101}`, 502}, {`{"statusCode":103}`, 502}, {`{"statusCode":600}`, 502}, {`{"statusCode":201}`, 201}} {
		b := []byte(tt.res)
		backend.next.Store(&b)
		r, body := ebbtest.FrontProxy(t, serveGateway(t, backend), "GET", "/fn/f/x", "/fn/real/", false)
		if r.StatusCode != tt.want {
			t.Errorf("%s: got %d %s, want %d", tt.res, r.StatusCode, body, tt.want)
		}
		if tt.want == 502 && !strings.Contains(string(body), "status") {
			t.Errorf("%s: 502 body %s does not name the problem", tt.res, body)
		}
	}
}
