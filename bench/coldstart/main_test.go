package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/bench/internal/latency"
)

// fakeEbb imitates the two endpoints the benchmark uses. An invoke on a
// function with no instances is a cold start and leaves one instance; the
// instance goes away after idlePolls status requests, standing in for
// idle_timeout.
type fakeEbb struct {
	idlePolls      int    // status polls before an idle instance stops; <0 never
	omitInstances  bool   // status reply without the "instances" field
	invokeStatus   int    // 0 means 200
	coldHeader     string // "" means tell the truth; "-" means omit the header
	alwaysCold     bool   // report every invoke as cold
	wantAuthHeader string // if set, requests without it get 401

	mu        sync.Mutex // guards instances, polls, invokes
	instances int
	polls     int
	invokes   int
}

func (f *fakeEbb) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/functions/{name}", func(w http.ResponseWriter, r *http.Request) {
		if !f.authorized(w, r) {
			return
		}
		f.mu.Lock()
		n := f.instances
		if n > 0 && f.idlePolls >= 0 {
			f.polls++
			if f.polls > f.idlePolls {
				f.instances, f.polls = 0, 0
			}
		}
		f.mu.Unlock()
		if f.omitInstances {
			fmt.Fprintf(w, `{"name":%q,"version":1}`, r.PathValue("name"))
			return
		}
		items := make([]string, n)
		for i := range items {
			items[i] = fmt.Sprintf(`{"id":"i%d","phase":"idle"}`, i)
		}
		fmt.Fprintf(w, `{"name":%q,"version":1,"instances":[%s]}`, r.PathValue("name"), strings.Join(items, ","))
	})
	invoke := func(w http.ResponseWriter, r *http.Request) {
		if !f.authorized(w, r) {
			return
		}
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		cold := f.instances == 0 || f.alwaysCold
		if f.instances == 0 {
			f.instances = 1
		}
		f.polls = 0
		f.invokes++
		f.mu.Unlock()
		switch f.coldHeader {
		case "":
			w.Header().Set("Ebb-Cold-Start", fmt.Sprint(cold))
		case "-":
		default:
			w.Header().Set("Ebb-Cold-Start", f.coldHeader)
		}
		if f.invokeStatus != 0 && f.invokeStatus != http.StatusOK {
			w.WriteHeader(f.invokeStatus)
			io.WriteString(w, `{"errorType":"Overloaded","errorMessage":"too many requests"}`)
			return
		}
		w.Write(body)
	}
	mux.HandleFunc("POST /v1/functions/{name}/invoke", invoke)
	mux.HandleFunc("POST /fn/{name}/echo", invoke)
	return mux
}

func (f *fakeEbb) authorized(w http.ResponseWriter, r *http.Request) bool {
	if f.wantAuthHeader != "" && r.Header.Get("Authorization") != f.wantAuthHeader {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return false
	}
	return true
}

func testConfig(url string) config {
	cfg := defaultConfig()
	cfg.URL = url
	cfg.Fn = "hello-go"
	cfg.APIKey = ""
	cfg.Rounds = 5
	cfg.PollEvery = time.Millisecond
	cfg.ZeroTimeout = 2 * time.Second
	cfg.RequestTimeout = 5 * time.Second
	return cfg
}

func TestRunCold(t *testing.T) {
	tests := []struct {
		name       string
		fake       *fakeEbb
		apiKey     string
		path       string
		wantOK     bool
		wantErr    string // substring; "" means no error
		wantResult string // substring of the RESULT line
	}{
		{name: "every round cold", fake: &fakeEbb{idlePolls: 2}, wantOK: true, wantResult: "cold=5 not_cold=0"},
		{name: "api key sent", fake: &fakeEbb{idlePolls: 1, wantAuthHeader: "Bearer k1"}, apiKey: "k1", wantOK: true, wantResult: "cold=5 not_cold=0"},
		{name: "function URL", fake: &fakeEbb{idlePolls: 1}, path: "/echo", wantOK: true, wantResult: "cold=5 not_cold=0"},
		{name: "function URL path unknown", fake: &fakeEbb{idlePolls: 1}, path: "/nope", wantErr: "404"},
		{name: "api key missing", fake: &fakeEbb{idlePolls: 1, wantAuthHeader: "Bearer k1"}, wantErr: "401"},
		{name: "warm answers are counted", fake: &fakeEbb{idlePolls: 1, coldHeader: "false"}, wantOK: false, wantResult: "cold=0 not_cold=5"},
		{name: "non-200 aborts", fake: &fakeEbb{idlePolls: 1, invokeStatus: http.StatusTooManyRequests}, wantErr: "429"},
		{name: "missing cold header aborts", fake: &fakeEbb{idlePolls: 1, coldHeader: "-"}, wantErr: "Ebb-Cold-Start"},
		{name: "bad cold header aborts", fake: &fakeEbb{idlePolls: 1, coldHeader: "yes"}, wantErr: "Ebb-Cold-Start"},
		{name: "status without instances aborts", fake: &fakeEbb{idlePolls: 1, omitInstances: true}, wantErr: `no "instances" field`},
		{name: "never scales to zero", fake: &fakeEbb{idlePolls: -1}, wantErr: "still 1 after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.fake.handler())
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.APIKey = tt.apiKey
			cfg.Path = tt.path
			cfg.ZeroTimeout = 200 * time.Millisecond
			var out strings.Builder
			ok, err := run(context.Background(), cfg, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got error %v, want one containing %q\noutput:\n%s", err, tt.wantErr, out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("run: got error %v, want nil\noutput:\n%s", err, out.String())
			}
			if ok != tt.wantOK {
				t.Errorf("run: got ok=%v, want %v\noutput:\n%s", ok, tt.wantOK, out.String())
			}
			result := resultLine(t, out.String())
			if !strings.Contains(result, tt.wantResult) || !strings.HasPrefix(result, "RESULT mode=cold fn=hello-go rounds=5 ") {
				t.Errorf("RESULT line: got %q, want mode=cold fn=hello-go rounds=5 and %q", result, tt.wantResult)
			}
		})
	}
}

func TestRunColdWaitsForZeroBeforeEachRound(t *testing.T) {
	fake := &fakeEbb{idlePolls: 3}
	srv := httptest.NewServer(fake.handler())
	defer srv.Close()
	cfg := testConfig(srv.URL)
	var out strings.Builder
	ok, err := run(context.Background(), cfg, &out)
	if err != nil || !ok {
		t.Fatalf("run: got ok=%v err=%v, want ok\n%s", ok, err, out.String())
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.invokes != cfg.Rounds {
		t.Errorf("invokes: got %d, want %d (one per round)", fake.invokes, cfg.Rounds)
	}
}

func TestRunWarm(t *testing.T) {
	tests := []struct {
		name       string
		fake       *fakeEbb
		wantOK     bool
		wantResult string
	}{
		{name: "warm after the first", fake: &fakeEbb{idlePolls: -1}, wantOK: true, wantResult: "n=5 "},
		{name: "cold starts are reported", fake: &fakeEbb{idlePolls: -1, alwaysCold: true}, wantOK: false, wantResult: "cold=5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.fake.handler())
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.Warm = true
			var out strings.Builder
			ok, err := run(context.Background(), cfg, &out)
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			if ok != tt.wantOK {
				t.Errorf("run: got ok=%v, want %v\n%s", ok, tt.wantOK, out.String())
			}
			result := resultLine(t, out.String())
			if !strings.HasPrefix(result, "RESULT mode=warm ") || !strings.Contains(result, tt.wantResult) {
				t.Errorf("RESULT line: got %q, want mode=warm and %q", result, tt.wantResult)
			}
		})
	}
}

func TestRunThroughput(t *testing.T) {
	tests := []struct {
		name       string
		fake       *fakeEbb
		wantOK     bool
		wantErr    string
		wantResult string
	}{
		{name: "all succeed", fake: &fakeEbb{idlePolls: -1}, wantOK: true, wantResult: "clients=4 duration_s=0.1 "},
		{name: "failures make it fail", fake: &fakeEbb{idlePolls: -1, invokeStatus: http.StatusBadGateway}, wantErr: "warm up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.fake.handler())
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.Warm = true
			cfg.Clients = 4
			cfg.Warmup = 20 * time.Millisecond
			cfg.Duration = 100 * time.Millisecond
			var out strings.Builder
			ok, err := run(context.Background(), cfg, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			if ok != tt.wantOK {
				t.Errorf("run: got ok=%v, want %v\n%s", ok, tt.wantOK, out.String())
			}
			result := resultLine(t, out.String())
			if !strings.HasPrefix(result, "RESULT mode=throughput ") || !strings.Contains(result, tt.wantResult) || strings.Contains(result, " requests=0 ") {
				t.Errorf("RESULT line: got %q, want mode=throughput, %q and some requests", result, tt.wantResult)
			}
		})
	}
}

func TestThroughputCountsFailuresInWindow(t *testing.T) {
	// Failures that start after a clean warm-up must still fail the run.
	var mu sync.Mutex // guards calls
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Ebb-Cold-Start", "false")
		if n > 3 && n%2 == 0 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "{}")
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.Warm = true
	cfg.Clients = 1
	cfg.Warmup = 0
	cfg.Duration = 50 * time.Millisecond
	c := newClient(cfg)
	defer c.close()
	rep, err := closedLoop(context.Background(), c, 2, cfg.Duration)
	if err != nil {
		t.Fatalf("closedLoop: %v", err)
	}
	if rep.Errors == 0 || rep.FirstErr == nil || !strings.Contains(rep.FirstErr.Error(), "500") {
		t.Errorf("closedLoop: got %d errors (first %v), want some 500s", rep.Errors, rep.FirstErr)
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
			cfg := testConfig("http://127.0.0.1:8080")
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
