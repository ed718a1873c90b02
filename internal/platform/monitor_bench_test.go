package platform

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/gateway"
)

// TestMonitorOverhead measures what monitoring costs the warm invoke path,
// in one run: the same model deployed twice, monitored (the onnx default)
// and with monitor: false, driven in alternating blocks so that drift on a
// shared machine hits both; each figure is the median over the blocks.
// Throughput on a shared machine swings by tens of percent from block to
// block, so the cost is also measured as CPU time per request: ebb's
// process (the platform with its summariser, and the load generator, the
// same for both) plus the function's instance. Workloads: one row as JSON
// (the smallest request, where fixed costs show) and 32 rows as JSON (the
// most decoding per request), 1 client and 4 clients. Set
// EBB_MONITOR_BENCH=1 to run it; it prints a table.
func TestMonitorOverhead(t *testing.T) {
	if os.Getenv("EBB_MONITOR_BENCH") == "" {
		t.Skip("set EBB_MONITOR_BENCH=1 to measure monitoring's cost")
	}
	e := startONNX(t)
	model, err := os.ReadFile("../onnx/testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, fn := range []struct{ name, extra string }{{"mon-on", ""}, {"mon-off", "monitor: false\n"}} {
		dir := fnDir(t, "name: "+fn.name+"\nruntime: onnx\nhandler: model.onnx\nmemory: 1024\nconcurrency: 64\nmin_instances: 1\nmax_instances: 1\n"+fn.extra, nil)
		os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
		e.deploy(dir)
		e.do("POST", "/v2/models/"+fn.name+"/infer", string(mlpBody(1)), nil)
		_, lease, err := e.p.acquire(context.Background(), gateway.Target{Name: fn.name})
		if err != nil {
			t.Fatal(err)
		}
		// The instance's CPU time is read by the host pid of its own
		// process (in the sandbox, not bwrap's, which only waits).
		pids[fn.name] = lease.Instance.FunctionPid()
		lease.Release()
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nMonitoring on vs off (mlp 64-256-256-10, JSON; median of 7 alternating 2 s blocks)\n")
	fmt.Fprintf(&out, "%-20s %9s %9s %7s | %12s %12s %7s\n", "workload", "off req/s", "on req/s", "on/off", "off CPU/req", "on CPU/req", "on/off")
	before := e.p.mon.Counts()
	for _, w := range []struct {
		name    string
		rows    int
		clients int
	}{{"1 row, 1 client", 1, 1}, {"1 row, 4 clients", 1, 4}, {"32 rows, 1 client", 32, 1}, {"32 rows, 4 clients", 32, 4}} {
		b := mlpBody(w.rows)
		var rps, cpu [2][]float64 // off, on
		for range 7 {
			for i, fn := range []string{"mon-off", "mon-on"} {
				self, inst := selfCPU(t), procCPU(t, pids[fn])
				r := loadTest(t, e.url+"/v2/models/"+fn+"/infer", b, nil, w.clients, 2*time.Second)
				used := selfCPU(t) - self + procCPU(t, pids[fn]) - inst
				rps[i] = append(rps[i], r.rps)
				cpu[i] = append(cpu[i], float64(used.Microseconds())/(r.rps*2))
			}
		}
		fmt.Fprintf(&out, "%-20s %9.0f %9.0f %7.3f | %10.0fµs %10.0fµs %7.3f\n", w.name, medianF(rps[0]), medianF(rps[1]), medianF(rps[1])/medianF(rps[0]),
			medianF(cpu[0]), medianF(cpu[1]), medianF(cpu[1])/medianF(cpu[0]))
	}
	c := e.p.mon.Counts()
	fmt.Fprintf(&out, "summarised %d, sampled out %d, dropped %d, failed %d\n", c.Events-before.Events, c.SampledOut-before.SampledOut, c.Dropped-before.Dropped, c.Failed-before.Failed)
	t.Log(out.String())
}

func mlpBody(rows int) []byte {
	row := "[" + strings.TrimSuffix(strings.Repeat("0.25,", 64), ",") + "]"
	return []byte(fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,64],"data":[%s]}]}`, rows, strings.TrimSuffix(strings.Repeat(row+",", rows), ",")))
}

// selfCPU is this process's CPU time so far, user and system.
func selfCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is process pid's CPU time so far (clock ticks of 10 ms).
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
