package platform

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads /metrics as Prometheus text: each sample's value by its
// series ("name{label="value",…}", labels as the server orders them).
func scrape(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	code, body, hdr := e.do("GET", "/metrics", "", nil)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics = %d %q", code, hdr.Get("Content-Type"))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q is not a sample", line)
		}
		out[line[:i]] = v
	}
	return out
}

// invocationLines are the invocation log lines of fn, in order.
func invocationLines(t *testing.T, e *env, fn string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(e.logText(), "\n") {
		if !strings.Contains(line, `"msg":"invocation"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["function"] == fn {
			out = append(out, m)
		}
	}
	return out
}

// TestMetricsMoveExactly checks that billed milliseconds, GB-seconds,
// instance starts, start failures and stops, and the cold-start init
// histogram each move by exactly what the invocations made them.
func TestMetricsMoveExactly(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "meter", "memory: 256\nidle_timeout: 300ms\n"))
	bad := fnDir(t, "name: nostart\nruntime: exec\nhandler: ./bootstrap\n", map[string]string{"bootstrap": "#!/bin/sh\nexit 3\n"})
	if err := os.Chmod(filepath.Join(bad, "bootstrap"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.deploy(bad)
	before := scrape(t, e)

	const calls, sleepMS = 3, 20
	for i := range calls {
		if code, body, _ := e.invoke("meter", `{"sleep_ms":20}`); code != 200 {
			t.Fatalf("invoke %d = %d %s", i, code, body)
		}
	}
	if code, body, _ := e.invoke("nostart", `{}`); code != 502 || decode(t, body)["errorType"] != "Runtime.ExitError" {
		t.Errorf("invoke nostart = %d %s, want 502 Runtime.ExitError", code, body)
	}
	// The idle instance stops after its idle timeout.
	waitFor(t, "meter's instance to stop when idle", 30*time.Second, func() bool { return e.instances("meter") == 0 })
	after := scrape(t, e)
	delta := func(series string) float64 { return after[series] - before[series] }

	lines := invocationLines(t, e, "meter")
	if len(lines) != calls {
		t.Fatalf("%d invocation lines for meter, want %d", len(lines), calls)
	}
	var billed, gbs, initMS float64
	colds := 0
	for _, l := range lines {
		b := l["billed_ms"].(float64)
		if b < sleepMS {
			t.Errorf("billed_ms %v for a handler that sleeps %d ms", b, sleepMS)
		}
		billed += b
		// The counter adds the same float64s in the same order.
		gbs += l["gb_seconds"].(float64)
		if want := b / 1000 * 256 / 1024; l["gb_seconds"] != want {
			t.Errorf("gb_seconds %v for %v billed ms at 256 MiB, want %v", l["gb_seconds"], b, want)
		}
		if l["cold_start"] == true {
			colds++
			initMS = l["init_ms"].(float64)
		}
	}
	if colds != 1 {
		t.Fatalf("%d cold starts among meter's invocations, want 1", colds)
	}
	for series, want := range map[string]float64{
		`ebb_billed_milliseconds_total{function="meter"}`:                billed,
		`ebb_gb_seconds_total{function="meter"}`:                         gbs,
		`ebb_instance_starts_total{function="meter"}`:                    1,
		`ebb_instance_stops_total{function="meter",reason="idle"}`:       1,
		`ebb_cold_starts_total{function="meter"}`:                        1,
		`ebb_cold_start_init_seconds_count{function="meter"}`:            1,
		`ebb_instance_start_failures_total{function="nostart"}`:          1,
		`ebb_instance_starts_total{function="nostart"}`:                  0,
		`ebb_billed_milliseconds_total{function="nostart"}`:              0,
		`ebb_instance_start_failures_total{function="meter"}`:            0,
		`ebb_invocations_total{code="200",function="meter"}`:             calls,
		`ebb_invocation_duration_seconds_count{function="meter"}`:        calls,
		`ebb_cold_start_init_seconds_bucket{function="meter",le="+Inf"}`: 1,
	} {
		if got := delta(series); got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}
	// The log has the init time in ms to the microsecond; the histogram
	// has it to the nanosecond.
	if got := delta(`ebb_cold_start_init_seconds_sum{function="meter"}`); initMS <= 0 || math.Abs(got*1000-initMS) > 0.001 {
		t.Errorf("cold-start init sum moved by %v s, want the cold start's init_ms %v", got, initMS)
	}
}
