package route

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
)

type fakeFunctions struct {
	public  map[string]bool
	limited map[string]bool
}

func (f fakeFunctions) PublicURL(fn string) bool { return f.public[fn] }
func (f fakeFunctions) AllowInvoke(fn string) (bool, time.Duration) {
	if f.limited[fn] {
		return false, 1500 * time.Millisecond
	}
	return true, 0
}

type recorder struct {
	mu   sync.Mutex
	recs []Record
}

func (r *recorder) Audit(_ context.Context, rec Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

func ok(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Seen-Authorization", r.Header.Get("Authorization"))
	w.WriteHeader(http.StatusTeapot)
}

func table(t testing.TB, cfg Config) (*Table, string) {
	t.Helper()
	secret, hash := auth.NewSecret()
	kr := &auth.Keyring{}
	if err := kr.Put(ebb.Key{ID: "0000aaaa", Role: ebb.RoleInvoke, Functions: []string{"a*"}, Hash: hash}, ""); err != nil {
		t.Fatal(err)
	}
	if cfg.Auth == nil {
		cfg.Auth = &auth.Authenticator{Keys: kr, Now: time.Now}
	}
	name := func(r *http.Request) string { return r.PathValue("name") }
	tb, err := New(cfg, []Route{
		{Pattern: "POST /fn/{name}", Perm: auth.PermInvoke, Function: name, Invoke: true, PublicURL: true, Handler: ok},
		{Pattern: "PUT /v1/functions/{name}", Perm: auth.PermDeploy, Function: name, Audit: "function.deploy", Handler: ok},
		{Pattern: "POST /2015-03-31/functions/{name}/invocations", Perm: auth.PermInvoke, Function: name, Dialect: Lambda, Invoke: true, Handler: ok},
		{Pattern: "GET /healthz", Handler: ok},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tb, secret
}

func serve(h http.Handler, method, path, host string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader("{}"))
	r.Host = host
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestChecksInOrder(t *testing.T) {
	rec := &recorder{}
	tb, secret := table(t, Config{Functions: fakeFunctions{public: map[string]bool{"pub": true}, limited: map[string]bool{"abusy": true}},
		Auditor: rec, LoopbackHosts: true})
	bearer := map[string]string{"Authorization": "Bearer " + secret}
	for _, c := range []struct {
		name, method, path, host string
		hdr                      map[string]string
		want                     int
		errType                  string
	}{
		{"foreign host first", "POST", "/fn/a1", "evil.example", bearer, 421, "MisdirectedRequest"},
		{"no key", "POST", "/fn/a1", "127.0.0.1:8080", nil, 401, "Unauthorized"},
		{"in scope", "POST", "/fn/a1", "localhost:8080", bearer, 418, ""},
		{"out of scope", "POST", "/fn/b1", "localhost", bearer, 403, "AccessDenied"},
		{"wrong role", "PUT", "/v1/functions/a1", "localhost", bearer, 403, "AccessDenied"},
		{"public URL needs no key", "POST", "/fn/pub", "[::1]:80", nil, 418, ""},
		{"rate limited", "POST", "/fn/abusy", "localhost", bearer, 429, "TooManyRequests"},
		{"lambda dialect", "POST", "/2015-03-31/functions/b1/invocations", "localhost", bearer, 403, "AccessDeniedException"},
		{"unknown path", "GET", "/nope", "localhost", nil, 404, "NotFound"},
		{"wrong method", "DELETE", "/healthz", "localhost", nil, 405, "MethodNotAllowed"},
		{"open route", "GET", "/healthz", "localhost", nil, 418, ""},
	} {
		w := serve(tb, c.method, c.path, c.host, c.hdr)
		if w.Code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, w.Code, w.Body, c.want)
			continue
		}
		if c.errType == "" {
			continue
		}
		var body map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Errorf("%s: body %q is not JSON", c.name, w.Body)
		}
		got := body["errorType"] + body["__type"]
		if got != c.errType {
			t.Errorf("%s: error type %q, want %q (%s)", c.name, got, c.errType, w.Body)
		}
		if c.want == 429 && w.Header().Get("Retry-After") != "2" {
			t.Errorf("%s: Retry-After = %q, want 2 (1.5s rounded up)", c.name, w.Header().Get("Retry-After"))
		}
		if c.want == 405 && w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: Allow = %q", c.name, w.Header().Get("Allow"))
		}
	}
	// The key was consumed by the edge, not passed on.
	if w := serve(tb, "POST", "/fn/a1", "localhost", bearer); w.Header().Get("Seen-Authorization") != "" {
		t.Errorf("the handler saw the ebb key")
	}
	// Only the audited route was recorded, with the refusal's status not
	// recorded at all (it never reached the handler).
	if len(rec.recs) != 0 {
		t.Errorf("audit records of refused requests: %+v", rec.recs)
	}
}

func TestAuditAndHosts(t *testing.T) {
	rec := &recorder{}
	tb, err := New(Config{Functions: fakeFunctions{}, Auditor: rec, AllowedHosts: []string{"ebb.example"}, CORSOrigins: []string{"https://app.example"}},
		[]Route{{Pattern: "PUT /v1/functions/{name}", Perm: auth.PermDeploy, Function: func(r *http.Request) string { return r.PathValue("name") },
			Audit: "function.deploy", Handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(201) }}})
	if err != nil {
		t.Fatal(err)
	}
	if w := serve(tb, "PUT", "/v1/functions/f", "ebb.example:443", nil); w.Code != 201 {
		t.Fatalf("allowed host = %d", w.Code)
	}
	if len(rec.recs) != 1 || rec.recs[0].Action != "function.deploy" || rec.recs[0].Target != "f" || rec.recs[0].Status != 201 {
		t.Errorf("audit = %+v", rec.recs)
	}
	// Not listening on loopback: loopback names are not special.
	if w := serve(tb, "PUT", "/v1/functions/f", "localhost", nil); w.Code != 421 {
		t.Errorf("localhost with only --allowed-hosts = %d, want 421", w.Code)
	}
	w := serve(tb, "OPTIONS", "/v1/functions/f", "ebb.example", map[string]string{"Origin": "https://app.example",
		"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"})
	if w.Code != 204 || w.Header().Get("Access-Control-Allow-Origin") != "https://app.example" || w.Header().Get("Access-Control-Allow-Headers") != "authorization" {
		t.Errorf("preflight = %d %v", w.Code, w.Header())
	}
	w = serve(tb, "OPTIONS", "/v1/functions/f", "ebb.example", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
	if w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("CORS answered for an origin not listed")
	}
}

// BenchmarkTable is the table's cost on a warm invoke without keys (the
// loopback default), against the bare ServeMux it wraps.
func BenchmarkTable(b *testing.B) {
	h := func(w http.ResponseWriter, r *http.Request) {}
	name := func(r *http.Request) string { return r.PathValue("name") }
	routes := []Route{{Pattern: "GET /fn/{name}/{path...}", Perm: auth.PermInvoke, Function: name, Invoke: true, PublicURL: true, Handler: h}}
	tb, err := New(Config{Functions: fakeFunctions{}, LoopbackHosts: true}, routes)
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(routes[0].Pattern, h)
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"mux", mux}, {"table", tb}} {
		b.Run(c.name, func(b *testing.B) {
			r := httptest.NewRequest("GET", "/fn/web/some/path", nil)
			r.Host = "127.0.0.1:8080"
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				c.h.ServeHTTP(w, r)
			}
		})
	}
}
