package cost

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestWorkedExample reproduces the worked example to the cent: 100,000
// requests a day of 500 ms at 2,048 MB and 1 vCPU, over a 30-day month.
func TestWorkedExample(t *testing.T) {
	w, err := ParseWhatIf("requests_per_day=100000,duration_ms=500,memory_mb=2048,vcpu=1")
	if err != nil {
		t.Fatal(err)
	}
	e, err := Price(w, Default(), Node{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(e)
	var got struct {
		Lambda struct {
			Monthly  float64 `json:"monthly_usd"`
			Compute  float64 `json:"compute_usd"`
			Requests float64 `json:"requests_usd"`
		} `json:"lambda"`
		CloudRun struct {
			Monthly float64 `json:"monthly_usd"`
		} `json:"cloud_run"`
		Dedicated struct {
			Monthly  float64 `json:"monthly_usd"`
			Instance string  `json:"instance"`
		} `json:"dedicated"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"lambda.monthly_usd", got.Lambda.Monthly, 50.70},
		{"lambda.compute_usd", got.Lambda.Compute, 50.10},
		{"lambda.requests_usd", got.Lambda.Requests, 0.60},
		{"cloud_run.monthly_usd", got.CloudRun.Monthly, 43.50},
		{"dedicated.monthly_usd", got.Dedicated.Monthly, 82.80},
	} {
		if c.got != c.want {
			t.Errorf("%s = %.4f, want %.2f", c.name, c.got, c.want)
		}
	}
	if got.Dedicated.Instance != "ml.m5.large" {
		t.Errorf("dedicated.instance = %q, want ml.m5.large", got.Dedicated.Instance)
	}
	r := Recommend(e, Needs{Shape: Shape{Kind: "unknown"}})
	if r.Choice != "Cloud Run" || !strings.Contains(strings.Join(r.Reasons, "\n"), "Lambda $50.70, Cloud Run $43.50, dedicated 1× ml.m5.large $82.80") {
		t.Errorf("recommendation %+v", r)
	}
}

func TestConcurrencyAndNode(t *testing.T) {
	w := Workload{Requests: 1e6, DurationMS: 100, MemoryMB: 1024, Concurrency: 10, BusySeconds: 50000, IdleMiBSeconds: 1024 * 3600}
	e, err := Price(w, Default(), Node{PerHour: 0.10, MemoryMiB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	// 100,000 handler-seconds; ten at a time would be 10,000 s, but the
	// requests overlapped only enough to keep an instance busy 50,000 s.
	if e.CloudRun.InstanceSeconds != 50000 {
		t.Errorf("instance seconds %v, want the measured busy 50000", e.CloudRun.InstanceSeconds)
	}
	// Node: $72 a month; busy 100,000 s × 1 GiB of 8 GiB × 2,592,000 s.
	if e.Ebb == nil || e.Ebb.NodeMonthlyUSD != 72 || e.Ebb.BusyUSD != 0.35 || e.Ebb.IdleUSD != 0.01 {
		t.Errorf("ebb = %+v; want node $72, busy $0.35, idle $0.01", e.Ebb)
	}
	w.BusySeconds = 0
	e, _ = Price(w, Default(), Node{})
	if e.CloudRun.InstanceSeconds != 10000 || e.Ebb != nil {
		t.Errorf("unknown busy time: %v instance seconds, ebb %+v", e.CloudRun.InstanceSeconds, e.Ebb)
	}
}

func TestSizing(t *testing.T) {
	e, err := Price(Workload{Requests: 1, DurationMS: 1, MemoryMB: 4096, PeakConcurrency: 10}, Default(), Node{})
	if err != nil {
		t.Fatal(err)
	}
	// 10 vCPU and 40 GiB: five m5.large ($0.575/h) beat three m5.xlarge
	// ($0.69/h) and one m5.4xlarge ($0.922/h).
	if e.Dedicated.Instance != "ml.m5.large" || e.Dedicated.Count != 5 {
		t.Errorf("sized %d× %s", e.Dedicated.Count, e.Dedicated.Instance)
	}
	_, err = Price(Workload{Requests: 1, DurationMS: 1, MemoryMB: 512 << 10}, Default(), Node{})
	if !errors.Is(err, ErrNoInstance) {
		t.Errorf("512 GiB per request: %v", err)
	}
	e, _ = Price(Workload{Requests: 1, DurationMS: 1, MemoryMB: 1024, GPU: true}, Default(), Node{})
	if e.Dedicated.Instance != "ml.g4dn.xlarge" {
		t.Errorf("GPU sized to %s", e.Dedicated.Instance)
	}
	if r := Recommend(e, Needs{GPU: true}); !strings.HasPrefix(r.Choice, "dedicated 1× ml.g4dn.xlarge") {
		t.Errorf("GPU recommendation %+v", r)
	}
}

func TestRecommend(t *testing.T) {
	steady := make([]float64, 48)
	for i := range steady {
		steady[i] = 1000 + float64(i%3)
	}
	if s := ShapeOf(steady); s.Kind != "constant" {
		t.Errorf("steady: %+v", s)
	}
	bursty := make([]float64, 48)
	bursty[3], bursty[20] = 500, 800
	if s := ShapeOf(bursty); s.Kind != "bursty" || s.Active != 0.04 {
		t.Errorf("bursty: %+v", s)
	}
	if s := ShapeOf(make([]float64, 48)); s.Kind != "idle" {
		t.Errorf("idle: %+v", s)
	}
	if s := ShapeOf(steady[:5]); s.Kind != "unknown" {
		t.Errorf("5 points: %+v", s)
	}

	// A busy constant workload: 20 requests a second of 200 ms all month.
	busy, _ := Price(Workload{Requests: 20 * 86400 * 30, DurationMS: 200, MemoryMB: 2048, PeakConcurrency: 6}, Default(), Node{})
	if r := Recommend(busy, Needs{Shape: ShapeOf(steady)}); !strings.HasPrefix(r.Choice, "dedicated") {
		t.Errorf("constant and busy: %+v (estimate %+v)", r, busy)
	}
	// Rare bursty traffic: serverless.
	rare, _ := Price(Workload{Requests: 3000, DurationMS: 200, MemoryMB: 2048}, Default(), Node{})
	if r := Recommend(rare, Needs{Shape: ShapeOf(bursty)}); r.Choice != "Cloud Run" {
		t.Errorf("rare and bursty: %+v", r)
	}
	// A tight p99 that cold starts break on bursty traffic: warm capacity.
	r := Recommend(rare, Needs{Shape: ShapeOf(bursty), P99TargetMS: 300, P99MS: 210, ColdStartP99MS: 900, ColdShare: 0.2})
	if !strings.Contains(r.Choice, "min_instances") || !strings.Contains(r.Reasons[0], "900 ms") {
		t.Errorf("p99 target: %+v", r)
	}
	// A model too large for Lambda.
	if r := Recommend(rare, Needs{ModelMB: 12000}); !strings.HasPrefix(r.Choice, "dedicated") {
		t.Errorf("12 GB model: %+v", r)
	}
	none, _ := Price(Workload{MemoryMB: 128}, Default(), Node{})
	if r := Recommend(none, Needs{}); !strings.Contains(r.Choice, "scaled to zero") {
		t.Errorf("no traffic: %+v", r)
	}
}

func TestOverride(t *testing.T) {
	p, err := Override(Default(), []byte(`{"as_of":"2026-11-01","cloud_run":{"per_million_requests":0.4}}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.AsOf != "2026-11-01" || p.CloudRun.PerMillionRequests != 0.4 || p.CloudRun.VCPUSecond != 0.000024 || len(p.Dedicated) == 0 {
		t.Errorf("override: %+v", p)
	}
	e, _ := Price(Workload{Requests: 3e6, DurationMS: 500, MemoryMB: 2048}, p, Node{})
	if e.CloudRun.MonthlyUSD != 44.70 {
		t.Errorf("with the request fee: %.2f, want 44.70", e.CloudRun.MonthlyUSD)
	}
	for _, bad := range []string{`{"lambda":{"gb_second":-1}}`, `{"lamda":{}}`, `{"dedicated":[{"name":"x"}]}`, `[`} {
		if _, err := Override(Default(), []byte(bad)); err == nil {
			t.Errorf("override %s accepted", bad)
		}
	}
}

func TestParseWhatIf(t *testing.T) {
	for _, bad := range []string{"", "requests_per_day=1", "requests_per_day=1,duration_ms=1,memory_mb=0",
		"requests_per_day=x,duration_ms=1,memory_mb=1", "requests_per_day=1,duration_ms=1,memory_mb=1,colour=red",
		"requests_per_day=1,requests_per_day=2,duration_ms=1,memory_mb=1", "requests_per_day=-1,duration_ms=1,memory_mb=1",
		"requests_per_day=1,duration_ms=1,memory_mb=1,concurrency=1.5", "requests_per_day=NaN,duration_ms=1,memory_mb=1",
		"requests_per_day=1,duration_ms=1,memory_mb=1,gpu=maybe"} {
		if _, err := ParseWhatIf(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	w, err := ParseWhatIf(" requests_per_day=10 , duration_ms=2,memory_mb=128,concurrency=4,gpu=true")
	if err != nil || w.Requests != 300 || w.Concurrency != 4 || !w.GPU {
		t.Errorf("%+v %v", w, err)
	}
}

// FuzzWhatIf: whatever the described workload, parsing and pricing it
// either fails with an error or gives finite, non-negative prices.
func FuzzWhatIf(f *testing.F) {
	f.Add("requests_per_day=100000,duration_ms=500,memory_mb=2048,vcpu=1")
	f.Add("requests_per_day=1e15,duration_ms=1e15,memory_mb=1e-300,concurrency=1000000,peak_concurrency=0")
	f.Add("requests_per_day=0,duration_ms=0,memory_mb=1,gpu=1")
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWhatIf(s)
		if err != nil {
			return
		}
		e, err := Price(w, Default(), Node{PerHour: 1, MemoryMiB: 1024})
		if err != nil {
			if !errors.Is(err, ErrNoInstance) {
				t.Fatalf("price %q: %v", s, err)
			}
			return
		}
		for _, v := range []float64{e.Lambda.MonthlyUSD, e.CloudRun.MonthlyUSD, e.Dedicated.MonthlyUSD, e.Ebb.MonthlyUSD} {
			if !(v >= 0) || v > 1e300 {
				t.Fatalf("price %q: %v in %+v", s, v, e)
			}
		}
		Recommend(e, Needs{})
	})
}
