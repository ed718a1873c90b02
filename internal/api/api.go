// Package api serves ebb's management API: deploying, listing, inspecting
// and removing functions, and reading their logs. The invoke path lives in
// package gateway; this one is for the people and tools that operate ebb.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/logbuf"
	"github.com/ebb-run/ebb/internal/route"
	"github.com/ebb-run/ebb/internal/shadow"
)

// FunctionStatus is what GET /v1/functions/{name} answers.
type FunctionStatus struct {
	Name        string           `json:"name"`
	Version     int              `json:"version"`
	Runtime     ebb.Runtime      `json:"runtime"`
	Digest      string           `json:"digest"`
	Size        int64            `json:"size"`
	DeployedAt  time.Time        `json:"deployed_at"`
	URL         string           `json:"url"`
	FunctionURL string           `json:"function_url"`
	Spec        SpecJSON         `json:"spec"`
	Instances   []InstanceStatus `json:"instances"`
	InFlight    int              `json:"in_flight"`
	Waiting     int              `json:"waiting"`
	Invocations uint64           `json:"invocations"`
	ColdStarts  uint64           `json:"cold_starts"`
	Errors      uint64           `json:"errors"`
	// Draining lists older versions still finishing their requests.
	Draining []int `json:"draining,omitempty"`
	// Zygote is the python fork-server of the current version, if any.
	Zygote *ZygoteStatus `json:"zygote,omitempty"`
	// Spare is the onnx spare process of the current version, if one waits.
	Spare *SpareStatus `json:"spare,omitempty"`
	// Warm is what the current version holds of the node's warm budget
	// (GET /v1/warm); nil when it holds nothing.
	Warm *WarmStatus `json:"warm,omitempty"`
	// KeepAlive is how the current version is kept warm.
	KeepAlive *KeepAliveStatus `json:"keep_alive,omitempty"`
	// Sandbox says how the current version's processes are confined: "on"
	// or "off" (the node's mode), and with it their uid and network.
	Sandbox SandboxStatus `json:"sandbox"`
	// Route is where unqualified requests go; Aliases the function's
	// aliases; Versions every kept version with its counters.
	Route    ebb.Split     `json:"route"`
	Aliases  []ebb.Alias   `json:"aliases"`
	Versions []VersionInfo `json:"versions"`
}

// VersionInfo is one kept version of a function.
type VersionInfo struct {
	Version    int         `json:"version"`
	Runtime    ebb.Runtime `json:"runtime"`
	Digest     string      `json:"digest"`
	Size       int64       `json:"size"`
	DeployedAt time.Time   `json:"deployed_at"`
	// Percent is its share of unqualified requests; Aliases the aliases
	// that send it traffic.
	Percent int      `json:"percent"`
	Aliases []string `json:"aliases"`
	// Active says it has a pool now (it takes traffic, or was addressed
	// since it last stopped taking it).
	Active      bool    `json:"active"`
	Invocations uint64  `json:"invocations"`
	Errors      uint64  `json:"errors"`
	ColdStarts  uint64  `json:"cold_starts"`
	P50MS       float64 `json:"p50_ms"`
	P99MS       float64 `json:"p99_ms"`
}

// Versions is a function's kept versions and routes: what GET
// /v1/functions/{name}/versions and every change of routes answer.
type Versions struct {
	Name string `json:"name"`
	// Latest is the newest version.
	Latest int       `json:"latest"`
	Route  ebb.Split `json:"route"`
	// Rollback is the version ebb rollback would send everything to (0:
	// none).
	Rollback int           `json:"rollback,omitempty"`
	Aliases  []ebb.Alias   `json:"aliases"`
	Versions []VersionInfo `json:"versions"`
	// Shadow is the shadow run under way, if any.
	Shadow *ebb.Shadow `json:"shadow,omitempty"`
}

// DeployOptions say where a new version's traffic comes from.
type DeployOptions struct {
	// Canary, when set, gives the new version this share (percent) of
	// unqualified requests; the others keep theirs in proportion.
	Canary *int
	// NoTraffic deploys a version that takes none until it is routed.
	NoTraffic bool
}

// SandboxStatus is a function's confinement.
type SandboxStatus struct {
	Mode     string `json:"mode"`
	UID      uint32 `json:"uid,omitempty"`
	Network  string `json:"network,omitempty"`
	PastaPID int    `json:"pasta_pid,omitempty"`
}

// SpareStatus describes an onnx function's spare process: ONNX Runtime
// started, waiting for a cold start to load the model.
type SpareStatus struct {
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
	RSS   uint64    `json:"rss_bytes"`
	PSS   uint64    `json:"pss_bytes"`
}

// ZygoteStatus describes a python function's fork-server.
type ZygoteStatus struct {
	// PID is the host pid of the python process (not a sandbox's bwrap);
	// RSS and PSS are its own.
	PID      int       `json:"pid,omitempty"`
	BuiltAt  time.Time `json:"built_at,omitzero"`
	BuildMS  float64   `json:"build_ms,omitempty"`
	RSS      uint64    `json:"rss_bytes"`
	PSS      uint64    `json:"pss_bytes"`
	Children int       `json:"children"`
	Spare    bool      `json:"spare"`
	// Fallback says why instances start as fresh interpreters instead.
	Fallback string `json:"fallback,omitempty"`
}

// SpecJSON is the manifest as a client reads it (durations as strings).
type SpecJSON struct {
	Runtime      ebb.Runtime       `json:"runtime"`
	Handler      string            `json:"handler"`
	Memory       int               `json:"memory"`
	Timeout      string            `json:"timeout"`
	Concurrency  int               `json:"concurrency"`
	MinInstances int               `json:"min_instances"`
	MaxInstances int               `json:"max_instances"`
	IdleTimeout  string            `json:"idle_timeout"`
	MaxQueue     int               `json:"max_queue"`
	QueueTimeout string            `json:"queue_timeout"`
	Env          map[string]string `json:"env,omitempty"`
	Preload      []string          `json:"preload,omitempty"`
	KeepAlive    string            `json:"keep_alive,omitempty"`
}

// SpecOf converts s for clients.
func SpecOf(s *ebb.Spec) SpecJSON {
	return SpecJSON{Runtime: s.Runtime, Handler: s.Handler, Memory: s.MemoryMiB, Timeout: s.Timeout.String(),
		Concurrency: s.Concurrency, MinInstances: s.MinInstances, MaxInstances: s.MaxInstances,
		IdleTimeout: s.IdleTimeout.String(), MaxQueue: s.MaxQueue, QueueTimeout: s.QueueTimeout.String(),
		Env: s.Env, Preload: s.Preload, KeepAlive: s.KeepAlive}
}

// InstanceStatus describes one instance. Pid is the host pid of the
// process running the function's code: under the sandbox, the process
// bwrap runs (pid 1 of its namespace, or a zygote's forked child), not
// bwrap.
type InstanceStatus struct {
	ID        string    `json:"id"`
	Version   int       `json:"version"`
	Phase     string    `json:"phase"`
	InFlight  int       `json:"in_flight"`
	StartedAt time.Time `json:"started_at"`
	LastUsed  time.Time `json:"last_used"`
	Requests  uint64    `json:"requests"`
	Pid       int       `json:"pid,omitempty"`
	RSSBytes  uint64    `json:"peak_rss_bytes,omitempty"`
}

// Platform is what the API operates.
type Platform interface {
	DeployVersion(ctx context.Context, name string, bundle io.Reader, opt DeployOptions) (*ebb.Function, error)
	List(ctx context.Context) ([]FunctionStatus, error)
	Status(ctx context.Context, name string) (*FunctionStatus, error)
	Remove(ctx context.Context, name string) error

	Versions(ctx context.Context, name string) (*Versions, error)
	// RemoveVersion refuses (Conflict) a version that takes traffic.
	RemoveVersion(ctx context.Context, name string, version int) error
	SetRoute(ctx context.Context, name string, s ebb.Split) (*Versions, error)
	Promote(ctx context.Context, name string) (*Versions, error)
	Rollback(ctx context.Context, name string) (*Versions, error)
	SetAlias(ctx context.Context, name, alias string, s ebb.Split) (*Versions, error)
	RemoveAlias(ctx context.Context, name, alias string) (*Versions, error)

	SetShadow(ctx context.Context, name string, s ebb.Shadow) (*shadow.Report, error)
	StopShadow(ctx context.Context, name string) (*shadow.Report, error)
	ShadowReport(ctx context.Context, name string) (*shadow.Report, error)
}

// Logs is where function output is read from.
type Logs interface {
	Since(fn string, since uint64, limit int) ([]logbuf.Line, uint64)
	Wait(ctx context.Context, fn string, since uint64, limit int) ([]logbuf.Line, uint64)
}

// Config configures the API.
type Config struct {
	Platform Platform
	Logs     Logs
	// MaxBundleBytes bounds an upload (default 1 GiB).
	MaxBundleBytes int64
	// BaseURL is how clients reach ebb, for the URLs in replies.
	BaseURL string
	// Keys manages API keys and reads the audit log; nil leaves out
	// /v1/keys and /v1/audit.
	Keys Keys
	// Usage reads metered usage; nil leaves out the usage routes.
	Usage Usage
	// Warm reads the warm budget; nil leaves out GET /v1/warm.
	Warm Warm
	// Node describes the machine, for GET /v1/usage; NodeCostPerHour is
	// what it costs (USD), for its share in cost reports (0: not priced).
	Node            Node
	NodeCostPerHour float64
	Logger          *slog.Logger
	// Monitor reads input and prediction summaries; nil leaves out
	// /v1/functions/{name}/monitor.
	Monitor Monitor
	// Nodes lists the cluster's nodes; nil leaves out GET /v1/nodes.
	Nodes Nodes
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Platform == nil || c.Logs == nil {
		return errors.New("api config: Platform and Logs are required")
	}
	if c.MaxBundleBytes <= 0 {
		c.MaxBundleBytes = 1 << 30
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// API serves /v1/functions.
type API struct{ cfg Config }

// New returns an API.
func New(cfg Config) (*API, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &API{cfg: cfg}, nil
}

// Routes are the API's entries in the route table.
func (a *API) Routes() []route.Route {
	name := func(r *http.Request) string { return r.PathValue("name") }
	id := func(r *http.Request) string { return r.PathValue("id") }
	rs := []route.Route{
		{Pattern: "PUT /v1/functions/{name}", Perm: auth.PermDeploy, Function: name, Audit: "function.deploy", Handler: a.deploy},
		{Pattern: "GET /v1/functions", Perm: auth.PermDescribe, Handler: a.list},
		{Pattern: "GET /v1/functions/{name}", Perm: auth.PermDescribe, Function: name, Handler: a.status},
		{Pattern: "DELETE /v1/functions/{name}", Perm: auth.PermDeploy, Function: name, Audit: "function.remove", Handler: a.remove},
		{Pattern: "GET /v1/functions/{name}/logs", Perm: auth.PermLogs, Function: name, Handler: a.logs},
		{Pattern: "GET /v1/functions/{name}/versions", Perm: auth.PermDescribe, Function: name, Handler: a.versions},
		{Pattern: "DELETE /v1/functions/{name}/versions/{version}", Perm: auth.PermDeploy, Function: name, Audit: "version.remove", AuditTarget: versionTarget, Handler: a.removeVersion},
		{Pattern: "PUT /v1/functions/{name}/route", Perm: auth.PermDeploy, Function: name, Audit: "traffic.route", Handler: a.setRoute},
		{Pattern: "POST /v1/functions/{name}/promote", Perm: auth.PermDeploy, Function: name, Audit: "traffic.promote", Handler: a.promote},
		{Pattern: "POST /v1/functions/{name}/rollback", Perm: auth.PermDeploy, Function: name, Audit: "traffic.rollback", Handler: a.rollback},
		{Pattern: "GET /v1/functions/{name}/aliases", Perm: auth.PermDescribe, Function: name, Handler: a.versions},
		{Pattern: "PUT /v1/functions/{name}/aliases/{alias}", Perm: auth.PermDeploy, Function: name, Audit: "alias.set", AuditTarget: aliasTarget, Handler: a.setAlias},
		{Pattern: "DELETE /v1/functions/{name}/aliases/{alias}", Perm: auth.PermDeploy, Function: name, Audit: "alias.remove", AuditTarget: aliasTarget, Handler: a.removeAlias},
		{Pattern: "PUT /v1/functions/{name}/shadow", Perm: auth.PermDeploy, Function: name, Audit: "shadow.start", Handler: a.setShadow},
		{Pattern: "DELETE /v1/functions/{name}/shadow", Perm: auth.PermDeploy, Function: name, Audit: "shadow.stop", Handler: a.stopShadow},
		{Pattern: "GET /v1/functions/{name}/shadow", Perm: auth.PermDescribe, Function: name, Handler: a.shadowReport},
	}
	rs = append(rs, a.usageRoutes()...)
	rs = append(rs, a.warmRoutes()...)
	if a.cfg.Keys != nil {
		rs = append(rs,
			route.Route{Pattern: "POST /v1/keys", Perm: auth.PermKeys, Audit: "key.create", Handler: a.createKey},
			route.Route{Pattern: "GET /v1/keys", Perm: auth.PermKeys, Handler: a.listKeys},
			route.Route{Pattern: "DELETE /v1/keys/{id}", Perm: auth.PermKeys, Audit: "key.revoke", AuditTarget: id, Handler: a.revokeKey},
			route.Route{Pattern: "POST /v1/keys/{id}/rotate", Perm: auth.PermKeys, Audit: "key.rotate", AuditTarget: id, Handler: a.rotateKey},
			route.Route{Pattern: "GET /v1/audit", Perm: auth.PermAudit, Handler: a.audit})
	}
	if a.cfg.Monitor != nil {
		rs = append(rs, route.Route{Pattern: "GET /v1/functions/{name}/monitor", Perm: auth.PermDescribe, Function: name, Handler: a.monitorReport})
	}
	if a.cfg.Nodes != nil {
		rs = append(rs, route.Route{Pattern: "GET /v1/nodes", Perm: auth.PermDescribe, Handler: a.nodes})
	}
	return rs
}

// DeployReply is the answer to a deploy.
type DeployReply struct {
	Name        string `json:"name"`
	Version     int    `json:"version"`
	Digest      string `json:"digest"`
	URL         string `json:"url"`
	FunctionURL string `json:"function_url"`
}

// BadRequest is an error whose message is meant for the client (a manifest
// problem, a bad bundle).
type BadRequest struct{ Err error }

func (e *BadRequest) Error() string { return e.Err.Error() }
func (e *BadRequest) Unwrap() error { return e.Err }

func (a *API) deploy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var opt DeployOptions
	q := r.URL.Query()
	if c := q.Get("canary"); c != "" {
		n, err := strconv.Atoi(strings.TrimSuffix(c, "%"))
		if err != nil || n < 0 || n > 100 {
			a.fail(w, &BadRequest{Err: fmt.Errorf("canary=%q is not a whole percent from 0 to 100", c)})
			return
		}
		opt.Canary = &n
	}
	switch tr := q.Get("traffic"); tr {
	case "", "all":
	case "none":
		opt.NoTraffic = true
	default:
		a.fail(w, &BadRequest{Err: fmt.Errorf("traffic=%q is not all or none", tr)})
		return
	}
	if opt.NoTraffic && opt.Canary != nil {
		a.fail(w, &BadRequest{Err: errors.New("canary and traffic=none exclude each other")})
		return
	}
	if r.ContentLength > a.cfg.MaxBundleBytes {
		a.fail(w, fmt.Errorf("bundle is larger than %d bytes: %w", a.cfg.MaxBundleBytes, ebb.ErrPayloadTooLarge))
		return
	}
	body := http.MaxBytesReader(w, r.Body, a.cfg.MaxBundleBytes)
	fn, err := a.cfg.Platform.DeployVersion(r.Context(), name, body, opt)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = fmt.Errorf("bundle is larger than %d bytes: %w", a.cfg.MaxBundleBytes, ebb.ErrPayloadTooLarge)
		}
		a.fail(w, err)
		return
	}
	a.cfg.Logger.Info("deployed", "function", fn.Spec.Name, "version", fn.Version, "digest", fn.Digest)
	writeJSON(w, http.StatusCreated, DeployReply{Name: fn.Spec.Name, Version: fn.Version, Digest: fn.Digest,
		URL: a.cfg.BaseURL + "/v1/functions/" + fn.Spec.Name + "/invoke", FunctionURL: a.cfg.BaseURL + "/fn/" + fn.Spec.Name + "/"})
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	fns, err := a.cfg.Platform.List(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	// A scoped key sees only the functions it covers.
	p := auth.FromContext(r.Context())
	fns = slices.DeleteFunc(fns, func(f FunctionStatus) bool { return !p.Covers(f.Name) })
	if fns == nil {
		fns = []FunctionStatus{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"functions": fns})
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	st, err := a.cfg.Platform.Status(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) remove(w http.ResponseWriter, r *http.Request) {
	if err := a.cfg.Platform.Remove(r.Context(), r.PathValue("name")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// logs answers GET /v1/functions/{name}/logs?since=N&limit=N[&follow=1] with
// newline-delimited JSON lines; with follow it streams until the client goes.
func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := a.cfg.Platform.Status(r.Context(), name); err != nil {
		a.fail(w, err)
		return
	}
	q := r.URL.Query()
	since, _ := strconv.ParseUint(q.Get("since"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	// Ebb-Next-Seq is where the next request resumes. It is a header, so it
	// is set before the first line is written: once the lines pass the
	// server's pre-header buffer the header is on the wire, and a field set
	// later would be lost. With follow it is the seq after the lines already
	// there; each streamed line carries its own seq.
	lines, next := a.cfg.Logs.Since(name, since, limit)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Ebb-Next-Seq", strconv.FormatUint(next, 10))
	enc := json.NewEncoder(w)
	for i := range lines {
		enc.Encode(&lines[i])
	}
	if !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	// A follower may wait hours for its next line: it must end when its
	// client goes, not at the next line it fails to write.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if g, ok := w.(interface{ ClientGone() <-chan struct{} }); ok {
		gone := g.ClientGone()
		go func() {
			select {
			case <-gone:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	for {
		if flusher != nil {
			flusher.Flush()
		}
		lines, next = a.cfg.Logs.Wait(ctx, name, next, limit)
		if ctx.Err() != nil {
			return
		}
		for i := range lines {
			if enc.Encode(&lines[i]) != nil {
				return
			}
		}
	}
}

// fail maps err to a status: the client gets a clear message, the log the cause.
func (a *API) fail(w http.ResponseWriter, err error) {
	var br *BadRequest
	var fe *ebb.FieldError
	var nf *ebb.NotFoundError
	var ce *Conflict
	switch {
	case errors.As(err, &nf):
		route.Write(w, route.Native, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: nf.Message})
	case errors.As(err, &ce):
		route.Write(w, route.Native, &route.Error{Status: http.StatusConflict, Type: "ResourceConflict", Message: ce.Error()})
	case errors.Is(err, ebb.ErrNotFound):
		route.Write(w, route.Native, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: "function not found"})
	case errors.Is(err, ebb.ErrPayloadTooLarge):
		route.Write(w, route.Native, &route.Error{Status: http.StatusRequestEntityTooLarge, Type: "RequestTooLarge", Message: err.Error()})
	case errors.As(err, &br):
		route.Write(w, route.Native, &route.Error{Status: http.StatusBadRequest, Type: "InvalidBundle", Message: br.Error()})
	case errors.As(err, &fe):
		route.Write(w, route.Native, &route.Error{Status: http.StatusBadRequest, Type: "InvalidRequestContent", Message: fe.Error()})
	default:
		a.cfg.Logger.Error("api request failed", "err", err)
		route.Write(w, route.Native, &route.Error{Status: http.StatusInternalServerError, Type: "Ebb.InternalError", Message: "internal error"})
	}
}

// writeJSON answers v, indented: the management API is read by people too.
func writeJSON(w http.ResponseWriter, status int, v any) { route.Pretty(w, status, v) }
