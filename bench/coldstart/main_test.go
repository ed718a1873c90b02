package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/bench/internal/latency"
	"github.com/ebb-run/ebb/internal/bundle"
	ebbclient "github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/h1"
	"github.com/ebb-run/ebb/internal/platform"
)

// ebb is the real platform, in-process on a loopback port, with real
// instances of ebb's test functions: the benchmark is tested against what
// it measures, not an imitation of it.
type ebb struct {
	url string
	key string
	p   *platform.Platform
	c   *ebbclient.Client
}

func startEbb(t *testing.T, requireAuth bool) *ebb {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	logs := &ebbtest.Buffer{}
	p, key, err := platform.New(context.Background(), platform.Config{DataDir: t.TempDir(), BaseURL: url,
		Python: "/usr/bin/python3", RequireAuth: requireAuth, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		ln.Close()
		t.Fatalf("platform.New: %v", err)
	}
	srv := &h1.Server{Handler: p.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		p.Close(ctx)
		if t.Failed() {
			t.Logf("platform log:\n%s", logs.String())
		}
	})
	return &ebb{url: url, key: key, p: p, c: ebbclient.New(url, key)}
}

// deploy deploys one of ebb's test functions (lambdafn: an event function;
// httpfn: an http one) under name with the manifest lines extra.
func (e *ebb) deploy(t *testing.T, name, fn, extra string) {
	t.Helper()
	runtime, handler := "exec", "./bootstrap"
	if fn == "httpfn" {
		runtime, handler = "http", "./server"
	}
	bin := ebbtest.GoBinary(t, ebbtest.Go{Pkg: "./internal/platform/testdata/" + fn, Env: []string{"CGO_ENABLED=0"}})
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	manifest := "name: " + name + "\nruntime: " + runtime + "\nhandler: " + handler + "\n" + extra
	if err := os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, strings.TrimPrefix(handler, "./")), data, 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Deploy(context.Background(), name, &buf); err != nil {
		t.Fatalf("deploy %s: %v", name, err)
	}
}

// invocations returns name's invocation and cold-start counts as ebb
// reports them.
func (e *ebb) invocations(t *testing.T, name string) (uint64, uint64) {
	t.Helper()
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		t.Fatalf("status %s: %v", name, err)
	}
	return st.Invocations, st.ColdStarts
}

func testConfig(url, fn string) config {
	cfg := defaultConfig()
	cfg.URL = url
	cfg.Fn = fn
	cfg.APIKey = ""
	cfg.Rounds = 3
	cfg.PollEvery = 5 * time.Millisecond
	cfg.ZeroTimeout = 30 * time.Second
	cfg.RequestTimeout = 30 * time.Second
	return cfg
}

func TestRunCold(t *testing.T) {
	e := startEbb(t, false)
	e.deploy(t, "cold", "lambdafn", "idle_timeout: 50ms\n")
	e.deploy(t, "web", "httpfn", "idle_timeout: 50ms\n")
	e.deploy(t, "fails", "lambdafn", "idle_timeout: 50ms\n")
	e.deploy(t, "pinned", "lambdafn", "min_instances: 1\n")
	tests := []struct {
		name, fn, path, payload string
		zeroTimeout             time.Duration
		wantErr                 string // substring; "" means no error
	}{
		{name: "every round cold", fn: "cold"},
		{name: "function URL", fn: "web", path: "/echo"},
		{name: "unknown function", fn: "nope", wantErr: "404"},
		{name: "non-200 aborts", fn: "fails", payload: `{"error":"boom"}`, wantErr: "500"},
		{name: "never scales to zero", fn: "pinned", zeroTimeout: 500 * time.Millisecond, wantErr: "still 1 after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(e.url, tt.fn)
			cfg.APIKey = e.key
			cfg.Path = tt.path
			if tt.payload != "" {
				cfg.Payload = tt.payload
			}
			if tt.zeroTimeout > 0 {
				cfg.ZeroTimeout = tt.zeroTimeout
			}
			var out strings.Builder
			ok, err := run(context.Background(), cfg, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got error %v, want one containing %q\noutput:\n%s", err, tt.wantErr, out.String())
				}
				return
			}
			if err != nil || !ok {
				t.Fatalf("run: got ok=%v err=%v, want ok\noutput:\n%s", ok, err, out.String())
			}
			result := resultLine(t, out.String())
			if !strings.HasPrefix(result, "RESULT mode=cold fn="+tt.fn+" rounds=3 cold=3 not_cold=0 ") {
				t.Errorf("RESULT line: got %q, want mode=cold fn=%s rounds=3 cold=3 not_cold=0", result, tt.fn)
			}
			// ebb agrees: every round was an invoke, and a cold start.
			if inv, cold := e.invocations(t, tt.fn); inv != 3 || cold != 3 {
				t.Errorf("ebb counted %d invocations, %d cold; want 3 and 3", inv, cold)
			}
		})
	}
}

func TestRunColdAPIKey(t *testing.T) {
	e := startEbb(t, true)
	e.deploy(t, "locked", "lambdafn", "idle_timeout: 50ms\n")
	cfg := testConfig(e.url, "locked")
	var out strings.Builder
	if _, err := run(context.Background(), cfg, &out); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("run without the key: %v, want a 401\n%s", err, out.String())
	}
	cfg.APIKey = e.key
	out.Reset()
	if ok, err := run(context.Background(), cfg, &out); err != nil || !ok {
		t.Fatalf("run with the key: ok=%v err=%v\n%s", ok, err, out.String())
	}
}

func TestRunWarm(t *testing.T) {
	e := startEbb(t, false)
	e.deploy(t, "warm", "lambdafn", "idle_timeout: 10m\n")
	cfg := testConfig(e.url, "warm")
	cfg.Warm = true
	cfg.Rounds = 5
	var out strings.Builder
	ok, err := run(context.Background(), cfg, &out)
	if err != nil || !ok {
		t.Fatalf("run: ok=%v err=%v\n%s", ok, err, out.String())
	}
	result := resultLine(t, out.String())
	if !strings.HasPrefix(result, "RESULT mode=warm fn=warm n=5 ") || !strings.HasSuffix(result, " cold=0") {
		t.Errorf("RESULT line: got %q, want mode=warm, n=5, cold=0", result)
	}
	// One unmeasured warm-up (the cold start) and the five measured.
	if inv, cold := e.invocations(t, "warm"); inv != 6 || cold != 1 {
		t.Errorf("ebb counted %d invocations, %d cold; want 6 and 1", inv, cold)
	}
}

func TestRunThroughput(t *testing.T) {
	e := startEbb(t, false)
	e.deploy(t, "many", "lambdafn", "idle_timeout: 10m\nmax_instances: 4\n")
	e.deploy(t, "fails", "lambdafn", "idle_timeout: 10m\n")
	tests := []struct {
		name, fn, payload string
		wantErr           string
	}{
		{name: "all succeed", fn: "many"},
		{name: "failures make it fail", fn: "fails", payload: `{"error":"boom"}`, wantErr: "warm up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(e.url, tt.fn)
			cfg.Warm = true
			cfg.Clients = 4
			cfg.Warmup = 100 * time.Millisecond
			cfg.Duration = 300 * time.Millisecond
			if tt.payload != "" {
				cfg.Payload = tt.payload
			}
			var out strings.Builder
			ok, err := run(context.Background(), cfg, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !ok {
				t.Fatalf("run: ok=%v err=%v\n%s", ok, err, out.String())
			}
			result := resultLine(t, out.String())
			if !strings.HasPrefix(result, "RESULT mode=throughput fn=many clients=4 duration_s=0.3 ") || strings.Contains(result, " requests=0 ") || !strings.Contains(result, " errors=0 ") {
				t.Errorf("RESULT line: got %q, want mode=throughput, 4 clients, some requests and no errors", result)
			}
		})
	}
}

func TestThroughputCountsFailuresInWindow(t *testing.T) {
	// Failures inside the measured window (no warm-up to catch them first)
	// must be counted.
	e := startEbb(t, false)
	e.deploy(t, "fails", "lambdafn", "idle_timeout: 10m\n")
	cfg := testConfig(e.url, "fails")
	cfg.Payload = `{"error":"boom"}`
	c := newClient(cfg)
	defer c.close()
	rep, err := closedLoop(context.Background(), c, 2, 200*time.Millisecond)
	if err != nil {
		t.Fatalf("closedLoop: %v", err)
	}
	if rep.Errors == 0 || len(rep.Latencies) != 0 || rep.FirstErr == nil || !strings.Contains(rep.FirstErr.Error(), "500") {
		t.Errorf("closedLoop: got %d errors, %d successes (first error %v), want only 500s", rep.Errors, len(rep.Latencies), rep.FirstErr)
	}
}

func resultLine(t *testing.T, out string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "RESULT ") {
		t.Fatalf("last line: got %q, want a RESULT line\n%s", last, out)
	}
	return last
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	twenty := ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 20", twenty, 50, 10 * time.Millisecond},
		{"p95 of 20", twenty, 95, 19 * time.Millisecond},
		{"p99 of 20 is the max", twenty, 99, 20 * time.Millisecond},
		{"p0 is the min", twenty, 0, 1 * time.Millisecond},
		{"p100 is the max", twenty, 100, 20 * time.Millisecond},
		{"p50 of 4", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := latency.Percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("%s: latency.Percentile(p%v): got %v, want %v", tt.name, tt.p, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*config)
		wantErr string
	}{
		{"defaults with a function", func(c *config) {}, ""},
		{"no function", func(c *config) { c.Fn = "" }, "-fn"},
		{"bad url", func(c *config) { c.URL = "127.0.0.1:8080" }, "-url"},
		{"payload not json", func(c *config) { c.Payload = "{" }, "-payload"},
		{"concurrent cold", func(c *config) { c.Clients = 4 }, "-c"},
		{"zero rounds", func(c *config) { c.Rounds = 0 }, "-n"},
		{"throughput without duration", func(c *config) { c.Warm, c.Clients, c.Duration = true, 8, 0 }, "-d"},
		{"throughput ok", func(c *config) { c.Warm, c.Clients = true, 32 }, ""},
		{"zero poll", func(c *config) { c.PollEvery = 0 }, "-poll"},
		{"relative path", func(c *config) { c.Path = "echo" }, "-path"},
		{"function URL path", func(c *config) { c.Path = "/echo" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig("http://127.0.0.1:8080", "hello-go")
			tt.mutate(&cfg)
			err := cfg.validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("validate: got %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("validate: got %v, want an error mentioning %s", err, tt.wantErr)
			}
		})
	}
}
