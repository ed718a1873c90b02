// Package route is ebb's one HTTP route table: every path of the surface with
// the permission it needs, and the checks that run before its handler in one
// order (host, CORS, authentication, scope, rate limits, audit). It also
// holds the one error writer, so that every refusal, from a missing key to an
// unknown path, has the same shape for its protocol.
package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ebb-run/ebb/internal/auth"
)

// Route is one entry of the table.
type Route struct {
	// Pattern is a net/http ServeMux pattern: "POST /v1/functions/{name}/invoke".
	Pattern string
	// Perm is what a key needs; "" opens the route to anyone (health checks).
	Perm auth.Perm
	// Function names the function the route acts on (for scope, public
	// URLs and rate limits); nil when it names none.
	Function func(*http.Request) string
	// Dialect is the shape of the route's errors.
	Dialect Dialect
	// Invoke marks an invocation: it is counted against the function's
	// rate_limit.
	Invoke bool
	// PublicURL marks a function URL: it needs no key when its function's
	// function_url.auth is none.
	PublicURL bool
	// Audit, when set, is the action recorded in the audit log once the
	// handler has answered.
	Audit string
	// AuditTarget names what the action acted on; default the function.
	AuditTarget func(*http.Request) string
	Handler     http.HandlerFunc
}

// Functions is what the table asks about functions.
type Functions interface {
	// PublicURL says whether fn's function URL needs no key.
	PublicURL(fn string) bool
	// AllowInvoke takes a token of fn's rate_limit; when refused it
	// says how long until one is free.
	AllowInvoke(fn string) (bool, time.Duration)
}

// Auditor records control-plane actions.
type Auditor interface {
	Audit(ctx context.Context, rec Record)
}

// Record is one audited action.
type Record struct {
	Time    time.Time
	KeyID   string
	KeyName string
	Action  string
	Target  string
	Status  int
	Remote  string
}

// Metrics counts refusals.
type Metrics interface {
	RateLimited(scope, name string)
	Refused(reason string)
}

// Config configures a Table.
type Config struct {
	// Auth authenticates requests; nil means keys are not required (every
	// route is open, as on loopback without --require-auth).
	Auth      *auth.Authenticator
	Functions Functions
	Auditor   Auditor
	Metrics   Metrics
	// LoopbackHosts admits Host names and addresses of the loopback
	// interface (set when ebb listens on loopback only).
	LoopbackHosts bool
	// AllowedHosts are further Host names admitted (without port); "*"
	// admits any. With neither this nor LoopbackHosts every Host is.
	AllowedHosts []string
	// CORSOrigins are the origins browsers may call ebb from ("*": any);
	// empty sends no CORS headers at all.
	CORSOrigins []string
	Logger      *slog.Logger
	Now         func() time.Time
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Functions == nil {
		return errors.New("route config: Functions is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for i, h := range c.AllowedHosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" || strings.ContainsAny(h, "/ ") {
			return fmt.Errorf("route config: allowed host %q is not a host name", c.AllowedHosts[i])
		}
		c.AllowedHosts[i] = h
	}
	for _, o := range c.CORSOrigins {
		if o != "*" && !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			return fmt.Errorf("route config: CORS origin %q is not * or an http(s) origin", o)
		}
	}
	return nil
}

// Table serves the routes.
type Table struct {
	cfg      Config
	mux      *http.ServeMux
	patterns []string
	anyHost  bool
	hosts    map[string]bool
	origins  map[string]bool
}

// New builds the table from every package's routes.
func New(cfg Config, groups ...[]Route) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Table{cfg: cfg, mux: http.NewServeMux(), hosts: map[string]bool{}, origins: map[string]bool{}}
	t.anyHost = !cfg.LoopbackHosts && len(cfg.AllowedHosts) == 0
	for _, h := range cfg.AllowedHosts {
		if h == "*" {
			t.anyHost = true
		}
		t.hosts[h] = true
	}
	for _, o := range cfg.CORSOrigins {
		t.origins[strings.TrimRight(o, "/")] = true
	}
	for _, g := range groups {
		for _, rt := range g {
			if rt.Handler == nil {
				return nil, fmt.Errorf("route %s: no handler", rt.Pattern)
			}
			t.mux.HandleFunc(rt.Pattern, t.wrap(rt))
			t.patterns = append(t.patterns, rt.Pattern)
		}
	}
	t.mux.HandleFunc("/", t.unmatched)
	return t, nil
}

// Patterns lists the table's patterns, in the order they were given.
func (t *Table) Patterns() []string { return t.patterns }

// ServeHTTP checks the Host and CORS, then routes.
func (t *Table) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !t.anyHost && !t.hostAllowed(r.Host) {
		t.refuse("misdirected")
		Write(w, dialectOf(r.URL.Path), &Error{Status: http.StatusMisdirectedRequest, Type: "MisdirectedRequest",
			Message: "this server does not answer for host " + strconv.Quote(hostOnly(r.Host)) + " (allowed: loopback names and --allowed-hosts)"})
		return
	}
	if len(t.origins) > 0 {
		if origin := r.Header.Get("Origin"); origin != "" && t.corsAllowed(origin) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Expose-Headers", "Ebb-Request-Id, Ebb-Cold-Start, Ebb-Version, Retry-After, X-Amz-Function-Error, X-Amz-Executed-Version, X-Amz-Log-Result")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE")
				if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
					h.Set("Access-Control-Allow-Headers", rh)
				}
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
	}
	t.mux.ServeHTTP(w, r)
}

func (t *Table) corsAllowed(origin string) bool {
	return t.origins["*"] || t.origins[strings.TrimRight(origin, "/")]
}

// hostOnly is a Host header without its port.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}

// hostAllowed applies the Host policy. A request without a Host (HTTP/1.0)
// is admitted: the check is against DNS rebinding, and browsers always send
// one.
func (t *Table) hostAllowed(host string) bool {
	if host == "" {
		return true
	}
	h := strings.ToLower(strings.TrimSuffix(hostOnly(host), "."))
	if t.hosts[h] {
		return true
	}
	if t.cfg.LoopbackHosts {
		if h == "localhost" || strings.HasSuffix(h, ".localhost") {
			return true
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			return true
		}
	}
	return false
}

func (t *Table) refuse(reason string) {
	if t.cfg.Metrics != nil {
		t.cfg.Metrics.Refused(reason)
	}
}

// wrap puts the table's checks in front of rt's handler.
func (t *Table) wrap(rt Route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var fn string
		if rt.Function != nil {
			fn = rt.Function(r)
		}
		keyed := t.cfg.Auth != nil && rt.Perm != ""
		if keyed && rt.PublicURL && fn != "" && t.cfg.Functions.PublicURL(fn) {
			keyed = false
		}
		var p *auth.Principal
		if keyed {
			var err error
			if p, err = t.cfg.Auth.Authenticate(r); err == nil {
				err = p.Can(rt.Perm, fn)
			}
			if err != nil {
				t.authFailed(w, r, rt, fn, err)
				return
			}
			r = r.WithContext(auth.WithPrincipal(r.Context(), p))
		}
		if rt.Perm != "" {
			auth.Strip(r, keyed)
		}
		if rt.Invoke && fn != "" {
			if ok, wait := t.cfg.Functions.AllowInvoke(fn); !ok {
				if t.cfg.Metrics != nil {
					t.cfg.Metrics.RateLimited("function", fn)
				}
				Write(w, rt.Dialect, &Error{Status: http.StatusTooManyRequests, Type: "TooManyRequests",
					Message: "function " + strconv.Quote(fn) + " is over its rate_limit; retry later", RetryAfter: wait})
				return
			}
		}
		if rt.Audit == "" || t.cfg.Auditor == nil {
			rt.Handler(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		at := &auditTarget{}
		r = r.WithContext(context.WithValue(r.Context(), auditTargetKey{}, at))
		rt.Handler(sw, r)
		target := fn
		if rt.AuditTarget != nil {
			target = rt.AuditTarget(r)
		}
		if at.target != "" {
			target = at.target
		}
		rec := Record{Time: t.cfg.Now(), Action: rt.Audit, Target: target, Status: sw.status(), Remote: r.RemoteAddr}
		if p != nil {
			rec.KeyID, rec.KeyName = p.Key.ID, p.Key.Name
		}
		t.cfg.Auditor.Audit(r.Context(), rec)
	}
}

func (t *Table) authFailed(w http.ResponseWriter, r *http.Request, rt Route, fn string, err error) {
	var fe *auth.ForbiddenError
	var se *auth.SigV4Error
	var rl *auth.RateLimitedError
	switch {
	case errors.As(err, &rl):
		if t.cfg.Metrics != nil {
			t.cfg.Metrics.RateLimited("key", rl.KeyID)
		}
		Write(w, rt.Dialect, &Error{Status: http.StatusTooManyRequests, Type: "TooManyRequests", Message: rl.Error(), RetryAfter: rl.RetryAfter})
	case errors.As(err, &fe):
		t.refuse("forbidden")
		Write(w, rt.Dialect, &Error{Status: http.StatusForbidden, Type: "AccessDenied", Message: fe.Error()})
	case errors.As(err, &se):
		t.refuse("unauthorized")
		Write(w, rt.Dialect, &Error{Status: http.StatusForbidden, Type: se.Type, Message: se.Msg})
	case errors.Is(err, auth.ErrSignedBodyTooLarge):
		Write(w, rt.Dialect, &Error{Status: http.StatusRequestEntityTooLarge, Type: "RequestTooLarge", Message: err.Error()})
	case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrUnknownKey), errors.Is(err, auth.ErrExpired):
		t.refuse("unauthorized")
		w.Header().Set("WWW-Authenticate", `Bearer realm="ebb"`)
		Write(w, rt.Dialect, &Error{Status: http.StatusUnauthorized, Type: "Unauthorized", Message: err.Error()})
	default:
		// Reading a signed body failed: the client's doing.
		t.cfg.Logger.Info("authentication failed", "path", r.URL.Path, "err", err)
		Write(w, rt.Dialect, &Error{Status: http.StatusBadRequest, Type: "InvalidRequestContent", Message: "could not read the request body"})
	}
}

// unmatched answers paths and methods no route serves, in the same JSON shape
// as every other error.
func (t *Table) unmatched(w http.ResponseWriter, r *http.Request) {
	d := dialectOf(r.URL.Path)
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pat := t.mux.Handler(probe); pat != "" && pat != "/" {
			allow = append(allow, m)
		}
	}
	t.refuse("not_found")
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		Write(w, d, &Error{Status: http.StatusMethodNotAllowed, Type: "MethodNotAllowed",
			Message: fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		return
	}
	Write(w, d, &Error{Status: http.StatusNotFound, Type: "NotFound", Message: "no route for " + r.Method + " " + r.URL.Path})
}

// dialectOf guesses the protocol of a path no route matched.
func dialectOf(path string) Dialect {
	switch {
	case strings.HasPrefix(path, "/2015-03-31/"):
		return Lambda
	case strings.HasPrefix(path, "/v2/"):
		return OIP
	}
	return Native
}

// statusWriter remembers the status a handler wrote, for the audit log.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// auditTarget carries a target a handler learns while it runs (a new key's
// ID) to the audit record.
type auditTarget struct{ target string }

type auditTargetKey struct{}

// SetAuditTarget names what an audited request acted on, when the route
// cannot tell from the request alone.
func SetAuditTarget(r *http.Request, target string) {
	if t, ok := r.Context().Value(auditTargetKey{}).(*auditTarget); ok {
		t.target = target
	}
}
