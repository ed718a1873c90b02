package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ebb-run/ebb/internal/monitor"
)

// Monitor reads a function's input and prediction summaries; q holds the
// query parameters of GET /v1/functions/{name}/monitor (since, until,
// version, baseline_version, baseline_since, baseline_until).
func (c *Client) Monitor(ctx context.Context, name string, q url.Values) (*monitor.Report, error) {
	var out monitor.Report
	if err := c.getJSON(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/monitor?"+q.Encode(), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
