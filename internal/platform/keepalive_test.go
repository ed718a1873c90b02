package platform

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/keepalive"
	"github.com/ebb-run/ebb/internal/keepalive/live"
)

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t
	}
}

// bootstraps counts the processes below this one running the test
// function's binary (./bootstrap): its instances.
func bootstraps() int {
	n := 0
	stack := childrenOf(os.Getpid())
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if strings.TrimSpace(string(comm)) == "bootstrap" {
			n++
		}
		stack = append(stack, childrenOf(pid)...)
	}
	return n
}

// A function under keep_alive: adaptive, called every 15 minutes (on a
// clock the test moves), is unloaded right after each call once the policy
// has learned the period, pre-warmed before the next call (which is then
// not cold), and, when a call does not come, unloaded after the learned
// keep-alive; status and /metrics count it.
func TestAdaptiveKeepAlivePrewarmsAndUnloads(t *testing.T) {
	clk := &testClock{t: time.Now()}
	e := start(t, "", func(c *Config) { c.Now = clk.Now })
	e.deploy(goFn(t, "timer", "keep_alive: adaptive\n"))
	status := func() api.FunctionStatus {
		st, err := e.c.Status(context.Background(), "timer")
		if err != nil {
			t.Fatal(err)
		}
		return *st
	}
	// moveTo moves the clock and has the scheduler look at it.
	moveTo := func(at time.Time) {
		clk.Set(at)
		e.p.keep.Poke()
	}
	call := func() (cold string) {
		t.Helper()
		code, body, hdr := e.invoke("timer", `{}`)
		if code != 200 {
			t.Fatalf("invoke: %d %s", code, body)
		}
		return hdr.Get("Ebb-Cold-Start")
	}

	const period = 15 * time.Minute
	var last time.Time
	// The history: the clock moves without a poke, so that the scheduler
	// sees each call's decision only at the next call (no pre-warm yet).
	for i := range 7 {
		if i > 0 {
			clk.Set(last.Add(period))
		}
		last = clk.Now()
		call()
	}
	ka := status().KeepAlive
	if ka == nil || ka.Why != "histogram" || ka.NextPrewarm.IsZero() {
		t.Fatalf("after 7 calls every 15m, keep-alive %+v: want a histogram decision with a pre-warm", ka)
	}
	if !ka.NextPrewarm.Before(last.Add(period)) || !ka.NextUnload.After(last.Add(period)) {
		t.Fatalf("pre-warm at %v and unload at %v do not surround the next call at %v", ka.NextPrewarm, ka.NextUnload, last.Add(period))
	}
	// Unloaded right after the call: the pool's idle stop follows the
	// policy (its tick runs on the real clock, reading the moved one).
	waitFor(t, "the instance unloaded right after the call", 30*time.Second, func() bool {
		return len(status().Instances) == 0 && bootstraps() == 0
	})

	// The pre-warm comes before the next call, which finds the instance
	// warm.
	moveTo(ka.NextPrewarm)
	waitFor(t, "the pre-warmed instance", 30*time.Second, func() bool {
		st := status()
		return len(st.Instances) == 1 && st.Instances[0].Phase == "idle"
	})
	if !holdsInstance(e.p, "timer") {
		t.Fatalf("the pre-warmed instance is not in the warm budget: %+v", e.p.instCfg.Warm.Snapshot())
	}
	moveTo(last.Add(period))
	last = clk.Now()
	if cold := call(); cold != "false" {
		t.Fatalf("the call after a pre-warm: Ebb-Cold-Start %q, want false", cold)
	}
	ka = status().KeepAlive
	if ka.Prewarms != 1 || ka.PrewarmedStarts != 1 || ka.UnusedPrewarms != 0 {
		t.Fatalf("keep-alive counts %+v: want one pre-warm, used", ka)
	}

	// The next call does not come: pre-warmed, then unloaded at the learned
	// keep-alive, the process gone.
	waitFor(t, "the instance unloaded after the call", 30*time.Second, func() bool { return bootstraps() == 0 })
	ka = status().KeepAlive
	moveTo(ka.NextPrewarm)
	waitFor(t, "the second pre-warm", 30*time.Second, func() bool { return bootstraps() == 1 })
	moveTo(ka.NextUnload.Add(time.Second))
	waitFor(t, "the unused pre-warm unloaded", 30*time.Second, func() bool {
		moveTo(clk.Now().Add(time.Second)) // an unload still stopping is looked at again a second later
		return bootstraps() == 0 && len(status().Instances) == 0
	})
	// Its budget hold goes when the pool has let the instance go, a step
	// after the process is gone.
	waitFor(t, "the unloaded pre-warm to release its warm budget", 30*time.Second, func() bool {
		moveTo(clk.Now().Add(time.Second))
		return !holdsInstance(e.p, "timer")
	})
	ka = status().KeepAlive
	if ka.Prewarms != 2 || ka.PrewarmedStarts != 1 || ka.UnusedPrewarms != 1 || ka.IdleWarmSeconds <= 0 {
		t.Fatalf("keep-alive counts %+v: want two pre-warms, one used, one unused, some idle warm time", ka)
	}
	_, body, _ := e.do("GET", "/metrics", "", nil)
	for _, re := range []string{`ebb_keepalive_prewarms_total\{function="timer"\} 2`, `ebb_keepalive_prewarmed_starts_total\{function="timer"\} 1`,
		`ebb_keepalive_prewarms_unused_total\{function="timer"\} 1`, `ebb_keepalive_idle_warm_seconds_total\{function="timer"\} [1-9]`} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics has no %s", re)
		}
	}
}

// holdsInstance says whether fn holds warm budget for a pre-warmed
// instance.
func holdsInstance(p *Platform, fn string) bool {
	for _, h := range p.instCfg.Warm.Snapshot().Holders {
		if h.Function == fn && h.Kind == instance.KindInstance {
			return true
		}
	}
	return false
}

// A pre-warm goes through the warm budget: with no room for any holder
// (--warm-max 0) the predicted call finds nothing started, and nothing is
// counted as pre-warmed.
func TestAdaptivePrewarmNeedsWarmBudget(t *testing.T) {
	clk := &testClock{t: time.Now()}
	e := start(t, "", func(c *Config) { c.Now = clk.Now; c.WarmMax = -1 })
	e.deploy(goFn(t, "timer", "keep_alive: adaptive\n"))
	var last time.Time
	for i := range 7 {
		if i > 0 {
			clk.Set(last.Add(15 * time.Minute))
		}
		last = clk.Now()
		if code, body, _ := e.invoke("timer", `{}`); code != 200 {
			t.Fatalf("invoke: %d %s", code, body)
		}
	}
	st, err := e.c.Status(context.Background(), "timer")
	if err != nil || st.KeepAlive == nil || st.KeepAlive.NextPrewarm.IsZero() {
		t.Fatalf("status %+v, %v: want a pre-warm ahead", st, err)
	}
	waitFor(t, "the instance unloaded right after the call", 30*time.Second, func() bool { return e.instances("timer") == 0 })
	// Applied here, synchronously: a pre-warm that started an instance
	// would list it at once.
	e.p.keep.Advance(st.KeepAlive.NextPrewarm)
	st, _ = e.c.Status(context.Background(), "timer")
	if len(st.Instances) != 0 || st.KeepAlive.Prewarms != 0 {
		t.Fatalf("with no warm budget, instances %+v and %d pre-warms: want none", st.Instances, st.KeepAlive.Prewarms)
	}
}

// A function without keep_alive runs under the server's default: its
// idle_timeout unless --keep-alive says otherwise; idle_timeout in the
// manifest is a fixed keep-alive whatever the server's default.
func TestKeepAliveDefaults(t *testing.T) {
	e := start(t, "", func(c *Config) { c.KeepAlive = "adaptive" })
	e.deploy(goFn(t, "plain", ""))
	e.deploy(goFn(t, "pinned", "idle_timeout: 2m\n"))
	for name, want := range map[string]string{"plain": "adaptive (hybrid)", "pinned": "fixed:2m"} {
		st, err := e.c.Status(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if st.KeepAlive == nil || st.KeepAlive.Policy != want {
			t.Errorf("%s: keep-alive %+v, want policy %s", name, st.KeepAlive, want)
		}
	}
	code, body := deployRaw(t, e, "bad", goFn(t, "bad", "keep_alive: sometimes\n"))
	if code != 400 || !strings.Contains(body, "keep_alive") {
		t.Errorf("deploy with keep_alive: sometimes: %d %s, want a 400 naming keep_alive", code, body)
	}
}

// BenchmarkInvokeWarmAdaptive is BenchmarkInvokeWarm under keep_alive:
// adaptive: the invocation path's only addition is the keeper's Observe
// (a time stamp under the version's own lock, within a bin).
func BenchmarkInvokeWarmAdaptive(b *testing.B) { benchInvokeWarm(b, "keep_alive: adaptive\n") }

// A python function under keep_alive: adaptive is pre-warmed along its
// cheapest path, a zygote and its forked spare child, which the next call
// claims; unloading lets the zygote go (its process gone).
func TestAdaptiveKeepAlivePrewarmsPythonSpare(t *testing.T) {
	needPython(t)
	clk := &testClock{t: time.Now()}
	e := start(t, "", func(c *Config) { c.Now = clk.Now })
	e.deploy(fnDir(t, "name: pytimer\nruntime: python\nhandler: main.handler\nkeep_alive: adaptive\n", map[string]string{"main.py": warmFn}))
	status := func() api.FunctionStatus {
		st, err := e.c.Status(context.Background(), "pytimer")
		if err != nil {
			t.Fatal(err)
		}
		return *st
	}
	moveTo := func(at time.Time) {
		clk.Set(at)
		e.p.keep.Poke()
	}
	// nudge moves the clock a second, up to limit: an unload that left
	// something stopping is looked at again a second later.
	nudge := func(limit time.Time) {
		if at := clk.Now().Add(time.Second); at.Before(limit) {
			moveTo(at)
		}
	}
	call := func() (cold string) {
		t.Helper()
		code, body, hdr := e.invoke("pytimer", `{"a": "1"}`)
		if code != 200 {
			t.Fatalf("invoke: %d %s", code, body)
		}
		return hdr.Get("Ebb-Cold-Start")
	}
	const period = 15 * time.Minute
	var last time.Time
	// The history: the clock moves without a poke, so that the scheduler
	// sees each call's decision only at the next call (no pre-warm yet).
	for i := range 7 {
		if i > 0 {
			clk.Set(last.Add(period))
		}
		last = clk.Now()
		call()
	}
	ka := status().KeepAlive
	if ka == nil || ka.NextPrewarm.IsZero() {
		t.Fatalf("after 7 calls every 15m, keep-alive %+v: want a pre-warm", ka)
	}
	waitFor(t, "the instance and the zygote unloaded right after the call", 30*time.Second, func() bool {
		nudge(ka.NextPrewarm)
		st := status()
		return len(st.Instances) == 0 && st.Zygote == nil && st.Warm == nil
	})

	moveTo(ka.NextPrewarm)
	var zpid int
	waitFor(t, "the pre-warmed zygote and spare", 30*time.Second, func() bool {
		z := status().Zygote
		if z != nil && z.Spare {
			zpid = z.PID
			return true
		}
		return false
	})
	if st := status(); len(st.Instances) != 0 || st.Warm == nil {
		t.Fatalf("a python pre-warm started instances %+v / holds no warm budget %+v: want only the zygote and its spare, in the budget", st.Instances, st.Warm)
	}
	moveTo(last.Add(period))
	call()
	ka = status().KeepAlive
	if ka.Prewarms != 1 || ka.PrewarmedStarts != 1 {
		t.Fatalf("keep-alive counts %+v: want one pre-warm, used", ka)
	}
	waitFor(t, "the zygote unloaded after the call", 30*time.Second, func() bool {
		nudge(ka.NextPrewarm)
		_, err := os.Stat("/proc/" + strconv.Itoa(zpid))
		return os.IsNotExist(err) && status().Zygote == nil
	})
}

// nopTarget is a keeper's target that does nothing.
type nopTarget struct{}

func (nopTarget) Unload(time.Time) bool  { return true }
func (nopTarget) Prewarm(time.Time) bool { return true }

// The warm budget ranks a version by its keeper's predicted arrival where
// it has one, by recent use otherwise, on one scale: a function predicted
// in 2 minutes ranks below one used a minute ago and above one used 3
// minutes ago.
func TestWarmPriorityFollowsPredictedArrival(t *testing.T) {
	p := &Platform{keep: live.NewScheduler(nil, nil)}
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	k := p.keep.Add("timer", 1, keepalive.DefaultHybrid(), nopTarget{}, time.Minute)
	var last time.Time
	for i := range 12 {
		last = t0.Add(time.Duration(i) * 15 * time.Minute)
		k.Observe(last, false)
	}
	at, ok := k.NextArrival(last)
	if !ok {
		t.Fatal("no predicted arrival after 12 calls every 15m")
	}
	now := at.Add(-2 * time.Minute)
	predicted := p.warmPriority(instance.HolderInfo{Function: "timer", Version: 1, LastUse: last}, now)
	recent := p.warmPriority(instance.HolderInfo{Function: "other", Version: 1, LastUse: now.Add(-time.Minute)}, now)
	older := p.warmPriority(instance.HolderInfo{Function: "other", Version: 1, LastUse: now.Add(-3 * time.Minute)}, now)
	if !(older < predicted && predicted < recent) {
		t.Fatalf("priorities: used 3m ago %v, predicted in 2m %v, used 1m ago %v; want increasing", older, predicted, recent)
	}
	// Once the pre-warm window passed with no call, recent use ranks it.
	late := p.warmPriority(instance.HolderInfo{Function: "timer", Version: 1, LastUse: last}, last.Add(time.Hour))
	if late != instance.RecentUse(instance.HolderInfo{LastUse: last}, last.Add(time.Hour)) {
		t.Fatalf("after the window, priority %v is not recent use", late)
	}
}

// TestAdaptiveKeepAliveSurvivesRestart: the keepers' histories are
// rebuilt at start from the usage rollups of the day before, so a timer
// called every 15 minutes before a restart is pre-warmed before its next
// call after it, with no new call to learn from.
func TestAdaptiveKeepAliveSurvivesRestart(t *testing.T) {
	clk := &testClock{t: time.Now()}
	withClock := func(c *Config) { c.Now = clk.Now }
	e := start(t, "", withClock)
	e.deploy(goFn(t, "timer", "keep_alive: adaptive\n"))
	const period = 15 * time.Minute
	var last time.Time
	for i := range 7 {
		if i > 0 {
			clk.Set(last.Add(period))
		}
		last = clk.Now()
		if code, body, _ := e.invoke("timer", `{}`); code != 200 {
			t.Fatalf("invoke: %d %s", code, body)
		}
	}
	dir := e.dataDir
	e.stop()
	clk.Set(last.Add(2 * time.Minute))
	e = start(t, dir, withClock)
	st, err := e.c.Status(context.Background(), "timer")
	if err != nil {
		t.Fatal(err)
	}
	ka := st.KeepAlive
	next := last.Add(period)
	if ka == nil || ka.Why != "histogram" || ka.NextPrewarm.IsZero() || !ka.NextPrewarm.After(clk.Now()) || !ka.NextPrewarm.Before(next) {
		t.Fatalf("after a restart, keep-alive %+v: want the learned pre-warm before the next call at %v", ka, next)
	}
	clk.Set(ka.NextPrewarm)
	e.p.keep.Poke()
	waitFor(t, "the pre-warmed instance", 30*time.Second, func() bool {
		st, err := e.c.Status(context.Background(), "timer")
		return err == nil && len(st.Instances) > 0 && st.KeepAlive.Prewarms == 1
	})
}

// A start that finds the python spare still being made waits for it only
// as long as forking its own child would take: a spare primed with a slow
// warmup event (3 s here) must not hold the request for the rest of it.
func TestSlowWarmupDoesNotHoldAStart(t *testing.T) {
	needPython(t)
	e := start(t, "")
	const slowFn = `
import time

def handler(event, context):
    if event.get("warm"):
        time.sleep(3)
    return {"ok": True}
`
	e.deploy(fnDir(t, "name: slowwarm\nruntime: python\nhandler: main.handler\nwarmup: {\"warm\": true}\n", map[string]string{"main.py": slowFn}))
	// The deploy builds the zygote and its spare, which primes for 3 s.
	waitFor(t, "the zygote", 30*time.Second, func() bool {
		st, err := e.c.Status(context.Background(), "slowwarm")
		return err == nil && st.Zygote != nil
	})
	t0 := time.Now()
	code, body, _ := e.invoke("slowwarm", `{}`)
	took := time.Since(t0)
	if code != 200 {
		t.Fatalf("invoke: %d %s", code, body)
	}
	if took > 1500*time.Millisecond {
		t.Fatalf("the first call took %v: it waited for the spare's 3 s warmup instead of forking its own child", took)
	}
	t.Logf("first call %v while the spare primed", took)
}
