package onnx

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// concurrently runs f(i) for i in [0,n) at the same moment.
func concurrently(n int, f func(i int)) {
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range n {
		done.Add(1)
		go func() {
			defer done.Done()
			start.Wait()
			f(i)
		}()
	}
	start.Done()
	done.Wait()
}

func floatList(v []float32) string {
	parts := make([]string, len(v))
	for i, f := range v {
		parts[i] = fmt.Sprint(f)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// fillOnly makes s's batcher run a group only once it is full (or after 30
// s, a bound Config does not allow), so that which requests share a run
// does not depend on how fast they arrive. A test using it sends exactly
// MaxBatchSize rows per group.
func fillOnly(s *Server) {
	s.batch.stop()
	s.batch = newBatcher(s.sess, s.cfg.MaxBatchSize, 30*time.Second, s.log)
}

// TestBatchingExactRows sends 64 concurrent requests of 1 to 3 rows with
// distinct values to a batching server; Add and Mul are exact, so every
// caller must get exactly its own rows back. With "full", the batch holds
// exactly all their rows and runs once all have arrived: every caller
// shares the one run. Without a delay, what shares a run is what happens
// to be queued together.
func TestBatchingExactRows(t *testing.T) {
	t.Run("full", func(t *testing.T) { testBatchingExactRows(t, true) })
	t.Run("delay=0", func(t *testing.T) { testBatchingExactRows(t, false) })
}

func testBatchingExactRows(t *testing.T, full bool) {
	const callers = 64
	total := 0
	for i := range callers {
		total += 1 + i%3
	}
	maxRows := 16
	if full {
		maxRows = total
	}
	s := newServer(t, "add_mul.onnx", func(c *Config) { c.MaxBatchSize = maxRows })
	if full {
		fillOnly(s)
	}
	url := serve(t, s)
	errs := make([]error, callers)
	shared := make([]bool, callers) // the caller's run had others' rows too
	concurrently(callers, func(i int) {
		rows := 1 + i%3
		a := make([]float32, rows*4)
		b := make([]float32, rows*4)
		for k := range a {
			a[k] = float32(i*100 + k)
			b[k] = float32(k%4 + 1)
		}
		body := fmt.Sprintf(`{"id":"%d","inputs":[{"name":"a","datatype":"FP32","shape":[%d,4],"data":%s},{"name":"b","datatype":"FP32","shape":[%d,4],"data":%s}]}`,
			i, rows, floatList(a), rows, floatList(b))
		status, hdr, got := post(t, url, []byte(body), nil)
		if status != 200 {
			errs[i] = fmt.Errorf("status %d: %s", status, got)
			return
		}
		// Server-Timing names the rows of the run that answered.
		st := parseServerTiming(t, hdr.Get("Server-Timing"))
		if st.batch < int64(rows) || st.batch > int64(maxRows) || full && st.batch != int64(total) || st.infer <= 0 {
			errs[i] = fmt.Errorf("Server-Timing %q: want infer > 0 and a batch of %d to %d rows (all %d when full)", hdr.Get("Server-Timing"), rows, maxRows, total)
			return
		}
		shared[i] = st.batch > int64(rows)
		var resp inferResponse
		if err := json.Unmarshal(got, &resp); err != nil {
			errs[i] = err
			return
		}
		sum, prod := make([]float32, len(a)), make([]float32, len(a))
		for k := range a {
			sum[k], prod[k] = a[k]+b[k], a[k]*b[k]
		}
		want := map[string]string{"sum": floatList(sum), "product": floatList(prod)}
		if resp.ID != fmt.Sprint(i) || len(resp.Outputs) != 2 {
			errs[i] = fmt.Errorf("response %s", got)
			return
		}
		for _, o := range resp.Outputs {
			var vals []float32
			json.Unmarshal(o.Data, &vals)
			if floatList(vals) != want[o.Name] || !equalShape(o.Shape, []int64{int64(rows), 4}) {
				errs[i] = fmt.Errorf("%s: got %v %s, want [%d 4] %s", o.Name, o.Shape, floatList(vals), rows, want[o.Name])
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	st := s.BatchStats()
	runs, jobs := st.Runs, st.Requests
	if !st.Enabled || st.Disabled || jobs != callers {
		t.Errorf("batcher served %d requests, want %d", jobs, callers)
	}
	if n := countTrue(shared); full && (runs != 1 || n != callers) {
		t.Errorf("batcher made %d runs, %d callers shared one; want 1 run shared by all %d", runs, n, callers)
	}
	t.Logf("%d requests in %d runs", jobs, runs)
}

// TestBatchingMLP compares every caller's answer from a batching server
// with the same request served alone.
func TestBatchingMLP(t *testing.T) {
	// Two groups of exactly 80 rows: callers 0-31 and 32-63, each 1 to 4
	// rows, are sent as two waves, the second once the first is answered.
	batched := newServer(t, "mlp.onnx", func(c *Config) { c.MaxBatchSize = 80 })
	fillOnly(batched)
	alone := newServer(t, "mlp.onnx", nil)
	if alone.batch != nil {
		t.Fatal("batching is on without MaxBatchSize")
	}
	urlB, urlA := serve(t, batched), serve(t, alone)
	const callers = 64
	bodies := make([][]byte, callers)
	want := make([][]float64, callers)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range bodies {
		rows := 1 + i%4
		x := make([]float32, rows*64)
		for k := range x {
			x[k] = float32(rng.NormFloat64())
		}
		bodies[i] = []byte(fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,64],"data":%s}]}`, rows, floatList(x)))
		status, _, b := post(t, urlA, bodies[i], nil)
		if status != 200 {
			t.Fatalf("unbatched: %d %s", status, b)
		}
		var r inferResponse
		json.Unmarshal(b, &r)
		want[i] = floats(t, r.Outputs[0].Data)
	}
	errs := make([]error, callers)
	ask := func(i int) {
		status, _, b := post(t, urlB, bodies[i], nil)
		if status != 200 {
			errs[i] = fmt.Errorf("status %d: %s", status, b)
			return
		}
		var r inferResponse
		if err := json.Unmarshal(b, &r); err != nil {
			errs[i] = err
			return
		}
		var got []float64
		json.Unmarshal(r.Outputs[0].Data, &got)
		// Kernels may sum in another order for another batch size.
		if k, ok := closeTo(got, want[i], 1e-5); !ok {
			errs[i] = fmt.Errorf("element %d differs from the unbatched answer (%d values, want %d)", k, len(got), len(want[i]))
		}
	}
	concurrently(callers/2, func(i int) { ask(i) })
	concurrently(callers/2, func(i int) { ask(callers/2 + i) })
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if st := batched.BatchStats(); st.Runs != 2 || st.Requests != callers {
		t.Errorf("%d runs for %d requests, want 2 runs of 32", st.Runs, st.Requests)
	}
}

// TestBatchingGroupsByShape batches Identity requests whose second
// dimension differs: only equal shapes may share a run, and each caller gets
// its own data back.
func TestBatchingGroupsByShape(t *testing.T) {
	// Each of the three shapes gets 16 callers of 1 or 2 rows, 24 rows in
	// all: one full group per shape, whatever the order of arrival.
	s := newServer(t, "identity_INT32.onnx", func(c *Config) { c.MaxBatchSize = 24 })
	fillOnly(s)
	url := serve(t, s)
	errs := make([]error, 48)
	concurrently(len(errs), func(i int) {
		rows, n := 1+i%2, 1+i%3
		vals := make([]string, rows*n)
		for k := range vals {
			vals[k] = fmt.Sprint(i*1000 + k)
		}
		data := "[" + strings.Join(vals, ",") + "]"
		status, _, b := post(t, url, []byte(fmt.Sprintf(`{"inputs":[{"name":"x","datatype":"INT32","shape":[%d,%d],"data":%s}]}`, rows, n, data)), nil)
		want := fmt.Sprintf(`{"model_name":"m","model_version":"1","outputs":[{"name":"y","datatype":"INT32","shape":[%d,%d],"data":%s}]}`, rows, n, data)
		if status != 200 || string(b) != want {
			errs[i] = fmt.Errorf("got %d %s\nwant %s", status, b, want)
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if st := s.BatchStats(); st.Runs != 3 || st.Requests != int64(len(errs)) {
		t.Errorf("%d runs for %d requests, want one run per shape (3)", st.Runs, st.Requests)
	}
}

// TestBatchingTurnsOffWhenOutputsDoNotFollow serves a model whose output's
// dynamic first dimension is not the batch: answers must still be each
// caller's own, and batching must switch itself off.
func TestBatchingTurnsOffWhenOutputsDoNotFollow(t *testing.T) {
	needLibrary(t)
	m, err := loadModel("testdata/batch_mean.onnx")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := newSession(m, sessionOptions{threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.destroy()
	b := newBatcher(sess, 4, time.Hour, nil)
	defer b.stop()
	outs := make([][]tensor, 4)
	errs := make([]error, 4)
	concurrently(4, func(i int) {
		x := f32tensor("x", []int64{1, 2}, float32(i), float32(10*i))
		outs[i], errs[i] = b.submit(context.Background(), []*tensor{x}, 1, nil)
	})
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		// The mean of one row is the row.
		if got := f32s(outs[i][0].data); got[0] != float32(i) || got[1] != float32(10*i) {
			t.Errorf("caller %d got %v, want [%d %d]", i, got, i, 10*i)
		}
	}
	if !b.off.Load() {
		t.Error("batching is still on after outputs did not follow the batch")
	}
}

func f32tensor(name string, shape []int64, vals ...float32) *tensor {
	data := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return &tensor{name: name, dt: dtFP32, shape: shape, data: data}
}

func f32s(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// TestBatcherFlushes checks when the batcher runs a group, with MaxDelay an
// hour so that only size decides.
func TestBatcherFlushes(t *testing.T) {
	needLibrary(t)
	m, err := loadModel("testdata/identity_FP32.onnx")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := newSession(m, sessionOptions{threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.destroy()

	for _, tc := range []struct {
		name     string
		rows     []int64
		wantRuns int64
	}{
		{"full batch runs at once", []int64{1, 1, 1, 1}, 1},
		{"full batch of uneven requests", []int64{2, 1, 1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBatcher(sess, 4, time.Hour, nil)
			defer b.stop()
			errs := make([]error, len(tc.rows))
			concurrently(len(tc.rows), func(i int) {
				vals := make([]float32, tc.rows[i]*2)
				for k := range vals {
					vals[k] = float32(i*10 + k)
				}
				outs, err := b.submit(context.Background(), []*tensor{f32tensor("x", []int64{tc.rows[i], 2}, vals...)}, tc.rows[i], nil)
				if err != nil {
					errs[i] = err
					return
				}
				if got := f32s(outs[0].data); fmt.Sprint(got) != fmt.Sprint(vals) || !equalShape(outs[0].shape, []int64{tc.rows[i], 2}) {
					errs[i] = fmt.Errorf("got %v %v, want %v", outs[0].shape, got, vals)
				}
			})
			for i, err := range errs {
				if err != nil {
					t.Errorf("caller %d: %v", i, err)
				}
			}
			if got := b.runs.Load(); got != tc.wantRuns {
				t.Errorf("%d runs, want %d", got, tc.wantRuns)
			}
		})
	}

	t.Run("a request that would overflow the group closes it", func(t *testing.T) {
		// add is driven directly, without the loop, so the order is fixed.
		b := &batcher{sess: sess, maxRows: 4, delay: time.Hour, log: slog.New(slog.DiscardHandler)}
		mk := func(rows int64, v float32) *job {
			vals := make([]float32, 2*rows)
			for k := range vals {
				vals[k] = v
			}
			x := f32tensor("x", []int64{rows, 2}, vals...)
			return &job{inputs: []*tensor{x}, rows: rows, key: batchKey([]*tensor{x}), res: make(chan jobResult, 1)}
		}
		j1, j2, j3, j4 := mk(3, 1), mk(3, 2), mk(1, 3), mk(2, 4)
		var pending []*group
		for _, j := range []*job{j1, j2, j3, j4} {
			pending = b.add(pending, j)
		}
		// 3 | 3+1 (full) | 2 (open)
		want := []struct {
			jobs   []*job
			closed bool
		}{{[]*job{j1}, true}, {[]*job{j2, j3}, true}, {[]*job{j4}, false}}
		if len(pending) != len(want) {
			t.Fatalf("%d groups, want %d", len(pending), len(want))
		}
		for i, w := range want {
			g := pending[i]
			if fmt.Sprint(g.jobs) != fmt.Sprint(w.jobs) || g.closed != w.closed {
				t.Errorf("group %d: jobs %v closed %v, want %v %v", i, g.jobs, g.closed, w.jobs, w.closed)
			}
		}
		for _, g := range pending {
			b.run(g)
		}
		if got := b.runs.Load(); got != 3 {
			t.Errorf("%d runs, want 3", got)
		}
		for i, j := range []*job{j1, j2, j3, j4} {
			r := <-j.res
			if r.err != nil {
				t.Fatalf("job %d: %v", i, r.err)
			}
			want := fmt.Sprint(f32s(j.inputs[0].data))
			if got := fmt.Sprint(f32s(r.outs[0].data)); got != want || r.outs[0].shape[0] != j.rows {
				t.Errorf("job %d got %v %s, want %d rows %s", i, r.outs[0].shape, got, j.rows, want)
			}
		}
	})

	t.Run("stop fails what is waiting", func(t *testing.T) {
		b := newBatcher(sess, 4, time.Hour, nil)
		res := make(chan error, 1)
		go func() {
			_, err := b.submit(context.Background(), []*tensor{f32tensor("x", []int64{1, 2}, 1, 2)}, 1, nil)
			res <- err
		}()
		b.stop()
		if err := <-res; !errors.Is(err, ebb.ErrClosed) {
			t.Errorf("submit during stop: %v, want ErrClosed", err)
		}
	})
}

// TestBatchingOff checks that a model whose rows depend on each other is
// answered per request when batching is not configured, and that batching
// stays off for a model without a dynamic first dimension.
func TestBatchingOff(t *testing.T) {
	s := newServer(t, "center.onnx", nil)
	if s.batch != nil {
		t.Fatal("batching on without MaxBatchSize")
	}
	url := serve(t, s)
	errs := make([]error, 32)
	concurrently(len(errs), func(i int) {
		// Rows (i, 2i) and (i+2, 2i+4): their mean is (i+1, 2i+2).
		body := fmt.Sprintf(`{"inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[%d,%d,%d,%d]}]}`, i, 2*i, i+2, 2*i+4)
		status, _, b := post(t, url, []byte(body), nil)
		want := `"data":[-1,-2,1,2]`
		if status != 200 || !strings.Contains(string(b), want) {
			errs[i] = fmt.Errorf("got %d %s, want %s", status, b, want)
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}

	static := newServer(t, "cast_FP32_INT32.onnx", func(c *Config) { c.MaxBatchSize = 8 })
	if static.batch != nil {
		t.Error("batching on for a model with a fixed first dimension")
	}
	if one := newServer(t, "mlp.onnx", func(c *Config) { c.MaxBatchSize = 1 }); one.batch != nil {
		t.Error("batching on with MaxBatchSize 1")
	}
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}
