package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/shadow"
)

type shadowReport = shadow.Report

// deployWith deploys dir as a new version with opt and returns its number.
func (e *env) deployWith(dir string, opt api.DeployOptions) int {
	e.t.Helper()
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		e.t.Fatal(err)
	}
	rep, err := e.c.DeployWith(context.Background(), manifestName(e.t, dir), &buf, opt)
	if err != nil {
		e.t.Fatalf("deploy %s: %v", dir, err)
	}
	return rep.Version
}

// instancesOf counts name's instances of version v.
func (e *env) instancesOf(name string, v int) int {
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		e.t.Fatalf("status %s: %v", name, err)
	}
	n := 0
	for _, in := range st.Instances {
		if in.Version == v {
			n++
		}
	}
	return n
}

// active says which versions of name have a pool.
func (e *env) active(name string) map[int]bool {
	vs, err := e.c.Versions(context.Background(), name)
	if err != nil {
		e.t.Fatalf("versions %s: %v", name, err)
	}
	out := map[int]bool{}
	for _, v := range vs.Versions {
		if v.Active {
			out[v.Version] = true
		}
	}
	return out
}

// TestVersionPoolsFollowTraffic: each version has its own pool, made when
// it is routed (min_instances then holds for it) and drained when it is not;
// a --no-traffic version has no process; a restart brings back every
// version, the route, the aliases and the pools of the routed versions only.
func TestVersionPoolsFollowTraffic(t *testing.T) {
	data := t.TempDir()
	e := start(t, data)
	ctx := context.Background()
	dir := goFn(t, "pv", "min_instances: 1\n")
	e.deploy(dir)
	waitFor(t, "version 1's warm instance", 30*time.Second, func() bool { return e.instancesOf("pv", 1) == 1 })
	e.deploy(dir)
	waitFor(t, "version 1 to drain and version 2 to warm", 30*time.Second, func() bool {
		return e.instancesOf("pv", 1) == 0 && e.instancesOf("pv", 2) == 1
	})
	if v := e.deployWith(dir, api.DeployOptions{NoTraffic: true}); v != 3 {
		t.Fatalf("third deploy made version %d", v)
	}
	if got := e.active("pv"); !reflect.DeepEqual(got, map[int]bool{2: true}) {
		t.Fatalf("pools after a --no-traffic deploy: %v, want only version 2's", got)
	}
	if n := e.instancesOf("pv", 3); n != 0 {
		t.Fatalf("the --no-traffic version has %d instances despite min_instances 1", n)
	}
	// An alias routes version 1 again: it gets a pool, and its warm instance.
	if _, err := e.c.SetAlias(ctx, "pv", "old", ebb.Split{{Version: 1, Percent: 100}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "version 1's warm instance under alias old", 30*time.Second, func() bool { return e.instancesOf("pv", 1) == 1 })
	if _, err := e.c.SetRoute(ctx, "pv", ebb.Split{{Version: 2, Percent: 90}, {Version: 3, Percent: 10}}); err != nil {
		t.Fatal(err)
	}
	if got := e.active("pv"); !reflect.DeepEqual(got, map[int]bool{1: true, 2: true, 3: true}) {
		t.Fatalf("pools after routing 2 and 3 and aliasing 1: %v", got)
	}
	before, err := e.c.Versions(ctx, "pv")
	if err != nil {
		t.Fatal(err)
	}
	e.deployWith(dir, api.DeployOptions{NoTraffic: true}) // version 4: kept, unrouted
	if _, err := e.c.SetShadow(ctx, "pv", ebb.Shadow{Version: 3, Percent: 50, Tolerance: new(0.01)}); err != nil {
		t.Fatal(err)
	}
	e.stop()

	e2 := start(t, data)
	after, err := e2.c.Versions(ctx, "pv")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after.Route, before.Route) || !reflect.DeepEqual(after.Aliases, before.Aliases) || after.Latest != 4 || len(after.Versions) != 4 {
		t.Fatalf("after a restart: route %v aliases %v latest %d, %d versions; before: route %v aliases %v",
			after.Route, after.Aliases, after.Latest, len(after.Versions), before.Route, before.Aliases)
	}
	if got := e2.active("pv"); !reflect.DeepEqual(got, map[int]bool{1: true, 2: true, 3: true}) {
		t.Fatalf("pools after a restart: %v, want the routed versions' (1, 2, 3) only", got)
	}
	if rep, err := e2.c.ShadowReport(ctx, "pv"); err != nil || !rep.Active || rep.Version != 3 || rep.Percent != 50 || rep.Tol() != 0.01 {
		t.Fatalf("shadow run after a restart = %+v, %v", rep, err)
	}
	for q, want := range map[string]string{"pv:old": "1", "pv:4": "4", "pv:latest": "4"} {
		code, body, h := e2.do("POST", "/v1/functions/"+q+"/invoke", `{"name":"x"}`, nil)
		if code != 200 || h.Get("Ebb-Version") != want {
			t.Fatalf("%s after a restart = %d %s (Ebb-Version %q), want version %s", q, code, body, h.Get("Ebb-Version"), want)
		}
	}
	// Removing the alias drains version 1 back to zero.
	if _, err := e2.c.RemoveAlias(ctx, "pv", "old"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "version 1 to drain once no alias routes it", 30*time.Second, func() bool { return e2.instancesOf("pv", 1) == 0 })
	if got := e2.active("pv"); got[1] {
		t.Fatalf("version 1 kept its pool: %v", got)
	}
}

// TestRollbackWithoutHistoryAndRuntimeMix: a rollback with nothing to roll
// back to is a conflict; versions of different runtimes cannot share a route.
func TestRollbackWithoutHistoryAndRuntimeMix(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	e.deploy(goFn(t, "rb", ""))
	if _, err := e.c.Rollback(ctx, "rb"); err == nil || !containsStatus(err, 409) {
		t.Fatalf("rollback of a single version = %v, want 409", err)
	}
	web := fnDir(t, "name: rb\nruntime: http\nhandler: ./server\n", map[string]string{"server": "@httpfn"})
	canary := 10
	var buf bytes.Buffer
	bundle.Pack(web, &buf)
	if _, err := e.c.DeployWith(ctx, "rb", &buf, api.DeployOptions{Canary: &canary}); err == nil || !containsStatus(err, 400) {
		t.Fatalf("a canary of another runtime = %v, want 400", err)
	}
	vs, _ := e.c.Versions(ctx, "rb")
	if len(vs.Versions) != 1 {
		t.Fatalf("a refused canary left %d versions", len(vs.Versions))
	}
	// A plain deploy of another runtime replaces the route whole.
	if v := e.deploy(web); v != 3 {
		t.Fatalf("deploy made version %d, want 3 (numbers are never reused)", v)
	}
	if _, err := e.c.SetRoute(ctx, "rb", ebb.Split{{Version: 1, Percent: 50}, {Version: 3, Percent: 50}}); err == nil || !containsStatus(err, 400) {
		t.Fatalf("a route mixing exec and http = %v, want 400", err)
	}
	if _, err := e.c.Rollback(ctx, "rb"); err != nil {
		t.Fatalf("rollback to version 1: %v", err)
	}
	if code, body, h := e.invoke("rb", `{"name":"x"}`); code != 200 || h.Get("Ebb-Version") != "1" {
		t.Fatalf("after rollback = %d %s (Ebb-Version %q)", code, body, h.Get("Ebb-Version"))
	}
}

func containsStatus(err error, status int) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("("+strconv.Itoa(status)+" "))
}

// TestResolveSingleVersionAllocatesNothing: the hot path's resolution of an
// unqualified name with one version taking everything is a map lookup under
// the read lock, without allocations or draws.
func TestResolveSingleVersionAllocatesNothing(t *testing.T) {
	p := benchPlatform(ebb.Split{{Version: 1, Percent: 100}})
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err := p.resolve(gateway.Target{Name: "f"}); err != nil || v.fn.Version != 1 {
			t.Fatalf("resolve = %v, %v", v, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("resolve allocates %.1f times per call", allocs)
	}
	// A split with a routing key draws nothing either, and is sticky.
	p = benchPlatform(ebb.Split{{Version: 1, Percent: 50}, {Version: 2, Percent: 50}})
	tgt := gateway.Target{Name: "f", Key: "alice"}
	first, _ := p.resolve(tgt)
	allocs = testing.AllocsPerRun(1000, func() {
		if v, _ := p.resolve(tgt); v != first {
			t.Fatal("a routing key moved")
		}
	})
	if allocs != 0 {
		t.Fatalf("resolve of a split allocates %.1f times per call", allocs)
	}
}

// benchPlatform is a platform with one function "f" of two versions routed
// by s, without a store or processes: enough for resolve.
func benchPlatform(s ebb.Split) *Platform {
	f := &function{name: "f", versions: map[int]*version{}, traffic: ebb.Traffic{Route: s}}
	for n := 1; n <= 2; n++ {
		f.versions[n] = &version{fn: &ebb.Function{Spec: ebb.Spec{Name: "f"}, Version: n}}
	}
	f.latest = f.versions[2]
	f.compile()
	return &Platform{fns: map[string]*function{"f": f}}
}

func BenchmarkResolve(b *testing.B) {
	for _, c := range []struct {
		name string
		s    ebb.Split
		key  string
	}{
		{"single", ebb.Split{{Version: 1, Percent: 100}}, ""},
		{"split", ebb.Split{{Version: 1, Percent: 80}, {Version: 2, Percent: 20}}, ""},
		{"split-key", ebb.Split{{Version: 1, Percent: 80}, {Version: 2, Percent: 20}}, "user-1234"},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := benchPlatform(c.s)
			t := gateway.Target{Name: "f", Key: c.key}
			b.ReportAllocs()
			for b.Loop() {
				p.resolve(t)
			}
		})
	}
}

// TestOIPVersions: the Open Inference Protocol's versioned paths address a
// version (/v2/models/m/versions/2/...) or an alias (.../versions/prod/...)
// of an onnx function; two models of different datatypes identify them.
func TestOIPVersions(t *testing.T) {
	e := startONNX(t)
	for _, model := range []string{"identity_FP32.onnx", "identity_INT32.onnx"} {
		b, err := os.ReadFile("../onnx/testdata/" + model)
		if err != nil {
			t.Fatal(err)
		}
		dir := fnDir(t, "name: m\nruntime: onnx\nhandler: model.onnx\n", nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644)
		e.deploy(dir)
	}
	if _, err := e.c.SetAlias(context.Background(), "m", "prod", ebb.Split{{Version: 1, Percent: 100}}); err != nil {
		t.Fatal(err)
	}
	datatype := func(path string) (string, string) {
		code, body, h := e.do("GET", path, "", nil)
		var meta struct {
			Inputs []struct{ Datatype string } `json:"inputs"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &meta) != nil || len(meta.Inputs) != 1 {
			t.Fatalf("GET %s = %d %s", path, code, body)
		}
		return meta.Inputs[0].Datatype, h.Get("Ebb-Version")
	}
	for path, want := range map[string]string{
		"/v2/models/m":                "INT32", // the route: the newest
		"/v2/models/m/versions/1":     "FP32",
		"/v2/models/m/versions/2":     "INT32",
		"/v2/models/m/versions/prod":  "FP32",
		"/v2/models/m/versions/prod/": "FP32",
	} {
		if dt, ev := datatype(path); dt != want || (want == "FP32") != (ev == "1") {
			t.Errorf("GET %s: input datatype %s (Ebb-Version %s), want %s", path, dt, ev, want)
		}
	}
	for path, c := range map[string]struct{ req, version string }{
		"/v2/models/m/versions/1/infer":    {`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1.5,2.5]}]}`, "1"},
		"/v2/models/m/versions/prod/infer": {`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1.5,2.5]}]}`, "1"},
		"/v2/models/m/versions/2/infer":    {`{"inputs":[{"name":"x","datatype":"INT32","shape":[1,2],"data":[1,2]}]}`, "2"},
		"/v2/models/m/infer":               {`{"inputs":[{"name":"x","datatype":"INT32","shape":[1,2],"data":[3,4]}]}`, "2"},
	} {
		code, body, h := e.do("POST", path, c.req, nil)
		if code != 200 || !strings.Contains(body, `"outputs"`) || h.Get("Ebb-Version") != c.version {
			t.Errorf("POST %s = %d %s (Ebb-Version %q), want version %s's answer", path, code, body, h.Get("Ebb-Version"), c.version)
		}
	}
	// The server metadata, which clients read first, in the spec's shape.
	code, body, _ := e.do("GET", "/v2", "", nil)
	var meta struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &meta) != nil || meta.Name != "ebb" || meta.Version == "" || meta.Extensions == nil {
		t.Errorf("GET /v2 = %d %s, want {name, version, extensions}", code, body)
	}
	code, body, _ = e.do("POST", "/v2/models/m/versions/7/infer", `{}`, nil)
	if code != 404 || !strings.Contains(body, `"error"`) || !strings.Contains(body, "version or alias") {
		t.Errorf("an unknown version = %d %s, want the protocol's 404 naming it", code, body)
	}
}

// TestOIPShadow: a shadow of an onnx function mirrors inference requests
// (buffered, proxied to the shadow version after the caller has its
// answer) and compares the answers tensor by tensor.
func TestOIPShadow(t *testing.T) {
	e := startONNX(t)
	ctx := context.Background()
	deployModel := func(model string, opt api.DeployOptions) {
		b, err := os.ReadFile("../onnx/testdata/" + model)
		if err != nil {
			t.Fatal(err)
		}
		dir := fnDir(t, "name: m\nruntime: onnx\nhandler: model.onnx\n", nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644)
		e.deployWith(dir, opt)
	}
	deployModel("identity_FP32.onnx", api.DeployOptions{})
	deployModel("identity_FP32.onnx", api.DeployOptions{NoTraffic: true})   // 2: the same answers
	deployModel("cast_FP32_INT32.onnx", api.DeployOptions{NoTraffic: true}) // 3: integers
	req := `{"inputs":[{"name":"x","datatype":"FP32","shape":[2,3],"data":[1,2,3,4,5,6.5]}]}`
	wait := func(n uint64) *shadowReport {
		var rep *shadowReport
		waitFor(t, "the mirrors to be compared", 60*time.Second, func() bool {
			r, err := e.p.ShadowReport(ctx, "m")
			if err != nil {
				t.Fatal(err)
			}
			rep = r
			return r.Mirrored+r.Dropped >= n
		})
		return rep
	}
	for _, c := range []struct {
		version     int
		equal, diff uint64
	}{{2, 20, 0}, {3, 0, 20}} {
		if _, err := e.c.SetShadow(ctx, "m", ebb.Shadow{Version: c.version, Percent: 100}); err != nil {
			t.Fatal(err)
		}
		for range 20 {
			code, body, h := e.do("POST", "/v2/models/m/infer", req, nil)
			if code != 200 || h.Get("Ebb-Version") != "1" || !strings.Contains(body, `"FP32"`) {
				t.Fatalf("infer with a shadow = %d %s (Ebb-Version %s), want version 1's answer", code, body, h.Get("Ebb-Version"))
			}
		}
		rep := wait(20)
		if rep.Mirrored != 20 || rep.Equal != c.equal || rep.Differ != c.diff || rep.ShadowErrors != 0 {
			t.Fatalf("shadow of version %d: %+v, want %d equal and %d differing", c.version, rep, c.equal, c.diff)
		}
		if c.diff > 0 && (len(rep.Examples) == 0 || !strings.HasPrefix(rep.Examples[0].Path, `$.outputs["y"]`)) {
			t.Fatalf("shadow of version %d: examples %+v, want the differing tensor named", c.version, rep.Examples)
		}
	}
}

// TestHTTPShadowRequestCopy: the shadow of an http function gets the same
// method, path, query, headers and body, less credentials (here the
// function's own Authorization on a public URL) and the caller's trace
// context (a shadow copy is not part of the caller's trace).
func TestHTTPShadowRequestCopy(t *testing.T) {
	e := start(t, "", func(c *Config) { c.RequireAuth = true })
	ctx := context.Background()
	dir := fnDir(t, "name: web\nruntime: http\nhandler: ./server\nfunction_url: {auth: none}\n", map[string]string{"server": "@httpfn"})
	e.deploy(dir)
	e.deployWith(dir, api.DeployOptions{NoTraffic: true})
	if _, err := e.c.SetShadow(ctx, "web", ebb.Shadow{Version: 2, Percent: 100}); err != nil {
		t.Fatal(err)
	}
	// Both requests differ between primary and shadow only where they must:
	// the request id (every invocation has its own) and the credential.
	code, body, _ := e.do("POST", "/fn/web/echo?q=1", "hello", map[string]string{"X-Test": "t1", "Authorization": "-"})
	if code != 200 || !strings.Contains(body, `"body":"hello"`) {
		t.Fatalf("POST /fn/web/echo = %d %s", code, body)
	}
	code, body, _ = e.do("GET", "/fn/web/headers", "", map[string]string{"Authorization": "Bearer the-function's-own", "Traceparent": callerParent})
	if code != 200 || !strings.Contains(body, "the-function's-own") || !strings.Contains(body, callerParent) {
		t.Fatalf("GET /fn/web/headers = %d %s", code, body)
	}
	var rep *shadowReport
	waitFor(t, "both mirrors compared", 30*time.Second, func() bool {
		var err error
		rep, err = e.p.ShadowReport(ctx, "web")
		return err == nil && rep.Mirrored == 2
	})
	if rep.Differ != 2 || len(rep.Examples) != 2 {
		t.Fatalf("report = %+v", rep)
	}
	paths := map[string]bool{}
	for _, ex := range rep.Examples {
		paths[ex.Path] = true
		if strings.Contains(ex.Shadow, "the-function's-own") {
			t.Errorf("the shadow received the caller's credential: %s", ex.Shadow)
		}
		if strings.Contains(ex.Shadow, callerTrace) {
			t.Errorf("the shadow copy joined the caller's trace: %s", ex.Shadow)
		}
	}
	if !paths["$.request_id"] || !paths["$.header.Authorization"] {
		t.Fatalf("first differences %v, want $.request_id (all else equal) and $.header.Authorization (stripped)", paths)
	}
}
