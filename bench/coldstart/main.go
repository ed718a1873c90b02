// Command coldstart measures ebb's invoke latency from the client's side:
// cold starts (request arrival to response, with the function scaled to
// zero before every round), sequential warm invokes, and warm throughput
// with many concurrent clients.
//
//	go run ./bench/coldstart -url http://127.0.0.1:8080 -fn hello-go -n 20
//	go run ./bench/coldstart -fn hello-go -warm -n 1000
//	go run ./bench/coldstart -fn hello-go -warm -c 32 -d 10s
//	go run ./bench/coldstart -fn hello-http -path /echo -n 20
//
// It is honest by construction: a non-200 reply, a missing Ebb-Cold-Start
// header or a function that never scales to zero aborts the run, and a cold
// round that ebb answered warm is counted, reported and makes the exit status
// non-zero. The last line of output is a machine-readable RESULT line that
// bench/coldstart.sh turns into a table.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ebb-run/ebb/bench/internal/latency"
)

// config is one benchmark run; main fills it from flags.
type config struct {
	URL     string // ebb's base URL
	Fn      string // function name
	APIKey  string // sent as a bearer token when set
	Payload string // invoke body
	Path    string // when set, invoke through the function URL /fn/NAME+Path

	Rounds  int  // cold rounds, or sequential warm invokes
	Warm    bool // measure warm invokes instead of cold starts
	Clients int  // with Warm: >1 selects the throughput run

	Duration time.Duration // throughput: measured time
	Warmup   time.Duration // throughput: unmeasured time first, to scale up

	PollEvery      time.Duration // how often to ask whether instances are gone
	ZeroTimeout    time.Duration // how long a function may take to scale to zero
	RequestTimeout time.Duration // one HTTP request, cold start included
}

func defaultConfig() config {
	base := os.Getenv("EBB_URL")
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	return config{
		URL:            base,
		APIKey:         os.Getenv("EBB_API_KEY"),
		Payload:        `{"name":"bench"}`,
		Rounds:         20,
		Clients:        1,
		Duration:       10 * time.Second,
		Warmup:         2 * time.Second,
		PollEvery:      10 * time.Millisecond,
		ZeroTimeout:    60 * time.Second,
		RequestTimeout: 60 * time.Second,
	}
}

func (c config) validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case err != nil:
		return fmt.Errorf("parse -url: %w", err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("validate -url %q: want http(s)://host:port", c.URL)
	case c.Fn == "":
		return errors.New("validate -fn: a function name is required")
	case !json.Valid([]byte(c.Payload)):
		return fmt.Errorf("validate -payload: %q is not JSON", c.Payload)
	case c.Path != "" && !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("validate -path %q: want a path starting with /", c.Path)
	case c.Clients < 1:
		return fmt.Errorf("validate -c: %d, want at least 1", c.Clients)
	case c.Clients > 1 && !c.Warm:
		return errors.New("validate -c: concurrent clients only make sense with -warm; cold rounds are sequential by definition")
	case c.Clients == 1 && c.Rounds < 1:
		return fmt.Errorf("validate -n: %d, want at least 1", c.Rounds)
	case c.Clients > 1 && c.Duration <= 0:
		return fmt.Errorf("validate -d: %s, want a positive duration", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("validate -warmup: %s, want zero or more", c.Warmup)
	case c.PollEvery <= 0 || c.ZeroTimeout <= 0 || c.RequestTimeout <= 0:
		return errors.New("validate timeouts: -poll, -zero-timeout and -timeout must be positive")
	}
	return nil
}

// client talks to one function on one ebb server.
type client struct {
	invokeURL string
	statusURL string
	apiKey    string
	payload   []byte
	hc        *http.Client
}

func newClient(cfg config) *client {
	root := strings.TrimRight(cfg.URL, "/")
	status := root + "/v1/functions/" + url.PathEscape(cfg.Fn)
	invoke := status + "/invoke"
	if cfg.Path != "" {
		// http functions are not invoked with an event: their requests go
		// through the function URL, which reports cold starts the same way.
		invoke = root + "/fn/" + url.PathEscape(cfg.Fn) + cfg.Path
	}
	return &client{
		invokeURL: invoke,
		statusURL: status,
		apiKey:    cfg.APIKey,
		payload:   []byte(cfg.Payload),
		hc: &http.Client{
			Timeout: cfg.RequestTimeout,
			// Keep one idle connection per client goroutine so that warm
			// numbers measure ebb, not TCP handshakes.
			Transport: &http.Transport{
				MaxIdleConns:        cfg.Clients + 4,
				MaxIdleConnsPerHost: cfg.Clients + 4,
				IdleConnTimeout:     90 * time.Second,
				DisableCompression:  true,
			},
		},
	}
}

func (c *client) close() { c.hc.CloseIdleConnections() }

func (c *client) newRequest(ctx context.Context, method, u string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	return req, nil
}

// instances returns how many instances the function has now. A reply
// without an "instances" field is an error: treating it as zero would make
// every round look cold-eligible while measuring warm starts.
func (c *client) instances(ctx context.Context) (int, error) {
	req, err := c.newRequest(ctx, http.MethodGet, c.statusURL, nil)
	if err != nil {
		return 0, fmt.Errorf("build status request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("get function status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, fmt.Errorf("read function status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("get function status: %s: %s", resp.Status, snippet(body))
	}
	var st struct {
		Instances *[]json.RawMessage `json:"instances"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, fmt.Errorf("decode function status: %w", err)
	}
	if st.Instances == nil {
		return 0, fmt.Errorf("decode function status: no \"instances\" field in %s", snippet(body))
	}
	return len(*st.Instances), nil
}

// waitZero polls until the function has no instances.
func (c *client) waitZero(ctx context.Context, every, timeout time.Duration) error {
	pollCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	last := -1
	for {
		n, err := c.instances(pollCtx)
		switch {
		case err == nil && n == 0:
			return nil
		case err == nil:
			last = n
		case pollCtx.Err() == nil:
			return err
		}
		select {
		case <-pollCtx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("wait for zero instances: %w", ctx.Err())
			}
			return fmt.Errorf("wait for zero instances: still %d after %s (is idle_timeout short?)", last, timeout)
		case <-tick.C:
		}
	}
}

// invokeResult is one successful invocation as the client saw it.
type invokeResult struct {
	Latency time.Duration
	Cold    bool
}

// invoke times one POST to the invoke URL, from sending the request to having read
// the whole response. Anything but a 200 with a valid Ebb-Cold-Start header
// is an error.
func (c *client) invoke(ctx context.Context) (invokeResult, error) {
	req, err := c.newRequest(ctx, http.MethodPost, c.invokeURL, c.payload)
	if err != nil {
		return invokeResult{}, fmt.Errorf("build invoke request: %w", err)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return invokeResult{}, fmt.Errorf("invoke: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	if err != nil {
		return invokeResult{}, fmt.Errorf("read invoke response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return invokeResult{}, fmt.Errorf("invoke: %s: %s", resp.Status, snippet(body))
	}
	var cold bool
	switch h := resp.Header.Get("Ebb-Cold-Start"); h {
	case "true":
		cold = true
	case "false":
	default:
		return invokeResult{}, fmt.Errorf("invoke: Ebb-Cold-Start header is %q, want true or false", h)
	}
	return invokeResult{Latency: elapsed, Cold: cold}, nil
}

// coldReport summarises the cold rounds. Latencies holds only the rounds
// that ebb reported cold; NotCold counts the others.
type coldReport struct {
	Latencies []time.Duration
	NotCold   int
}

func runCold(ctx context.Context, c *client, cfg config, progress io.Writer) (coldReport, error) {
	var rep coldReport
	for i := range cfg.Rounds {
		if err := c.waitZero(ctx, cfg.PollEvery, cfg.ZeroTimeout); err != nil {
			return rep, fmt.Errorf("round %d: %w", i+1, err)
		}
		res, err := c.invoke(ctx)
		if err != nil {
			return rep, fmt.Errorf("round %d: %w", i+1, err)
		}
		state := "cold"
		if res.Cold {
			rep.Latencies = append(rep.Latencies, res.Latency)
		} else {
			rep.NotCold++
			state = "NOT COLD (ebb answered from a warm instance)"
		}
		fmt.Fprintf(progress, "round %2d: %8.2f ms  %s\n", i+1, latency.MS(res.Latency), state)
	}
	return rep, nil
}

// warmReport summarises sequential warm invokes.
type warmReport struct {
	Latencies []time.Duration
	Cold      int // invokes that were cold starts after all
}

func runWarm(ctx context.Context, c *client, cfg config) (warmReport, error) {
	// The first invoke may be a cold start; it warms the instance and is
	// not measured.
	if _, err := c.invoke(ctx); err != nil {
		return warmReport{}, fmt.Errorf("warm up: %w", err)
	}
	rep := warmReport{Latencies: make([]time.Duration, 0, cfg.Rounds)}
	for i := range cfg.Rounds {
		res, err := c.invoke(ctx)
		if err != nil {
			return rep, fmt.Errorf("invoke %d: %w", i+1, err)
		}
		if res.Cold {
			rep.Cold++
		}
		rep.Latencies = append(rep.Latencies, res.Latency)
	}
	return rep, nil
}

// throughputReport summarises the concurrent warm run.
type throughputReport struct {
	Latencies []time.Duration
	Elapsed   time.Duration
	Cold      int
	Errors    int
	FirstErr  error
}

func (r throughputReport) rps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(len(r.Latencies)) / r.Elapsed.Seconds()
}

// runThroughput runs cfg.Clients closed-loop clients for cfg.Warmup (not
// measured: the pool scales up here) and then cfg.Duration. Requests still
// in flight when the measured window closes are waited for and not counted,
// so the rate is completed requests over the window.
func runThroughput(ctx context.Context, c *client, cfg config) (throughputReport, error) {
	if cfg.Warmup > 0 {
		warm, err := closedLoop(ctx, c, cfg.Clients, cfg.Warmup)
		if err != nil {
			return throughputReport{}, err
		}
		if warm.Errors > 0 {
			return throughputReport{}, fmt.Errorf("warm up: %d of %d invokes failed, first: %w", warm.Errors, warm.Errors+len(warm.Latencies), warm.FirstErr)
		}
	}
	return closedLoop(ctx, c, cfg.Clients, cfg.Duration)
}

func closedLoop(ctx context.Context, c *client, clients int, d time.Duration) (throughputReport, error) {
	start := time.Now()
	end := start.Add(d)
	var (
		mu  sync.Mutex // guards rep
		rep throughputReport
		wg  sync.WaitGroup
	)
	for range clients {
		wg.Go(func() {
			var local []time.Duration
			var cold, errs int
			var firstErr error
			for ctx.Err() == nil && time.Now().Before(end) {
				res, err := c.invoke(ctx)
				if !time.Now().Before(end) {
					break
				}
				switch {
				case err != nil:
					errs++
					if firstErr == nil {
						firstErr = err
					}
				default:
					local = append(local, res.Latency)
					if res.Cold {
						cold++
					}
				}
			}
			mu.Lock()
			rep.Latencies = append(rep.Latencies, local...)
			rep.Cold += cold
			rep.Errors += errs
			if rep.FirstErr == nil {
				rep.FirstErr = firstErr
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("run clients: %w", err)
	}
	rep.Elapsed = d
	return rep, nil
}

// percentile uses the nearest-rank method on a sorted slice.

func snippet(b []byte) string {
	const limit = 300
	s := strings.TrimSpace(string(b))
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	return s
}

// run executes the benchmark cfg describes, writing a human summary and a
// final RESULT line to out. ok is false when the run completed but measured
// something other than what was asked for (a cold round that was warm).
func run(ctx context.Context, cfg config, out io.Writer) (ok bool, err error) {
	c := newClient(cfg)
	defer c.close()

	switch {
	case !cfg.Warm:
		fmt.Fprintf(out, "cold starts of %s: %d rounds, each after the function has zero instances\n", cfg.Fn, cfg.Rounds)
		rep, err := runCold(ctx, c, cfg, out)
		if err != nil {
			return false, err
		}
		lat := slices.Sorted(slices.Values(rep.Latencies))
		fmt.Fprintf(out, "cold: %d/%d   p50 %.2f ms   p95 %.2f ms   min %.2f ms   max %.2f ms   mean %.2f ms\n",
			len(lat), cfg.Rounds, latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 95)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)))
		if rep.NotCold > 0 {
			fmt.Fprintf(out, "FAIL: %d of %d rounds were not cold starts although the function had zero instances\n", rep.NotCold, cfg.Rounds)
		}
		fmt.Fprintf(out, "RESULT mode=cold fn=%s rounds=%d cold=%d not_cold=%d p50_ms=%.3f p95_ms=%.3f min_ms=%.3f max_ms=%.3f mean_ms=%.3f\n",
			cfg.Fn, cfg.Rounds, len(lat), rep.NotCold, latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 95)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)))
		return rep.NotCold == 0 && len(lat) > 0, nil

	case cfg.Clients == 1:
		fmt.Fprintf(out, "warm invokes of %s: %d sequential, one client\n", cfg.Fn, cfg.Rounds)
		rep, err := runWarm(ctx, c, cfg)
		if err != nil {
			return false, err
		}
		lat := slices.Sorted(slices.Values(rep.Latencies))
		fmt.Fprintf(out, "warm: p50 %.3f ms   p99 %.3f ms   min %.3f ms   max %.3f ms   mean %.3f ms   cold %d\n",
			latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 99)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)), rep.Cold)
		if rep.Cold > 0 {
			fmt.Fprintf(out, "FAIL: %d of %d sequential invokes were cold starts; the warm numbers include them\n", rep.Cold, cfg.Rounds)
		}
		fmt.Fprintf(out, "RESULT mode=warm fn=%s n=%d p50_ms=%.3f p99_ms=%.3f min_ms=%.3f max_ms=%.3f mean_ms=%.3f cold=%d\n",
			cfg.Fn, len(lat), latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 99)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)), rep.Cold)
		return rep.Cold == 0, nil

	default:
		fmt.Fprintf(out, "warm throughput of %s: %d clients, %s warm-up, %s measured\n", cfg.Fn, cfg.Clients, cfg.Warmup, cfg.Duration)
		rep, err := runThroughput(ctx, c, cfg)
		if err != nil {
			return false, err
		}
		lat := slices.Sorted(slices.Values(rep.Latencies))
		fmt.Fprintf(out, "throughput: %.1f req/s   p50 %.3f ms   p99 %.3f ms   requests %d   errors %d   cold %d\n",
			rep.rps(), latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 99)), len(lat), rep.Errors, rep.Cold)
		if rep.Errors > 0 {
			fmt.Fprintf(out, "FAIL: %d invokes failed, first: %v\n", rep.Errors, rep.FirstErr)
		}
		if rep.Cold > 0 {
			fmt.Fprintf(out, "note: %d cold starts happened in the measured window (pool still growing)\n", rep.Cold)
		}
		fmt.Fprintf(out, "RESULT mode=throughput fn=%s clients=%d duration_s=%.1f requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d cold=%d\n",
			cfg.Fn, cfg.Clients, rep.Elapsed.Seconds(), len(lat), rep.rps(), latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 99)), rep.Errors, rep.Cold)
		return rep.Errors == 0 && len(lat) > 0, nil
	}
}

func main() {
	cfg := defaultConfig()
	flag.StringVar(&cfg.URL, "url", cfg.URL, "ebb base URL (default $EBB_URL or http://127.0.0.1:8080)")
	flag.StringVar(&cfg.Fn, "fn", "", "function name (required)")
	flag.StringVar(&cfg.APIKey, "api-key", cfg.APIKey, "API key sent as a bearer token (default $EBB_API_KEY)")
	flag.StringVar(&cfg.Payload, "payload", cfg.Payload, "JSON event to invoke with")
	flag.StringVar(&cfg.Path, "path", "", "POST to the function URL /fn/NAME+PATH instead of the invoke API (for http functions)")
	flag.IntVar(&cfg.Rounds, "n", cfg.Rounds, "cold rounds, or sequential warm invokes with -warm")
	flag.BoolVar(&cfg.Warm, "warm", false, "measure warm invokes instead of cold starts")
	flag.IntVar(&cfg.Clients, "c", cfg.Clients, "with -warm: concurrent clients; more than 1 measures throughput for -d")
	flag.DurationVar(&cfg.Duration, "d", cfg.Duration, "with -warm -c N: measured duration")
	flag.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "with -warm -c N: unmeasured load first, so the pool can scale up")
	flag.DurationVar(&cfg.PollEvery, "poll", cfg.PollEvery, "how often to check whether the function has scaled to zero")
	flag.DurationVar(&cfg.ZeroTimeout, "zero-timeout", cfg.ZeroTimeout, "give up when the function has not scaled to zero after this long")
	flag.DurationVar(&cfg.RequestTimeout, "timeout", cfg.RequestTimeout, "timeout of one HTTP request")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "coldstart: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "coldstart: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "coldstart: %v\n", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}
