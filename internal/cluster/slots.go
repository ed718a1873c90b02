package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SlotsBucket holds the cluster-wide instance slots: one key per function
// version, whose value says how many instances each node may run.
const SlotsBucket = "ebb_slots"

// maxCASTries bounds one claim or release: each try that loses a race has
// read a newer value, so a few suffice unless the bucket is hammered.
const maxCASTries = 16

// Slots is one function version's entry: instances claimed per node.
type Slots map[string]int

// alive is the set of the nodes whose heartbeat is younger than ttl at now.
func alive(nodes []Node, now time.Time, ttl time.Duration) map[string]bool {
	out := map[string]bool{}
	for _, n := range Alive(nodes, now, ttl) {
		out[n.Name] = true
	}
	return out
}

// Live is s without the entries of nodes not alive at now (their heartbeat
// expired: they died, and their slots are free) and without zero counts.
func Live(s Slots, nodes []Node, now time.Time, ttl time.Duration) Slots {
	up := alive(nodes, now, ttl)
	out := Slots{}
	for n, k := range s {
		if k > 0 && up[n] {
			out[n] = k
		}
	}
	return out
}

// Held is how many slots of s the nodes alive at now hold.
func Held(s Slots, nodes []Node, now time.Time, ttl time.Duration) int {
	h := 0
	for _, k := range Live(s, nodes, now, ttl) {
		h += k
	}
	return h
}

// ClaimSlot is s after node me claims one more slot, within max held by the
// nodes alive at now; dead nodes' entries are dropped from it. ok is false
// (and s is returned unchanged) when every slot is held.
func ClaimSlot(s Slots, me string, max int, nodes []Node, now time.Time, ttl time.Duration) (Slots, bool) {
	live := Live(s, nodes, now, ttl)
	held := 0
	for _, k := range live {
		held += k
	}
	if held >= max {
		return s, false
	}
	live[me]++
	return live, true
}

// ReleaseSlots is s with node me holding n slots (none when n is 0), dead
// nodes' entries dropped.
func ReleaseSlots(s Slots, me string, n int, nodes []Node, now time.Time, ttl time.Duration) Slots {
	live := Live(s, nodes, now, ttl)
	if n > 0 {
		live[me] = n
	} else {
		delete(live, me)
	}
	return live
}

// Holders are the nodes other than me alive at now that hold slots of s,
// by name.
func Holders(s Slots, me string, nodes []Node, now time.Time, ttl time.Duration) []string {
	var out []string
	for n := range Live(s, nodes, now, ttl) {
		if n != me {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// SlotKey is the KV key of a function version's slots. Function names are
// valid KV key tokens already.
func SlotKey(function string, version int) string {
	return fmt.Sprintf("%s.v%d", function, version)
}

// Claimed is the answer to a claim: whether this node got a slot, and
// otherwise which live nodes hold them (to forward to) with their
// addresses.
type Claimed struct {
	OK      bool
	Holders []Node
}

// Claim takes one more slot of key for this node if fewer than max are held
// by live nodes, by compare-and-set on the entry's revision: of two nodes
// claiming the last slot at once, one is written and the other reads the
// winner's entry and finds no slot.
func (c *Cluster) Claim(ctx context.Context, key string, max int) (Claimed, error) {
	if c.slots == nil {
		return Claimed{OK: true}, nil // a lone node: its pools bound it
	}
	me := c.cfg.Self.Name
	c.mu.Lock()
	r, ok := c.refused[key]
	c.mu.Unlock()
	if ok && c.cfg.Now().Before(r.until) {
		return r.Claimed, nil
	}
	hb := map[string]*Node{}
	for range maxCASTries {
		s, rev, err := c.readSlots(ctx, key)
		if err != nil {
			return Claimed{}, err
		}
		nodes, err := c.heartbeats(ctx, s, hb)
		if err != nil {
			return Claimed{}, err
		}
		now := c.cfg.Now()
		next, ok := ClaimSlot(s, me, max, nodes, now, c.cfg.TTL)
		if !ok {
			var hs []Node
			for _, h := range Holders(s, me, nodes, now, c.cfg.TTL) {
				if i := slices.IndexFunc(nodes, func(n Node) bool { return n.Name == h }); i >= 0 {
					hs = append(hs, nodes[i])
				}
			}
			got := Claimed{Holders: hs}
			c.mu.Lock()
			c.refused[key] = refusal{got, now.Add(c.cfg.Interval / 2)}
			c.mu.Unlock()
			return got, nil
		}
		// Marked before the write: a reconcile under way gives nothing
		// back from now on (it would write over this claim).
		c.mu.Lock()
		c.claimedAt[key] = now
		c.mu.Unlock()
		if err := c.writeSlots(ctx, key, next, rev); err != nil {
			if lostRace(err) {
				continue
			}
			return Claimed{}, err
		}
		c.mu.Lock()
		c.mine[key] = next[me]
		c.mu.Unlock()
		return Claimed{OK: true}, nil
	}
	return Claimed{}, fmt.Errorf("claim slot %s: %d writers raced past every try", key, maxCASTries)
}

// refusal is a claim refused, kept for half a heartbeat interval: a node
// forwarding every request of a function to its holder asks the bucket
// again at most that often, not once per request. Forwarding on a stale
// refusal is safe (the holder serves, or claims a slot itself); only a
// claim could overshoot, and claims are never cached.
type refusal struct {
	Claimed
	until time.Time
}

// Recheck forgets a refusal of key, so that the next Claim reads the bucket
// again: for a holder found dead.
func (c *Cluster) Recheck(key string) {
	c.mu.Lock()
	delete(c.refused, key)
	c.mu.Unlock()
}

// Mine is how many slots of key this node holds, as it last wrote.
func (c *Cluster) Mine(key string) int {
	if c.slots == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mine[key]
}

// Release lowers this node's slots of key to n (those it runs), by
// compare-and-set like Claim.
func (c *Cluster) Release(ctx context.Context, key string, n int) error {
	return c.release(ctx, key, n, time.Time{})
}

// release is Release; with claimed set, it gives nothing back once this
// node has claimed a slot of key since claimed (reconcile's view is stale).
func (c *Cluster) release(ctx context.Context, key string, n int, claimed time.Time) error {
	if c.slots == nil {
		return nil
	}
	me := c.cfg.Self.Name
	hb := map[string]*Node{}
	for range maxCASTries {
		s, rev, err := c.readSlots(ctx, key)
		if err != nil {
			return err
		}
		nodes, err := c.heartbeats(ctx, s, hb)
		if err != nil {
			return err
		}
		next := ReleaseSlots(s, me, n, nodes, c.cfg.Now(), c.cfg.TTL)
		if maps.Equal(next, s) {
			break
		}
		if !claimed.IsZero() {
			c.mu.Lock()
			moved := !c.claimedAt[key].Equal(claimed)
			c.mu.Unlock()
			if moved {
				return nil
			}
		}
		if err := c.writeSlots(ctx, key, next, rev); err != nil {
			if lostRace(err) {
				continue
			}
			return err
		}
		break
	}
	c.mu.Lock()
	if n > 0 {
		c.mine[key] = n
	} else {
		delete(c.mine, key)
		delete(c.claimedAt, key)
	}
	c.mu.Unlock()
	return nil
}

// reconcile gives back the slots this node holds beyond what it runs (an
// instance stopped as idle or crashed), except those claimed within the
// last interval, whose instance may still be starting. Running is called
// without c.mu held: a pool asks Mine under its own lock (its Limit), and
// Running reads the pools.
func (c *Cluster) reconcile(ctx context.Context) error {
	if c.cfg.Running == nil {
		return nil
	}
	now := c.cfg.Now()
	c.mu.Lock()
	type held struct {
		n       int
		claimed time.Time
	}
	hs := map[string]held{}
	for key, n := range c.mine {
		if at := c.claimedAt[key]; now.Sub(at) >= c.cfg.Interval {
			hs[key] = held{n, at}
		}
	}
	c.mu.Unlock()
	var errs []error
	for key, h := range hs {
		if run := c.cfg.Running(key); run < h.n {
			if err := c.release(ctx, key, run, h.claimed); err != nil {
				errs = append(errs, fmt.Errorf("release slots of %s: %w", key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// heartbeats reads the heartbeats of the nodes that s names, and this
// node's own, each by its key (a node whose key is gone has expired), into
// and from the cache hb of this one claim. Reading by key rather than
// listing the bucket never takes a live node for dead.
func (c *Cluster) heartbeats(ctx context.Context, s Slots, hb map[string]*Node) ([]Node, error) {
	names := slices.Collect(maps.Keys(s))
	names = append(names, c.cfg.Self.Name)
	var out []Node
	for _, name := range names {
		n, seen := hb[name]
		if !seen {
			e, err := c.nodes.Get(ctx, name)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return nil, fmt.Errorf("read heartbeat of %s: %w", name, err)
			default:
				n = new(Node)
				if json.Unmarshal(e.Value(), n) != nil {
					n = nil // corrupt: not alive
				}
			}
			if name == c.cfg.Self.Name && n == nil {
				// This node is alive, whatever its heartbeat says.
				n = &Node{Name: name}
			}
			if name == c.cfg.Self.Name {
				n.Seen = c.cfg.Now()
			}
			hb[name] = n
		}
		if n != nil {
			out = append(out, *n)
		}
	}
	return out, nil
}

func (c *Cluster) readSlots(ctx context.Context, key string) (Slots, uint64, error) {
	e, err := c.slots.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Slots{}, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read slots %s: %w", key, err)
	}
	var s Slots
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		s = Slots{} // corrupt: overwritten by the next write
	}
	if e.Operation() != jetstream.KeyValuePut {
		s = Slots{}
	}
	return s, e.Revision(), nil
}

func (c *Cluster) writeSlots(ctx context.Context, key string, s Slots, rev uint64) error {
	b, _ := json.Marshal(s)
	var err error
	if rev == 0 {
		_, err = c.slots.Create(ctx, key, b)
	} else {
		_, err = c.slots.Update(ctx, key, b, rev)
	}
	return err
}

// lostRace says whether a compare-and-set failed because another writer
// got there first.
func lostRace(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err)
}

// releaseAll gives back every slot of this node, on a clean shutdown.
func (c *Cluster) releaseAll(ctx context.Context) {
	c.mu.Lock()
	keys := slices.Collect(maps.Keys(c.mine))
	c.mu.Unlock()
	for _, k := range keys {
		c.Release(ctx, k, 0)
	}
}

// FloorShares splits a function version's min_instances (floor) among the
// nodes alive at now: how many instances each keeps, floor in all (none
// when no node is alive). Slots held already keep their instances where
// they are (nodes by name, up to the floor), so that no instance moves
// while its node lives; the rest, a dead node's share among them once its
// heartbeat expired, is placed one at a time by Place, each placement
// counted as load on its node (an instance kept is capacity in use), so
// that a floor of several spreads over the least loaded nodes.
func FloorShares(floor int, s Slots, nodes []Node, now time.Time, ttl time.Duration) map[string]int {
	alive := Alive(nodes, now, ttl)
	out := map[string]int{}
	if floor <= 0 || len(alive) == 0 {
		return out
	}
	live := Live(s, nodes, now, ttl)
	left := floor
	for _, n := range alive {
		if k := min(live[n.Name], left); k > 0 {
			out[n.Name] = k
			left -= k
		}
	}
	for ; left > 0; left-- {
		name := Place(alive, now, ttl)
		out[name]++
		i := slices.IndexFunc(alive, func(n Node) bool { return n.Name == name })
		alive[i].Load.InFlight++
		alive[i].Load.Instances++
	}
	return out
}

// KeepFloor is this node's share of key's floor (FloorShares, from the
// bucket and the live nodes' heartbeats read now), claiming the slots it
// lacks for it within max; it returns the share it holds slots for.
func (c *Cluster) KeepFloor(ctx context.Context, key string, floor, max int) (int, error) {
	if c.slots == nil {
		return floor, nil
	}
	s, _, err := c.readSlots(ctx, key)
	if err != nil {
		return 0, err
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return 0, err
	}
	me := c.cfg.Self.Name
	if !slices.ContainsFunc(nodes, func(n Node) bool { return n.Name == me }) {
		nodes = append(nodes, Node{Name: me, Seen: c.cfg.Now()}) // alive, whatever its heartbeat says
	}
	share := FloorShares(floor, s, nodes, c.cfg.Now(), c.cfg.TTL)[me]
	for c.Mine(key) < share {
		got, err := c.Claim(ctx, key, max)
		if err != nil {
			return min(share, c.Mine(key)), err
		}
		if !got.OK {
			break // every slot is held: the floor waits for one
		}
	}
	return min(share, c.Mine(key)), nil
}

// Route is where a request for key goes from node me, which runs no
// instance of it and holds no slot of it to start one: to a live node other
// than me with an idle instance of it (a warm instance rather than a cold
// start; the first by name), else, when fewer than max slots are held by
// live nodes, to the node Place picks for the cold start (me included:
// then to is me). It is "" when every slot is held: the caller claims (and
// is refused) as before.
func Route(key, me string, s Slots, max int, nodes []Node, now time.Time, ttl time.Duration) (to string, warm bool) {
	for _, n := range Alive(nodes, now, ttl) {
		if n.Name != me && n.Load.Idle[key] > 0 {
			return n.Name, true
		}
	}
	if Held(s, nodes, now, ttl) >= max {
		return "", false
	}
	return Place(nodes, now, ttl), false
}

// Peers is the live nodes, listed at most once per half heartbeat
// interval: Route's view of the others' loads and idle instances, which
// their heartbeats refresh no more often.
func (c *Cluster) Peers(ctx context.Context) ([]Node, error) {
	now := c.cfg.Now()
	c.mu.Lock()
	if c.peers != nil && now.Sub(c.peersAt) < c.cfg.Interval/2 {
		ns := c.peers
		c.mu.Unlock()
		return ns, nil
	}
	c.mu.Unlock()
	ns, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.peers, c.peersAt = ns, now
	c.mu.Unlock()
	return ns, nil
}

// Where is Route for a request for key arriving at this node: the node to
// send it to, or ok false to serve (claim) here. A warm instance elsewhere
// is found from the heartbeats alone; only for a cold start is the bucket
// read, and not while a refusal of key kept from a recent claim says
// every slot is held.
func (c *Cluster) Where(ctx context.Context, key string, max int) (Node, bool, error) {
	if c.slots == nil {
		return Node{}, false, nil
	}
	nodes, err := c.Peers(ctx)
	if err != nil {
		return Node{}, false, err
	}
	me, now := c.cfg.Self.Name, c.cfg.Now()
	if !slices.ContainsFunc(nodes, func(n Node) bool { return n.Name == me }) {
		nodes = append(slices.Clip(nodes), Node{Name: me, Seen: now})
	}
	// A warm instance first, from the heartbeats alone (every slot
	// taken as held): no read of the bucket for it.
	to, _ := Route(key, me, Slots{me: max}, max, nodes, now, c.cfg.TTL)
	c.mu.Lock()
	r, refused := c.refused[key]
	c.mu.Unlock()
	if to == "" && !(refused && now.Before(r.until)) {
		// None: a cold start, if a slot is free (a refusal kept from a
		// recent claim says none is).
		s, _, err := c.readSlots(ctx, key)
		if err != nil {
			return Node{}, false, err
		}
		to, _ = Route(key, me, s, max, nodes, now, c.cfg.TTL)
	}
	if to == "" || to == me {
		return Node{}, false, nil
	}
	i := slices.IndexFunc(nodes, func(n Node) bool { return n.Name == to })
	return nodes[i], true, nil
}
