package platform

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/onnx/conformance"
)

// ebbBinary builds ./cmd/ebb, which serves onnx models in its instances.
func ebbBinary(t testing.TB) string {
	t.Helper()
	return ebbtest.Ebb(t)
}

// onnxLibrary finds the ONNX Runtime library that scripts/fetch-onnxruntime.sh
// installs, or skips.
func onnxLibrary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("EBB_ONNXRUNTIME_LIB"); p != "" {
		return p
	}
	p, _ := filepath.Abs("../../.cache/onnxruntime/lib/libonnxruntime.so.1")
	if _, err := os.Stat(p); err != nil {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireONNX, "ONNX Runtime library not found at %s: run scripts/fetch-onnxruntime.sh", p)
	}
	return p
}

func startONNX(t *testing.T, opts ...envOpt) *env {
	lib := onnxLibrary(t)
	bin := ebbBinary(t)
	// Tensors in JSON are large: allow what an inference server would.
	return start(t, "", append([]envOpt{func(c *Config) { c.Executable, c.ONNXLibrary, c.MaxSyncPayload = bin, lib, 64<<20 }}, opts...)...)
}

func TestONNXModelThroughThePlatform(t *testing.T) {
	e := startONNX(t)
	dir := fnDir(t, "name: mlp\nruntime: onnx\nhandler: model.onnx\nconcurrency: 32\nbatching: {max_batch_size: 16, max_delay: 1ms}\n", nil)
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
	e.deploy(dir)

	code, body, _ := e.do("GET", "/v2/models/mlp", "", nil)
	if code != 200 {
		t.Fatalf("metadata = %d %s", code, body)
	}
	var meta struct {
		Inputs []struct {
			Name     string  `json:"name"`
			Datatype string  `json:"datatype"`
			Shape    []int64 `json:"shape"`
		} `json:"inputs"`
	}
	json.Unmarshal([]byte(body), &meta)
	if len(meta.Inputs) != 1 || meta.Inputs[0].Name != "input" || fmt.Sprint(meta.Inputs[0].Shape) != "[-1 64]" {
		t.Errorf("metadata inputs = %+v", meta.Inputs)
	}

	ref, err := os.ReadFile("../onnx/testdata/mlp_ref.json")
	if err != nil {
		t.Fatal(err)
	}
	var want struct {
		Inputs  json.RawMessage `json:"inputs"`
		Outputs []struct {
			Data []float64 `json:"data"`
		} `json:"outputs"`
	}
	json.Unmarshal(ref, &want)
	// Concurrent callers, batched together inside the instance, each get
	// exactly their own answer.
	var wg sync.WaitGroup
	var bad atomic.Int32
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, hdr := e.do("POST", "/v2/models/mlp/infer", `{"inputs":`+string(want.Inputs)+`}`, nil)
			// The instance's timing reaches the client through ebb.
			if st := hdr.Get("Server-Timing"); !strings.Contains(st, "infer;dur=") || !strings.Contains(st, "batch;desc=") {
				t.Errorf("Server-Timing = %q, want the instance's infer and batch entries", st)
			}
			var got struct {
				Outputs []struct {
					Name string    `json:"name"`
					Data []float64 `json:"data"`
				} `json:"outputs"`
			}
			if code != 200 || json.Unmarshal([]byte(body), &got) != nil || len(got.Outputs) != 1 || len(got.Outputs[0].Data) != len(want.Outputs[0].Data) {
				t.Errorf("infer = %d %.300s", code, body)
				bad.Add(1)
				return
			}
			for i, w := range want.Outputs[0].Data {
				if math.Abs(got.Outputs[0].Data[i]-w) > 1e-4+1e-4*math.Abs(w) {
					t.Errorf("logit %d = %v, want %v", i, got.Outputs[0].Data[i], w)
					bad.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	code, body, _ = e.do("POST", "/v2/models/mlp/infer", `{"inputs":[{"name":"nope","datatype":"FP32","shape":[1,64],"data":[`+strings.Repeat("0,", 63)+`0]}]}`, nil)
	if code != 400 || !strings.Contains(body, "nope") {
		t.Errorf("wrong input name = %d %s, want 400 naming it", code, body)
	}
	if code, _, _ := e.do("GET", "/v2/models/nosuch", "", nil); code != 404 {
		t.Errorf("unknown model = %d, want 404", code)
	}
}

// TestONNXConformanceFullPath deploys every ONNX backend test case that the
// protocol can carry as an onnx function and checks its outputs through
// ebb's HTTP path: deploy, cold start of an instance, infer, compare. It
// fails as TestConformance in internal/onnx does: on an unknown failure, a
// case ebb's protobuf reader cannot read, or, in a full run, fewer passes
// than conformance.PassFloor.
func TestONNXConformanceFullPath(t *testing.T) {
	// A thousand functions, each started once: spare processes (tested
	// on their own) would only double the process starts.
	e := startONNX(t, func(c *Config) { c.WarmMax = -1 })
	cases, err := conformance.Load(conformance.DefaultRoot)
	if err != nil || len(cases) == 0 {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireONNX, "no ONNX backend test cases under %s (Debian package libonnx-testdata): %v", conformance.DefaultRoot, err)
	}
	full := !testing.Short()
	if f := os.Getenv("EBB_ONNX_CASES"); f != "" { // narrow a run: substring of case names
		full = false
		var keep []*conformance.Case
		for _, c := range cases {
			if strings.Contains(c.Name, f) {
				keep = append(keep, c)
			}
		}
		cases = keep
	}
	if testing.Short() {
		cases = cases[:min(len(cases), 60)]
	}
	var n atomic.Int64
	deploy := func(ctx context.Context, c *conformance.Case) (string, string, func(), error) {
		name := fmt.Sprintf("case-%d", n.Add(1))
		dir, err := os.MkdirTemp(t.TempDir(), "case-")
		if err != nil {
			return "", "", nil, err
		}
		manifest := fmt.Sprintf("name: %s\nruntime: onnx\nhandler: model.onnx\nmemory: 1024\ntimeout: 60s\n", name)
		os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(manifest), 0o644)
		model, err := os.ReadFile(c.Model)
		if err != nil {
			return "", "", nil, err
		}
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		if code, body := deployRaw(t, e, name, dir); code != 201 {
			return "", "", nil, fmt.Errorf("deploy: %d %s", code, body)
		}
		cleanup := func() { e.c.Remove(context.Background(), name); os.RemoveAll(dir) }
		return e.url, name, cleanup, nil
	}
	sum := conformance.Run(context.Background(), cases, deploy, 2, conformance.Options{})
	var report strings.Builder
	sum.Write(&report)
	t.Log("\n" + report.String())
	for _, p := range sum.Problems(full) {
		t.Error(p)
	}
	t.Logf("through the full HTTP path: %d passed (floor %d, checked: %v), %d skipped, %d failed",
		sum.Count(conformance.Pass), conformance.PassFloor, full, sum.Count(conformance.Skip), sum.Count(conformance.Fail))
}

// TestONNXModelCache deploys the same model in two functions (different
// manifests, so different bundles): the node keeps one file for it, and
// both functions serve from it.
func TestONNXModelCache(t *testing.T) {
	e := startONNX(t)
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, name := range []string{"cache-a", "cache-b"} {
		dir := fnDir(t, "name: "+name+"\nruntime: onnx\nhandler: model.onnx\n", nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		e.deploy(dir)
		paths = append(paths, filepath.Join(e.p.current(name).codeDir, "model.onnx"))
	}
	fa, errA := os.Stat(paths[0])
	fb, errB := os.Stat(paths[1])
	if errA != nil || errB != nil || paths[0] == paths[1] || !os.SameFile(fa, fb) {
		t.Errorf("bundles' models %s and %s are not one file (%v %v)", paths[0], paths[1], errA, errB)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dataDir, "models"))
	if len(entries) != 1 {
		t.Errorf("model cache holds %d files, want 1", len(entries))
	}
	infer := func(e *env) {
		for _, name := range []string{"cache-a", "cache-b"} {
			row := strings.TrimSuffix(strings.Repeat("0.5,", 64), ",")
			if code, body, _ := e.do("POST", "/v2/models/"+name+"/infer", `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[`+row+`]}]}`, nil); code != 200 {
				t.Errorf("%s: infer = %d %s", name, code, body)
			}
		}
	}
	infer(e)
	// After a restart the interned models are found as they are.
	e.stop()
	e2 := start(t, e.dataDir, func(c *Config) { c.Executable, c.ONNXLibrary = ebbBinary(t), onnxLibrary(t) })
	infer(e2)
	if fa, err := os.Stat(paths[0]); err != nil || !os.SameFile(fa, fb) {
		t.Errorf("after restart the model is not the cached file (%v)", err)
	}
}

// TestONNXSpare checks that onnx cold starts claim a spare process (ONNX
// Runtime already up) and that a new spare replaces it; and that with
// spares turned off every start spawns a process.
func TestONNXSpare(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spares int
		want   bool
	}{{"on", 0, true}, {"off", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			lib, bin := onnxLibrary(t), ebbBinary(t)
			e := start(t, "", func(c *Config) { c.Executable, c.ONNXLibrary, c.WarmMax = bin, lib, tc.spares })
			model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
			if err != nil {
				t.Fatal(err)
			}
			dir := fnDir(t, "name: sp\nruntime: onnx\nhandler: model.onnx\nidle_timeout: 100ms\n", nil)
			os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
			e.deploy(dir)
			row := strings.TrimSuffix(strings.Repeat("0.5,", 64), ",")
			req := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + row + `]}]}`
			for round := range 2 {
				if tc.want {
					waitFor(t, "a spare process", 30*time.Second, func() bool {
						return e.p.current("sp").starter.SpareReady()
					})
				}
				waitFor(t, "scale to zero", 30*time.Second, func() bool { return e.instances("sp") == 0 })
				_, status, _ := e.do("GET", "/v1/functions/sp", "", nil)
				var st struct {
					Spare *struct {
						PID int    `json:"pid"`
						RSS uint64 `json:"rss_bytes"`
					} `json:"spare"`
				}
				json.Unmarshal([]byte(status), &st)
				if got := st.Spare != nil && st.Spare.PID > 0 && st.Spare.RSS > 0; got != tc.want {
					t.Errorf("round %d: status shows a spare with pid and RSS: %v, want %v (%s)", round, got, tc.want, status)
				}
				_, m, _ := e.do("GET", "/metrics", "", nil)
				if got := strings.Contains(m, `ebb_spare_memory_bytes{function="sp",kind="pss"}`); got != tc.want {
					t.Errorf("round %d: /metrics has the spare's memory: %v, want %v", round, got, tc.want)
				}
				code, body, hdr := e.do("POST", "/v2/models/sp/infer", req, nil)
				if code != 200 || hdr.Get("Ebb-Cold-Start") != "true" {
					t.Fatalf("round %d: infer = %d cold=%q %s", round, code, hdr.Get("Ebb-Cold-Start"), body)
				}
			}
			loads := loadedLines(t, e, "sp")
			spared := 0
			for _, l := range loads {
				if l.Spare {
					spared++
				}
			}
			if got := spared == len(loads) && len(loads) == 2; got != tc.want || (!tc.want && spared != 0) {
				t.Errorf("%d of %d model loads were in spares; want all: %v", spared, len(loads), tc.want)
			}
		})
	}
}

// TestONNXSpareExpires checks that an unused spare goes after the
// keep-alive, and that removing the function stops its spare.
func TestONNXSpareExpires(t *testing.T) {
	short := startONNX(t, func(c *Config) { c.ZygoteKeepAlive = 300 * time.Millisecond })
	long := startONNX(t) // a minute at least
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	spareReady := func(e *env, name string) func() bool {
		return func() bool {
			d := e.p.current(name)
			return d != nil && d.starter.SpareReady()
		}
	}
	for _, e := range []*env{short, long} {
		dir := fnDir(t, "name: exp\nruntime: onnx\nhandler: model.onnx\n", nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		e.deploy(dir)
		waitFor(t, "a spare", 30*time.Second, spareReady(e, "exp"))
	}
	waitFor(t, "the unused spare to go", 30*time.Second, func() bool { return !spareReady(short, "exp")() })
	// Removal: the starter is closed once the version is drained, and its
	// spare with it, long before the keep-alive.
	st := long.p.current("exp").starter
	if code, body, _ := long.do("DELETE", "/v1/functions/exp", "", nil); code >= 300 {
		t.Fatalf("rm = %d %s", code, body)
	}
	waitFor(t, "the removed function's spare to go", 20*time.Second, func() bool { return !st.SpareReady() })
}

// TestONNXInitErrors: a model ONNX Runtime cannot load and a missing
// library answer with the init error's type and no server paths, and a spare
// that cannot start its runtime turns spares off instead of failing again
// at every cold start.
func TestONNXInitErrors(t *testing.T) {
	tests := []struct {
		name, lib string // lib "" means the real one
		model     []byte
		wantType  string
		spareOff  bool
	}{
		{"bad model", "", []byte("this is not an onnx model"), "Runtime.ModelLoadError", false},
		{"no library", "/nonexistent/libonnxruntime.so.1", nil, "Runtime.ONNXRuntimeMissing", true},
	}
	good, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := []envOpt{}
			if tc.lib != "" {
				opts = append(opts, func(c *Config) { c.ONNXLibrary = tc.lib })
			}
			e := startONNX(t, opts...)
			model := tc.model
			if model == nil {
				model = good
			}
			dir := fnDir(t, "name: ie\nruntime: onnx\nhandler: model.onnx\n", nil)
			os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
			if code, body := deployRaw(t, e, "ie", dir); code != 200 && code != 201 {
				t.Fatalf("deploy = %d %s", code, body)
			}
			for round := range 2 {
				code, body, _ := e.do("POST", "/v2/models/ie/infer", `{"inputs":[]}`, nil)
				if code < 500 || !strings.Contains(body, tc.wantType) || strings.Contains(body, e.dataDir) || strings.Contains(body, "/nonexistent") {
					t.Errorf("round %d: infer = %d %s; want a 5xx naming %s and no server paths", round, code, body, tc.wantType)
				}
			}
			st := e.p.current("ie").starter
			if tc.spareOff {
				waitFor(t, "spares off", 10*time.Second, func() bool { return st.SparesOff() })
			}
		})
	}
}
