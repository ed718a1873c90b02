package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/cost"
	"github.com/ebb-run/ebb/internal/route"
	"github.com/ebb-run/ebb/internal/usage"
)

// Usage reads metered usage.
type Usage interface {
	Usage(ctx context.Context, q usage.Query) ([]usage.Report, error)
	Invocations(ctx context.Context, fn string, since time.Time, each func(*usage.Record) bool) error
}

// UsageAll is what GET /v1/usage answers: every function's totals, and the
// node they ran on (for its share of the node's cost).
type UsageAll struct {
	Since     time.Time      `json:"since"`
	Until     time.Time      `json:"until"`
	Node      Node           `json:"node"`
	Functions []usage.Report `json:"functions"`
}

// Node is the machine ebb runs on.
type Node struct {
	MemoryMiB int64 `json:"memory_mib"`
	CPUs      int   `json:"cpus"`
}

// maxInvocationRecords bounds one GET of invocation records.
const maxInvocationRecords = 10000

func (a *API) usageRoutes() []route.Route {
	if a.cfg.Usage == nil {
		return nil
	}
	name := func(r *http.Request) string { return r.PathValue("name") }
	return []route.Route{
		{Pattern: "GET /v1/functions/{name}/usage", Perm: auth.PermDescribe, Function: name, Handler: a.functionUsage},
		{Pattern: "GET /v1/functions/{name}/invocations", Perm: auth.PermDescribe, Function: name, Handler: a.invocations},
		{Pattern: "GET /v1/usage", Perm: auth.PermDescribe, Handler: a.allUsage},
		{Pattern: "GET /v1/functions/{name}/cost", Perm: auth.PermDescribe, Function: name, Handler: a.functionCost},
	}
}

// usageQuery reads since, until, step and version from the query string.
func usageQuery(r *http.Request, now time.Time, series bool) (usage.Query, error) {
	v := r.URL.Query()
	q := usage.Query{Until: now}
	var err error
	if q.Since, err = usage.ParseSince(v.Get("since"), now, time.Hour); err != nil {
		return q, &ebb.FieldError{Field: "since", Reason: err.Error()}
	}
	if s := v.Get("until"); s != "" {
		if q.Until, err = usage.ParseSince(s, now, 0); err != nil {
			return q, &ebb.FieldError{Field: "until", Reason: err.Error()}
		}
	}
	if !q.Until.After(q.Since) {
		return q, &ebb.FieldError{Field: "since", Reason: "must be before until"}
	}
	if s := v.Get("version"); s != "" {
		if q.Version, err = strconv.Atoi(s); err != nil || q.Version < 1 {
			return q, &ebb.FieldError{Field: "version", Reason: fmt.Sprintf("%q is not a version number", s)}
		}
	}
	if !series {
		return q, nil
	}
	if s := v.Get("step"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Minute || d%time.Minute != 0 {
			return q, &ebb.FieldError{Field: "step", Reason: fmt.Sprintf("%q is not a whole number of minutes (1m or more)", s)}
		}
		if (q.Until.Sub(q.Since)+2*time.Minute)/d+1 > usage.MaxPoints { // the range is rounded out to whole minutes
			return q, &ebb.FieldError{Field: "step", Reason: fmt.Sprintf("%s makes more than %d points over the range: take a longer step", s, usage.MaxPoints)}
		}
		q.Step = d
	} else {
		q.Step = usage.DefaultStep(q.Until.Sub(q.Since))
	}
	return q, nil
}

func (a *API) functionUsage(w http.ResponseWriter, r *http.Request) {
	q, err := usageQuery(r, time.Now(), true)
	if err != nil {
		a.fail(w, err)
		return
	}
	q.Function = r.PathValue("name")
	reps, err := a.cfg.Usage.Usage(r.Context(), q)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, reps[0])
}

func (a *API) allUsage(w http.ResponseWriter, r *http.Request) {
	q, err := usageQuery(r, time.Now(), false)
	if err != nil {
		a.fail(w, err)
		return
	}
	reps, err := a.cfg.Usage.Usage(r.Context(), q)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := UsageAll{Since: q.Since.UTC().Truncate(time.Minute), Until: q.Until.UTC(), Node: a.cfg.Node, Functions: reps}
	if len(reps) > 0 {
		out.Since, out.Until = reps[0].Since, reps[0].Until
	}
	writeJSON(w, http.StatusOK, out)
}

// invocations streams the function's stored invocation records as JSON
// lines, oldest first.
func (a *API) invocations(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	since, err := usage.ParseSince(v.Get("since"), time.Now(), time.Hour)
	if err != nil {
		a.fail(w, &ebb.FieldError{Field: "since", Reason: err.Error()})
		return
	}
	limit := 1000
	if s := v.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxInvocationRecords {
			a.fail(w, &ebb.FieldError{Field: "limit", Reason: fmt.Sprintf("%q is not a number from 1 to %d", s, maxInvocationRecords)})
			return
		}
	}
	name := r.PathValue("name")
	if _, err := a.cfg.Platform.Versions(r.Context(), name); err != nil {
		a.fail(w, err)
		return
	}
	var out []byte
	n := 0
	err = a.cfg.Usage.Invocations(r.Context(), name, since, func(rec *usage.Record) bool {
		b, _ := json.Marshal(rec)
		out = append(append(out, b...), '\n')
		n++
		return n < limit
	})
	if err != nil {
		a.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Write(out)
}

// functionCost prices the function's observed traffic with the built-in
// price table: what the period cost each way, and a month of it.
func (a *API) functionCost(w http.ResponseWriter, r *http.Request) {
	q, err := usageQuery(r, time.Now(), false)
	if err != nil {
		a.fail(w, err)
		return
	}
	name := r.PathValue("name")
	st, err := a.cfg.Platform.Status(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	q.Function, q.Step = name, cost.SeriesStep(q.Until.Sub(q.Since))
	reps, err := a.cfg.Usage.Usage(r.Context(), q)
	if err != nil {
		a.fail(w, err)
		return
	}
	wl, needs, ob, err := cost.FromUsage(reps, reps[0].Since, reps[0].Until)
	if err != nil {
		a.fail(w, err)
		return
	}
	wl.MemoryMB, wl.Concurrency = float64(st.Spec.Memory), max(st.Spec.Concurrency, 1)
	if st.Runtime == ebb.RuntimeONNX {
		needs.ModelMB = float64(st.Size) / 1e6
	}
	e, err := cost.Price(wl, cost.Default(), cost.Node{PerHour: a.cfg.NodeCostPerHour, MemoryMiB: float64(a.cfg.Node.MemoryMiB)})
	if err != nil {
		a.fail(w, err)
		return
	}
	td := cost.Back(e, ob)
	writeJSON(w, http.StatusOK, cost.Report{Estimate: e, Function: name, Observed: &ob, ToDate: &td, Needs: needs,
		Recommendation: cost.Recommend(e, needs)})
}
