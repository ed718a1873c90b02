package platform

import (
	"context"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/metrics"
)

// The node's budget for warm capacity (instance.WarmBudget): python zygotes
// and their spare child, onnx spare processes and spare sandboxes share it,
// so that a node with a thousand idle functions holds no more memory ahead
// of need than --warm-memory. A deploy builds its version's zygote (or
// spare) only when the budget has room, or by evicting a holder used less
// recently; a restart builds none: the registry says nothing cheap about
// which functions will be called first, and a request builds its own (the
// cold path).

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
