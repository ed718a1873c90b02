package monitor

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func newMonitor(t *testing.T, cfg Config) *Monitor {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func flush(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// sendJSON offers n python-style events of version v at at, with feature x
// drawn from dist.
func sendJSON(t *testing.T, m *Monitor, v int, at time.Time, n int, dist func() float64) {
	t.Helper()
	for range n {
		ev := Event{Function: "f", Version: v, At: at, Kind: KindJSON,
			Request: fmt.Appendf(nil, `{"x": %v, "name": "a"}`, dist()), Response: []byte(`{"score": 1}`)}
		for !m.Offer(ev) {
			flush(t, m) // the test outruns the summariser: wait, don't drop
		}
	}
	flush(t, m)
}

func TestReportDriftBetweenWindowsAndVersions(t *testing.T) {
	m := newMonitor(t, Config{})
	r := rand.New(rand.NewPCG(5, 6))
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	normal := r.NormFloat64
	shifted := func() float64 { return r.NormFloat64() + 2 }
	sendJSON(t, m, 1, t0, 600, normal)
	sendJSON(t, m, 1, t0.Add(time.Minute), 600, normal)
	sendJSON(t, m, 1, t0.Add(2*time.Minute), 600, shifted)
	sendJSON(t, m, 2, t0.Add(2*time.Minute), 600, normal)

	psi := func(q Query) (*Report, float64) {
		t.Helper()
		rep := m.Report(q)
		if rep.MaxPSI == nil {
			t.Fatalf("report %+v has no PSI", rep)
		}
		return rep, *rep.MaxPSI
	}
	w := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Minute) }
	rep, flat := psi(Query{Function: "f", Version: 1, Since: w(1), Until: w(2), BaselineVersion: 1, BaselineSince: w(0), BaselineUntil: w(1)})
	if flat >= 0.1 {
		t.Errorf("PSI between two windows of one distribution = %v, want < 0.1", flat)
	}
	if rep.Events != 600 || rep.Baseline.Events != 600 {
		t.Errorf("events = %d / %d, want 600 / 600", rep.Events, rep.Baseline.Events)
	}
	if len(rep.Features) != 2 || rep.Features[0].Name != "event.x[0]" || rep.Features[1].Name != "result.score[0]" {
		t.Fatalf("features = %+v", rep.Features)
	}
	x := rep.Features[0]
	var sum int64
	for _, c := range x.Counts {
		sum += c
	}
	if x.Count != 600 || sum != 600 || len(x.Counts) != len(x.Edges)+1 || len(x.Edges) < 5 {
		t.Errorf("feature x: count %d, histogram sum %d, %d counts over %d edges", x.Count, sum, len(x.Counts), len(x.Edges))
	}
	// Minute 0 saw the values the edges were learned from, binned when
	// they froze.
	first := m.Report(Query{Function: "f", Version: 1, Since: w(0), Until: w(1)}).Features[0]
	sum = 0
	for _, c := range first.Counts {
		sum += c
	}
	if first.Count != 600 || sum != 600 {
		t.Errorf("minute 0: count %d, histogram sum %d, want 600 and 600", first.Count, sum)
	}
	if _, up := psi(Query{Function: "f", Version: 1, Since: w(2), Until: w(3), BaselineVersion: 1, BaselineSince: w(0), BaselineUntil: w(2)}); up <= 0.25 {
		t.Errorf("PSI after a shift of two sigma = %v, want > 0.25", up)
	}
	// Two versions over the same minute: v2 kept the distribution, v1 moved.
	if _, v := psi(Query{Function: "f", Version: 2, Since: w(2), Until: w(3), BaselineVersion: 1, BaselineSince: w(0), BaselineUntil: w(2)}); v >= 0.1 {
		t.Errorf("PSI of version 2 against version 1's first minutes = %v, want < 0.1", v)
	}
	if _, v := psi(Query{Function: "f", Version: 2, Since: w(2), Until: w(3), BaselineVersion: 1, BaselineSince: w(2), BaselineUntil: w(3)}); v <= 0.25 {
		t.Errorf("PSI of version 2 against version 1 shifted = %v, want > 0.25", v)
	}
	rep = m.Report(Query{Function: "f", Version: 1, Since: w(0), Until: w(3), Series: true})
	if rep.MaxPSI != nil || rep.Events != 1800 {
		t.Errorf("without a baseline: max_psi %v, events %d; want null, 1800", rep.MaxPSI, rep.Events)
	}
	// The series shows the shift in the third minute.
	s := rep.Features[0].Series
	if len(s) != 3 || !s[0].Start.Equal(w(0)) || !s[2].Start.Equal(w(2)) || s[1].Count != 600 || s[1].Mean > 0.2 || s[2].Mean < 1.8 {
		t.Errorf("series = %+v, want three minutes of 600, the last with mean about 2", s)
	}
	if m.Report(Query{Function: "f", Version: 1, Since: w(0), Until: w(3)}).Features[0].Series != nil {
		t.Error("a series came without asking")
	}
}

func TestRetentionDropsOldWindows(t *testing.T) {
	m := newMonitor(t, Config{Retention: time.Hour})
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	one := func() float64 { return 1 }
	sendJSON(t, m, 1, t0, 1, one)
	sendJSON(t, m, 1, t0.Add(30*time.Minute), 1, one)
	all := Query{Function: "f", Version: 1, Since: t0, Until: t0.Add(3 * time.Hour)}
	if got := m.Report(all).Events; got != 2 {
		t.Fatalf("events = %d, want 2", got)
	}
	sendJSON(t, m, 1, t0.Add(61*time.Minute), 1, one)
	if got := m.Report(all).Events; got != 2 {
		t.Fatalf("events after an hour = %d, want 2 (the first window dropped)", got)
	}
}

func TestOIPClassesAndFeatureCap(t *testing.T) {
	m := newMonitor(t, Config{MaxFeatures: 2})
	req := []byte(`{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}`)
	resp := []byte(`{"outputs":[{"name":"label","shape":[2],"datatype":"INT64","data":[2,0]},` +
		`{"name":"p","shape":[2,3],"datatype":"FP32","data":[0.1,0.2,0.7,0.8,0.1,0.1]}]}`)
	at := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	for range 3 {
		m.Offer(Event{Function: "g", Version: 1, At: at, Kind: KindOIP, Request: req, Response: resp})
	}
	flush(t, m)
	rep := m.Report(Query{Function: "g", Version: 1, Since: at, Until: at.Add(time.Minute)})
	var names []string
	for _, f := range rep.Features {
		names = append(names, f.Name)
	}
	if fmt.Sprint(names) != "[input.x[0] input.x[1] output.label[0] output.p[0] output.p[1]]" {
		t.Fatalf("features = %v (x and p capped at 2)", names)
	}
	if x0 := rep.Features[0]; x0.Count != 6 || x0.Mean != 2.5 || x0.Min != 1 || x0.Max != 4 {
		t.Errorf("input.x[0] = %+v, want count 6, mean 2.5, min 1, max 4", x0)
	}
	if len(rep.Classes) != 2 || fmt.Sprint(rep.Classes[0].Counts) != "map[0:3 2:3]" || fmt.Sprint(rep.Classes[1].Counts) != "map[0:3 2:3]" {
		t.Errorf("classes = %+v, want label and argmax of p both {0:3, 2:3}", rep.Classes)
	}
	if c := m.Counts(); c.Events != 3 || c.Failed != 0 {
		t.Errorf("counts = %+v", c)
	}
	m.Offer(Event{Function: "g", Version: 1, At: at, Kind: KindOIP, Request: []byte("{"), Response: resp})
	flush(t, m)
	if c := m.Counts(); c.Failed != 1 {
		t.Errorf("a broken body was not counted as failed: %+v", c)
	}
}

func TestOfferDropsWhenFull(t *testing.T) {
	m := newMonitor(t, Config{Queue: 1})
	m.mu.Lock() // the summariser stalls on its first event
	ev := Event{Function: "f", Version: 1, At: time.Now(), Kind: KindJSON, Request: []byte(`{"a":1}`), Response: []byte(`{}`)}
	accepted := 0
	for range 3 {
		if m.Offer(ev) {
			accepted++
		}
	}
	m.mu.Unlock()
	flush(t, m)
	c := m.Counts()
	if c.Dropped == 0 || c.Dropped+c.Events != 3 || int(c.Events) != accepted {
		t.Fatalf("counts = %+v with %d accepted; want a drop and every event either summarised or dropped", c, accepted)
	}
}

func TestAdmitSamplesOutPastTheBudget(t *testing.T) {
	// 1000 bytes a second: the summariser adds 10 every 10 ms, far less
	// than the second call needs.
	m := newMonitor(t, Config{Budget: 1000})
	if !m.Admit(600) {
		t.Fatal("the first 600 bytes of a 1000-byte budget were refused")
	}
	if m.Admit(600) {
		t.Fatal("600 more bytes were admitted with about 400 left")
	}
	if c := m.Counts(); c.SampledOut != 1 || c.Dropped != 0 {
		t.Fatalf("counts = %+v, want one sampled out", c)
	}
}

func TestReportBeforeEdgesFreezeDoesNotFixThem(t *testing.T) {
	m := newMonitor(t, Config{})
	at := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	q := Query{Function: "f", Version: 1, Since: at, Until: at.Add(time.Minute)}
	i := 0.0
	next := func() float64 { i++; return i }
	sendJSON(t, m, 1, at, 3, next) // x = 1, 2, 3
	rep := m.Report(q)
	if x := rep.Features[0]; fmt.Sprint(x.Edges) != "[1 2 3]" || fmt.Sprint(x.Counts) != "[0 1 1 1]" {
		t.Fatalf("after 3 values: edges %v counts %v, want provisional [1 2 3] and [0 1 1 1]", x.Edges, x.Counts)
	}
	sendJSON(t, m, 1, at, 297, next) // x = 4 … 300: the edges freeze at 256
	x := m.Report(q).Features[0]
	var sum int64
	for _, c := range x.Counts {
		sum += c
	}
	if len(x.Edges) != 11 || x.Edges[0] != 1 || x.Edges[10] != 256 || sum != 300 {
		t.Fatalf("after 300 values: edges %v (sum of counts %d), want 11 edges from 1 to 256 learned from the first 256, and 300 counted", x.Edges, sum)
	}
}

func TestTensorCapForgetsNamesPastIt(t *testing.T) {
	m := newMonitor(t, Config{MaxTensors: 2})
	at := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	for i := range 50 {
		m.Offer(Event{Function: "f", Version: 1, At: at, Kind: KindJSON, Request: fmt.Appendf(nil, `{"k%d": 1}`, i), Response: []byte(`{}`)})
	}
	flush(t, m)
	rep := m.Report(Query{Function: "f", Version: 1, Since: at, Until: at.Add(time.Minute)})
	m.mu.Lock()
	remembered := len(m.fns["f"].tensors)
	m.mu.Unlock()
	if len(rep.Features) != 2 || rep.Features[0].Name != "event.k0[0]" || remembered != 2 {
		t.Fatalf("features %d (first %s), names remembered %d; want 2, event.k0[0], 2", len(rep.Features), rep.Features[0].Name, remembered)
	}
}

// TestReportUntilInTheWindowsFirstSecond: a report until a moment in the
// first second of a window includes that window's events (the full suite
// once asked at 01:27:00.87 for events of 01:27:00.8 and got none).
func TestReportUntilInTheWindowsFirstSecond(t *testing.T) {
	m := newMonitor(t, Config{})
	t0 := time.Date(2026, 12, 1, 1, 27, 0, 0, time.UTC)
	sendJSON(t, m, 1, t0.Add(800*time.Millisecond), 20, func() float64 { return 1 })
	for _, series := range []bool{false, true} {
		rep := m.Report(Query{Function: "f", Version: 1, Since: t0.Add(-time.Hour), Until: t0.Add(870 * time.Millisecond), Series: series})
		if rep.Events != 20 {
			t.Errorf("report until 870 ms into the window (series %v): %d events, want 20", series, rep.Events)
		}
		if series && (len(rep.Features) == 0 || len(rep.Features[0].Series) != 1) {
			t.Errorf("series: %+v, want the window's point", rep.Features)
		}
	}
	if rep := m.Report(Query{Function: "f", Version: 1, Since: t0.Add(-time.Hour), Until: t0}); rep.Events != 0 {
		t.Errorf("report until the window's start: %d events, want none", rep.Events)
	}
}

// An idle summariser sleeps (no ticks on a node with nothing to summarise)
// and the next event wakes it: offered while it sleeps, an event is still
// folded, and a flush still returns.
func TestSummariserSleepsWhenIdle(t *testing.T) {
	m := newMonitor(t, Config{})
	asleep := func() bool {
		deadline := time.Now().Add(5 * time.Second)
		for !m.asleep.Load() {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
	if !asleep() {
		t.Fatalf("summariser still awake %v after its last event, want asleep after %d empty drains", 5*time.Second, idleDrains)
	}
	for round := range 3 {
		ev := Event{Function: "f", Version: 1, At: time.Now(), Kind: KindJSON, Request: []byte(`{"x": 1}`), Response: []byte(`{}`)}
		if !m.Offer(ev) {
			t.Fatal("offer refused")
		}
		// Folded without a flush to wake the summariser.
		deadline := time.Now().Add(2 * time.Second)
		for m.Counts().Events != uint64(round+1) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: counts %+v 2s after the offer, want the event offered to a sleeping summariser folded", round, m.Counts())
			}
			time.Sleep(time.Millisecond)
		}
		if !asleep() {
			t.Fatalf("round %d: the summariser did not go back to sleep", round)
		}
	}
	// A flush alone wakes it too.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.Flush(ctx); err != nil {
		t.Fatalf("flush of a sleeping summariser: %v", err)
	}
}
