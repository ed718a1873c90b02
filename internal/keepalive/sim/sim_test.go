package sim

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/keepalive"
	"github.com/ebb-run/ebb/internal/keepalive/trace"
)

func app(name string, arrivals ...trace.Arrival) trace.App {
	a := trace.App{AppKey: trace.AppKey{Owner: "o", App: name}, Arrivals: arrivals}
	for _, x := range arrivals {
		a.Invocations += x.Count
	}
	return a
}

// TestFixedTenMinutes: fixed:10m is exactly a 10-minute keep-alive at
// minute resolution: a call 10 minutes after the last is warm, 11 is
// cold; idle warm minutes are counted between calls and up to the end.
func TestFixedTenMinutes(t *testing.T) {
	a := app("a", trace.Arrival{Minute: 0, Count: 1}, trace.Arrival{Minute: 5, Count: 1},
		trace.Arrival{Minute: 15, Count: 1}, trace.Arrival{Minute: 26, Count: 3}, trace.Arrival{Minute: 27, Count: 1})
	r := ReplayApp(a, 40, keepalive.Fixed(10*time.Minute))
	// cold: 0 (first), 26 (11 after 15); warm: 5, 15 (10 after 5), 27
	// idle: 1–4, 6–14, 16–25, 28–37
	if r.Cold != 2 || r.Idle != 4+9+10+10 || r.Prewarms != 0 || r.Decisions != 5 {
		t.Fatalf("fixed:10m: %+v, want 2 cold, 33 idle minutes, no pre-warms, 5 decisions", r)
	}
	// The horizon cuts the last keep-alive: a trace of 30 minutes has
	// idle 28–29 at the end.
	if r := ReplayApp(a, 30, keepalive.Fixed(10*time.Minute)); r.Idle != 4+9+10+2 {
		t.Fatalf("fixed:10m over 30 minutes: %d idle minutes, want 25", r.Idle)
	}
	rep := Run([]trace.App{a}, 40, 1, map[trace.AppKey]float64{a.AppKey: 100}, nil)
	if len(rep.Results) != 1 || rep.Results[0].Policy != Baseline {
		t.Fatalf("Run without policies: %+v, want the baseline alone", rep.Results)
	}
	res := rep.Results[0]
	if res.Invocations != 7 || res.ColdStarts != 2 || res.WastedMemoryMBMinutes != 3300 || res.ColdStartPct.P75 != 28.571 {
		t.Fatalf("report %+v, want 7 invocations, 2 cold (28.571%%), 3300 MB·minutes", res)
	}
	if *res.VsBaseline.WastedMemoryMBMinutes != 1 || *res.VsBaseline.ColdStartPctP75 != 1 {
		t.Fatalf("baseline against itself: %v, %v", *res.VsBaseline.WastedMemoryMBMinutes, *res.VsBaseline.ColdStartPctP75)
	}
}

// prewarmer pre-warms 8 minutes after each call and unloads 12 after.
type prewarmer struct{}

func (prewarmer) Name() string                { return "prewarm-8-12" }
func (prewarmer) New() keepalive.History      { return &prewarmHistory{} }
func (h *prewarmHistory) Observe(t time.Time) { h.last = t }
func (h *prewarmHistory) Decide(time.Time) keepalive.Decision {
	return keepalive.Decision{Last: h.last, PrewarmAt: h.last.Add(8 * time.Minute), UnloadAt: h.last.Add(12 * time.Minute)}
}

type prewarmHistory struct{ last time.Time }

// TestPrewarmAccounting: with a pre-warm the app is cold between the call
// and the pre-warm, warm from it to the unload; only those minutes are
// idle.
func TestPrewarmAccounting(t *testing.T) {
	a := app("a", trace.Arrival{Minute: 0, Count: 1}, trace.Arrival{Minute: 10, Count: 2},
		trace.Arrival{Minute: 15, Count: 1}, trace.Arrival{Minute: 40, Count: 1})
	r := ReplayApp(a, 60, prewarmer{})
	// 0 cold (first); 10 warm (8–12); 15 cold (before 18); 40 cold (after
	// 23–27); idle: 8–9, 23–27, 48–52; pre-warms at 8, 23 and 48 (the one
	// at 18 never happened: the call at 15 came first)
	if r.Cold != 3 || r.Idle != 2+5+5 || r.Prewarms != 3 {
		t.Fatalf("pre-warmer: %+v, want 3 cold, 12 idle minutes, 3 pre-warms", r)
	}
}

// fromSynth writes a synthetic trace's days and reads them back.
func fromSynth(t *testing.T, s *trace.Synthetic, days int) ([]trace.App, int, map[trace.AppKey]float64) {
	t.Helper()
	tr := trace.New()
	for d := range days {
		var b bytes.Buffer
		if err := s.WriteDay(&b, d); err != nil {
			t.Fatal(err)
		}
		if err := tr.ReadDay(&b, "synthetic"); err != nil {
			t.Fatal(err)
		}
	}
	return tr.Apps(), tr.Minutes(), s.Memory
}

// TestHybridAgainstFixed is the measure: synthetic days of 300
// apps, hybrid against fixed:10m, seeds 1–3, on both mixes. It asserts
// what hybrid achieves (docs/keepalive.md has the rows):
//   - on the paper mix (trace.Synthesize) the goal: the 75th-percentile
//     app's cold-start % at most 0.5× and the wasted memory time at most
//     0.9× (measured: 0.500/0.818, 0.405/0.533, 0.500/0.648), and the
//     median app at most 0.6× (0.28, 0.50, 0.24);
//   - on the poisson-rare stress mix (a third of the apps rare and
//     memoryless) the 75th-percentile app at most 0.55× but at up to 1.2×
//     the waste (measured: 0.417/1.174, 0.524/1.171, 0.481/1.184): there
//     the goal is not met, as no policy that learns from the past buys a
//     memoryless app's warm starts for less than one mean idle time each.
func TestHybridAgainstFixed(t *testing.T) {
	if testing.Short() {
		t.Skip("replays 6 synthetic traces")
	}
	hybrid, _ := keepalive.Parse("hybrid")
	for _, seed := range []uint64{1, 2, 3} {
		for _, c := range []struct {
			mix                         string
			wantP75, wantP50, wantWaste float64
		}{
			{trace.MixPaper, 0.5, 0.6, 0.9},
			{trace.MixPoissonRare, 0.55, 0.6, 1.2},
		} {
			s, err := trace.SynthesizeNamed(c.mix, 300, 3, seed)
			if err != nil {
				t.Fatal(err)
			}
			apps, minutes, mem := fromSynth(t, s, 3)
			rep := Run(apps, minutes, 3, mem, []keepalive.Policy{hybrid})
			base, h := rep.Results[0], rep.Results[1]
			p75, waste := *h.VsBaseline.ColdStartPctP75, *h.VsBaseline.WastedMemoryMBMinutes
			t.Logf("seed %d %s: cold p50 %.1f%%→%.1f%%, p75 %.1f%%→%.1f%% (%.3f×), waste %.3f×", seed, c.mix,
				base.ColdStartPct.P50, h.ColdStartPct.P50, base.ColdStartPct.P75, h.ColdStartPct.P75, p75, waste)
			if p75 > c.wantP75 || waste > c.wantWaste || h.ColdStartPct.P50 > c.wantP50*base.ColdStartPct.P50 {
				t.Errorf("seed %d %s: hybrid p75 %.3f×, p50 %.1f%% against %.1f%%, waste %.3f×; want p75 ≤ %v×, p50 ≤ %v×, waste ≤ %v×",
					seed, c.mix, p75, h.ColdStartPct.P50, base.ColdStartPct.P50, waste, c.wantP75, c.wantP50, c.wantWaste)
			}
		}
	}
}

func TestReportJSON(t *testing.T) {
	apps, minutes, _ := fromSynth(t, trace.Synthesize(20, 1, 5), 1)
	fixed20, _ := keepalive.Parse("fixed:20m")
	rep := Run(apps, minutes, 1, nil, []keepalive.Policy{fixed20})
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"policy":"fixed:10m"`, `"policy":"fixed:20m"`, `"apps":20`, `"cold_start_pct":{"p50":`, `"wasted_memory_mb_minutes":`,
		`"vs_fixed_10m":{"cold_start_pct_p75":`, `"policy_ns_per_invocation":`, `"memory_unit":"app"`} {
		if !bytes.Contains(b, []byte(k)) {
			t.Errorf("report JSON lacks %s: %s", k, b)
		}
	}
	// A longer keep-alive wastes more and finds fewer cold starts.
	if f10, f20 := rep.Results[0], rep.Results[1]; f20.WastedMemoryMBMinutes <= f10.WastedMemoryMBMinutes || f20.ColdStarts >= f10.ColdStarts {
		t.Errorf("fixed:20m against fixed:10m: %+v vs %+v", f20, f10)
	}
	if txt := rep.Text(); !strings.Contains(txt, "fixed:20m") || !strings.Contains(txt, "waste vs 10m") {
		t.Errorf("text report: %s", txt)
	}
}

func BenchmarkReplayHybrid(b *testing.B) {
	s := trace.Synthesize(200, 1, 1)
	tr := trace.New()
	var buf bytes.Buffer
	s.WriteDay(&buf, 0)
	if err := tr.ReadDay(&buf, "synthetic"); err != nil {
		b.Fatal(err)
	}
	apps := tr.Apps()
	hybrid, _ := keepalive.Parse("hybrid")
	b.ResetTimer()
	for range b.N {
		for _, a := range apps {
			ReplayApp(a, tr.Minutes(), hybrid)
		}
	}
}
