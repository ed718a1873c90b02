package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
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

func (openFunctions) PublicURL(string) bool                    { return false }
func (openFunctions) AllowInvoke(string) (bool, time.Duration) { return true, 0 }

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
// gateway and ebb's HTTP server. Beside the framing FrontProxy checks (one
// well-formed response, nothing written outside it), the answer must be the
// one wantURLResult computes on its own from the result: the status, the
// exact body, and Set-Cookie fields only from the function's cookies.
func FuzzFunctionURLResult(f *testing.F) {
	f.Add([]byte(nil), 200, "Transfer-Encoding", "chunked", "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!", "", false, false)
	f.Add([]byte(nil), 200, "Content-Length", "0", "HTTP/1.1 200 OK\r\n\r\n", "a=b", false, true)

	f.Add([]byte(nil), 101, "Upgrade", "websocket", "", "", false, false)
	f.Add([]byte(nil), 200, "X-A", "b\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK", "", "x", false, false)
	f.Add([]byte(nil), 204, "Trailer", "X-T", "body", "c=d\r\nX: y", false, false)
	f.Add([]byte(nil), 200, "X-B\r\nX-C", "1", "aGVsbG8=", "", true, false)
	f.Add([]byte(nil), 200, "X-D", "1", "not base64", "", true, false)
	f.Add([]byte(nil), 304, "ETag", `"e"`, "body", "", false, false)
	f.Add([]byte(`{"statusCode":200,"headers":{"connection":"keep-alive, x-h","x-h":"1","te":"trailers"},"body":"ok"}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`[1,2]`), 0, "", "", "", "", false, false)
	f.Add([]byte(`not json at all`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"message":"no statusCode"}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":99}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":0}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":null}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":"200"}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":200.0}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"STATUSCODE":201,"Body":"folded"}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":200,"cookies":["a=1",null,7]}`), 0, "", "", "", "", false, false)
	f.Add([]byte(`{"statusCode":200,"body":"x","body":"y"}`), 0, "", "", "", "", false, false)
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
		r, got := ebbtest.FrontProxy(t, addr, method, "/fn/f/x", "/fn/real/", false)
		want := wantURLResult(res)
		if want.invalid {
			var eb errorBody
			if r.StatusCode != http.StatusBadGateway || (method == "GET" && (json.Unmarshal(got, &eb) != nil || eb.Type != "Runtime.InvalidResponse")) {
				t.Fatalf("result %q: got %d %q, want 502 Runtime.InvalidResponse", res, r.StatusCode, got)
			}
			return
		}
		if r.StatusCode != want.status {
			t.Fatalf("result %q: status %d, want %d (body %q)", res, r.StatusCode, want.status, got)
		}
		wantBody := want.body
		if method == "HEAD" || want.status == http.StatusNoContent || want.status == http.StatusNotModified {
			wantBody = nil
		}
		if !bytes.Equal(got, wantBody) {
			t.Fatalf("result %q: body %q, want %q", res, got, wantBody)
		}
		if te := r.TransferEncoding; len(te) > 0 {
			t.Fatalf("result %q: Transfer-Encoding %v on a response ebb frames with Content-Length", res, te)
		}
		// A field value's leading and trailing blanks are not part of it
		// (RFC 9110 §5.5): " " arrives as "".
		for _, c := range r.Header.Values("Set-Cookie") {
			if !slices.ContainsFunc(want.cookies, func(w string) bool { return strings.Trim(w, " \t") == c }) {
				t.Fatalf("result %q: Set-Cookie %q is not one of the function's cookies %q", res, c, want.cookies)
			}
		}
	})
}

type urlWant struct {
	invalid bool
	status  int
	body    []byte
	cookies []string
}

// wantURLResult is the function URL contract written out independently of
// decodeURLResult: a JSON object with a statusCode key (matched exactly, as
// in Lambda) is a structured response whose fields must have their types
// (null is the zero value), whose statusCode must be an integer of 200-599
// and whose base64 body must decode; anything else is a 200's body as it is.
func wantURLResult(res []byte) (w urlWant) {
	var field map[string]json.RawMessage
	if json.Unmarshal(res, &field) != nil || field == nil {
		return urlWant{status: 200, body: res}
	}
	sc, structured := field["statusCode"]
	if !structured {
		return urlWant{status: 200, body: res}
	}
	isNull := func(v json.RawMessage) bool { return v == nil || string(v) == "null" }
	bad := urlWant{invalid: true}
	code, err := strconv.Atoi(string(sc))
	if err != nil || code < 200 || code > 599 {
		return bad
	}
	w.status = code
	if v := field["headers"]; !isNull(v) {
		var h map[string]*string
		if json.Unmarshal(v, &h) != nil {
			return bad
		}
	}
	if v := field["cookies"]; !isNull(v) {
		var cs []*string
		if json.Unmarshal(v, &cs) != nil {
			return bad
		}
		for _, c := range cs {
			if c == nil {
				c = new(string)
			}
			w.cookies = append(w.cookies, *c)
		}
	}
	var text string
	if v := field["body"]; !isNull(v) && json.Unmarshal(v, &text) != nil {
		return bad
	}
	var b64 bool
	if v := field["isBase64Encoded"]; !isNull(v) && json.Unmarshal(v, &b64) != nil {
		return bad
	}
	w.body = []byte(text)
	if b64 {
		if w.body, err = base64.StdEncoding.DecodeString(text); err != nil {
			return bad
		}
	}
	return w
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
