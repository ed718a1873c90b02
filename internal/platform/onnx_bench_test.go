package platform

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestONNXBatchingThroughEbb measures the MLP through ebb's full HTTP path
// (gateway, proxy, onnx instance) with 32 closed-loop clients sending one
// row each, with and without dynamic batching, and one batch of 32 rows per
// request. Set EBB_ONNX_BENCH=1 to run it; it prints a table.
func TestONNXBatchingThroughEbb(t *testing.T) {
	if os.Getenv("EBB_ONNX_BENCH") == "" {
		t.Skip("set EBB_ONNX_BENCH=1 to run the ONNX benchmark through ebb")
	}
	e := startONNX(t)
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range []struct{ name, extra string }{
		{"mlp-nobatch", ""},
		{"mlp-batch", "batching: {max_batch_size: 32, max_delay: 2ms}\n"},
	} {
		dir := fnDir(t, "name: "+fn.name+"\nruntime: onnx\nhandler: model.onnx\nconcurrency: 64\nmin_instances: 1\nmax_instances: 1\n"+fn.extra, nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		e.deploy(dir)
	}
	row := strings.TrimSuffix(strings.Repeat("0.25,", 64), ",")
	one := []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + row + `]}]}`)
	batch := []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[32,64],"data":[` + strings.TrimSuffix(strings.Repeat(row+",", 32), ",") + `]}]}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func(fn string, body []byte) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(e.url+"/v2/models/"+fn+"/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", fn, resp.StatusCode)
		}
		return time.Since(t0)
	}
	run := func(fn string, body []byte, clients int, d time.Duration) (float64, time.Duration, time.Duration) {
		post(fn, body)
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
					mine = append(mine, post(fn, body))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return float64(len(lat)) / d.Seconds(), lat[len(lat)/2], lat[len(lat)*99/100]
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nMLP 64-256-256-10 through ebb (/v2/models/NAME/infer, JSON), one instance\n")
	fmt.Fprintf(&out, "%-44s %10s %10s %10s\n", "load", "req/s", "p50", "p99")
	rOff, p50Off, p99Off := run("mlp-nobatch", one, 32, 5*time.Second)
	fmt.Fprintf(&out, "%-44s %10.0f %10s %10s\n", "32 clients x 1 row, batching off", rOff, p50Off.Round(time.Microsecond), p99Off.Round(time.Microsecond))
	rOn, p50On, p99On := run("mlp-batch", one, 32, 5*time.Second)
	fmt.Fprintf(&out, "%-44s %10.0f %10s %10s   gain %.2fx\n", "32 clients x 1 row, batching 32 / 2ms", rOn, p50On.Round(time.Microsecond), p99On.Round(time.Microsecond), rOn/rOff)
	r32, p50b, p99b := run("mlp-nobatch", batch, 1, 3*time.Second)
	fmt.Fprintf(&out, "%-44s %10.0f %10s %10s\n", "1 client x batch of 32 rows (sequential)", r32, p50b.Round(time.Microsecond), p99b.Round(time.Microsecond))
	t.Log(out.String())
}
