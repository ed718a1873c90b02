package platform

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/queue"
	"github.com/ebb-run/ebb/internal/usage"
)

// TestUsageTotalsEqualRecords runs N invocations of a real function (sync
// successes and handler errors, async jobs) and checks that the usage
// report's totals are the sums of the per-invocation records read back from
// the usage stream, over HTTP both.
func TestUsageTotalsEqualRecords(t *testing.T) {
	e := start(t, "", fastRetries)
	e.deploy(goFn(t, "metered", "memory: 256\n"))
	const ok, failed, async = 30, 7, 5
	for i := range ok {
		if code, body, _ := e.invoke("metered", fmt.Sprintf(`{"sleep_ms":%d}`, i%4)); code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
	}
	for range failed {
		if code, body, _ := e.invoke("metered", `{"error":"no"}`); code != 500 {
			t.Fatalf("failing invoke = %d %s", code, body)
		}
	}
	for range async {
		e.waitJob(e.submit("metered", `{}`), queue.StatusSucceeded)
	}

	code, body, _ := e.do("GET", "/v1/functions/metered/invocations?since=1h&limit=10000", "", nil)
	if code != 200 {
		t.Fatalf("invocations = %d %s", code, body)
	}
	var n, errs, cold int
	var billed int64
	var gbs float64
	triggers := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		var r usage.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		if r.Function != "metered" || r.Version != 1 || r.MemoryMiB != 256 {
			t.Errorf("record %+v", r)
		}
		n++
		if r.Error() {
			errs++
		}
		if r.Cold {
			cold++
		}
		billed += r.BilledMS
		gbs += r.GBSeconds
		triggers[string(r.Trigger)]++
	}
	if n != ok+failed+async || errs != failed || cold < 1 {
		t.Fatalf("%d records, %d errors, %d cold; want %d, %d, ≥1", n, errs, cold, ok+failed+async, failed)
	}
	if triggers["sync"] != ok+failed || triggers["async"] != async {
		t.Errorf("triggers %v, want %d sync and %d async", triggers, ok+failed, async)
	}

	code, body, _ = e.do("GET", "/v1/functions/metered/usage?since=1h&step=5m", "", nil)
	if code != 200 {
		t.Fatalf("usage = %d %s", code, body)
	}
	var rep usage.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Invocations != uint64(n) || rep.Errors != uint64(errs) || rep.ColdStarts != uint64(cold) ||
		rep.BilledMS != billed || math.Abs(rep.GBSeconds-gbs) > 1e-5 {
		t.Errorf("usage totals %+v; records: %d invocations, %d errors, %d cold, %d ms, %.6f GB-s", rep.Totals, n, errs, cold, billed, gbs)
	}
	if rep.Triggers["sync"] != uint64(ok+failed) || rep.Triggers["async"] != async {
		t.Errorf("usage triggers %v", rep.Triggers)
	}
	if rep.Peak < 1 || rep.BusySeconds <= 0 || rep.Duration.P50 <= 0 || rep.StepSeconds != 300 || len(rep.Series) < 12 || len(rep.Series) > 13 {
		t.Errorf("peak %d, busy %v, p50 %v, step %d, %d points", rep.Peak, rep.BusySeconds, rep.Duration.P50, rep.StepSeconds, len(rep.Series))
	}
	var sum uint64
	for _, p := range rep.Series {
		sum += p.Invocations
	}
	if sum != rep.Invocations {
		t.Errorf("the series sums to %d invocations, the total is %d", sum, rep.Invocations)
	}

	// The cost of the same traffic: a month of it, priced from the records'
	// billed time at the function's memory.
	code, body, _ = e.do("GET", "/v1/functions/metered/cost?since=1h", "", nil)
	if code != 200 {
		t.Fatalf("cost = %d %s", code, body)
	}
	var c struct {
		Observed struct {
			Invocations uint64  `json:"invocations"`
			Scale       float64 `json:"scale"`
		} `json:"observed"`
		Lambda struct {
			GBSeconds float64 `json:"gb_seconds"`
		} `json:"lambda"`
		ToDate struct {
			LambdaUSD *float64 `json:"lambda_usd"`
		} `json:"to_date"`
		Recommendation struct{ Choice string } `json:"recommendation"`
	}
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	wantGBs := float64(billed) / 1000 * 256 / 1024 * c.Observed.Scale
	if c.Observed.Invocations != uint64(n) || math.Abs(c.Lambda.GBSeconds-wantGBs) > 1e-6*wantGBs || c.ToDate.LambdaUSD == nil || c.Recommendation.Choice == "" {
		t.Errorf("cost %s; want %d invocations and %.3f GB-s a month", body, n, wantGBs)
	}

	code, body, _ = e.do("GET", "/v1/usage?since=1h", "", nil)
	if code != 200 || !strings.Contains(body, `"function": "metered"`) {
		t.Errorf("all usage = %d %s", code, body)
	}
}

// TestUsageIdleAndRestart: an idle warm instance is counted as idle
// memory-time, and usage written before a restart is read after it.
func TestUsageIdleAndRestart(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, func(c *Config) { c.IdleSampleEvery = 20 * time.Millisecond })
	e.deploy(goFn(t, "idler", "memory: 128\nidle_timeout: 1h\n"))
	if code, body, _ := e.invoke("idler", `{}`); code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	waitFor(t, "idle memory-time", 10*time.Second, func() bool {
		reps, err := e.p.Usage(t.Context(), usage.Query{Function: "idler", Since: time.Now().Add(-time.Hour)})
		return err == nil && reps[0].IdleMiBs >= 128*0.1 // 100 ms of an idle 128 MiB instance
	})
	e.stop()
	e = start(t, dir)
	reps, err := e.p.Usage(t.Context(), usage.Query{Function: "idler", Since: time.Now().Add(-time.Hour)})
	if err != nil || reps[0].Invocations != 1 || reps[0].IdleMiBs <= 0 {
		t.Fatalf("after a restart: %+v, %v; want the invocation and the idle time", reps, err)
	}
}

// TestUsageBadQueries: bad parameters are 400s naming the field; an unknown
// function is 404.
func TestUsageBadQueries(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "q", ""))
	for _, c := range []struct {
		path  string
		code  int
		field string
	}{
		{"/v1/functions/q/usage?since=yesterday", 400, "since"},
		{"/v1/functions/q/usage?step=30s", 400, "step"},
		{"/v1/functions/q/usage?since=400d&step=1m", 400, "step"},
		{"/v1/functions/q/usage?version=0", 400, "version"},
		{"/v1/functions/q/usage?since=1h&until=2h", 400, "since"},
		{"/v1/functions/q/invocations?limit=0", 400, "limit"},
		{"/v1/functions/nope/usage", 404, ""},
		{"/v1/functions/nope/invocations", 404, ""},
	} {
		code, body, _ := e.do("GET", c.path, "", nil)
		if code != c.code || !strings.Contains(body, c.field) {
			t.Errorf("GET %s = %d %s; want %d naming %q", c.path, code, body, c.code, c.field)
		}
	}
}
