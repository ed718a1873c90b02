package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/shadow"
)

// Conflict is a change refused because of the state it would change (a
// version that still takes traffic); its message is for the client.
type Conflict struct{ Err error }

func (e *Conflict) Error() string { return e.Err.Error() }
func (e *Conflict) Unwrap() error { return e.Err }

// SplitRequest is the body of PUT .../route and PUT .../aliases/{alias}.
type SplitRequest struct {
	Split ebb.Split `json:"split"`
}

// maxSplitBody bounds a route's body: shares of at most a few hundred
// versions.
const maxSplitBody = 64 << 10

func versionTarget(r *http.Request) string {
	return r.PathValue("name") + ":" + r.PathValue("version")
}

func aliasTarget(r *http.Request) string {
	return r.PathValue("name") + ":" + r.PathValue("alias")
}

func (a *API) versions(w http.ResponseWriter, r *http.Request) {
	vs, err := a.cfg.Platform.Versions(r.Context(), r.PathValue("name"))
	a.answer(w, vs, err)
}

func (a *API) answer(w http.ResponseWriter, vs *Versions, err error) {
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, vs)
}

func (a *API) removeVersion(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.PathValue("version"))
	if err != nil || n < 1 {
		a.fail(w, &BadRequest{Err: fmt.Errorf("%q is not a version number", r.PathValue("version"))})
		return
	}
	if err := a.cfg.Platform.RemoveVersion(r.Context(), r.PathValue("name"), n); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// readSplit reads a SplitRequest.
func readSplit(r *http.Request) (ebb.Split, error) {
	var req SplitRequest
	if err := readBodyJSON(r, &req, `{"split":[{"version":N,"percent":P},...]}`); err != nil {
		return nil, err
	}
	return req.Split, nil
}

// readBodyJSON reads a small JSON body into v; shape describes it for the
// client's error.
func readBodyJSON(r *http.Request, v any, shape string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSplitBody+1))
	if err != nil {
		return &BadRequest{Err: fmt.Errorf("read body: %w", err)}
	}
	if len(body) > maxSplitBody {
		return &BadRequest{Err: fmt.Errorf("the body is larger than %d bytes", maxSplitBody)}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &BadRequest{Err: fmt.Errorf("the body is not %s: %w", shape, err)}
	}
	return nil
}

func (a *API) setShadow(w http.ResponseWriter, r *http.Request) {
	var sc ebb.Shadow
	if err := readBodyJSON(r, &sc, `{"version":N,"percent":P,"tolerance":T}`); err != nil {
		a.fail(w, err)
		return
	}
	rep, err := a.cfg.Platform.SetShadow(r.Context(), r.PathValue("name"), sc)
	a.answerShadow(w, rep, err)
}

func (a *API) stopShadow(w http.ResponseWriter, r *http.Request) {
	rep, err := a.cfg.Platform.StopShadow(r.Context(), r.PathValue("name"))
	a.answerShadow(w, rep, err)
}

func (a *API) shadowReport(w http.ResponseWriter, r *http.Request) {
	rep, err := a.cfg.Platform.ShadowReport(r.Context(), r.PathValue("name"))
	a.answerShadow(w, rep, err)
}

func (a *API) answerShadow(w http.ResponseWriter, rep *shadow.Report, err error) {
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (a *API) setRoute(w http.ResponseWriter, r *http.Request) {
	s, err := readSplit(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	vs, err := a.cfg.Platform.SetRoute(r.Context(), r.PathValue("name"), s)
	a.answer(w, vs, err)
}

func (a *API) promote(w http.ResponseWriter, r *http.Request) {
	vs, err := a.cfg.Platform.Promote(r.Context(), r.PathValue("name"))
	a.answer(w, vs, err)
}

func (a *API) rollback(w http.ResponseWriter, r *http.Request) {
	vs, err := a.cfg.Platform.Rollback(r.Context(), r.PathValue("name"))
	a.answer(w, vs, err)
}

func (a *API) setAlias(w http.ResponseWriter, r *http.Request) {
	s, err := readSplit(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	vs, err := a.cfg.Platform.SetAlias(r.Context(), r.PathValue("name"), r.PathValue("alias"), s)
	a.answer(w, vs, err)
}

func (a *API) removeAlias(w http.ResponseWriter, r *http.Request) {
	vs, err := a.cfg.Platform.RemoveAlias(r.Context(), r.PathValue("name"), r.PathValue("alias"))
	a.answer(w, vs, err)
}
