package platform

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/ebb-run/ebb/internal/onnx"
)

// TestONNXBatchingThroughEbb measures dense MLPs of three sizes through
// ebb's full HTTP path (gateway, proxy, onnx instance): 32 closed-loop
// clients sending one row each with and without dynamic batching, and one
// batch of 32 rows (binary tensor extension) against the same batch run by
// ONNX Runtime in this process. Set EBB_ONNX_BENCH=1 to run it; it prints a
// table. The larger models are generated at run time (python3-onnx).
func TestONNXBatchingThroughEbb(t *testing.T) {
	if os.Getenv("EBB_ONNX_BENCH") == "" {
		t.Skip("set EBB_ONNX_BENCH=1 to run the ONNX benchmark through ebb")
	}
	e := startONNX(t)
	if err := onnx.InitLibrary(onnxLibrary(t)); err != nil {
		t.Fatal(err)
	}
	models := []struct {
		name  string
		sizes []int
		path  string
	}{{name: "mlp-s", sizes: []int{64, 256, 256, 10}, path: "../onnx/testdata/mlp.onnx"},
		{name: "mlp-m", sizes: []int{256, 1024, 1024, 10}}, {name: "mlp-l", sizes: []int{512, 2048, 2048, 10}}}
	gen := t.TempDir()
	var out strings.Builder
	fmt.Fprintf(&out, "\nDense MLPs through ebb (/v2/models/NAME/infer), one instance, 2 intra-op threads\n")
	fmt.Fprintf(&out, "%-20s %-34s %9s %10s %10s %8s\n", "model", "load", "req/s", "p50", "p99", "")
	for _, m := range models {
		if m.path == "" {
			args := []string{"../onnx/testdata/gen_models.py", "--mlp", gen, m.name}
			for _, d := range m.sizes {
				args = append(args, strconv.Itoa(d))
			}
			if b, err := exec.Command("/usr/bin/python3", args...).CombinedOutput(); err != nil {
				t.Logf("skip %s: generate: %v %s", m.name, err, b)
				continue
			}
			m.path = filepath.Join(gen, m.name+".onnx")
		}
		model, err := os.ReadFile(m.path)
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range []struct{ suffix, extra string }{{"-off", ""}, {"-on", "batching: {max_batch_size: 32, max_delay: 2ms}\n"}} {
			dir := fnDir(t, "name: "+m.name+fn.suffix+"\nruntime: onnx\nhandler: model.onnx\nmemory: 2048\nconcurrency: 64\nmin_instances: 1\nmax_instances: 1\n"+fn.extra, nil)
			os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
			e.deploy(dir)
		}
		width := m.sizes[0]
		row := strings.TrimSuffix(strings.Repeat("0.25,", width), ",")
		one := []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,` + strconv.Itoa(width) + `],"data":[` + row + `]}]}`)
		label := fmt.Sprintf("%d-%d-%d-%d", m.sizes[0], m.sizes[1], m.sizes[2], m.sizes[3])
		off := loadTest(t, e.url, m.name+"-off", one, nil, 32, 4*time.Second)
		on := loadTest(t, e.url, m.name+"-on", one, nil, 32, 4*time.Second)
		fmt.Fprintf(&out, "%-20s %-34s %9.0f %10s %10s\n", label, "32 clients x 1 row, batching off", off.rps, off.p50, off.p99)
		fmt.Fprintf(&out, "%-20s %-34s %9.0f %10s %10s %7.2fx\n", label, "32 clients x 1 row, batching on", on.rps, on.p50, on.p99, on.rps/off.rps)

		// One batch of 32 rows, binary tensor data, sequential.
		raw := make([]byte, 32*width*4)
		for i := 0; i < 32*width; i++ {
			binary.LittleEndian.PutUint32(raw[i*4:], math.Float32bits(0.25))
		}
		hdr := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[32,%d],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}`, width, len(raw))
		body := append([]byte(hdr), raw...)
		full := loadTest(t, e.url, m.name+"-off", body, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(hdr))}, 1, 3*time.Second)
		inproc := ortInProcess(t, m.path, width, 32, 3*time.Second)
		fmt.Fprintf(&out, "%-20s %-34s %9s %10s %10s\n", label, "batch of 32, ORT in-process", "", inproc, "")
		fmt.Fprintf(&out, "%-20s %-34s %9.0f %10s %10s %+7.0f%%\n", label, "batch of 32, through ebb (binary)", full.rps, full.p50, full.p99,
			100*(float64(full.p50)/float64(inproc)-1))
	}
	t.Log(out.String())
}

type loadResult struct {
	rps      float64
	p50, p99 time.Duration
}

func loadTest(t *testing.T, base, fn string, body []byte, hdr map[string]string, clients int, d time.Duration) loadResult {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func() time.Duration {
		req, _ := http.NewRequest("POST", base+"/v2/models/"+fn+"/infer", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d %.200s", fn, resp.StatusCode, b)
		}
		return time.Since(t0)
	}
	post()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) {
				mine = append(mine, post())
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return loadResult{float64(len(lat)) / d.Seconds(), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond)}
}

// ortInProcess is the p50 of running one batch with ONNX Runtime directly,
// with the session options an onnx instance uses on this machine.
func ortInProcess(t *testing.T, path string, width, rows int, d time.Duration) time.Duration {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	opts.SetIntraOpNumThreads(2)
	opts.SetInterOpNumThreads(1)
	s, err := ort.NewDynamicAdvancedSession(path, []string{"input"}, []string{"logits"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	data := make([]float32, rows*width)
	for i := range data {
		data[i] = 0.25
	}
	var lat []time.Duration
	for stop := time.Now().Add(d); time.Now().Before(stop); {
		in, err := ort.NewTensor(ort.NewShape(int64(rows), int64(width)), data)
		if err != nil {
			t.Fatal(err)
		}
		outs := []ort.Value{nil}
		t0 := time.Now()
		if err := s.Run([]ort.Value{in}, outs); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		in.Destroy()
		outs[0].Destroy()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2].Round(time.Microsecond)
}

// TestONNXColdStart measures scale-from-zero starts of onnx functions, one
// model at a time: rounds of "wait until the function has no instance, then
// infer one request", timed at the client, and the instance's own split of
// its start (process start, library init, model read, session creation) from
// the line it logs once the model is loaded. Set EBB_ONNX_BENCH=1 to run it;
// it prints a table (p50 of each column over the rounds).
func TestONNXColdStart(t *testing.T) {
	if os.Getenv("EBB_ONNX_BENCH") == "" {
		t.Skip("set EBB_ONNX_BENCH=1 to run the ONNX cold-start benchmark")
	}
	rounds := 12
	if n, err := strconv.Atoi(os.Getenv("EBB_ONNX_COLD_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	e := startONNX(t)
	gen := t.TempDir()
	models := []struct {
		name, label, path string
		sizes             []int // generated MLP when path is empty
		request           string
	}{
		{name: "cold-mlp", label: "MLP 64-256-256-10 (mlp.onnx)", path: "../onnx/testdata/mlp.onnx", request: refRequest(t, "../onnx/testdata/mlp_ref.json")},
		{name: "cold-cnn", label: "CNN 1x28x28 (cnn.onnx)", path: "../onnx/testdata/cnn.onnx", request: refRequest(t, "../onnx/testdata/cnn_ref.json")},
		{name: "cold-mlp-m", label: "MLP 256-1024-1024-10", sizes: []int{256, 1024, 1024, 10}},
		{name: "cold-mlp-l", label: "MLP 512-2048-2048-10", sizes: []int{512, 2048, 2048, 10}},
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nonnx cold starts: %d scale-from-zero rounds per model, p50 of each column\n", rounds)
	fmt.Fprintf(&out, "%-30s %9s %8s %12s %13s %12s %12s %14s\n", "model", "size", "cold", "client p50", "process start", "library init", "model read", "session create")
	for _, m := range models {
		if m.path == "" {
			args := []string{"../onnx/testdata/gen_models.py", "--mlp", gen, m.name}
			for _, d := range m.sizes {
				args = append(args, strconv.Itoa(d))
			}
			if b, err := exec.Command("/usr/bin/python3", args...).CombinedOutput(); err != nil {
				t.Logf("skip %s: generate: %v %s", m.name, err, b)
				continue
			}
			m.path = filepath.Join(gen, m.name+".onnx")
			row := strings.TrimSuffix(strings.Repeat("0.25,", m.sizes[0]), ",")
			m.request = `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,` + strconv.Itoa(m.sizes[0]) + `],"data":[` + row + `]}]}`
		}
		model, err := os.ReadFile(m.path)
		if err != nil {
			t.Fatal(err)
		}
		dir := fnDir(t, "name: "+m.name+"\nruntime: onnx\nhandler: model.onnx\nmemory: 2048\nidle_timeout: 100ms\n", nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		e.deploy(dir)
		var client, proc, lib, read, sess []time.Duration
		cold := 0
		for range rounds {
			waitFor(t, m.name+" to scale to zero", 30*time.Second, func() bool { return e.instances(m.name) == 0 })
			t0 := time.Now()
			code, body, hdr := e.do("POST", "/v2/models/"+m.name+"/infer", m.request, map[string]string{"Content-Type": "application/json"})
			client = append(client, time.Since(t0))
			if code != 200 {
				t.Fatalf("%s: infer = %d %.300s", m.name, code, body)
			}
			if hdr.Get("Ebb-Cold-Start") == "true" {
				cold++
			}
		}
		// Every start logged its split once its model was loaded.
		for _, l := range loadedLines(t, e, m.name) {
			proc, lib, read, sess = append(proc, l.ProcessStart), append(lib, l.LibraryInit), append(read, l.ModelRead), append(sess, l.SessionCreate)
		}
		if len(sess) < rounds {
			t.Fatalf("%s: %d load lines in the logs for %d cold starts", m.name, len(sess), rounds)
		}
		fmt.Fprintf(&out, "%-30s %8.1fM %4d/%-3d %12s %13s %12s %12s %14s\n", m.label, float64(len(model))/1e6, cold, rounds,
			p50(client), p50(proc), p50(lib), p50(read), p50(sess))
		if cold != rounds {
			t.Errorf("%s: %d of %d rounds were cold starts", m.name, cold, rounds)
		}
	}
	t.Log(out.String())
}

// refRequest is the request part (the inputs) of a reference file.
func refRequest(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Inputs json.RawMessage `json:"inputs"`
	}
	if err := json.Unmarshal(b, &ref); err != nil || ref.Inputs == nil {
		t.Fatalf("%s: no inputs: %v", path, err)
	}
	return `{"inputs":` + string(ref.Inputs) + `}`
}

// loadSplit is the timing part of onnx-serve's "model loaded" log line
// (slog writes durations as nanoseconds).
type loadSplit struct {
	Msg           string        `json:"msg"`
	ProcessStart  time.Duration `json:"process_start"`
	LibraryInit   time.Duration `json:"library_init"`
	ModelRead     time.Duration `json:"model_read"`
	SessionCreate time.Duration `json:"session_create"`
}

func loadedLines(t *testing.T, e *env, fn string) []loadSplit {
	code, body, _ := e.do("GET", "/v1/functions/"+fn+"/logs?limit=10000", "", nil)
	if code != 200 {
		t.Fatalf("logs of %s = %d %s", fn, code, body)
	}
	var out []loadSplit
	for _, raw := range strings.Split(strings.TrimSpace(body), "\n") {
		var l struct {
			Text string `json:"text"`
		}
		var s loadSplit
		if json.Unmarshal([]byte(raw), &l) == nil && json.Unmarshal([]byte(l.Text), &s) == nil && s.Msg == "onnx: model loaded" {
			out = append(out, s)
		}
	}
	return out
}

func p50(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2].Round(10 * time.Microsecond)
}
