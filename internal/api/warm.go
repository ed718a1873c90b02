package api

import (
	"context"
	"net/http"
	"time"

	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/route"
)

// Warm reads the node's budget for warm capacity (what python zygotes, onnx
// spares and spare sandboxes hold ahead of need).
type Warm interface {
	Warm(ctx context.Context) (*WarmReport, error)
}

// WarmReport answers GET /v1/warm.
type WarmReport struct {
	LimitBytes uint64       `json:"limit_bytes"`
	UsedBytes  uint64       `json:"used_bytes"`
	Count      int          `json:"count"`
	MaxHolders int          `json:"max_holders"`
	Holders    []WarmHolder `json:"holders"`
}

// WarmHolder is one function version holding warm capacity.
type WarmHolder struct {
	Function string `json:"function"`
	Version  int    `json:"version"`
	WarmStatus
}

// WarmStatus is what a function version holds of the warm budget.
type WarmStatus struct {
	// Kind is zygote (a python zygote and its spare child), onnx-spare,
	// box-spare or instance (started ahead of a predicted call).
	Kind string `json:"kind"`
	// Bytes is its measured PSS (an estimate until it is up).
	Bytes   uint64    `json:"bytes"`
	Since   time.Time `json:"since"`
	LastUse time.Time `json:"last_use,omitzero"`
}

func (a *API) warmRoutes() []route.Route {
	if a.cfg.Warm == nil {
		return nil
	}
	return []route.Route{{Pattern: "GET /v1/warm", Perm: auth.PermDescribe, Handler: a.warm}}
}

func (a *API) warm(w http.ResponseWriter, r *http.Request) {
	rep, err := a.cfg.Warm.Warm(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
