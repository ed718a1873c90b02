package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/instance"
)

// warmFn is a small python function with imports of its own.
const warmFn = `
import json, decimal, os

def handler(event, context):
    return {"fn": os.environ["EBB_FUNCTION_NAME"], "sum": str(decimal.Decimal(event.get("a", "0")) + decimal.Decimal("0.1"))}
`

// processTreePSS is the PSS of every process below this one (the test
// runs the platform in-process: these are its instances, zygotes, spares
// and sandboxes), in bytes.
func processTreePSS() uint64 {
	var total uint64
	stack := childrenOf(os.Getpid())
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		_, pss := instance.ReadPSS(pid)
		total += pss
		stack = append(stack, childrenOf(pid)...)
	}
	return total
}

// treeByCommand sums the tree's PSS by command name, for a failure's
// message.
func treeByCommand() map[string]string {
	sum, count := map[string]uint64{}, map[string]int{}
	stack := childrenOf(os.Getpid())
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		_, pss := instance.ReadPSS(pid)
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		c := strings.TrimSpace(string(comm))
		sum[c] += pss
		count[c]++
		stack = append(stack, childrenOf(pid)...)
	}
	out := map[string]string{}
	for c, b := range sum {
		out[c] = fmt.Sprintf("%d processes, %.1f MiB", count[c], float64(b)/(1<<20))
	}
	return out
}

func childrenOf(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, _ := os.ReadDir(dir)
	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(filepath.Join(dir, t.Name(), "children"))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// TestWarmBudgetBoundsManyIdleFunctions deploys hundreds of small python
// functions under a small warm budget: ebb's process tree stays within it
// after the deploys and after a restart on the same data dir, and any of
// them still answers its first request.
func TestWarmBudgetBoundsManyIdleFunctions(t *testing.T) {
	if testing.Short() {
		t.Skip("deploys 300 functions")
	}
	needPython(t)
	n := 300
	if v, err := strconv.Atoi(os.Getenv("EBB_WARM_TEST_N")); err == nil {
		n = v
	}
	const budget = 96 << 20
	opt := func(c *Config) { c.WarmMemory = budget }
	e := start(t, "", opt)
	dir := fnDir(t, "name: w\nruntime: python\nhandler: main.handler\n", map[string]string{"main.py": warmFn})
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("w%03d", i)
		manifest := "name: " + names[i] + "\nruntime: python\nhandler: main.handler\nidle_timeout: 1m\n"
		if err := os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := bundle.Pack(dir, &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.Deploy(context.Background(), names[i], &buf); err != nil {
			t.Fatalf("deploy %s: %v", names[i], err)
		}
	}
	// Every holder's zygote has its spare child: the builds the deploys
	// asked for are done.
	settled := func() int {
		s := e.p.instCfg.Warm.Snapshot()
		for _, h := range s.Holders {
			d := e.p.current(h.Function)
			if z := d.starter.Zygote(); z == nil || !z.Spare {
				return -1
			}
		}
		return len(s.Holders)
	}
	var held int
	waitFor(t, "the deploys' zygotes", 60*time.Second, func() bool { held = settled(); return held >= 0 })
	if pss := processTreePSS(); pss > budget {
		t.Fatalf("after %d deploys the process tree holds %.1f MiB PSS; the budget is %d MiB (%d holders; %v; budget %+v)", n, float64(pss)/(1<<20), budget>>20,
			held, treeByCommand(), e.p.instCfg.Warm.Snapshot())
	} else {
		t.Logf("after %d deploys: %d hold a zygote, process tree %.1f MiB PSS (budget %d MiB)", n, held, float64(pss)/(1<<20), budget>>20)
	}
	if held == 0 || held >= n {
		t.Fatalf("%d of %d functions hold a zygote under a %d MiB budget; want some, not all", held, n, budget>>20)
	}
	// The node's view: GET /v1/warm and the metrics.
	code, body, _ := e.do("GET", "/v1/warm", "", nil)
	var rep api.WarmReport
	if err := json.Unmarshal([]byte(body), &rep); code != 200 || err != nil {
		t.Fatalf("GET /v1/warm = %d %s", code, body)
	}
	if rep.LimitBytes != budget || rep.Count != held || len(rep.Holders) != held || rep.UsedBytes > budget || rep.Holders[0].Kind != instance.KindZygote {
		t.Errorf("GET /v1/warm = %s; want %d zygotes within %d bytes", body, held, budget)
	}
	_, metricsText, _ := e.do("GET", "/metrics", "", nil)
	for _, want := range []string{"ebb_warm_budget_bytes 1.00663296e+08\n", fmt.Sprintf("ebb_warm_holders %d\n", held), "ebb_warm_memory_bytes "} {
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// A function without a zygote answers its first request, and keeps
	// the zygote it built, in room made by evicting an idle one.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))
	var cold string
	for _, i := range rng.Perm(n) {
		if d := e.p.current(names[i]); d.starter.Warm() == nil {
			cold = names[i]
			break
		}
	}
	answers(t, e, cold)
	waitFor(t, "the cold function's zygote to hold warm capacity", 30*time.Second, func() bool {
		return e.p.current(cold).starter.Warm() != nil
	})
	st, err := e.c.Status(context.Background(), cold)
	if err != nil || st.Warm == nil || st.Warm.Kind != instance.KindZygote || st.Warm.Bytes == 0 {
		t.Fatalf("status %s: warm = %+v, %v; want its zygote's bytes", cold, st.Warm, err)
	}
	if s := e.p.instCfg.Warm.Snapshot(); s.Used > budget {
		t.Errorf("after a demand build the budget holds %d MiB of %d", s.Used>>20, budget>>20)
	}

	// Restart on the same data dir: only what was used before it (the
	// one function called) is built ahead.
	e.stop()
	e = start(t, e.dataDir, opt)
	if pss := processTreePSS(); pss > budget {
		t.Fatalf("after a restart with %d functions the process tree holds %.1f MiB PSS; the budget is %d MiB (%v)", n, float64(pss)/(1<<20), budget>>20, treeByCommand())
	} else {
		t.Logf("after the restart: process tree %.1f MiB PSS", float64(pss)/(1<<20))
	}
	// Builds ahead would start in the background: the first request
	// below waits for its own, long enough for one begun at restore to
	// have taken its room.
	answers(t, e, names[0])
	waitFor(t, "the function called before the restart to be built ahead", 30*time.Second, func() bool {
		return e.p.current(cold).starter.Warm() != nil
	})
	for _, h := range e.p.instCfg.Warm.Snapshot().Holders {
		if h.Function != cold && h.Function != names[0] {
			t.Errorf("after a restart and one request, %s holds warm capacity; want only %s (called before) and %s (asked for)", h.Function, cold, names[0])
		}
	}
	for _, i := range rng.Perm(n)[:4] {
		answers(t, e, names[i])
	}
	if s := e.p.instCfg.Warm.Snapshot(); s.Used > budget || len(s.Holders) == 0 {
		t.Errorf("after first requests: the budget holds %d MiB of %d in %d holders; want some, within", s.Used>>20, budget>>20, len(s.Holders))
	}
}

// answers checks that name answers a request as itself.
func answers(t *testing.T, e *env, name string) {
	t.Helper()
	code, body, _ := e.invoke(name, `{"a": "1.2"}`)
	if code != 200 {
		t.Fatalf("invoke %s = %d %s", name, code, body)
	}
	if m := decode(t, body); m["fn"] != name || m["sum"] != "1.3" {
		t.Fatalf("invoke %s = %s", name, body)
	}
}

// TestRestartBuildsAheadByRecentUse: a restart builds warm capacity for the
// functions called in the day before it, most recently called first and no
// more than the budget holds, and none for a function nobody called.
func TestRestartBuildsAheadByRecentUse(t *testing.T) {
	needPython(t)
	clk := &testClock{t: time.Now()}
	withClock := func(c *Config) { c.Now = clk.Now }
	e := start(t, "", withClock)
	for _, name := range []string{"never", "earlier", "latest"} {
		e.deploy(fnDir(t, "name: "+name+"\nruntime: python\nhandler: main.handler\n", map[string]string{"main.py": warmFn}))
	}
	answers(t, e, "earlier")
	clk.Set(clk.Now().Add(3 * time.Minute))
	answers(t, e, "latest")
	clk.Set(clk.Now().Add(time.Minute))
	dir := e.dataDir
	held := func(name string) bool { return e.p.current(name).starter.Warm() != nil }

	// Room for one holder: the one called last.
	e.stop()
	e = start(t, dir, withClock, func(c *Config) { c.WarmMax = 1 })
	waitFor(t, "the function called last to be built ahead", 60*time.Second, func() bool { return held("latest") })
	if held("earlier") || held("never") {
		t.Fatalf("with room for one, warm holders %+v; want only latest", e.p.instCfg.Warm.Snapshot().Holders)
	}

	// Room for all: both called, never the one nobody called.
	e.stop()
	e = start(t, dir, withClock)
	if !strings.Contains(e.logText(), `"functions":["latest","earlier"]`) {
		t.Fatalf("the restart did not build latest then earlier ahead: %s", e.logText())
	}
	waitFor(t, "both functions called to be built ahead", 60*time.Second, func() bool { return held("latest") && held("earlier") })
	if held("never") {
		t.Fatalf("a function nobody called was built ahead: %+v", e.p.instCfg.Warm.Snapshot().Holders)
	}

	// A day later nothing is recent: nothing is built.
	e.stop()
	clk.Set(clk.Now().Add(25 * time.Hour))
	e = start(t, dir, withClock)
	if strings.Contains(e.logText(), "build warm capacity ahead") {
		t.Fatalf("a day after the last call, the restart built ahead: %s", e.logText())
	}
}
