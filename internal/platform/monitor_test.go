package platform

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/monitor"
)

// monitorReport flushes the monitor and reads GET /v1/functions/NAME/monitor.
func (e *env) monitorReport(name, query string) *monitor.Report {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.mon.Flush(ctx); err != nil {
		e.t.Fatal(err)
	}
	code, body, _ := e.do("GET", "/v1/functions/"+name+"/monitor?"+query, "", nil)
	if code != 200 {
		e.t.Fatalf("monitor?%s = %d %s", query, code, body)
	}
	var rep monitor.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		e.t.Fatalf("monitor report: %v: %.300s", err, body)
	}
	return &rep
}

func maxPSI(t *testing.T, rep *monitor.Report) float64 {
	t.Helper()
	if rep.MaxPSI == nil {
		t.Fatalf("report for version %d has no max_psi (events %d, baseline %+v)", rep.Version, rep.Events, rep.Baseline)
	}
	return *rep.MaxPSI
}

// rows draws n rows of width features, each N(shift, 1).
func rows(r *rand.Rand, n, width int, shift float64) [][]float32 {
	out := make([][]float32, n)
	for i := range out {
		out[i] = make([]float32, width)
		for j := range out[i] {
			out[i][j] = float32(r.NormFloat64() + shift)
		}
	}
	return out
}

// inferMLP sends rows to the mlp model, as JSON or with the binary tensor
// extension both ways.
func inferMLP(t *testing.T, e *env, rs [][]float32, bin bool) {
	t.Helper()
	if !bin {
		data, _ := json.Marshal(rs)
		code, body, _ := e.do("POST", "/v2/models/drift/infer",
			fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,64],"data":%s}]}`, len(rs), data), nil)
		if code != 200 {
			t.Fatalf("infer = %d %.300s", code, body)
		}
		return
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,64],"parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`,
		len(rs), len(rs)*64*4)
	b := []byte(header)
	for _, row := range rs {
		for _, v := range row {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
	}
	code, body, hdr := e.do("POST", "/v2/models/drift/infer", string(b),
		map[string]string{"Inference-Header-Content-Length": fmt.Sprint(len(header)), "Content-Type": "application/octet-stream"})
	if code != 200 || hdr.Get("Inference-Header-Content-Length") == "" {
		t.Fatalf("binary infer = %d %.200q", code, body)
	}
}

// TestMonitorONNXDrift serves a real model and shifts its inputs: versions
// fed the same distribution score below 0.1, a shifted one above 0.25.
func TestMonitorONNXDrift(t *testing.T) {
	// A budget that samples nothing out: every request counts here.
	e := startONNX(t, func(c *Config) { c.Monitor.Budget = 256 << 20 })
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	dir := fnDir(t, "name: drift\nruntime: onnx\nhandler: model.onnx\n", nil)
	os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
	r := rand.New(rand.NewPCG(7, 8))
	feed := func(shift float64) int {
		v := e.deploy(dir)
		for i := range 20 {
			inferMLP(t, e, rows(r, 100, 64, shift), i%2 == 1)
		}
		return v
	}
	v1, v2, v3 := feed(0), feed(0), feed(2)

	rep := e.monitorReport("drift", fmt.Sprintf("version=%d&baseline_version=%d&baseline_since=1h", v2, v1))
	if rep.Events != 20 || rep.Baseline.Events != 20 {
		t.Fatalf("events = %d against %d, want 20 and 20 (monitor %+v)", rep.Events, rep.Baseline.Events, rep.Monitor)
	}
	var in0 *monitor.FeatureReport
	inputs, outputs := 0, 0
	for i, f := range rep.Features {
		switch f.Side {
		case monitor.SideInput:
			inputs++
		case monitor.SideOutput:
			outputs++
		}
		if f.Name == "input.input[0]" {
			in0 = &rep.Features[i]
		}
	}
	if inputs != 64 || outputs != 10 || in0 == nil || in0.Count != 2000 || math.Abs(in0.Mean) > 0.1 || math.Abs(in0.Std-1) > 0.1 {
		t.Fatalf("%d input and %d output features, input[0] = %+v; want 64 and 10, 2000 values of mean 0 and std 1", inputs, outputs, in0)
	}
	if len(rep.Classes) != 1 || rep.Classes[0].Name != "output.logits" {
		t.Fatalf("classes = %+v, want the argmax of logits", rep.Classes)
	}
	var classes int64
	for _, n := range rep.Classes[0].Counts {
		classes += n
	}
	if classes != 2000 {
		t.Errorf("argmax counts add up to %d, want 2000", classes)
	}
	if p := maxPSI(t, rep); p >= 0.1 {
		t.Errorf("max PSI of version %d (same inputs) against %d = %v, want < 0.1", v2, v1, p)
	}

	rep = e.monitorReport("drift", fmt.Sprintf("version=%d&baseline_version=%d&baseline_since=1h", v3, v1))
	if p := maxPSI(t, rep); p <= 0.25 {
		t.Errorf("max PSI of version %d (inputs shifted by 2σ) against %d = %v, want > 0.25", v3, v1, p)
	}
	for _, f := range rep.Features {
		if f.Side == monitor.SideInput && (f.PSI == nil || *f.PSI <= 0.25) {
			t.Errorf("feature %s: PSI %v after the shift, want > 0.25", f.Name, f.PSI)
			break
		}
	}
	if c := rep.Monitor; c.Dropped != 0 || c.Failed != 0 || c.Events != 60 {
		t.Errorf("monitor counts = %+v, want 60 events, none dropped or failed", c)
	}
}

const monitoredPy = `
def handler(event, context):
    rows = event["rows"]
    # Per-row answers as rows ([[x], …]) pool into one feature each; a flat
    # list would make a feature per position.
    return {"scores": [[2 * r[0]] for r in rows], "labels": [[int(r[1] > 0)] for r in rows], "n": len(rows)}
`

// TestMonitorPythonDrift does the same for a python function that opts in.
func TestMonitorPythonDrift(t *testing.T) {
	needPython(t)
	e := start(t, "")
	dir := fnDir(t, "name: pydrift\nruntime: python\nhandler: app.handler\nmonitor: true\n", map[string]string{"app.py": monitoredPy})
	r := rand.New(rand.NewPCG(9, 10))
	feed := func(shift float64) int {
		v := e.deploy(dir)
		for range 40 {
			data, _ := json.Marshal(rows(r, 50, 2, shift))
			if code, body, _ := e.invoke("pydrift", `{"rows": `+string(data)+`, "tag": "x", "k": 3}`); code != 200 {
				t.Fatalf("invoke = %d %s", code, body)
			}
		}
		return v
	}
	v1, v2, v3 := feed(0), feed(0), feed(2)

	rep := e.monitorReport("pydrift", fmt.Sprintf("version=%d&baseline_version=%d&baseline_since=1h&series=true", v2, v1))
	var points int64
	for _, p := range rep.Features[1].Series {
		points += p.Count
	}
	if points != 2000 {
		t.Errorf("event.rows[0]'s series adds up to %d values, want 2000: %+v", points, rep.Features[1].Series)
	}
	var names []string
	for _, f := range rep.Features {
		names = append(names, f.Name)
	}
	want := "event.k[0] event.rows[0] event.rows[1] result.labels[0] result.n[0] result.scores[0]"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("features = %s; want %s", got, want)
	}
	if f := rep.Features[1]; f.Count != 2000 || f.BaselineCount != 2000 {
		t.Errorf("event.rows[0]: %d values against %d, want 2000 and 2000", f.Count, f.BaselineCount)
	}
	if p := maxPSI(t, rep); p >= 0.1 {
		t.Errorf("max PSI of version %d (same events) against %d = %v, want < 0.1", v2, v1, p)
	}
	rep = e.monitorReport("pydrift", fmt.Sprintf("version=%d&baseline_version=%d&baseline_since=1h", v3, v1))
	if p := maxPSI(t, rep); p <= 0.25 {
		t.Errorf("max PSI of version %d (events shifted by 2σ) against %d = %v, want > 0.25", v3, v1, p)
	}
	// baseline_version alone: the same period (the last hour), which holds
	// all of version 1's events.
	rep = e.monitorReport("pydrift", fmt.Sprintf("version=%d&baseline_version=%d", v2, v1))
	if b := rep.Baseline; b == nil || b.Version != v1 || !b.Since.Equal(rep.Since) || b.Events != 40 || rep.Events != 40 {
		t.Errorf("baseline_version alone: events %d, baseline %+v; want 40 against version %d's 40 over the same period", rep.Events, rep.Baseline, v1)
	}
	// No baseline: the hour before, which saw nothing.
	if rep = e.monitorReport("pydrift", ""); rep.Version != v3 || rep.Baseline == nil || rep.Baseline.Version != v3 || rep.Baseline.Events != 0 || rep.MaxPSI != nil {
		t.Errorf("default query: version %d, baseline %+v, max_psi %v; want version %d against its own previous hour (empty, no PSI)", rep.Version, rep.Baseline, rep.MaxPSI, v3)
	}
	// A python function that does not opt in is not summarised.
	dir = fnDir(t, "name: plain\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": monitoredPy})
	e.deploy(dir)
	e.invoke("plain", `{"rows": [[1, 2]]}`)
	if rep := e.monitorReport("plain", ""); rep.Events != 0 || len(rep.Features) != 0 {
		t.Errorf("an unmonitored function has a report: %+v", rep)
	}
	code, body, _ := e.do("GET", "/v1/functions/pydrift/monitor?since=yesterday", "", nil)
	if code != 400 || !strings.Contains(body, "since") {
		t.Errorf("since=yesterday = %d %s, want 400 naming since", code, body)
	}
	code, body, _ = e.do("GET", "/v1/functions/pydrift/monitor?series=maybe", "", nil)
	if code != 400 || !strings.Contains(body, "series") {
		t.Errorf("series=maybe = %d %s, want 400 naming series", code, body)
	}
	if code, _, _ := e.do("GET", "/v1/functions/nope/monitor", "", nil); code != 404 {
		t.Errorf("unknown function = %d, want 404", code)
	}
}

// TestMonitorShadowOutputPSI: the shadow report of a monitored function
// scores the shadow's outputs against the primary's as distributions.
func TestMonitorShadowOutputPSI(t *testing.T) {
	needPython(t)
	e := start(t, "")
	ctx := context.Background()
	handler := func(offset string) map[string]string {
		return map[string]string{"app.py": "def handler(event, context):\n    return {\"y\": event[\"x\"] + " + offset + "}\n"}
	}
	e.deploy(fnDir(t, "name: sh\nruntime: python\nhandler: app.handler\nmonitor: true\n", handler("0")))
	e.deployWith(fnDir(t, "name: sh\nruntime: python\nhandler: app.handler\nmonitor: true\n", handler("3")), api.DeployOptions{NoTraffic: true})
	if _, err := e.c.SetShadow(ctx, "sh", ebb.Shadow{Version: 2, Percent: 100}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	for range 300 {
		if code, body, _ := e.invoke("sh", fmt.Sprintf(`{"x": %v}`, r.NormFloat64())); code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
	}
	waitFor(t, "the mirrors", 60*time.Second, func() bool {
		rep, err := e.p.ShadowReport(ctx, "sh")
		return err == nil && rep.Mirrored+rep.Dropped >= 300
	})
	if err := e.p.mon.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := e.p.ShadowReport(ctx, "sh")
	if err != nil {
		t.Fatal(err)
	}
	if rep.OutputPSI == nil || *rep.OutputPSI <= 0.25 {
		t.Fatalf("output_psi = %v with the shadow answering x+3, want > 0.25 (report %+v)", rep.OutputPSI, rep)
	}
}
