package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/store"
)

func TestSlotDecisionsMovingNow(t *testing.T) {
	ttl := 6 * time.Second
	nodes := []Node{{Name: "a", Seen: t0}, {Name: "b", Seen: t0.Add(-4 * time.Second)}, {Name: "c", Seen: t0}}
	s := Slots{"a": 1, "b": 1}
	// At t0 a and b hold the two slots: c finds none and forwards to them.
	if _, ok := ClaimSlot(s, "c", 2, nodes, t0, ttl); ok {
		t.Error("c claimed a third slot of two")
	}
	if got := Holders(s, "c", nodes, t0, ttl); fmt.Sprint(got) != "[a b]" {
		t.Errorf("Holders at t0 = %v, want [a b]", got)
	}
	if got := Held(s, nodes, t0, ttl); got != 2 {
		t.Errorf("Held at t0 = %d, want 2", got)
	}
	// b's heartbeat expires at t0+2s: its slot is free, and the claim
	// drops b's entry.
	at := t0.Add(2 * time.Second)
	next, ok := ClaimSlot(s, "c", 2, nodes, at, ttl)
	if !ok || fmt.Sprint(next) != "map[a:1 c:1]" {
		t.Errorf("ClaimSlot after b expired = %v %v, want map[a:1 c:1] true", next, ok)
	}
	if got := Holders(s, "c", nodes, at, ttl); fmt.Sprint(got) != "[a]" {
		t.Errorf("Holders after b expired = %v, want [a]", got)
	}
	// A node's own slots count against it too.
	if _, ok := ClaimSlot(Slots{"a": 2}, "a", 2, nodes, t0, ttl); ok {
		t.Error("a claimed a third slot of two")
	}
	if next, ok := ClaimSlot(Slots{"a": 1}, "a", 2, nodes, t0, ttl); !ok || next["a"] != 2 {
		t.Errorf("a's second slot: %v %v", next, ok)
	}
	if got := ReleaseSlots(Slots{"a": 2, "b": 1}, "a", 0, nodes, at, ttl); fmt.Sprint(got) != "map[]" {
		t.Errorf("ReleaseSlots = %v, want a's gone and dead b's dropped", got)
	}
	if got := ReleaseSlots(Slots{"a": 2, "c": 1}, "a", 1, nodes, t0, ttl); fmt.Sprint(got) != "map[a:1 c:1]" {
		t.Errorf("ReleaseSlots to 1 = %v", got)
	}
	// Everyone dead: every slot is free.
	if got := Held(s, nodes, t0.Add(ttl), ttl); got != 0 {
		t.Errorf("Held when all expired = %d", got)
	}
}

// TestClaimNeverOvershoots: eight nodes claim slots of one key at once,
// many times each, against a real JetStream KV; exactly max are granted.
// Releasing one frees one; a killed node's slots are free once its
// heartbeat expires, and its entry is cleaned up by the next claim.
func TestClaimNeverOvershoots(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	var cs []*Cluster
	for i := range 8 {
		c := startSlots(t, st, fmt.Sprintf("n%d", i))
		cs = append(cs, c)
	}
	defer func() {
		for _, c := range cs[1:] {
			c.Close(context.Background())
		}
	}()
	waitFor(t, "every node", func() bool { ns, _ := cs[0].Nodes(context.Background()); return len(ns) == 8 })
	const max = 3
	var mu sync.Mutex
	granted := map[string]int{}
	selfFull := map[*Cluster]bool{}
	var wg sync.WaitGroup
	for _, c := range cs[1:] { // n0 only watches, and survives the kills below
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := c.Claim(context.Background(), "f.v1", max)
				if err != nil {
					t.Error(err)
					return
				}
				if got.OK {
					mu.Lock()
					granted[c.Self()]++
					mu.Unlock()
				} else if len(got.Holders) == 0 {
					// Holders are the other nodes: a node refused
					// without any must hold every slot itself.
					mu.Lock()
					selfFull[c] = true
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for c := range selfFull {
		if granted[c.Self()] != max {
			t.Errorf("%s was refused with no other holder but was granted %d of %d", c.Self(), granted[c.Self()], max)
		}
	}
	total := 0
	for n, k := range granted {
		total += k
		if got := cs[0].mineOf(t, n); got != k {
			t.Errorf("%s was granted %d, the bucket says %d", n, k, got)
		}
	}
	if total != max {
		s, _, _ := cs[0].readSlots(context.Background(), "f.v1")
		ns, _ := cs[0].Nodes(context.Background())
		t.Fatalf("granted %d slots of %d: %v; bucket %v; nodes %d", total, max, granted, s, len(ns))
	}
	// One holder gives one back: one more claim succeeds, the next not.
	var holder *Cluster
	for _, c := range cs {
		if granted[c.Self()] > 0 {
			holder = c
			break
		}
	}
	if err := holder.Release(context.Background(), "f.v1", granted[holder.Self()]-1); err != nil {
		t.Fatal(err)
	}
	var other *Cluster
	for _, c := range cs {
		if c != holder && c != cs[0] {
			other = c
			break
		}
	}
	other.Recheck("f.v1") // a refusal it may keep from above
	if got, _ := other.Claim(context.Background(), "f.v1", max); !got.OK {
		t.Errorf("after a release %s got no slot: %+v", other.Self(), got)
	}
	if got, _ := other.Claim(context.Background(), "f.v1", max); got.OK {
		t.Error("a fourth slot was granted")
	}
	// Kill every holder but other: their heartbeats expire and so do
	// their slots; other then claims them all.
	for i, c := range cs {
		if c != other && c != cs[0] && c.Mine("f.v1") > 0 {
			c.kill()
			cs[i] = cs[0]
		}
	}
	waitFor(t, "the dead holders' slots to free", func() bool {
		got, err := other.Claim(context.Background(), "f.v1", max)
		return err == nil && got.OK && other.Mine("f.v1") == max
	})
	s, _, _ := other.readSlots(context.Background(), "f.v1")
	if fmt.Sprint(s) != fmt.Sprintf("map[%s:%d]", other.Self(), max) {
		t.Errorf("slots after the holders died = %v, want only %s's", s, other.Self())
	}
}

func startSlots(t *testing.T, st *store.Store, name string) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{JetStream: st.JetStream(), Self: Node{Name: name}, Interval: 50 * time.Millisecond,
		TTL: 400 * time.Millisecond, Slots: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *Cluster) mineOf(t *testing.T, node string) int {
	s, _, err := c.readSlots(context.Background(), "f.v1")
	if err != nil {
		t.Fatal(err)
	}
	return s[node]
}

// TestReconcileGivesBackUnused: slots held beyond the instances a node runs
// are given back after an interval.
func TestReconcileGivesBackUnused(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	var mu sync.Mutex
	running := 2
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{JetStream: st.JetStream(), Self: Node{Name: "a"}, Interval: 50 * time.Millisecond,
		TTL: 400 * time.Millisecond, Slots: true, Running: func(string) int { mu.Lock(); defer mu.Unlock(); return running }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for range 2 {
		if got, err := c.Claim(ctx, "f.v1", 5); err != nil || !got.OK {
			t.Fatal(got, err)
		}
	}
	mu.Lock()
	running = 0
	mu.Unlock()
	waitFor(t, "the unused slots to be given back", func() bool { return c.mineOf(t, "a") == 0 && c.Mine("f.v1") == 0 })
}

// TestRefusalKeptHalfAnInterval: a refused claim is answered from memory
// until half an interval has passed (or Recheck), never a granted one.
func TestRefusalKeptHalfAnInterval(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	move := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	mk := func(name string) *Cluster {
		c, err := Start(context.Background(), Config{JetStream: st.JetStream(), Self: Node{Name: name}, Interval: time.Second,
			TTL: time.Hour, Slots: true, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	x, y := mk("x"), mk("y")
	defer x.Close(context.Background())
	defer y.Close(context.Background())
	ctx := context.Background()
	if got, _ := x.Claim(ctx, "f.v1", 1); !got.OK {
		t.Fatal("x got no slot")
	}
	if got, _ := y.Claim(ctx, "f.v1", 1); got.OK || len(got.Holders) != 1 || got.Holders[0].Name != "x" {
		t.Fatalf("y's claim = %+v, want refused, held by x", got)
	}
	if err := x.Release(ctx, "f.v1", 0); err != nil {
		t.Fatal(err)
	}
	move(499 * time.Millisecond)
	if got, _ := y.Claim(ctx, "f.v1", 1); got.OK {
		t.Error("y's refusal was not kept for half an interval")
	}
	move(time.Millisecond)
	if got, _ := y.Claim(ctx, "f.v1", 1); !got.OK {
		t.Error("y's refusal outlived half an interval")
	}
	if got, _ := x.Claim(ctx, "f.v1", 1); got.OK {
		t.Error("x got a second slot of one")
	}
	y.Release(ctx, "f.v1", 0)
	x.Recheck("f.v1")
	if got, _ := x.Claim(ctx, "f.v1", 1); !got.OK {
		t.Error("after Recheck x's refusal was still kept")
	}
}

// TestClaimRacesOnReplicatedBucket: on a bucket of three replicas (three
// nats-server processes), a compare-and-set that loses is answered with
// another error code than on one server; claims at once from four nodes
// still all end in a grant or a refusal, never an error, and exactly max
// are granted.
func TestClaimRacesOnReplicatedBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 3 nats-server processes; skipped with -short")
	}
	bin, err := ebbtest.NATSBinary()
	if err != nil {
		t.Skipf("cannot build nats-server: %v", err)
	}
	nc, err := nats.Connect(ebbtest.NATSURLs(ebbtest.NATSCluster(t, bin, 3)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var cs []*Cluster
	for i := range 4 {
		var c *Cluster
		for try := 1; ; try++ {
			// A fresh cluster may be slow to place (or refuse) its first
			// replicated buckets on a loaded machine: tried again, as a
			// supervisor would start ebb again.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			c, err = Start(ctx, Config{JetStream: js, Self: Node{Name: fmt.Sprintf("n%d", i)}, Slots: true, Replicas: 3})
			cancel()
			if err == nil {
				break
			}
			if try == 3 {
				t.Fatal(err)
			}
			t.Logf("start node n%d: %v; again", i, err)
		}
		defer c.Close(context.Background())
		cs = append(cs, c)
	}
	// A bucket just made answers "no responders" until its replicas
	// elected a leader.
	waitFor(t, "the slots bucket to answer", func() bool {
		_, _, err := cs[0].readSlots(context.Background(), "f.v1")
		return err == nil
	})
	const max = 5
	var granted atomic.Int64
	var wg sync.WaitGroup
	for _, c := range cs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := c.Claim(context.Background(), "f.v1", max)
				if err != nil {
					t.Errorf("claim on %s: %v", c.Self(), err)
				} else if got.OK {
					granted.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if got := granted.Load(); got != max {
		s, _, _ := cs[0].readSlots(context.Background(), "f.v1")
		t.Errorf("granted %d slots of %d; bucket %v", got, max, s)
	}
}

// TestStaleReconcileKeepsAFreshClaim: a reconcile that decided to give a
// slot back, from what it read before this node claimed another, gives
// nothing back (it would write over the fresh claim); one that read after
// does. Running is asked without the cluster's lock held, since a pool's
// Limit asks Mine under the pool's lock: a Running that calls Mine does
// not deadlock.
func TestStaleReconcileKeepsAFreshClaim(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c *Cluster
	c, err := Start(ctx, Config{JetStream: st.JetStream(), Self: Node{Name: "a"}, Interval: time.Hour,
		TTL: 2 * time.Hour, Slots: true, Running: func(key string) int { return c.Mine(key) }})
	if err != nil {
		t.Fatal(err)
	}
	// Closed only when no reconcile deadlocked (Close would wait on it).
	deadlocked := false
	defer func() {
		if !deadlocked {
			c.Close(context.Background())
		}
	}()
	if got, err := c.Claim(ctx, "f.v1", 5); err != nil || !got.OK {
		t.Fatal(got, err)
	}
	c.mu.Lock()
	seen := c.claimedAt["f.v1"]
	c.mu.Unlock()
	if got, err := c.Claim(ctx, "f.v1", 5); err != nil || !got.OK {
		t.Fatal(got, err)
	}
	if err := c.release(ctx, "f.v1", 0, seen.Add(-time.Nanosecond)); err != nil {
		t.Fatal(err)
	}
	if got := c.mineOf(t, "a"); got != 2 || c.Mine("f.v1") != 2 {
		t.Errorf("after a stale reconcile: bucket %d, Mine %d; want the 2 claimed", got, c.Mine("f.v1"))
	}
	c.mu.Lock()
	seen = c.claimedAt["f.v1"]
	c.mu.Unlock()
	if err := c.release(ctx, "f.v1", 1, seen); err != nil {
		t.Fatal(err)
	}
	if got := c.mineOf(t, "a"); got != 1 || c.Mine("f.v1") != 1 {
		t.Errorf("after a current reconcile: bucket %d, Mine %d; want 1", got, c.Mine("f.v1"))
	}
	c.mu.Lock()
	c.claimedAt["f.v1"] = time.Time{} // old enough to reconcile
	c.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- c.reconcile(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		deadlocked = true
		t.Fatal("reconcile deadlocked: Running was asked with the cluster's lock held")
	}
}

// TestFloorSharesMovingNow: a floor is split among the live nodes: kept
// where slots are held, the rest placed on the least loaded nodes, spread
// one at a time; a dead node's share goes to the survivors once its
// heartbeat expires, not before.
func TestFloorSharesMovingNow(t *testing.T) {
	ttl := 6 * time.Second
	cpu := Capacity{CPUs: 4}
	nodes := []Node{
		{Name: "a", Seen: t0, Capacity: cpu, Load: Load{InFlight: 3}},
		{Name: "b", Seen: t0.Add(-4 * time.Second), Capacity: cpu},
		{Name: "c", Seen: t0, Capacity: cpu, Load: Load{InFlight: 1}},
	}
	show := func(m map[string]int) string { return fmt.Sprint(m) }
	// No slots held: b is least loaded, then c (the first placement on b
	// counts as load there), then b again.
	if got := show(FloorShares(3, Slots{}, nodes, t0, ttl)); got != "map[b:2 c:1]" {
		t.Errorf("floor 3 from nothing = %s, want map[b:2 c:1]", got)
	}
	// a holds two slots already (its traffic): it keeps the floor there.
	if got := show(FloorShares(2, Slots{"a": 2}, nodes, t0, ttl)); got != "map[a:2]" {
		t.Errorf("floor 2 with a holding 2 = %s, want map[a:2]", got)
	}
	if got := show(FloorShares(2, Slots{"a": 1, "b": 3}, nodes, t0, ttl)); got != "map[a:1 b:1]" {
		t.Errorf("floor 2 with a:1 b:3 = %s, want map[a:1 b:1]", got)
	}
	// b dies (its heartbeat was 4s old at t0; the TTL is 6s): at t0+1s
	// it still keeps its share; at t0+2s c, the least loaded survivor,
	// takes it.
	s := Slots{"b": 1, "c": 1}
	if got := show(FloorShares(2, s, nodes, t0.Add(time.Second), ttl)); got != "map[b:1 c:1]" {
		t.Errorf("floor 2 while b lives = %s", got)
	}
	if got := show(FloorShares(2, s, nodes, t0.Add(2*time.Second), ttl)); got != "map[c:2]" {
		t.Errorf("floor 2 after b expired = %s, want map[c:2]", got)
	}
	// Nobody alive, or no floor: no shares.
	if got := FloorShares(2, s, nodes, t0.Add(ttl), ttl); len(got) != 0 {
		t.Errorf("floor with every node dead = %v", got)
	}
	if got := FloorShares(0, s, nodes, t0, ttl); len(got) != 0 {
		t.Errorf("floor 0 = %v", got)
	}
}

// TestRouteMovingNow: a request at a node without an instance goes to a
// live node with an idle one; else, with a slot free, to the least-loaded
// node for the cold start (possibly itself); else nowhere (the caller
// claims and is refused, as before). A node whose heartbeat expired is
// not sent anything.
func TestRouteMovingNow(t *testing.T) {
	ttl := 6 * time.Second
	cpu := Capacity{CPUs: 2}
	idle := map[string]int{"f.v1": 1}
	nodes := []Node{
		{Name: "a", Seen: t0, Capacity: cpu, Load: Load{InFlight: 2}},
		{Name: "b", Seen: t0.Add(-4 * time.Second), Capacity: cpu, Load: Load{Instances: 1, Idle: idle}},
		{Name: "c", Seen: t0, Capacity: cpu, Load: Load{Instances: 3}},
	}
	type want struct {
		to   string
		warm bool
	}
	check := func(what string, s Slots, max int, now time.Time, w want) {
		t.Helper()
		if to, warm := Route("f.v1", "a", s, max, nodes, now, ttl); to != w.to || warm != w.warm {
			t.Errorf("%s: Route = %q warm %v, want %q warm %v", what, to, warm, w.to, w.warm)
		}
	}
	check("b idle", Slots{"b": 1}, 3, t0, want{"b", true})
	check("b idle, every slot held", Slots{"b": 1, "c": 2}, 3, t0, want{"b", true})
	// b dies (its heartbeat expires at t0+2s): no warm instance; a slot
	// is free (b's counts no more), and c, with no request in flight, is
	// less loaded than a.
	check("b dead", Slots{"b": 1, "c": 1}, 2, t0.Add(2*time.Second), want{"c", false})
	check("b dead, every slot held", Slots{"c": 2}, 2, t0.Add(2*time.Second), want{"", false})
	// a itself is the least loaded: the cold start is here.
	nodes[0].Load.InFlight = 0
	check("a least loaded", Slots{}, 2, t0.Add(2*time.Second), want{"a", false})
	// Its own idle instance is no reason to forward (it would be free).
	nodes[0].Load.Idle = map[string]int{"f.v1": 1}
	check("a idle itself", Slots{"a": 1}, 2, t0.Add(2*time.Second), want{"a", false})
}
