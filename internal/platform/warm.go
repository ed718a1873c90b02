package platform

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/metrics"
	"github.com/ebb-run/ebb/internal/usage"
)

// The node's budget for warm capacity (instance.WarmBudget): python zygotes
// and their spare child, onnx spare processes and spare sandboxes share it,
// so that a node with a thousand idle functions holds no more memory ahead
// of need than --warm-memory. A deploy builds its version's zygote (or
// spare) only when the budget has room, or by evicting a holder used less
// recently. A restart builds those of the functions used in the day before
// it, most recently used first, while the budget has room (prebuild): the
// usage store says which were called, and a function nobody called costs
// nothing but its files. Any other function's first request builds its own
// (the cold path).

// warmConfig is the budget cfg asks for.
func warmConfig(cfg Config) instance.WarmConfig {
	wc := instance.WarmConfig{Max: cfg.WarmMax, Now: cfg.Now}
	switch {
	case cfg.WarmMemory > 0:
		wc.Bytes = uint64(cfg.WarmMemory)
	case cfg.WarmMemory == 0:
		wc.Bytes = instance.MinWarmMemory
	}
	return wc
}

// warmMetrics reads the budget for /metrics.
func (p *Platform) warmMetrics() metrics.Warm {
	s := p.instCfg.Warm.Snapshot()
	return metrics.Warm{Limit: s.Limit, Used: s.Used, Holders: len(s.Holders), MaxHolders: s.Max}
}

// Warm implements api.Warm: the budget and what holds it.
func (p *Platform) Warm(ctx context.Context) (*api.WarmReport, error) {
	s := p.instCfg.Warm.Snapshot()
	r := &api.WarmReport{LimitBytes: s.Limit, UsedBytes: s.Used, MaxHolders: s.Max, Count: len(s.Holders), Holders: []api.WarmHolder{}}
	for _, h := range s.Holders {
		r.Holders = append(r.Holders, api.WarmHolder{Function: h.Function, Version: h.Version, WarmStatus: *warmStatus(&h.WarmStatus)})
	}
	return r, nil
}

func warmStatus(w *instance.WarmStatus) *api.WarmStatus {
	if w == nil {
		return nil
	}
	return &api.WarmStatus{Kind: w.Kind, Bytes: w.Bytes, Since: w.Since, LastUse: w.LastUse}
}

// recentUse reads when each function was last invoked in the day before
// now, to the minute, from the usage rollups (the meter's own, of every
// node sharing the store), and the minutes in which it was (past, in
// order: the arrivals its adaptive keep-alive learns from again).
func (p *Platform) recentUse(ctx context.Context) (last map[string]time.Time, past map[string][]time.Time) {
	now := p.cfg.Now()
	reps, err := p.usage.Report(ctx, usage.Query{Since: now.Add(-24 * time.Hour), Until: now, Step: time.Minute})
	if err != nil {
		p.log.Warn("read recent usage; nothing is built ahead", "err", err)
		return nil, nil
	}
	last, past = map[string]time.Time{}, map[string][]time.Time{}
	for _, r := range reps {
		for _, pt := range r.Series {
			if pt.Invocations > 0 {
				past[r.Function] = append(past[r.Function], pt.Time)
			}
		}
		for i := len(r.Series) - 1; i >= 0; i-- {
			if r.Series[i].Invocations > 0 {
				last[r.Function] = r.Series[i].Time.Add(time.Minute)
				break
			}
		}
	}
	// A function's versions report apart: one sorted list of its minutes.
	for fn, ts := range past {
		slices.SortFunc(ts, time.Time.Compare)
		past[fn] = slices.CompactFunc(ts, time.Time.Equal)
	}
	return last, past
}

// prebuild asks the serving versions of the functions in last for their
// warm capacity (a zygote and its spare, a spare process), most recently used
// first and no more than the budget may hold: the budget admits them while
// it has room, ranked by that use.
func (p *Platform) prebuild(last map[string]time.Time) {
	names := slices.Collect(maps.Keys(last))
	slices.SortFunc(names, func(a, b string) int {
		if c := last[b].Compare(last[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	if n := p.instCfg.Warm.Snapshot().Max; len(names) > n {
		names = names[:n]
	}
	if len(names) > 0 {
		p.log.Info("build warm capacity ahead by recent use", "functions", names)
	}
	for _, name := range names {
		p.mu.RLock()
		var deps []*deployment
		if f := p.fns[name]; f != nil {
			for _, v := range f.versions {
				if d := v.dep.Load(); d != nil {
					deps = append(deps, d)
				}
			}
		}
		p.mu.RUnlock()
		for _, d := range deps {
			d.starter.Prewarm()
		}
	}
}
