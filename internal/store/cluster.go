package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The embedded servers of several ebb nodes can form one JetStream cluster
// themselves (Config.ClusterRoutes): nats-server's own routes and RAFT, so
// that no separate nats-server runs. This file parses the route list and
// waits, at Open, for such a cluster (or an external one) to be able to
// place replicated streams: nodes started at once find their peers only
// after a few seconds, and that is no reason to exit.

const (
	// defaultFormTimeout bounds Open's wait for a cluster to form.
	defaultFormTimeout = 2 * time.Minute
	// formPoll is how often the wait looks again. The server has no event
	// for a meta leader elected or a peer seen, so the wait polls.
	formPoll = 100 * time.Millisecond
	// attemptTimeout bounds one attempt at making or binding the buckets
	// and streams.
	attemptTimeout = 2 * time.Second
	// formLogEvery spaces the wait's log lines.
	formLogEvery = 5 * time.Second
	// DefaultClusterName names the cluster of embedded servers when
	// Config.ClusterName is empty.
	DefaultClusterName = "ebb"
)

// ParseRoutes parses a comma-separated list of cluster routes, each
// nats://HOST:PORT (or nats-route://; PORT 1 to 65535; no user, path or
// query), and returns them as nats://HOST:PORT. Blanks around entries are
// ignored; an empty entry is an error, and so is an empty list.
func ParseRoutes(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("no route given")
	}
	var out []string
	for _, r := range strings.Split(list, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			return nil, fmt.Errorf("route list %q has an empty entry", list)
		}
		u, err := url.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r, err)
		}
		if (u.Scheme != "nats" && u.Scheme != "nats-route") || u.Opaque != "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
			return nil, fmt.Errorf("route %q: want nats://HOST:PORT", r)
		}
		host, port := u.Hostname(), u.Port()
		if host == "" {
			return nil, fmt.Errorf("route %q: no host", r)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			return nil, fmt.Errorf("route %q: port %q is not a number from 1 to 65535", r, port)
		}
		if !validHost(host) {
			return nil, fmt.Errorf("route %q: host %q is neither an IP address nor a host name", r, host)
		}
		out = append(out, "nats://"+net.JoinHostPort(host, port))
	}
	return out, nil
}

// validHost says whether host is an IP address or a host name (letters,
// digits, '-', '_' and '.').
func validHost(host string) bool {
	if net.ParseIP(host) != nil {
		return true
	}
	if host == "" || len(host) > 253 {
		return false
	}
	return !strings.ContainsFunc(host, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	})
}

// ValidClusterName checks a cluster name: nats-server refuses spaces.
func ValidClusterName(name string) error {
	if name == "" {
		return errors.New("cluster name is empty")
	}
	if len(name) > 64 || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("cluster name %q: at most 64 characters, no spaces or control characters", name)
	}
	return nil
}

// ValidClusterListen checks the address on which an embedded server takes
// routes: HOST:PORT, with a host (the address other nodes reach, or
// 0.0.0.0 for every interface); port 0 picks a free one (of use in tests
// only: the other nodes must know it).
func ValidClusterListen(listen string) error {
	if h, _, err := net.SplitHostPort(listen); err == nil && h == "" {
		return fmt.Errorf("%q names no host: give the address other nodes reach this one on (or 0.0.0.0)", listen)
	}
	_, _, err := splitListen(listen)
	return err
}

// validateCluster checks the cluster fields of c (called by Validate,
// which has not filled ServerName yet).
func (c *Config) validateCluster() error {
	if len(c.ClusterRoutes) == 0 {
		switch {
		case c.ClusterListen != "":
			return errors.New("store config: cluster listen needs cluster routes")
		case c.ClusterName != "":
			return errors.New("store config: cluster name needs cluster routes")
		}
		return nil
	}
	if c.URL != "" {
		return errors.New("store config: cluster routes apply only to the embedded server (url is set)")
	}
	if c.ServerName == "" {
		return errors.New("store config: server name is required with cluster routes: every server of a cluster needs its own")
	}
	for _, r := range c.ClusterRoutes {
		if _, err := ParseRoutes(r); err != nil {
			return fmt.Errorf("store config: cluster routes: %w", err)
		}
	}
	if c.ClusterListen == "" {
		return errors.New("store config: cluster listen is required with cluster routes")
	}
	if err := ValidClusterListen(c.ClusterListen); err != nil {
		return fmt.Errorf("store config: cluster listen: %w", err)
	}
	if c.ClusterName == "" {
		c.ClusterName = DefaultClusterName
	}
	if err := ValidClusterName(c.ClusterName); err != nil {
		return fmt.Errorf("store config: %w", err)
	}
	// The routes name the other servers (and perhaps this one): a cluster
	// of at most len+1 servers cannot keep more copies than that.
	if c.Replicas > len(c.ClusterRoutes)+1 {
		return fmt.Errorf("store config: replicas %d need at least %d servers, and %d cluster routes make at most %d",
			c.Replicas, c.Replicas, len(c.ClusterRoutes), len(c.ClusterRoutes)+1)
	}
	return nil
}

// clusterOptions sets opts up for the cluster of embedded servers that cfg
// names.
func (s *Store) clusterOptions(opts *server.Options, cfg Config) error {
	host, port, _ := splitListen(cfg.ClusterListen) // checked by Validate
	opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: host, Port: port}
	for _, r := range cfg.ClusterRoutes {
		u, err := url.Parse(r)
		if err != nil {
			return fmt.Errorf("open store: cluster route %q: %w", r, err)
		}
		opts.Routes = append(opts.Routes, u)
	}
	if opts.DontListen {
		// The server solicits routes only once its client listener is up:
		// without a client port it would never join. One on loopback, on a
		// port of its choosing, serves nobody but this host.
		opts.DontListen = false
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	}
	if !isLoopback(host) {
		s.log.Warn("embedded NATS server takes cluster routes beyond loopback without authentication; keep its port on a private network",
			"cluster_listen", cfg.ClusterListen)
	}
	return nil
}

// waitFormed waits, for an embedded server that is part of a cluster,
// until a JetStream meta leader is known and this server is current with
// it, or until deadline. It logs what it waits for.
func (s *Store) waitFormed(ctx context.Context, cfg Config, deadline time.Time) error {
	if s.srv == nil || len(cfg.ClusterRoutes) == 0 {
		return nil
	}
	start := time.Now()
	var logged time.Time
	tick := time.NewTicker(formPoll)
	defer tick.Stop()
	for {
		leader, size := s.metaLeader()
		if leader != "" && s.srv.JetStreamIsCurrent() {
			s.log.Info("NATS cluster formed", "leader", leader, "cluster_size", size, "routes", s.srv.NumRoutes(), "took", time.Since(start).Round(time.Millisecond).String())
			return nil
		}
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("open store: the NATS cluster did not form within %s: no JetStream meta leader (this server has %d routes of %d configured); are the other nodes up and their cluster ports reachable?",
				now.Sub(start).Round(time.Second), s.srv.NumRoutes(), len(cfg.ClusterRoutes))
		}
		if logged.IsZero() || now.Sub(logged) >= formLogEvery {
			logged = now
			s.log.Info("waiting for the NATS cluster to form", "routes_up", s.srv.NumRoutes(), "routes", strings.Join(cfg.ClusterRoutes, ","),
				"cluster_size", size, "waited", now.Sub(start).Round(time.Second).String(), "gives_up_in", deadline.Sub(now).Round(time.Second).String())
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("open store: wait for the NATS cluster: %w", ctx.Err())
		}
	}
}

// metaLeader is the JetStream meta leader this server knows ("" for none)
// and the cluster size it knows.
func (s *Store) metaLeader() (string, int) {
	info, err := s.srv.Jsz(&server.JSzOptions{})
	if err != nil || info == nil || info.Meta == nil {
		return "", 0
	}
	return info.Meta.Leader, info.Meta.Size
}

// untilPlaced runs setup (which makes or binds streams and buckets, and
// may run again) until it succeeds, fails for good, or deadline passes,
// retrying while the cluster cannot place replicated streams yet (too few
// peers known, no meta leader, JetStream still starting).
func (s *Store) untilPlaced(ctx context.Context, replicas int, deadline time.Time, setup func(context.Context) error) error {
	start := time.Now()
	var logged time.Time
	for {
		// While the cluster forms, a request may go unanswered rather than
		// refused (two nodes making one stream at once: one of them may
		// get no answer), so each attempt has its own bound. What an
		// attempt made stays made: the next one binds it at once.
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := setup(actx)
		cancel()
		if err == nil || !clusterForming(err) || ctx.Err() != nil {
			return err
		}
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("%w (waited %s for the NATS cluster to place %d replicas; are enough of its servers up?)", err,
				now.Sub(start).Round(time.Second), replicas)
		}
		if logged.IsZero() || now.Sub(logged) >= formLogEvery {
			logged = now
			s.log.Info("waiting for the NATS cluster to place replicated streams", "replicas", replicas, "err", err.Error(),
				"waited", now.Sub(start).Round(time.Second).String(), "gives_up_in", deadline.Sub(now).Round(time.Second).String())
		}
		t := time.NewTimer(4 * formPoll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// clusterForming says whether err is what JetStream answers while its
// cluster forms: no meta leader yet, too few peers for the replicas asked,
// or no answer at all yet.
func clusterForming(err error) bool {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode {
		case 10005, // no suitable peers for placement
			10008, // JetStream system temporarily unavailable
			10023, // insufficient resources
			jetstream.JSErrCodeJetStreamNotEnabledForAccount,
			jetstream.JSErrCodeJetStreamNotEnabled:
			return true
		}
		return false
	}
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrNoStreamResponse)
}

// formingJS is the JetStream context that the store shares with other
// packages on a cluster. Its calls that make streams, buckets and
// consumers are retried, each attempt bounded, while the cluster answers
// as a forming one does (no meta leader, too few peers) or not at all:
// nodes that start at once make the same streams at once, and JetStream
// answers only one of two identical concurrent requests to make one. What
// an attempt made stays made; the next attempt finds it at once.
type formingJS struct {
	jetstream.JetStream
	s *Store
	// bound is how long one call keeps trying (Config.FormTimeout).
	bound time.Duration
}

func retryForming[T any](ctx context.Context, j *formingJS, what string, f func(context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(j.bound)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		v, err := f(actx)
		cancel()
		if err == nil || !clusterForming(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return v, err
		}
		j.s.log.Info("retrying while the NATS cluster forms", "what", what, "attempt", attempt, "err", err.Error())
		t := time.NewTimer(4 * formPoll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return v, err
		}
	}
}

func (j *formingJS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return retryForming(ctx, j, "stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) { return j.JetStream.CreateStream(ctx, cfg) })
}

func (j *formingJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return retryForming(ctx, j, "stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return j.JetStream.CreateOrUpdateStream(ctx, cfg)
	})
}

func (j *formingJS) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return retryForming(ctx, j, "stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) { return j.JetStream.UpdateStream(ctx, cfg) })
}

func (j *formingJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return retryForming(ctx, j, "bucket "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return j.JetStream.CreateKeyValue(ctx, cfg)
	})
}

func (j *formingJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return retryForming(ctx, j, "bucket "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return j.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
	})
}

func (j *formingJS) CreateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	return retryForming(ctx, j, "object store "+cfg.Bucket, func(ctx context.Context) (jetstream.ObjectStore, error) {
		return j.JetStream.CreateObjectStore(ctx, cfg)
	})
}

func (j *formingJS) CreateOrUpdateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	return retryForming(ctx, j, "object store "+cfg.Bucket, func(ctx context.Context) (jetstream.ObjectStore, error) {
		return j.JetStream.CreateOrUpdateObjectStore(ctx, cfg)
	})
}

func (j *formingJS) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return retryForming(ctx, j, "consumer "+cfg.Durable+" of "+stream, func(ctx context.Context) (jetstream.Consumer, error) {
		return j.JetStream.CreateConsumer(ctx, stream, cfg)
	})
}

func (j *formingJS) CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return retryForming(ctx, j, "consumer "+cfg.Durable+" of "+stream, func(ctx context.Context) (jetstream.Consumer, error) {
		return j.JetStream.CreateOrUpdateConsumer(ctx, stream, cfg)
	})
}
