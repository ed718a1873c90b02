package api

import (
	"context"
	"net/http"

	"github.com/ebb-run/ebb/internal/cluster"
)

// Nodes lists the nodes of the cluster this ebb belongs to (itself alone
// when it runs alone).
type Nodes interface {
	Nodes(ctx context.Context) ([]cluster.Node, error)
}

// NodesReply is the answer to GET /v1/nodes.
type NodesReply struct {
	Nodes []cluster.Node `json:"nodes"`
}

func (a *API) nodes(w http.ResponseWriter, r *http.Request) {
	ns, err := a.cfg.Nodes.Nodes(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	if ns == nil {
		ns = []cluster.Node{}
	}
	writeJSON(w, http.StatusOK, NodesReply{Nodes: ns})
}
