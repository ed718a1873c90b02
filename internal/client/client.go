// Package client is a Go client for ebb's HTTP API, used by the CLI and by
// tests.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/logbuf"
	"github.com/ebb-run/ebb/internal/queue"
	"github.com/ebb-run/ebb/internal/shadow"
	"github.com/ebb-run/ebb/internal/usage"
)

// Client talks to one ebb server.
type Client struct {
	URL  string // e.g. http://127.0.0.1:8080
	Key  string // API key, if the server requires one
	HTTP *http.Client
}

// New returns a client for baseURL.
func New(baseURL, key string) *Client {
	return &Client{URL: strings.TrimRight(baseURL, "/"), Key: key, HTTP: &http.Client{}}
}

// Error is a non-2xx answer.
type Error struct {
	Status  int
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
	Body    []byte
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Type)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, strings.TrimSpace(string(e.Body)))
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &Error{Status: resp.StatusCode, Body: b}
	json.Unmarshal(b, e)
	return e
}

func (c *Client) getJSON(ctx context.Context, method, path string, body io.Reader, hdr http.Header, out any) error {
	resp, err := c.do(ctx, method, path, body, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Deploy uploads a bundle (tar.gz) for name as a version that takes all of
// its traffic.
func (c *Client) Deploy(ctx context.Context, name string, bundle io.Reader) (*api.DeployReply, error) {
	return c.DeployWith(ctx, name, bundle, api.DeployOptions{})
}

// DeployWith uploads a bundle (tar.gz) for name as a new version whose
// traffic opt says.
func (c *Client) DeployWith(ctx context.Context, name string, bundle io.Reader, opt api.DeployOptions) (*api.DeployReply, error) {
	q := url.Values{}
	if opt.Canary != nil {
		q.Set("canary", strconv.Itoa(*opt.Canary))
	}
	if opt.NoTraffic {
		q.Set("traffic", "none")
	}
	path := "/v1/functions/" + url.PathEscape(name)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out api.DeployReply
	err := c.getJSON(ctx, http.MethodPut, path, bundle, http.Header{"Content-Type": {"application/gzip"}}, &out)
	return &out, err
}

// Versions returns name's kept versions and routes.
func (c *Client) Versions(ctx context.Context, name string) (*api.Versions, error) {
	var out api.Versions
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/versions", nil, nil, &out)
	return &out, err
}

// RemoveVersion removes one version of name.
func (c *Client) RemoveVersion(ctx context.Context, name string, version int) error {
	return c.getJSON(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name)+"/versions/"+strconv.Itoa(version), nil, nil, nil)
}

func (c *Client) traffic(ctx context.Context, method, path string, s ebb.Split) (*api.Versions, error) {
	var body io.Reader
	hdr := http.Header{}
	if s != nil {
		b, err := json.Marshal(api.SplitRequest{Split: s})
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
		hdr.Set("Content-Type", "application/json")
	}
	var out api.Versions
	err := c.getJSON(ctx, method, path, body, hdr, &out)
	return &out, err
}

// SetRoute sets the shares of name's unqualified requests.
func (c *Client) SetRoute(ctx context.Context, name string, s ebb.Split) (*api.Versions, error) {
	return c.traffic(ctx, http.MethodPut, "/v1/functions/"+url.PathEscape(name)+"/route", s)
}

// Promote sends all of name's unqualified requests to its newest version.
func (c *Client) Promote(ctx context.Context, name string) (*api.Versions, error) {
	return c.traffic(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/promote", nil)
}

// Rollback sends all of name's unqualified requests back to the version
// that had them before.
func (c *Client) Rollback(ctx context.Context, name string) (*api.Versions, error) {
	return c.traffic(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/rollback", nil)
}

// SetAlias points alias of name at s.
func (c *Client) SetAlias(ctx context.Context, name, alias string, s ebb.Split) (*api.Versions, error) {
	return c.traffic(ctx, http.MethodPut, "/v1/functions/"+url.PathEscape(name)+"/aliases/"+url.PathEscape(alias), s)
}

// SetShadow starts (or changes) name's shadow run.
func (c *Client) SetShadow(ctx context.Context, name string, sc ebb.Shadow) (*shadow.Report, error) {
	b, err := json.Marshal(sc)
	if err != nil {
		return nil, err
	}
	var out shadow.Report
	err = c.getJSON(ctx, http.MethodPut, "/v1/functions/"+url.PathEscape(name)+"/shadow", bytes.NewReader(b),
		http.Header{"Content-Type": {"application/json"}}, &out)
	return &out, err
}

// StopShadow stops name's shadow run and returns its final report.
func (c *Client) StopShadow(ctx context.Context, name string) (*shadow.Report, error) {
	var out shadow.Report
	err := c.getJSON(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name)+"/shadow", nil, nil, &out)
	return &out, err
}

// ShadowReport returns the report of name's shadow run (or its last one).
func (c *Client) ShadowReport(ctx context.Context, name string) (*shadow.Report, error) {
	var out shadow.Report
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/shadow", nil, nil, &out)
	return &out, err
}

// RemoveAlias removes alias of name.
func (c *Client) RemoveAlias(ctx context.Context, name, alias string) (*api.Versions, error) {
	return c.traffic(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name)+"/aliases/"+url.PathEscape(alias), nil)
}

// List returns every function.
func (c *Client) List(ctx context.Context) ([]api.FunctionStatus, error) {
	var out struct {
		Functions []api.FunctionStatus `json:"functions"`
	}
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions", nil, nil, &out)
	return out.Functions, err
}

// Status returns one function's status.
func (c *Client) Status(ctx context.Context, name string) (*api.FunctionStatus, error) {
	var out api.FunctionStatus
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name), nil, nil, &out)
	return &out, err
}

// Warm reads the node's budget for warm capacity and what holds it.
func (c *Client) Warm(ctx context.Context) (*api.WarmReport, error) {
	var out api.WarmReport
	err := c.getJSON(ctx, http.MethodGet, "/v1/warm", nil, nil, &out)
	return &out, err
}

// Nodes lists the nodes of the server's cluster (GET /v1/nodes).
func (c *Client) Nodes(ctx context.Context) ([]cluster.Node, error) {
	var out api.NodesReply
	err := c.getJSON(ctx, http.MethodGet, "/v1/nodes", nil, nil, &out)
	return out.Nodes, err
}

// Remove deletes a function.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.getJSON(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name), nil, nil, nil)
}

// InvokeResult is a finished invocation.
type InvokeResult struct {
	Status    int
	Body      []byte
	RequestID string
	ColdStart bool
	// Version is the version that answered (Ebb-Version).
	Version int
}

// Invoke runs payload through name (NAME, NAME:alias or NAME:N). A handler
// error is not a Go error: it is a result with Status 500 and the error
// JSON as Body.
func (c *Client) Invoke(ctx context.Context, name string, payload []byte) (*InvokeResult, error) {
	return c.InvokeKey(ctx, name, "", payload)
}

// InvokeKey is Invoke with a routing key (Ebb-Routing-Key): requests with
// the same key land on the same version while the route's shares hold.
func (c *Client) InvokeKey(ctx context.Context, name, key string, payload []byte) (*InvokeResult, error) {
	hdr := http.Header{"Content-Type": {"application/json"}}
	if key != "" {
		hdr.Set(ebb.RoutingKeyHeader, key)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/invoke", bytes.NewReader(payload), hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	cold, _ := strconv.ParseBool(resp.Header.Get("Ebb-Cold-Start"))
	v, _ := strconv.Atoi(resp.Header.Get("Ebb-Version"))
	return &InvokeResult{Status: resp.StatusCode, Body: b, RequestID: resp.Header.Get("Ebb-Request-Id"), ColdStart: cold, Version: v}, nil
}

// Logs calls fn for each of name's log lines from since; with follow it
// streams until ctx ends.
func (c *Client) Logs(ctx context.Context, name string, since uint64, follow bool, fn func(logbuf.Line)) error {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/logs?"+q.Encode(), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logbuf.Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("decode log line: %w", err)
		}
		fn(l)
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// InvokeAsync queues payload for name (invocation type Event) and returns
// the job id once the server has stored the job.
func (c *Client) InvokeAsync(ctx context.Context, name string, payload []byte) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.getJSON(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/invoke", bytes.NewReader(payload),
		http.Header{"Content-Type": {"application/json"}, "Ebb-Invocation-Type": {"Event"}}, &out)
	return out.ID, err
}

// Job returns the record of an async job.
func (c *Client) Job(ctx context.Context, id string) (*queue.Job, error) {
	var out queue.Job
	err := c.getJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, nil, &out)
	return &out, err
}

// Jobs lists name's jobs, newest first; status "" means any.
func (c *Client) Jobs(ctx context.Context, name string, status queue.Status, limit int) ([]*queue.Job, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if status != "" {
		q.Set("status", string(status))
	}
	var out struct {
		Jobs []*queue.Job `json:"jobs"`
	}
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/jobs?"+q.Encode(), nil, nil, &out)
	return out.Jobs, err
}

// Redrive re-queues name's dead-letter jobs and returns how many.
func (c *Client) Redrive(ctx context.Context, name string) (int, error) {
	var out struct {
		N int `json:"redriven"`
	}
	err := c.getJSON(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/jobs/redrive", nil, nil, &out)
	return out.N, err
}

// CreateKey makes an API key; the reply holds its secrets, shown only now.
func (c *Client) CreateKey(ctx context.Context, req api.KeyRequest) (*api.KeyCreated, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out api.KeyCreated
	err = c.getJSON(ctx, http.MethodPost, "/v1/keys", bytes.NewReader(b), http.Header{"Content-Type": {"application/json"}}, &out)
	return &out, err
}

// Keys lists the API keys.
func (c *Client) Keys(ctx context.Context) ([]api.KeyInfo, error) {
	var out struct {
		Keys []api.KeyInfo `json:"keys"`
	}
	err := c.getJSON(ctx, http.MethodGet, "/v1/keys", nil, nil, &out)
	return out.Keys, err
}

// RevokeKey revokes a key by ID.
func (c *Client) RevokeKey(ctx context.Context, id string) error {
	return c.getJSON(ctx, http.MethodDelete, "/v1/keys/"+url.PathEscape(id), nil, nil, nil)
}

// RotateKey gives a key new secrets; the old ones stop working.
func (c *Client) RotateKey(ctx context.Context, id string) (*api.KeyCreated, error) {
	var out api.KeyCreated
	err := c.getJSON(ctx, http.MethodPost, "/v1/keys/"+url.PathEscape(id)+"/rotate", nil, nil, &out)
	return &out, err
}

// Audit reads the audit log from since ("24h", "7d" or RFC 3339; empty: all).
func (c *Client) Audit(ctx context.Context, since string, limit int) ([]api.AuditEntry, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out struct {
		Records []api.AuditEntry `json:"records"`
	}
	err := c.getJSON(ctx, http.MethodGet, "/v1/audit?"+q.Encode(), nil, nil, &out)
	return out.Records, err
}

// Usage reads a function's usage from since ("24h", "30d" or RFC 3339),
// with a series at step (empty: the server's choice).
func (c *Client) Usage(ctx context.Context, name, since, step string) (*usage.Report, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if step != "" {
		q.Set("step", step)
	}
	var out usage.Report
	err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/usage?"+q.Encode(), nil, nil, &out)
	return &out, err
}

// AllUsage reads every function's usage totals from since.
func (c *Client) AllUsage(ctx context.Context, since string) (*api.UsageAll, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	var out api.UsageAll
	err := c.getJSON(ctx, http.MethodGet, "/v1/usage?"+q.Encode(), nil, nil, &out)
	return &out, err
}
