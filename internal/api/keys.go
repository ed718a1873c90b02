package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/route"
)

// Keys manages API keys and reads the audit log.
type Keys interface {
	CreateKey(ctx context.Context, req KeyRequest) (*KeyCreated, error)
	ListKeys(ctx context.Context) ([]KeyInfo, error)
	// RevokeKey and RotateKey answer an error matching ebb.ErrNotFound for
	// an unknown ID.
	RevokeKey(ctx context.Context, id string) error
	RotateKey(ctx context.Context, id string) (*KeyCreated, error)
	Audit(ctx context.Context, since time.Time, limit int) ([]AuditEntry, error)
}

// KeyRequest is the body of POST /v1/keys.
type KeyRequest struct {
	Role      ebb.Role `json:"role"`
	Functions []string `json:"functions,omitempty"`
	Name      string   `json:"name,omitempty"`
	// Expires is how long the key lives ("30d", "12h"); empty: forever.
	Expires string  `json:"expires,omitempty"`
	RPS     float64 `json:"rps,omitempty"`
}

// KeyCreated answers a create or a rotate: the only time the secrets are
// shown. It also echoes the name and rps asked for.
type KeyCreated struct {
	KeyIssued
	Name string  `json:"name,omitempty"`
	RPS  float64 `json:"rps,omitempty"`
}

// KeyIssued is a new key and its secrets: exactly what `ebb keys create
// --json` prints.
type KeyIssued struct {
	ID              string     `json:"id"`
	Key             string     `json:"key"`
	AccessKeyID     string     `json:"access_key_id"`
	SecretAccessKey string     `json:"secret_access_key"`
	Role            ebb.Role   `json:"role"`
	Functions       []string   `json:"functions"`
	Expires         *time.Time `json:"expires"`
}

// KeyInfo is a key as listed: never a secret.
type KeyInfo struct {
	ID          string     `json:"id"`
	Name        string     `json:"name,omitempty"`
	Role        ebb.Role   `json:"role"`
	Functions   []string   `json:"functions"`
	RPS         float64    `json:"rps,omitempty"`
	AccessKeyID string     `json:"access_key_id,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	Expires     *time.Time `json:"expires"`
	LastUsed    *time.Time `json:"last_used"`
}

// AuditEntry is one record of the audit log.
type AuditEntry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	KeyID   string    `json:"key_id,omitempty"`
	KeyName string    `json:"key_name,omitempty"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Status  int       `json:"status"`
	Remote  string    `json:"remote,omitempty"`
}

// maxKeyRequest bounds the body of POST /v1/keys.
const maxKeyRequest = 64 << 10

// ParseLifetime reads a key lifetime: a Go duration or a whole number of
// days ("30d").
func ParseLifetime(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 1 || n > 100*365 {
			return 0, fmt.Errorf("%q is not a number of days from 1 to 36500", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (e.g. 30d or 12h)", s)
	}
	return v, nil
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var req KeyRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxKeyRequest))
	if err != nil {
		a.fail(w, fmt.Errorf("key request: %w", ebb.ErrPayloadTooLarge))
		return
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		a.fail(w, &ebb.FieldError{Field: "body", Reason: "is not a key request ({\"role\", \"functions\", \"name\", \"expires\", \"rps\"}): " + jsonProblem(err)})
		return
	}
	if req.Expires != "" {
		if _, err := ParseLifetime(req.Expires); err != nil {
			a.fail(w, &ebb.FieldError{Field: "expires", Reason: err.Error()})
			return
		}
	}
	k, err := a.cfg.Keys.CreateKey(r.Context(), req)
	if err != nil {
		a.fail(w, err)
		return
	}
	route.SetAuditTarget(r, k.ID)
	writeJSON(w, http.StatusCreated, k)
}

// jsonProblem says what is wrong with a JSON body without echoing it.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid JSON"
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := a.cfg.Keys.ListKeys(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys})
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request) {
	if err := a.cfg.Keys.RevokeKey(r.Context(), r.PathValue("id")); err != nil {
		a.keyFail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) rotateKey(w http.ResponseWriter, r *http.Request) {
	k, err := a.cfg.Keys.RotateKey(r.Context(), r.PathValue("id"))
	if err != nil {
		a.keyFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, k)
}

func (a *API) keyFail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ebb.ErrNotFound) {
		route.Write(w, route.Native, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: "key " + strconv.Quote(r.PathValue("id")) + " not found"})
		return
	}
	a.fail(w, err)
}

// audit answers GET /v1/audit?since=24h|RFC3339&limit=N.
func (a *API) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if s := q.Get("since"); s != "" {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			since = t
		} else if d, err := ParseLifetime(s); err == nil {
			since = time.Now().Add(-d)
		} else {
			a.fail(w, &ebb.FieldError{Field: "since", Reason: fmt.Sprintf("%q is not a time (RFC 3339) or a duration (24h, 7d)", s)})
			return
		}
	}
	limit := 1000
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 10000 {
			a.fail(w, &ebb.FieldError{Field: "limit", Reason: "must be 1 to 10000"})
			return
		}
		limit = n
	}
	recs, err := a.cfg.Keys.Audit(r.Context(), since, limit)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"records": recs})
}
