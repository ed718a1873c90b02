// Package cluster is what ebb nodes sharing one NATS cluster know of each
// other: each node's heartbeat (who it is, where it answers HTTP, what it
// can hold and what it holds now) in a KV bucket whose entries expire; a
// leader lease, so that work that must happen once per cluster (a schedule's
// tick) happens on one node; and instance slots per function version
// (slots.go), so that max_instances holds for the cluster.
//
// Everything rests on JetStream KV: the heartbeat bucket's TTL removes a
// node that stopped beating, and the lease is taken and renewed by
// compare-and-set on the entry's revision, as are the slots. The decisions
// (who is alive, which node is least loaded, whether to claim the lease or
// a slot) are pure functions
// of the state read and the time, tested by moving the time.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names; part of the on-cluster format.
const (
	NodesBucket  = "ebb_nodes"
	LeasesBucket = "ebb_leases"
	// SchedulerLease is the lease whose holder fires schedules.
	SchedulerLease = "scheduler"
)

// Defaults of Config.
const (
	DefaultInterval = 2 * time.Second
	DefaultTTL      = 6 * time.Second
	DefaultLease    = 3 * time.Second
	// maxName bounds a node name: it is a KV key and shows in logs.
	maxName = 64
)

// Capacity is what a node can hold.
type Capacity struct {
	CPUs      int   `json:"cpus"`
	MemoryMiB int64 `json:"memory_mib"`
	// WarmBytes is the node's budget for warm capacity (--warm-memory).
	WarmBytes int64 `json:"warm_bytes"`
}

// Load is what a node holds now.
type Load struct {
	InFlight  int `json:"in_flight"` // invocations running
	Instances int `json:"instances"` // instances up, idle or busy
	// Idle is the idle instances per slot key (SlotKey), for the other
	// nodes to send a request to a warm instance rather than start one.
	Idle map[string]int `json:"idle,omitempty"`
}

// Node is one node's heartbeat.
type Node struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"` // how other nodes reach its HTTP API, http://host:port
	Version   string    `json:"version"`
	Capacity  Capacity  `json:"capacity"`
	Load      Load      `json:"load"`
	StartedAt time.Time `json:"started_at"`
	Seen      time.Time `json:"seen"` // when this heartbeat was written
}

// ValidName checks a node name: 1 to 64 letters, digits, '-', '_' or '.',
// not starting or ending with '.' (it is a KV key).
func ValidName(s string) error {
	if s == "" || len(s) > maxName {
		return fmt.Errorf("node name %q must be 1 to %d characters", s, maxName)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("node name %q may hold only letters, digits, '-', '_' and '.'", s)
		}
	}
	if strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return fmt.Errorf("node name %q must not start or end with '.' or hold '..'", s)
	}
	return nil
}

// Config configures a Cluster.
type Config struct {
	JetStream jetstream.JetStream
	// Self is this node; Load and Seen are filled on every beat.
	Self Node
	// Load reports this node's load; nil reports none.
	Load func() Load
	// Interval between heartbeats (default 2s); TTL, after which a node
	// whose heartbeat stopped is gone (default 3 × Interval).
	Interval, TTL time.Duration
	// Elect runs for the scheduler lease; without it this node never
	// leads (Leader says true: a single node leads itself).
	Elect bool
	// Lease is how long a claim of the lease lasts; the holder renews it
	// every Lease/3 (default 3s).
	Lease time.Duration
	// Slots keeps cluster-wide instance slots (bucket ebb_slots) for
	// Claim and Release; without it (a single node) Claim always grants
	// and costs nothing.
	Slots bool
	// Running reports how many instances this node runs of a slot key,
	// so that slots held beyond them are given back every Interval; nil
	// gives nothing back but on Release.
	Running  func(key string) int
	Replicas int
	Now      func() time.Time
	Logger   *slog.Logger
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.JetStream == nil {
		return errors.New("cluster config: JetStream is required")
	}
	if err := ValidName(c.Self.Name); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.TTL == 0 {
		c.TTL = 3 * c.Interval
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.Interval < 10*time.Millisecond || c.TTL <= c.Interval || c.Lease < 30*time.Millisecond {
		return fmt.Errorf("cluster config: interval %s must be at least 10ms and below the TTL %s; lease %s at least 30ms", c.Interval, c.TTL, c.Lease)
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Load == nil {
		c.Load = func() Load { return Load{} }
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Cluster runs this node's heartbeat and, with Elect, its part in the
// scheduler lease, until Close.
type Cluster struct {
	cfg    Config
	nodes  jetstream.KeyValue
	leases jetstream.KeyValue
	slots  jetstream.KeyValue
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex // guards until, mine, claimedAt, refused, peers, peersAt
	// peers is the live nodes as last listed (Peers), at peersAt.
	peers   []Node
	peersAt time.Time
	// mine is the slots this node holds per key, as last written, and
	// claimedAt when it last claimed one.
	mine      map[string]int
	claimedAt map[string]time.Time
	refused   map[string]refusal
	// until is when this node's hold on the lease ends by its own clock:
	// the claim's start plus Lease, less a margin; zero when not held.
	until time.Time
}

// Start creates or binds the buckets, writes the first heartbeat and runs
// the loops.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	nodes, err := cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: NodesBucket, Description: "ebb nodes: heartbeats, expiring", History: 1,
		TTL: cfg.TTL, Storage: jetstream.MemoryStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("start cluster: bucket %s: %w", NodesBucket, err)
	}
	c := &Cluster{cfg: cfg, nodes: nodes, mine: map[string]int{}, claimedAt: map[string]time.Time{},
		refused: map[string]refusal{}}
	if cfg.Slots {
		if c.slots, err = cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: SlotsBucket, Description: "ebb instance slots per function version and node", History: 1,
			Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
		}); err != nil {
			return nil, fmt.Errorf("start cluster: bucket %s: %w", SlotsBucket, err)
		}
	}
	if cfg.Elect {
		if c.leases, err = cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: LeasesBucket, Description: "ebb leader leases", History: 1,
			Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
		}); err != nil {
			return nil, fmt.Errorf("start cluster: bucket %s: %w", LeasesBucket, err)
		}
	}
	if cfg.Self.StartedAt.IsZero() {
		c.cfg.Self.StartedAt = cfg.Now().UTC()
	}
	if err := c.beat(ctx); err != nil {
		return nil, fmt.Errorf("start cluster: first heartbeat: %w", err)
	}
	if cfg.Elect {
		// A first claim now: a node that starts alone leads at once
		// rather than a third of a lease later.
		if err := c.elect(ctx); err != nil {
			cfg.Logger.Warn("cluster scheduler lease", "err", err)
		}
	}
	lctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	c.wg.Add(1)
	go c.every(lctx, cfg.Interval, "heartbeat", c.beat)
	if cfg.Elect {
		c.wg.Add(1)
		go c.every(lctx, cfg.Lease/3, "scheduler lease", c.elect)
	}
	if c.slots != nil {
		c.wg.Add(1)
		go c.every(lctx, cfg.Interval, "instance slots", c.reconcile)
	}
	return c, nil
}

// Close stops the loops and withdraws this node: its slots are given back,
// its heartbeat is deleted and a lease it holds is released, so that the others need not wait for
// them to expire.
func (c *Cluster) Close(ctx context.Context) {
	c.stop()
	c.wg.Wait()
	if c.slots != nil {
		c.releaseAll(ctx)
	}
	c.nodes.Delete(ctx, c.cfg.Self.Name)
	if c.leases != nil && c.Leader() {
		if e, err := c.leases.Get(ctx, SchedulerLease); err == nil {
			var l Lease
			if json.Unmarshal(e.Value(), &l) == nil && l.Holder == c.cfg.Self.Name {
				c.leases.Delete(ctx, SchedulerLease, jetstream.LastRevision(e.Revision()))
			}
		}
	}
}

func (c *Cluster) every(ctx context.Context, d time.Duration, what string, f func(context.Context) error) {
	defer c.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, max(d, time.Second))
		if err := f(cctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("cluster "+what, "err", err)
		}
		cancel()
	}
}

func (c *Cluster) beat(ctx context.Context) error {
	n := c.cfg.Self
	n.Load = c.cfg.Load()
	n.Seen = c.cfg.Now().UTC()
	b, _ := json.Marshal(n)
	_, err := c.nodes.Put(ctx, n.Name, b)
	return err
}

// Nodes lists the nodes alive now, by name.
func (c *Cluster) Nodes(ctx context.Context) ([]Node, error) {
	lister, err := c.nodes.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []Node
	for k := range lister.Keys() {
		e, err := c.nodes.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired between the listing and now
		}
		if err != nil {
			return nil, fmt.Errorf("read node %s: %w", k, err)
		}
		var n Node
		if err := json.Unmarshal(e.Value(), &n); err != nil {
			c.cfg.Logger.Warn("skipping a corrupt heartbeat", "node", k, "err", err)
			continue
		}
		out = append(out, n)
	}
	return Alive(out, c.cfg.Now(), c.cfg.TTL), nil
}

// Self is this node's name.
func (c *Cluster) Self() string { return c.cfg.Self.Name }

// Alive keeps the nodes whose heartbeat is younger than ttl at now, sorted
// by name. The bucket's TTL removes the others too, but on the server's
// schedule; this makes the answer exact.
func Alive(nodes []Node, now time.Time, ttl time.Duration) []Node {
	out := make([]Node, 0, len(nodes))
	for _, n := range nodes {
		if now.Sub(n.Seen) < ttl {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Place picks the node to start a new instance on: among those alive at
// now, the one with the fewest invocations in flight per CPU, then the
// fewest instances per CPU, then by name (so that every node agrees).
// It returns "" when none is alive.
func Place(nodes []Node, now time.Time, ttl time.Duration) string {
	alive := Alive(nodes, now, ttl)
	if len(alive) == 0 {
		return ""
	}
	per := func(x int, n Node) float64 { return float64(x) / float64(max(n.Capacity.CPUs, 1)) }
	best := slices.MinFunc(alive, func(a, b Node) int {
		if d := per(a.Load.InFlight, a) - per(b.Load.InFlight, b); d != 0 {
			return sign(d)
		}
		if d := per(a.Load.Instances, a) - per(b.Load.Instances, b); d != 0 {
			return sign(d)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return best.Name
}

func sign(f float64) int {
	if f < 0 {
		return -1
	}
	return 1
}
