package main

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
)

// TestCLICostWhatIf runs the worked example through the binary: the JSON
// fields the issue names, to the cent.
func TestCLICostWhatIf(t *testing.T) {
	s := &server{}
	var err error
	if s.bin, err = buildEbb(); err != nil {
		t.Fatal(err)
	}
	out := s.ebbOK(t, "cost", "--json", "--what-if", "requests_per_day=100000,duration_ms=500,memory_mb=2048,vcpu=1")
	var got struct {
		Recommendation struct {
			Choice  string
			Reasons []string
		}
	}
	// The field names are the contract: read them raw.
	var raw map[string]map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("cost --json printed %q: %v", out, err)
	}
	json.Unmarshal([]byte(out), &got)
	want := map[string]map[string]any{
		"lambda":    {"monthly_usd": 50.70, "compute_usd": 50.10, "requests_usd": 0.60},
		"cloud_run": {"monthly_usd": 43.50},
		"dedicated": {"monthly_usd": 82.80, "instance": "ml.m5.large"},
	}
	for obj, fields := range want {
		for k, v := range fields {
			if raw[obj][k] != v {
				t.Errorf("%s.%s = %v, want %v", obj, k, raw[obj][k], v)
			}
		}
	}
	if got.Recommendation.Choice == "" || len(got.Recommendation.Reasons) == 0 {
		t.Errorf("no recommendation in %s", out)
	}
	text := s.ebbOK(t, "cost", "--what-if", "requests_per_day=100000,duration_ms=500,memory_mb=2048,vcpu=1")
	for _, w := range []string{"Lambda           $50.70", "compute $50.10", "requests $0.60", "Cloud Run        $43.50", "ml.m5.large ×1   $82.80", "recommendation: "} {
		if !strings.Contains(text, w) {
			t.Errorf("cost printed no %q:\n%s", w, text)
		}
	}
	s.ebbFails(t, 1, `unknown key "colour"`, "cost", "--what-if", "requests_per_day=1,duration_ms=1,memory_mb=1,colour=red")
	s.ebbFails(t, 1, "memory_mb missing", "cost", "--what-if", "requests_per_day=1,duration_ms=1")
	prices := t.TempDir() + "/prices.json"
	os.WriteFile(prices, []byte(`{"cloud_run":{"per_million_requests":0.40}}`), 0o600)
	if out := s.ebbOK(t, "cost", "--prices", prices, "--what-if", "requests_per_day=100000,duration_ms=500,memory_mb=2048"); !strings.Contains(out, "Cloud Run        $44.70") {
		t.Errorf("with the request fee:\n%s", out)
	}
	os.WriteFile(prices, []byte(`{"lambda":{"gb_second":"free"}}`), 0o600)
	s.ebbFails(t, 1, "prices.json", "cost", "--prices", prices, "--what-if", "requests_per_day=1,duration_ms=1,memory_mb=1")
}

// TestCLIUsageAndCost prices observed traffic: ebb usage shows what ran,
// and ebb cost scales it to a month.
func TestCLIUsageAndCost(t *testing.T) {
	if _, err := os.Stat(python3); err != nil {
		t.Skip("Debian's /usr/bin/python3 is not installed")
	}
	s := startServe(t)
	s.deploy(t, map[string]string{"ebb.yaml": "name: priced\nruntime: python\nhandler: app.handler\nmemory: 512\n", "app.py": cliApp})
	for range 4 {
		s.ebbOK(t, "invoke", "priced", "-d", `{"n": 1}`)
	}
	var u struct {
		Invocations uint64            `json:"invocations"`
		ColdStarts  uint64            `json:"cold_starts"`
		Triggers    map[string]uint64 `json:"triggers"`
		Series      []struct{ Invocations uint64 }
	}
	if err := json.Unmarshal([]byte(s.ebbOK(t, "usage", "priced", "--json", "--since", "1h")), &u); err != nil {
		t.Fatal(err)
	}
	if u.Invocations != 4 || u.ColdStarts != 1 || u.Triggers["sync"] != 4 || len(u.Series) == 0 {
		t.Errorf("usage = %+v", u)
	}
	text := s.ebbOK(t, "usage", "priced", "--since", "1h", "--series")
	for _, w := range []string{"invocations       4 (sync 4)", "cold starts       1", "TIME"} {
		if !strings.Contains(text, w) {
			t.Errorf("usage printed no %q:\n%s", w, text)
		}
	}

	var c struct {
		Workload struct {
			Requests float64 `json:"requests"`
			MemoryMB float64 `json:"memory_mb"`
		} `json:"workload"`
		Observed struct {
			Invocations uint64  `json:"invocations"`
			Scale       float64 `json:"scale"`
		} `json:"observed"`
		Lambda struct {
			RequestsUSD float64 `json:"requests_usd"`
		} `json:"lambda"`
		Ebb *struct {
			NodeMonthlyUSD float64 `json:"node_monthly_usd"`
		} `json:"ebb"`
	}
	if err := json.Unmarshal([]byte(s.ebbOK(t, "cost", "priced", "--since", "2h", "--json", "--node-cost-per-hour", "0.5")), &c); err != nil {
		t.Fatal(err)
	}
	// Two hours (rounded out to whole minutes) scaled to 30 days: ×360.
	if c.Observed.Invocations != 4 || math.Abs(c.Observed.Scale-360) > 3 || math.Abs(c.Workload.Requests-4*c.Observed.Scale) > 1e-6 ||
		c.Workload.MemoryMB != 512 || c.Ebb == nil || c.Ebb.NodeMonthlyUSD != 360 {
		t.Errorf("cost of observed traffic = %+v", c)
	}
	s.ebbFails(t, 1, "function not found", "cost", "nosuch", "--since", "1h")
	s.ebbFails(t, 1, "since", "usage", "priced", "--since", "last week")
	s.ebbFails(t, 1, "usage: ebb usage NAME", "usage")
}
