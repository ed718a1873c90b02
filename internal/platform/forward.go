package platform

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/route"
)

// This file is how a node of a cluster (a shared NATS) keeps max_instances
// cluster-wide: before it starts an instance of a version it claims one of
// the version's slots (cluster.Claim), whatever the trigger (admit, on
// every invocation), and its pools run no more instances than it holds
// (slotLimit). An HTTP request at a node without an instance goes to an
// idle instance elsewhere or is placed on the least-loaded node
// (placeElsewhere); when every slot is held by other nodes it goes to one
// of them; all over a direct HTTP hop. A job that belongs elsewhere is
// handed back to the queue (async.go). A single node has none of it: its
// invoke routes are not wrapped, and its pools have no Limit or Floor.

// Headers of the hop between nodes.
const (
	// ForwardedByHeader names the node that forwarded a request; a
	// request that carries it is served where it lands, never forwarded
	// again.
	ForwardedByHeader = "Ebb-Forwarded-By"
	// NodeHeader names the node that served a request.
	NodeHeader = "Ebb-Node"
)

// newHopClient makes the client that carries forwarded requests: no
// timeout of its own (the function's timeout holds on the serving node; the
// caller's context ends the hop), a short dial timeout so that a dead node
// fails fast. The platform owns it and closes its idle connections in Close.
func newHopClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// slotted says whether this node keeps cluster-wide instance slots: it is
// a node of a cluster (a shared NATS).
func (p *Platform) slotted() bool { return p.clustered() && p.cluster != nil }

// slotLimit is the Limit of version fn's pool on a node of a cluster: the
// slots of it this node holds (none before the cluster starts); nil on a
// lone node, whose pools are bound by max_instances alone.
func (p *Platform) slotLimit(fn *ebb.Function) func() int {
	if !p.clustered() {
		return nil
	}
	key := cluster.SlotKey(fn.Spec.Name, fn.Version)
	return func() int {
		if c := p.slots.Load(); c != nil {
			return c.Mine(key)
		}
		return 0
	}
}

// slotFloor is the Floor of d's pool on a node of a cluster: this node's
// share of the version's min_instances, as keepFloors last found it; nil
// on a lone node, which keeps min_instances itself.
func (p *Platform) slotFloor(d *deployment) func() int {
	if !p.clustered() {
		return nil
	}
	return func() int { return int(d.floor.Load()) }
}

// maxInstancesOf is a spec's max_instances, defaulted as the pool does.
func maxInstancesOf(spec *ebb.Spec) int {
	if spec.MaxInstances > 0 {
		return spec.MaxInstances
	}
	return max(ebb.DefaultMaxInstances, spec.MinInstances)
}

// elsewhereError says that every instance slot of a version is held by
// other nodes and this node runs none: the request belongs on one of
// holders. It is an ebb.ErrOverloaded, so that what cannot send it there
// (an async worker) hands it back to be tried again.
type elsewhereError struct {
	name    string
	key     string
	holders []cluster.Node
}

func (e *elsewhereError) Error() string {
	return "every instance slot of " + e.name + " is held by other nodes (" + e.holders[0].Name + ")"
}

func (e *elsewhereError) Unwrap() error { return ebb.ErrOverloaded }

// admit decides whether a request for version v of function name runs on
// this node, on a node of a cluster: yes (nil) when one of its instances
// here has room (or one starting will), when this node holds a slot not
// yet running, when it can claim one more, or when every slot is held and
// some here (the request queues behind them). Otherwise an
// *elsewhereError names the holders. Every invocation passes it: HTTP
// requests (which forward on an *elsewhereError) and what runs in process
// (async jobs, scheduled ticks, event sources), so that max_instances
// holds for the cluster whatever the trigger.
func (p *Platform) admit(ctx context.Context, name string, v *version) error {
	spec := &v.fn.Spec
	key := cluster.SlotKey(name, v.fn.Version)
	var have int
	if d := v.dep.Load(); d != nil {
		st := d.pool.Stats()
		if free(st, max(spec.Concurrency, 1)) {
			return nil
		}
		have = running(st)
	}
	if have < p.cluster.Mine(key) {
		return nil // a slot held here, its instance to start
	}
	c, err := p.cluster.Claim(ctx, key, maxInstancesOf(spec))
	if err != nil {
		// Overloaded for what runs in process: a job is tried again,
		// not counted as an attempt, when the bucket is out of reach.
		return fmt.Errorf("claim an instance slot of %s: %w: %w", key, ebb.ErrOverloaded, err)
	}
	if c.OK || have > 0 || len(c.Holders) == 0 {
		return nil
	}
	if d := v.dep.Load(); d != nil && running(d.pool.Stats()) > 0 {
		// Another request's claim started one here meanwhile: queue
		// behind it rather than hop.
		return nil
	}
	return &elsewhereError{name: name, key: key, holders: c.Holders}
}

// clusterRoutes wraps the synchronous invoke routes of rs with the slot
// check and the forward, on a node of a cluster.
func (p *Platform) clusterRoutes(rs []route.Route) []route.Route {
	if p.cluster == nil || !p.clustered() {
		return rs
	}
	for i := range rs {
		if rs[i].Invoke && rs[i].Function != nil {
			rs[i].Handler = p.forwarding(rs[i].Function, rs[i].Dialect, rs[i].Handler)
		}
	}
	return rs
}

// slotsRunning is how many instances this node runs (or starts) of the
// version whose slot key is key, for cluster.Config.Running.
func (p *Platform) slotsRunning(key string) int {
	p.mu.RLock()
	var d *deployment
	for name, f := range p.fns {
		for n, v := range f.versions {
			if cluster.SlotKey(name, n) == key {
				d = v.dep.Load()
			}
		}
	}
	p.mu.RUnlock()
	if d == nil {
		return 0
	}
	return running(d.pool.Stats())
}

func running(s dispatch.Stats) int {
	n := 0
	for _, in := range s.Instances {
		if in.Phase != dispatch.PhaseStopping {
			n++
		}
	}
	return n
}

// free says whether the pool can take a request now without starting an
// instance: one of its instances has room, or those starting have room
// beyond the requests already waiting for them.
func free(s dispatch.Stats, concurrency int) bool {
	for _, in := range s.Instances {
		if in.Phase != dispatch.PhaseStopping && in.Phase != dispatch.PhaseStarting && in.InFlight < concurrency {
			return true
		}
	}
	return s.Starting*concurrency > s.Waiting
}

func (p *Platform) forwarding(fnOf func(*http.Request) string, dialect route.Dialect, next http.HandlerFunc) http.HandlerFunc {
	me := p.cfg.Node
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(NodeHeader, me)
		if isEvent(r) {
			next(w, r)
			return
		}
		forwarded := r.Header.Get(ForwardedByHeader) != ""
		name := fnOf(r)
		t := gateway.Target{Name: name, Key: r.Header.Get(ebb.RoutingKeyHeader)}
		if n, q := ebb.SplitQualified(r.PathValue("name")); n == name {
			t.Qualifier = q
		}
		v, _, err := p.resolveShadow(t)
		if err != nil {
			next(w, r) // the gateway says what is wrong
			return
		}
		if !forwarded {
			if h, ok := p.placeElsewhere(r.Context(), name, v); ok {
				if p.hopOr503(w, r, dialect, h, "which was to serve "+name) {
					return
				}
				// Down, its heartbeat not yet expired: serve here.
			}
		}
		for range 2 {
			err := p.admit(r.Context(), name, v)
			var ew *elsewhereError
			if err == nil {
				next(w, r)
				return
			}
			if !errors.As(err, &ew) {
				p.log.Warn("cluster: claim an instance slot", "function", name, "err", err)
				route.Write(w, dialect, &route.Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailable",
					Message: "cannot reach the cluster's instance slots", RetryAfter: time.Second})
				return
			}
			if forwarded {
				// Forwarded here, but the slot went meanwhile: never a
				// second hop.
				route.Write(w, dialect, &route.Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailable",
					Message: "every instance slot of " + name + " is held by other nodes", RetryAfter: time.Second})
				return
			}
			h := ew.holders[0] // the first by name: every node picks the same
			if p.hopOr503(w, r, dialect, h, "which holds "+name+"'s instances") {
				return
			}
			// The holder is down but its heartbeat has not expired yet:
			// claim again (its slots may be free by now), else 503.
			p.cluster.Recheck(ew.key)
		}
		route.Write(w, dialect, &route.Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailable",
			Message:    "the node holding " + name + "'s instances is down; its slots are free within the heartbeat TTL",
			RetryAfter: cluster.DefaultTTL})
	}
}

// hopOr503 forwards r to h and reports whether the request is answered:
// by h, or by a 503 when the connection broke before h's answer (h died
// with it open: the request may have reached it, so it is not served here;
// the caller retries). false: h refused the connection (down, its
// heartbeat not yet expired), nothing was sent, and the caller decides.
// role says what h was to this request, for the message.
func (p *Platform) hopOr503(w http.ResponseWriter, r *http.Request, dialect route.Dialect, h cluster.Node, role string) bool {
	err := p.forward(w, r, h)
	if err == nil {
		return true
	}
	if isDialError(err) {
		p.log.Warn("cluster: forward to a dead node", "node", h.Name, "err", err)
		return false
	}
	p.log.Warn("cluster: forward", "node", h.Name, "err", err)
	route.Write(w, dialect, &route.Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailable",
		Message: "node " + h.Name + ", " + role + ", stopped answering", RetryAfter: time.Second})
	return true
}

// placeElsewhere says where a request for version v goes when this node
// runs no instance of it and holds no slot of it: to a node with an idle
// instance of it (warm rather than cold), or, when a slot is free, to the
// least-loaded node to start one (cluster.Route); ok is false to serve
// here (claiming a slot, or forwarding to a holder when every slot is
// held, as admit decides).
func (p *Platform) placeElsewhere(ctx context.Context, name string, v *version) (cluster.Node, bool) {
	key := cluster.SlotKey(name, v.fn.Version)
	if d := v.dep.Load(); d != nil && running(d.pool.Stats()) > 0 {
		return cluster.Node{}, false
	}
	if p.cluster.Mine(key) > 0 {
		return cluster.Node{}, false
	}
	h, ok, err := p.cluster.Where(ctx, key, maxInstancesOf(&v.fn.Spec))
	if err != nil {
		p.log.Warn("cluster: place a request", "key", key, "err", err)
		return cluster.Node{}, false
	}
	return h, ok
}

func isEvent(r *http.Request) bool {
	it := r.Header.Get("Ebb-Invocation-Type")
	if it == "" {
		it = r.Header.Get("X-Amz-Invocation-Type")
	}
	return strings.EqualFold(it, "Event")
}

// forward sends r to node h and copies its answer to w unchanged but for
// Ebb-Node. The caller's credentials go unchanged: h checks them again
// (keys are replicated), so a hop grants nothing the caller lacks. An error
// means nothing was written to w.
func (p *Platform) forward(w http.ResponseWriter, r *http.Request, h cluster.Node) error {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, strings.TrimSuffix(h.Addr, "/")+r.URL.RequestURI(), noClose{r.Body})
	if err != nil {
		return err
	}
	out.Header = r.Header.Clone()
	out.Header.Set(ForwardedByHeader, p.cfg.Node)
	out.Host = r.Host
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := p.hop.Do(out)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	wh := w.Header()
	for k, vs := range resp.Header {
		wh[k] = vs
	}
	if wh.Get(NodeHeader) == "" {
		wh.Set(NodeHeader, h.Name)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(flushWriter{w}, resp.Body)
	return nil
}

// noClose keeps the transport from closing the caller's body when a dial
// fails, so that the request can still be served here.
type noClose struct{ io.Reader }

func (noClose) Close() error { return nil }

// flushWriter flushes each chunk, for streamed answers.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	http.NewResponseController(f.w).Flush()
	return n, err
}

// isDialError says whether err is a failure to connect (the node is down):
// nothing was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" || errors.Is(err, syscall.ECONNREFUSED)
}
