package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/monitor"
)

// Monitor reads input and prediction summaries (docs/monitoring.md).
type Monitor interface {
	// MonitorReport answers q for function name; q.Version 0 is its newest
	// version.
	MonitorReport(ctx context.Context, name string, q monitor.Query) (*monitor.Report, error)
}

// maxMonitorRange bounds since and until: no window is kept longer.
const maxMonitorRange = 31 * 24 * time.Hour

// monitorReport answers GET /v1/functions/{name}/monitor with
//
//	since, until                  the period (RFC 3339, or a duration back
//	                              from now: 1h); default the last hour
//	version                       default the newest version
//	baseline_version              compare with this version, over the same
//	                              period unless baseline_since is given
//	baseline_since, baseline_until compare with this period (of
//	                              baseline_version, default version);
//	                              baseline_until defaults to since, or to
//	                              until with a baseline_version
//	series=true                   each feature's per-minute points too
//
// With no baseline parameter the baseline is the same version over the
// period of the same length just before since.
func (a *API) monitorReport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	now := time.Now()
	var err error
	at := func(field string, def time.Time) time.Time {
		s := q.Get(field)
		if s == "" || err != nil {
			return def
		}
		if t, perr := time.Parse(time.RFC3339, s); perr == nil {
			return t
		}
		if d, perr := ParseLifetime(s); perr == nil && d <= maxMonitorRange {
			return now.Add(-d)
		}
		err = &ebb.FieldError{Field: field, Reason: fmt.Sprintf("%q is not a time (RFC 3339) or a duration back from now (1h, 7d; at most 31d)", s)}
		return def
	}
	version := func(field string) int {
		s := q.Get(field)
		if s == "" || err != nil {
			return 0
		}
		n, perr := strconv.Atoi(s)
		if perr != nil || n < 1 {
			err = &ebb.FieldError{Field: field, Reason: fmt.Sprintf("%q is not a version number", s)}
		}
		return n
	}
	mq := monitor.Query{Until: at("until", now)}
	mq.Since = at("since", mq.Until.Add(-time.Hour))
	mq.Version = version("version")
	mq.BaselineVersion = version("baseline_version")
	if s := q.Get("series"); s != "" {
		b, perr := strconv.ParseBool(s)
		if perr != nil && err == nil {
			err = &ebb.FieldError{Field: "series", Reason: fmt.Sprintf("%q is not true or false", s)}
		}
		mq.Series = b
	}
	_, hasBaseSince := q["baseline_since"]
	switch {
	case hasBaseSince:
		def := mq.Since
		if mq.BaselineVersion > 0 {
			def = mq.Until
		}
		mq.BaselineUntil = at("baseline_until", def)
		mq.BaselineSince = at("baseline_since", mq.Since)
	case mq.BaselineVersion > 0:
		mq.BaselineSince, mq.BaselineUntil = mq.Since, mq.Until
	default:
		mq.BaselineSince, mq.BaselineUntil = mq.Since.Add(-mq.Until.Sub(mq.Since)), mq.Since
	}
	switch {
	case err != nil:
	case !mq.Since.Before(mq.Until):
		err = &ebb.FieldError{Field: "since", Reason: "must be before until"}
	case !mq.BaselineSince.Before(mq.BaselineUntil):
		err = &ebb.FieldError{Field: "baseline_since", Reason: "must be before baseline_until"}
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	rep, err := a.cfg.Monitor.MonitorReport(r.Context(), r.PathValue("name"), mq)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
