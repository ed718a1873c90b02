package dispatch

import (
	"slices"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	idle := func(id string, lastUsed time.Duration) InstanceStats {
		return InstanceStats{ID: id, Phase: PhaseIdle, StartedAt: t0, LastUsed: t0.Add(lastUsed)}
	}
	busy := func(id string) InstanceStats {
		return InstanceStats{ID: id, Phase: PhaseBusy, InFlight: 1, StartedAt: t0, LastUsed: t0}
	}
	inPhase := func(id string, ph Phase) InstanceStats {
		return InstanceStats{ID: id, Phase: ph, StartedAt: t0, LastUsed: t0}
	}
	base := Config{Function: "fn", Concurrency: 1, MaxInstances: 10, IdleTimeout: time.Minute}
	withMin := func(n int) Config { c := base; c.MinInstances = n; return c }

	tests := []struct {
		name string
		cfg  Config
		s    State
		now  time.Duration // after t0
		want Decision
	}{
		{name: "empty", cfg: base, now: time.Hour, want: Decision{}},
		{name: "idle, not yet expired", cfg: base, s: State{Instances: []InstanceStats{idle("a", 0)}},
			now: time.Minute - time.Nanosecond, want: Decision{}},
		{name: "idle exactly IdleTimeout", cfg: base, s: State{Instances: []InstanceStats{idle("a", 0)}},
			now: time.Minute, want: Decision{Stop: []string{"a"}}},
		{name: "only expired ones stop, least recently used first", cfg: base,
			s:   State{Instances: []InstanceStats{idle("a", 20*time.Second), idle("b", 0), idle("c", 50*time.Second), busy("d")}},
			now: 80 * time.Second, want: Decision{Stop: []string{"b", "a"}}},
		{name: "busy never stops", cfg: base, s: State{Instances: []InstanceStats{busy("a")}}, now: time.Hour, want: Decision{}},
		{name: "idle phase with a request in flight does not stop", cfg: base,
			s:   State{Instances: []InstanceStats{{ID: "a", Phase: PhaseIdle, InFlight: 1, LastUsed: t0}}},
			now: time.Hour, want: Decision{}},
		{name: "not while requests wait", cfg: base, s: State{Instances: []InstanceStats{idle("a", 0)}, Waiting: 1},
			now: time.Hour, want: Decision{}},
		{name: "min keeps the most recently used", cfg: withMin(2),
			s:   State{Instances: []InstanceStats{idle("a", 3*time.Second), idle("b", 1*time.Second), idle("c", 2*time.Second), idle("d", 4*time.Second)}},
			now: time.Hour, want: Decision{Stop: []string{"b", "c"}}},
		{name: "min counts busy ones", cfg: withMin(2),
			s:   State{Instances: []InstanceStats{busy("a"), idle("b", 0), idle("c", time.Second)}},
			now: time.Hour, want: Decision{Stop: []string{"b"}}},
		{name: "at min: nothing stops", cfg: withMin(2),
			s:   State{Instances: []InstanceStats{idle("a", 0), idle("b", 0)}},
			now: time.Hour, want: Decision{}},
		{name: "starting ones do not hold the floor for stops", cfg: withMin(1),
			s:   State{Instances: []InstanceStats{idle("a", 0), inPhase("s", PhaseStarting)}, Starting: 1},
			now: time.Hour, want: Decision{}},
		{name: "start up to min", cfg: withMin(3), now: 0, want: Decision{Start: 3}},
		{name: "start counts starting and running", cfg: withMin(4),
			s:   State{Instances: []InstanceStats{busy("a"), idle("b", 0), inPhase("s", PhaseStarting)}, Starting: 1},
			now: 0, want: Decision{Start: 1}},
		{name: "stopping ones do not count", cfg: withMin(2),
			s:   State{Instances: []InstanceStats{idle("a", 0), inPhase("x", PhaseStopping)}},
			now: 0, want: Decision{Start: 1}},
		{name: "start bounded by max", cfg: Config{MinInstances: 5, MaxInstances: 5},
			s:   State{Instances: []InstanceStats{busy("a"), inPhase("x", PhaseStopping)}, Starting: 1},
			now: 0, want: Decision{Start: 3}},
		{name: "zero IdleTimeout means the default", cfg: Config{},
			s:   State{Instances: []InstanceStats{idle("a", 0)}},
			now: 4 * time.Minute, want: Decision{}},
		{name: "ties break by start time then id", cfg: base,
			s: State{Instances: []InstanceStats{
				{ID: "b", Phase: PhaseIdle, StartedAt: t0.Add(time.Second), LastUsed: t0},
				{ID: "c", Phase: PhaseIdle, StartedAt: t0, LastUsed: t0},
				{ID: "a", Phase: PhaseIdle, StartedAt: t0.Add(time.Second), LastUsed: t0},
			}},
			now: time.Hour, want: Decision{Stop: []string{"c", "a", "b"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.s.Instances)
			got := Plan(tc.cfg, tc.s, t0.Add(tc.now))
			if got.Start != tc.want.Start || !slices.Equal(got.Stop, tc.want.Stop) {
				t.Errorf("Plan = %+v, want %+v", got, tc.want)
			}
			if !slices.Equal(in, tc.s.Instances) {
				t.Errorf("Plan modified its input")
			}
		})
	}
}
