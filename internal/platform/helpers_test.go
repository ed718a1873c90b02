package platform

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/h1"
	"github.com/ebb-run/ebb/internal/sandbox"
)

const python = "/usr/bin/python3"

// env is the whole platform running in-process on 127.0.0.1:0.
type env struct {
	t        testing.TB
	p        *Platform
	url      string
	c        *client.Client
	srv      *h1.Server
	dataDir  string
	adminKey string
	logs     *bytes.Buffer
	logMu    *sync.Mutex
}

type envOpt func(*Config)

// start runs a platform on a fresh (or given) data dir until the test ends.
func start(t testing.TB, dataDir string, opts ...envOpt) *env {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	e := &env{t: t, dataDir: dataDir, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	// Warm successful invocations take the fast log line, as under
	// `ebb serve`, into the same log.
	logs := lockedWriter{e.logMu, e.logs}
	cfg := Config{DataDir: dataDir, BaseURL: e.url, Python: python, MaxSyncPayload: 1 << 20,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)), InvocationLog: logs}
	for _, o := range opts {
		o(&cfg)
	}
	p, key, err := New(context.Background(), cfg)
	if err != nil {
		ln.Close()
		t.Fatalf("platform.New: %v", err)
	}
	e.p, e.adminKey = p, key
	// CI sets EBB_REQUIRE_SANDBOX=1: there every test runs its functions
	// sandboxed unless it turned the sandbox off itself.
	if cfg.Sandbox.Mode != sandbox.ModeOff && os.Getenv("EBB_REQUIRE_SANDBOX") == "1" && p.SandboxMode() != sandbox.ModeOn {
		p.Close(context.Background())
		ln.Close()
		t.Fatalf("EBB_REQUIRE_SANDBOX=1 but the platform runs functions with the sandbox %s", p.SandboxMode())
	}
	e.srv = &h1.Server{Handler: p.Handler()}
	go e.srv.Serve(ln)
	e.c = client.New(e.url, key)
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	if e.p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.p.Close(ctx)
	e.p = nil
	if e.t.Failed() {
		e.logMu.Lock()
		e.t.Logf("platform log:\n%s", tail(e.logs.String(), 4000))
		e.logMu.Unlock()
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// logText returns the platform's log so far.
func (e *env) logText() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

// deploy packs dir and deploys it, failing the test on error.
func (e *env) deploy(dir string) int {
	e.t.Helper()
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		e.t.Fatal(err)
	}
	name := manifestName(e.t, dir)
	rep, err := e.c.Deploy(context.Background(), name, &buf)
	if err != nil {
		e.t.Fatalf("deploy %s: %v", dir, err)
	}
	return rep.Version
}

func manifestName(t testing.TB, dir string) string {
	raw, err := os.ReadFile(filepath.Join(dir, "ebb.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "name:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no name in %s", dir)
	return ""
}

// invoke posts an event and returns status, body and headers.
func (e *env) invoke(name, payload string) (int, string, http.Header) {
	e.t.Helper()
	return e.do("POST", "/v1/functions/"+name+"/invoke", payload, nil)
}

func (e *env) do(method, path, body string, hdr map[string]string) (int, string, http.Header) {
	e.t.Helper()
	code, b, h, err := e.tryDo(method, path, body, hdr)
	if err != nil {
		e.t.Fatal(err)
	}
	return code, b, h
}

// goInvoke invokes name in a goroutine of its own (where the test may not
// fail) and sends "STATUS BODY", or the error, on the returned channel.
func (e *env) goInvoke(name, payload string) <-chan string {
	out := make(chan string, 1)
	go func() {
		code, body, _, err := e.tryDo("POST", "/v1/functions/"+name+"/invoke", payload, nil)
		if err != nil {
			out <- err.Error()
			return
		}
		out <- fmt.Sprint(code, " ", body)
	}()
	return out
}

// tryDo is do for goroutines other than the test's: it returns the error.
func (e *env) tryDo(method, path, body string, hdr map[string]string) (int, string, http.Header, error) {
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if e.adminKey != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+e.adminKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// servingAddr waits until out (ebb serve's JSON log so far) has the
// "ebb serving" line and returns the address in it. The tests run ebb serve
// on port 0, so the address is one it holds: a port picked free beforehand
// could be taken by another process (or another test's ebb) before ebb binds
// it. exited, closed when the process ends, fails the wait early.
func servingAddr(t testing.TB, out func() string, exited <-chan struct{}) string {
	t.Helper()
	var addr string
	waitFor(t, "ebb serve to report its address", 60*time.Second, func() bool {
		for _, line := range strings.Split(out(), "\n") {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ebb serving" && rec.Addr != "" {
				addr = rec.Addr
				return true
			}
		}
		select {
		case <-exited:
			t.Fatalf("ebb serve exited before serving:\n%s", tail(out(), 4000))
		default:
		}
		return false
	})
	return addr
}

// waitStatus polls name's status until cond holds, for up to 30 s.
func (e *env) waitStatus(name, what string, cond func(api.FunctionStatus) bool) {
	e.t.Helper()
	waitFor(e.t, what, 30*time.Second, func() bool {
		st, err := e.c.Status(context.Background(), name)
		if err != nil {
			e.t.Fatalf("status %s: %v", name, err)
		}
		return cond(*st)
	})
}

// gate is a file that held test-function requests ({"hold": path}) wait
// for: opening it ends them all. It lives in the function's own code
// directory, which a sandboxed instance sees (read-only, at /var/task) as
// an unsandboxed one does, so held tests run with the sandbox on; path is
// relative to it. It opens when the test ends too (before the platform
// stops), so that a failed test leaves nothing held.
type gate struct {
	t        testing.TB
	path     string // what the function is told: relative to its code
	hostPath string // where the test creates it
}

// codeDir is the host directory of name's current version's code, which
// its instances see at /var/task (read-only) when sandboxed.
func (e *env) codeDir(name string) string {
	e.t.Helper()
	e.p.mu.RLock()
	f := e.p.fns[name]
	var v *version
	if f != nil {
		v = f.route.single
	}
	e.p.mu.RUnlock()
	if v == nil {
		e.t.Fatalf("code of %s: no single routed version", name)
	}
	return v.codeDir
}

// newGate makes a gate for name's current version.
func (e *env) newGate(name string) *gate {
	e.t.Helper()
	codeDir := e.codeDir(name)
	var b [6]byte
	rand.Read(b[:])
	g := &gate{t: e.t, path: "gate-" + hex.EncodeToString(b[:])}
	g.hostPath = filepath.Join(codeDir, g.path)
	e.t.Cleanup(func() { os.Remove(g.hostPath) })
	e.t.Cleanup(func() { os.WriteFile(g.hostPath, nil, 0o644) })
	return g
}

func (g *gate) open() {
	g.t.Helper()
	if err := os.WriteFile(g.hostPath, nil, 0o644); err != nil {
		g.t.Fatal(err)
	}
}

func (e *env) instances(name string) int {
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		e.t.Fatalf("status %s: %v", name, err)
	}
	return len(st.Instances)
}

// idle counts name's instances that are ready and idle.
func (e *env) idle(name string) int {
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		e.t.Fatalf("status %s: %v", name, err)
	}
	n := 0
	for _, in := range st.Instances {
		if in.Phase == "idle" {
			n++
		}
	}
	return n
}

// testBinary builds the test function testdata/NAME (static, for the
// sandbox) once per test run.
func testBinary(t testing.TB, name string) string {
	t.Helper()
	return ebbtest.GoBinary(t, ebbtest.Go{Pkg: "./internal/platform/testdata/" + name, Env: []string{"CGO_ENABLED=0"}})
}

// fnDir writes a function directory: ebb.yaml plus files; "@lambdafn" and
// "@httpfn" as a file's content copy the built test binary.
func fnDir(t testing.TB, manifest string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if b, ok := strings.CutPrefix(body, "@"); ok {
			data, err := os.ReadFile(testBinary(t, b))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func goFn(t testing.TB, name, extra string) string {
	return fnDir(t, "name: "+name+"\nruntime: exec\nhandler: ./bootstrap\n"+extra, map[string]string{"bootstrap": "@lambdafn"})
}

func decode(t testing.TB, body string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return m
}

func needPython(t testing.TB) {
	if _, err := os.Stat(python); err != nil {
		t.Skip("Debian's /usr/bin/python3 is not installed")
	}
}

// deployRaw deploys dir under name and returns the raw status and body.
func deployRaw(t testing.TB, e *env, name, dir string) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	code, body, _ := e.do("PUT", "/v1/functions/"+name, buf.String(), nil)
	return code, body
}

// current returns the pool of the version that takes name's unqualified
// traffic (nil when it has none).
func (p *Platform) current(name string) *deployment {
	p.mu.RLock()
	defer p.mu.RUnlock()
	f := p.fns[name]
	if f == nil || f.route.single == nil {
		return nil
	}
	return f.route.single.dep.Load()
}
