package platform

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
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
// ebb's full HTTP path (gateway, proxy, onnx instance). Set EBB_ONNX_BENCH=1
// to run it; it prints two tables. The larger models are generated at run
// time (python3-onnx).
//
// Batching: 32 closed-loop clients sending one row each (JSON), with and
// without dynamic batching, one instance.
//
// Overhead at batch 32: one batch of 32 rows (binary tensor extension) run by
// ONNX Runtime in this process, sent to an `ebb onnx-serve` process directly
// (the instance without ebb in front), and sent through ebb, all with the
// same session options. Latency is one client, sequential; the three are
// measured in alternating blocks, and each figure is the median of the
// blocks' p50s, so that drift on a shared machine hits all three. The
// instance's own model time comes from its Server-Timing header. Throughput
// is batches per second at saturation: ONNX Runtime in-process with one
// caller (its best here; two contend) against 4 clients through ebb.
// EBB_ONNX_BENCH_MODELS=mlp-l (a comma-separated list) runs only those.
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
	var batching, overhead strings.Builder
	fmt.Fprintf(&batching, "\nDynamic batching through ebb: 32 clients x 1 row (JSON), one instance\n")
	fmt.Fprintf(&batching, "%-18s %-12s %9s %10s %10s %8s\n", "model", "batching", "req/s", "p50", "p99", "gain")
	fmt.Fprintf(&overhead, "\nOne batch of 32 rows (binary): p50 latency, 1 client (median of 3 alternating blocks); throughput at saturation\n")
	fmt.Fprintf(&overhead, "%-18s %10s %10s %17s %10s %10s %8s %8s | %10s %10s %8s\n", "model", "in-process", "after idle", "run in instance", "direct", "via ebb", "direct", "via ebb", "in-proc/s", "ebb/s", "ratio")
	only := os.Getenv("EBB_ONNX_BENCH_MODELS") // e.g. "mlp-l" or "mlp-s,mlp-m"
	for _, m := range models {
		if only != "" && !slices.Contains(strings.Split(only, ","), m.name) {
			continue
		}
		if m.path == "" {
			path, err := genMLP(gen, m.name, m.sizes)
			if err != nil {
				t.Logf("skip %s: %v", m.name, err)
				continue
			}
			m.path = path
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
		off := loadTest(t, e.url+"/v2/models/"+m.name+"-off/infer", one, nil, 32, 4*time.Second)
		on := loadTest(t, e.url+"/v2/models/"+m.name+"-on/infer", one, nil, 32, 4*time.Second)
		fmt.Fprintf(&batching, "%-18s %-12s %9.0f %10s %10s\n", label, "off", off.rps, off.p50, off.p99)
		fmt.Fprintf(&batching, "%-18s %-12s %9.0f %10s %10s %7.2fx\n", label, "32, 2ms", on.rps, on.p50, on.p99, on.rps/off.rps)
		// The batched function's instance is idle from here on; leave
		// the CPU to the measurements below.
		e.do("DELETE", "/v1/functions/"+m.name+"-on", "", nil)

		// One batch of 32 rows, binary tensor data.
		raw := make([]byte, 32*width*4)
		for i := 0; i < 32*width; i++ {
			binary.LittleEndian.PutUint32(raw[i*4:], math.Float32bits(0.25))
		}
		hdr := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[32,%d],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}`, width, len(raw))
		body := append([]byte(hdr), raw...)
		hh := map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(hdr))}
		direct := startONNXServe(t, m.path, m.name+"-off")
		ort := newORTBaseline(t, m.path, width, 32)
		var inproc, inprocIdle, instance, instDirect, viaDirect, viaEbb []time.Duration
		for range 3 {
			inproc = append(inproc, ort.p50(1500*time.Millisecond, 0))
			inprocIdle = append(inprocIdle, ort.p50(1500*time.Millisecond, 300*time.Microsecond))
			d := loadTest(t, direct+"/v2/models/"+m.name+"-off/infer", body, hh, 1, 1500*time.Millisecond)
			viaDirect, instDirect = append(viaDirect, d.p50), append(instDirect, d.inferP50)
			r := loadTest(t, e.url+"/v2/models/"+m.name+"-off/infer", body, hh, 1, 1500*time.Millisecond)
			viaEbb, instance = append(viaEbb, r.p50), append(instance, r.inferP50)
		}
		ortRate := ort.rate(3 * time.Second)
		ebbRate := loadTest(t, e.url+"/v2/models/"+m.name+"-off/infer", body, hh, 4, 3*time.Second).rps
		ort.close()
		pi, pd, pe := median(inproc), median(viaDirect), median(viaEbb)
		fmt.Fprintf(&overhead, "%-18s %10s %10s %8s/%-8s %10s %10s %+7.0f%% %+7.0f%% | %10.0f %10.0f %7.2fx\n", label, pi, median(inprocIdle), median(instDirect), median(instance), pd, pe,
			100*(float64(pd)/float64(pi)-1), 100*(float64(pe)/float64(pi)-1), ortRate, ebbRate, ebbRate/ortRate)
		e.do("DELETE", "/v1/functions/"+m.name+"-off", "", nil)
	}
	t.Log(batching.String() + overhead.String() + "\n(after idle: the in-process run when the CPUs idled 300µs before it, as a server's do between requests; run in instance: the model run inside the instance, from its Server-Timing, direct/via ebb; direct: HTTP straight to an onnx-serve process; the percentages are against the back-to-back in-process run)\n")
}

type loadResult struct {
	rps      float64
	p50, p99 time.Duration
	inferP50 time.Duration // the instance's model run (Server-Timing infer)
}

func loadTest(t *testing.T, url string, body []byte, hdr map[string]string, clients int, d time.Duration) loadResult {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	post := func() (time.Duration, time.Duration) {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
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
		took := time.Since(t0)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d %.200s", url, resp.StatusCode, b)
		}
		return took, inferDur(resp.Header.Get("Server-Timing"))
	}
	post()
	var mu sync.Mutex
	var lat, inf []time.Duration
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine, mineInf []time.Duration
			for time.Now().Before(stop) {
				l, i := post()
				mine, mineInf = append(mine, l), append(mineInf, i)
			}
			mu.Lock()
			lat, inf = append(lat, mine...), append(inf, mineInf...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(inf, func(i, j int) bool { return inf[i] < inf[j] })
	return loadResult{float64(len(lat)) / d.Seconds(), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), inf[len(inf)/2].Round(time.Microsecond)}
}

// inferDur is the infer entry of a Server-Timing header.
func inferDur(h string) time.Duration {
	for _, part := range strings.Split(h, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "infer;dur="); ok {
			ms, _ := strconv.ParseFloat(v, 64)
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	return 0
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// startONNXServe runs `ebb onnx-serve` for the model on a free port, as ebb
// would but with nothing in front, and returns its base URL once it listens.
func startONNXServe(t *testing.T, model, name string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(ebbBinary(t), "onnx-serve", "--model", model, "--name", name, "--onnxruntime-lib", onnxLibrary(t))
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, "onnx-serve to listen", 30*time.Second, func() bool {
		resp, err := http.Get(url + "/v2/health/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return url
}

// ortBaseline runs one batch with ONNX Runtime directly, with the session
// options an onnx instance uses on this machine (ONNX Runtime's defaults but
// for intra-op threads = the CPUs, one inter-op thread, no spinning).
type ortBaseline struct {
	t    *testing.T
	s    *ort.DynamicAdvancedSession
	data []float32
	dims ort.Shape
}

func newORTBaseline(t *testing.T, path string, width, rows int) *ortBaseline {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	opts.SetIntraOpNumThreads(runtime.NumCPU())
	opts.SetInterOpNumThreads(1)
	opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0")
	s, err := ort.NewDynamicAdvancedSession(path, []string{"input"}, []string{"logits"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]float32, rows*width)
	for i := range data {
		data[i] = 0.25
	}
	return &ortBaseline{t: t, s: s, data: data, dims: ort.NewShape(int64(rows), int64(width))}
}

func (b *ortBaseline) close() { b.s.Destroy() }

func (b *ortBaseline) run() time.Duration {
	in, err := ort.NewTensor(b.dims, b.data)
	if err != nil {
		b.t.Fatal(err)
	}
	defer in.Destroy()
	outs := []ort.Value{nil}
	t0 := time.Now()
	if err := b.s.Run([]ort.Value{in}, outs); err != nil {
		b.t.Fatal(err)
	}
	took := time.Since(t0)
	outs[0].Destroy()
	return took
}

// p50 is the median time of one run, for d, with the caller sleeping for
// idle before each run (0: back to back). After an idle gap ONNX Runtime's
// worker threads and the CPUs must wake, as in any server between requests.
func (b *ortBaseline) p50(d, idle time.Duration) time.Duration {
	b.run()
	var lat []time.Duration
	for stop := time.Now().Add(d); time.Now().Before(stop); {
		if idle > 0 {
			time.Sleep(idle)
		}
		lat = append(lat, b.run())
	}
	return median(lat).Round(time.Microsecond)
}

// rate is runs per second, back to back for d.
func (b *ortBaseline) rate(d time.Duration) float64 {
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		b.run()
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// TestONNXColdStart measures scale-from-zero starts of onnx functions, one
// model at a time: rounds of "wait until the function has no instance, then
// infer one request", timed at the client, with spare processes (the
// default: ONNX Runtime is up before the request comes) and without (every
// start spawns onnx-serve). The instance's own split of its start (process
// start, library init, model read, session creation) comes from the line it
// logs once the model is loaded. Set EBB_ONNX_BENCH=1 to run it; it prints a
// table (p50 of each column over the rounds).
func TestONNXColdStart(t *testing.T) {
	if os.Getenv("EBB_ONNX_BENCH") == "" {
		t.Skip("set EBB_ONNX_BENCH=1 to run the ONNX cold-start benchmark")
	}
	rounds := 12
	if n, err := strconv.Atoi(os.Getenv("EBB_ONNX_COLD_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	lib, bin := onnxLibrary(t), ebbBinary(t)
	envs := map[bool]*env{}
	for _, spares := range []bool{false, true} {
		n := -1
		if spares {
			n = 0 // the default
		}
		envs[spares] = start(t, "", func(c *Config) { c.Executable, c.ONNXLibrary, c.MaxSyncPayload, c.WarmMax = bin, lib, 64<<20, n })
	}
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
	fmt.Fprintf(&out, "\nonnx cold starts: %d scale-from-zero rounds per model and mode, p50 of each column\n", rounds)
	fmt.Fprintf(&out, "%-30s %7s | %12s %12s %7s | %13s %12s %12s %14s\n", "model", "size", "no spare", "spare", "", "process start", "library init", "model read", "session create")
	for _, m := range models {
		if m.path == "" {
			path, err := genMLP(gen, m.name, m.sizes)
			if err != nil {
				t.Logf("skip %s: %v", m.name, err)
				continue
			}
			m.path = path
			row := strings.TrimSuffix(strings.Repeat("0.25,", m.sizes[0]), ",")
			m.request = `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,` + strconv.Itoa(m.sizes[0]) + `],"data":[` + row + `]}]}`
		}
		model, err := os.ReadFile(m.path)
		if err != nil {
			t.Fatal(err)
		}
		client := map[bool]time.Duration{}
		var split []loadSplit
		for _, spares := range []bool{false, true} {
			e := envs[spares]
			dir := fnDir(t, "name: "+m.name+"\nruntime: onnx\nhandler: model.onnx\nmemory: 2048\nidle_timeout: 100ms\n", nil)
			os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
			e.deploy(dir)
			var lat []time.Duration
			cold := 0
			for range rounds {
				waitFor(t, m.name+" to scale to zero", 30*time.Second, func() bool { return e.instances(m.name) == 0 })
				if spares {
					waitFor(t, m.name+"'s spare", 30*time.Second, func() bool {
						return e.p.current(m.name).starter.SpareReady()
					})
				}
				t0 := time.Now()
				code, body, hdr := e.do("POST", "/v2/models/"+m.name+"/infer", m.request, map[string]string{"Content-Type": "application/json"})
				lat = append(lat, time.Since(t0))
				if code != 200 {
					t.Fatalf("%s: infer = %d %.300s", m.name, code, body)
				}
				if hdr.Get("Ebb-Cold-Start") == "true" {
					cold++
				}
			}
			if cold != rounds {
				t.Errorf("%s: %d of %d rounds were cold starts", m.name, cold, rounds)
			}
			client[spares] = p50(lat)
			// Every start logged its split once its model was loaded.
			lines := loadedLines(t, e, m.name)
			if len(lines) < rounds {
				t.Fatalf("%s: %d load lines in the logs for %d cold starts", m.name, len(lines), rounds)
			}
			if spares {
				split = lines
			}
			e.do("DELETE", "/v1/functions/"+m.name, "", nil)
		}
		var proc, lib, read, sess []time.Duration
		for _, l := range split {
			proc, lib, read, sess = append(proc, l.ProcessStart), append(lib, l.LibraryInit), append(read, l.ModelRead), append(sess, l.SessionCreate)
		}
		fmt.Fprintf(&out, "%-30s %6.1fM | %12s %12s %6.1fx | %13s %12s %12s %14s\n", m.label, float64(len(model))/1e6,
			client[false], client[true], float64(client[false])/float64(client[true]), p50(proc), p50(lib), p50(read), p50(sess))
	}
	t.Log(out.String() + "\n(process start and library init are paid before the request when a spare is claimed)\n")
}

// genMLP writes a dense MLP of the given layer sizes as DIR/NAME.onnx with
// gen_models.py (python3-onnx).
func genMLP(dir, name string, sizes []int) (string, error) {
	args := []string{"../onnx/testdata/gen_models.py", "--mlp", dir, name}
	for _, d := range sizes {
		args = append(args, strconv.Itoa(d))
	}
	if b, err := exec.Command("/usr/bin/python3", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("generate: %v %s", err, b)
	}
	return filepath.Join(dir, name+".onnx"), nil
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
	Spare         bool          `json:"spare"`
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
