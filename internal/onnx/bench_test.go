package onnx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// benchEnv turns on TestBenchmarkReport, which takes tens of seconds.
const benchEnv = "EBB_ONNX_BENCH"

// mlpBatch returns a batch of rows of width 64 (the MLP's input) as raw FP32
// and as a JSON list.
func mlpBatch(rows int, seed uint64) ([]byte, string) { return rowsOf(rows, 64, seed) }

func rowsOf(rows, width int, seed uint64) ([]byte, string) {
	rng := rand.New(rand.NewPCG(seed, 7))
	raw := make([]byte, rows*width*4)
	vals := make([]string, rows*width)
	for i := range vals {
		f := float32(rng.NormFloat64())
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
		vals[i] = strconv.FormatFloat(float64(f), 'g', -1, 32)
	}
	return raw, "[" + strings.Join(vals, ",") + "]"
}

// inferBodies builds the same MLP request in JSON and with the binary
// extension (binary output too).
func inferBodies(rows int, seed uint64) (jsonBody []byte, binBody []byte, binHeaderLen int) {
	return inferBodiesW(rows, 64, seed)
}

func inferBodiesW(rows, width int, seed uint64) (jsonBody []byte, binBody []byte, binHeaderLen int) {
	raw, list := rowsOf(rows, width, seed)
	jsonBody = []byte(fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,%d],"data":%s}]}`, rows, width, list))
	hdr := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,%d],"parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, rows, width, len(raw))
	return jsonBody, append([]byte(hdr), raw...), len(hdr)
}

// ortRun is the baseline: the same session called in-process through the
// binding, with no protocol around it.
func ortRun(b testing.TB, s *Server, raw []byte, rows int) {
	width := int64(len(raw) / 4 / rows)
	in, err := ort.NewCustomDataTensor(ort.NewShape(int64(rows), width), raw, ort.TensorElementDataTypeFloat)
	if err != nil {
		b.Fatal(err)
	}
	out := []ort.Value{nil}
	if err := s.sess.ort.Run([]ort.Value{in}, out); err != nil {
		b.Fatal(err)
	}
	in.Destroy()
	out[0].Destroy()
}

type benchPaths struct {
	s      *Server
	url    string
	client *http.Client
	raw    []byte
	jsonB  []byte
	binB   []byte
	binLen string
	rows   int
}

func newBenchPaths(b testing.TB, file string, width, rows int) *benchPaths {
	s := newServer(b, file, func(c *Config) { c.IntraOpThreads = 0 })
	hs := httptest.NewServer(s)
	b.Cleanup(hs.Close)
	raw, _ := rowsOf(rows, width, 1)
	jsonB, binB, n := inferBodiesW(rows, width, 1)
	return &benchPaths{s: s, url: hs.URL + "/v2/models/m/infer", client: hs.Client(), raw: raw, jsonB: jsonB, binB: binB, binLen: strconv.Itoa(n), rows: rows}
}

// handler serves one request through ServeHTTP, without a network.
func (p *benchPaths) handler(b testing.TB, binary bool) {
	body := p.jsonB
	if binary {
		body = p.binB
	}
	req := httptest.NewRequest("POST", "/v2/models/m/infer", bytes.NewReader(body))
	if binary {
		req.Header.Set(HeaderContentLength, p.binLen)
	}
	w := httptest.NewRecorder()
	p.s.ServeHTTP(w, req)
	if w.Code != 200 {
		b.Fatalf("status %d: %s", w.Code, w.Body)
	}
}

// http sends one request over loopback TCP.
func (p *benchPaths) http(b testing.TB, binary bool) {
	body := p.jsonB
	if binary {
		body = p.binB
	}
	req, _ := http.NewRequest("POST", p.url, bytes.NewReader(body))
	if binary {
		req.Header.Set(HeaderContentLength, p.binLen)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkMLPBatch32 compares one batch of 32 MLP rows run in-process with
// ONNX Runtime against the same batch through the handler and over HTTP.
func BenchmarkMLPBatch32(b *testing.B) {
	p := newBenchPaths(b, "mlp.onnx", 64, 32)
	b.Run("ort", func(b *testing.B) {
		for b.Loop() {
			ortRun(b, p.s, p.raw, p.rows)
		}
	})
	for _, bin := range []bool{false, true} {
		enc := map[bool]string{false: "json", true: "binary"}[bin]
		b.Run("handler-"+enc, func(b *testing.B) {
			for b.Loop() {
				p.handler(b, bin)
			}
		})
		b.Run("http-"+enc, func(b *testing.B) {
			for b.Loop() {
				p.http(b, bin)
			}
		})
	}
}

// loadResult is the outcome of a closed-loop load test.
type loadResult struct {
	requests int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r loadResult) throughput() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// load runs closed-loop clients over loopback HTTP, each sending one-row
// JSON requests for d, and records latencies.
func load(t testing.TB, url string, width, clients int, d time.Duration) loadResult {
	bodies := make([][]byte, clients)
	for i := range bodies {
		bodies[i], _, _ = inferBodiesW(1, width, uint64(i))
	}
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		mu   sync.Mutex
		lats []time.Duration
		fail atomic.Value
		wg   sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := client.Post(url+"/v2/models/m/infer", "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					fail.Store(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					fail.Store(fmt.Errorf("status %d", resp.StatusCode))
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := fail.Load().(error); err != nil {
		t.Fatalf("load: %v", err)
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	return loadResult{requests: len(lats), elapsed: elapsed, p50: pct(0.50), p99: pct(0.99)}
}

// loadHandler is load without the network: clients goroutines call
// ServeHTTP directly, so only the server's own work is measured.
func loadHandler(t testing.TB, s *Server, width, clients int, binary bool, d time.Duration) loadResult {
	type body struct {
		b   []byte
		hdr string
	}
	bodies := make([]body, clients)
	for i := range bodies {
		j, b, n := inferBodiesW(1, width, uint64(i))
		bodies[i] = body{j, ""}
		if binary {
			bodies[i] = body{b, strconv.Itoa(n)}
		}
	}
	var (
		mu   sync.Mutex
		lats []time.Duration
		fail atomic.Value
		wg   sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				req := httptest.NewRequest("POST", "/v2/models/m/infer", bytes.NewReader(bodies[i].b))
				if bodies[i].hdr != "" {
					req.Header.Set(HeaderContentLength, bodies[i].hdr)
				}
				w := httptest.NewRecorder()
				s.ServeHTTP(w, req)
				if w.Code != 200 {
					fail.Store(fmt.Errorf("status %d: %s", w.Code, w.Body))
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := fail.Load().(error); err != nil {
		t.Fatalf("load: %v", err)
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	return loadResult{requests: len(lats), elapsed: elapsed, p50: pct(0.50), p99: pct(0.99)}
}

// TestBenchmarkReport measures what the issue asks for and prints a table:
// the overhead of the HTTP path over ONNX Runtime at batch 32, and 32
// clients with batching on and off. Run with EBB_ONNX_BENCH=1.
func TestBenchmarkReport(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skipf("set %s=1 to run the benchmark report", benchEnv)
	}
	needLibrary(t)
	var out strings.Builder
	models := []struct {
		name, file string
		width      int
	}{{"MLP 64-256-256-10", "mlp.onnx", 64}}
	// The wide MLP is 5 MB, generated here rather than checked in.
	wide := t.TempDir()
	if err := exec.Command("/usr/bin/python3", "testdata/gen_models.py", "--wide", wide).Run(); err == nil {
		models = append(models, struct {
			name, file string
			width      int
		}{"MLP 256-1024-1024-10", filepath.Join(wide, "mlp_wide.onnx"), 256})
	} else {
		t.Logf("wide MLP not generated (needs /usr/bin/python3 with python3-onnx): %v", err)
	}
	per := func(f func(b *testing.B)) time.Duration {
		r := testing.Benchmark(f)
		return time.Duration(r.NsPerOp())
	}
	for _, model := range models {
		p := newBenchPaths(t, model.file, model.width, 32)
		base := per(func(b *testing.B) {
			for b.Loop() {
				ortRun(b, p.s, p.raw, p.rows)
			}
		})
		fmt.Fprintf(&out, "\n%s, batch 32, %d intra-op threads\n", model.name, p.s.cfg.IntraOpThreads)
		fmt.Fprintf(&out, "%-28s %12s %10s\n", "path", "per batch", "overhead")
		fmt.Fprintf(&out, "%-28s %12s %10s\n", "onnxruntime in-process", base.Round(100*time.Nanosecond), "-")
		for _, row := range []struct {
			name string
			f    func(b *testing.B)
		}{
			{"handler, binary", func(b *testing.B) {
				for b.Loop() {
					p.handler(b, true)
				}
			}},
			{"handler, JSON", func(b *testing.B) {
				for b.Loop() {
					p.handler(b, false)
				}
			}},
			{"HTTP loopback, binary", func(b *testing.B) {
				for b.Loop() {
					p.http(b, true)
				}
			}},
			{"HTTP loopback, JSON", func(b *testing.B) {
				for b.Loop() {
					p.http(b, false)
				}
			}},
		} {
			d := per(row.f)
			fmt.Fprintf(&out, "%-28s %12s %9.0f%%\n", row.name, d.Round(100*time.Nanosecond), 100*(float64(d)/float64(base)-1))
		}
		p.s.Close()
	}

	const clients = 32
	dur := 3 * time.Second
	for _, model := range models {
		width := model.width
		fmt.Fprintf(&out, "\n%s: %d closed-loop clients, one row per request, %s per cell\n", model.name, clients, dur)
		fmt.Fprintf(&out, "%-32s %-9s %9s %9s %9s %8s %7s\n", "path", "batching", "req/s", "p50", "p99", "req/run", "gain")
		for _, path := range []struct {
			name string
			run  func(s *Server, url string) loadResult
		}{
			{"HTTP loopback, JSON", func(s *Server, url string) loadResult { return load(t, url, width, clients, dur) }},
			{"handler (no network), JSON", func(s *Server, url string) loadResult { return loadHandler(t, s, width, clients, false, dur) }},
			{"handler (no network), binary", func(s *Server, url string) loadResult { return loadHandler(t, s, width, clients, true, dur) }},
		} {
			var off float64
			for _, batch := range []int{0, 32} {
				s := newServer(t, model.file, func(c *Config) {
					c.IntraOpThreads = 0
					c.MaxBatchSize = batch
					c.MaxDelay = 2 * time.Millisecond
				})
				url := serve(t, s)
				path.run(s, url) // warm up
				if s.batch != nil {
					s.batch.runs.Store(0)
					s.batch.jobs.Store(0)
				}
				r := path.run(s, url)
				name, perRun, gain := "off", "1", "-"
				if batch == 0 {
					off = r.throughput()
				} else {
					name = "32, 2ms"
					perRun = fmt.Sprintf("%.1f", float64(s.batch.jobs.Load())/float64(max(1, s.batch.runs.Load())))
					gain = fmt.Sprintf("%.2fx", r.throughput()/off)
				}
				fmt.Fprintf(&out, "%-32s %-9s %9.0f %9s %9s %8s %7s\n", path.name, name, r.throughput(),
					r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), perRun, gain)
				s.Close()
			}
		}
	}
	t.Log(out.String())
}
