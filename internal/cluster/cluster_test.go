package cluster

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/store"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestAliveAndPlaceMovingNow(t *testing.T) {
	ttl := 6 * time.Second
	nodes := []Node{
		{Name: "c", Seen: t0, Capacity: Capacity{CPUs: 4}, Load: Load{InFlight: 4, Instances: 1}},                   // 1 per CPU
		{Name: "a", Seen: t0.Add(-5 * time.Second), Capacity: Capacity{CPUs: 2}, Load: Load{InFlight: 0}},           // idle, oldest beat
		{Name: "b", Seen: t0.Add(-time.Second), Capacity: Capacity{CPUs: 1}, Load: Load{InFlight: 0, Instances: 3}}, // idle, 3 instances per CPU
	}
	if got := Place(nodes, t0, ttl); got != "a" {
		t.Errorf("Place at t0 = %q, want a (idle, fewest instances)", got)
	}
	// a's heartbeat runs out first: b is the idle one left.
	if got := Place(nodes, t0.Add(time.Second), ttl); got != "b" {
		t.Errorf("Place at t0+1s = %q, want b once a is gone", got)
	}
	if got := Alive(nodes, t0.Add(time.Second), ttl); len(got) != 2 || got[0].Name != "b" || got[1].Name != "c" {
		t.Errorf("Alive at t0+1s = %+v, want b and c by name", got)
	}
	if got := Place(nodes, t0.Add(5*time.Second), ttl); got != "c" {
		t.Errorf("Place at t0+5s = %q, want c, the last one alive", got)
	}
	if got := Place(nodes, t0.Add(ttl), ttl); got != "" {
		t.Errorf("Place at t0+ttl = %q, want none", got)
	}
	// Per CPU: 4 in flight on 4 CPUs beats 2 on 1.
	busy := []Node{{Name: "x", Seen: t0, Capacity: Capacity{CPUs: 1}, Load: Load{InFlight: 2}}, {Name: "y", Seen: t0, Capacity: Capacity{CPUs: 4}, Load: Load{InFlight: 4}}}
	if got := Place(busy, t0, ttl); got != "y" {
		t.Errorf("Place(busy) = %q, want y (fewer in flight per CPU)", got)
	}
	// Ties go by name, so every node picks the same one.
	tie := []Node{{Name: "q", Seen: t0}, {Name: "p", Seen: t0}}
	if got := Place(tie, t0, ttl); got != "p" {
		t.Errorf("Place(tie) = %q, want p", got)
	}
}

func TestLeaseDecisionsMovingNow(t *testing.T) {
	l := Lease{Holder: "a", Expires: t0.Add(3 * time.Second)}
	for _, c := range []struct {
		at     time.Duration
		holder string
		claimA bool
		claimB bool
	}{
		{0, "a", true, false},
		{2999 * time.Millisecond, "a", true, false},
		{3 * time.Second, "", true, true}, // expired: anyone may take it
		{time.Hour, "", true, true},
	} {
		now := t0.Add(c.at)
		if got := Holder(l, now); got != c.holder {
			t.Errorf("Holder at +%s = %q, want %q", c.at, got, c.holder)
		}
		if got := Claim(l, "a", now); got != c.claimA {
			t.Errorf("Claim(a) at +%s = %v, want %v", c.at, got, c.claimA)
		}
		if got := Claim(l, "b", now); got != c.claimB {
			t.Errorf("Claim(b) at +%s = %v, want %v", c.at, got, c.claimB)
		}
	}
	if Holder(Lease{}, t0) != "" || !Claim(Lease{}, "b", t0) {
		t.Error("no lease: nobody holds it and anyone may claim it")
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "node-1", "host.example_2", strings.Repeat("x", 64)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a*", "a>", ".a", "a.", "a..b", "é", strings.Repeat("x", 65), "a/b"} {
		if ValidName(bad) == nil {
			t.Errorf("ValidName(%q) = nil, want an error", bad)
		}
	}
}

// kvKey is JetStream KV's own rule for keys.
var kvKey = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "node-1", ".a", "a..b", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidName(s) != nil {
			return
		}
		if len(s) > maxName || !kvKey.MatchString(s) || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "/") {
			t.Fatalf("ValidName accepted %q, which is not a safe KV key", s)
		}
	})
}

func start(t *testing.T, st *store.Store, name string, elect bool) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{JetStream: st.JetStream(), Self: Node{Name: name, Addr: "http://" + name, Capacity: Capacity{CPUs: 2}},
		Load: func() Load { return Load{InFlight: len(name)} }, Interval: 50 * time.Millisecond, TTL: 400 * time.Millisecond,
		Elect: elect, Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// kill stops c's loops without withdrawing it, as a kill -9 would.
func (c *Cluster) kill() {
	c.stop()
	c.wg.Wait()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func names(t *testing.T, c *Cluster) string {
	ns, err := c.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, n := range ns {
		s = append(s, n.Name)
	}
	return strings.Join(s, ",")
}

// TestHeartbeatsExpire: two nodes see each other with their load; one that
// stops beating (killed) is gone after the TTL, from the list and from the
// bucket itself; one that closes is gone at once.
func TestHeartbeatsExpire(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	a, b := start(t, st, "a", false), start(t, st, "bb", false)
	defer b.Close(context.Background())
	waitFor(t, "both nodes", func() bool { return names(t, b) == "a,bb" })
	ns, _ := b.Nodes(context.Background())
	if ns[1].Load.InFlight != 2 || ns[1].Addr != "http://bb" || ns[1].Capacity.CPUs != 2 {
		t.Errorf("bb's heartbeat = %+v", ns[1])
	}
	a.kill()
	waitFor(t, "a's heartbeat to expire from the list", func() bool { return names(t, b) == "bb" })
	waitFor(t, "a's heartbeat to expire from the bucket", func() bool {
		_, err := b.nodes.Get(context.Background(), "a")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	c := start(t, st, "c", false)
	waitFor(t, "c", func() bool { return names(t, b) == "bb,c" })
	c.Close(context.Background())
	if got := names(t, b); got != "bb" {
		t.Errorf("after c closed: %q, want bb", got)
	}
}

// TestLeaseFailover: of three electing nodes exactly one leads; when it is
// killed another takes over after the lease runs out, and when that one
// closes (releasing the lease) a third takes over.
func TestLeaseFailover(t *testing.T) {
	st := ebbtest.Store(t, store.Config{})
	cs := []*Cluster{start(t, st, "a", true), start(t, st, "b", true), start(t, st, "c", true)}
	leaders := func() []*Cluster {
		var out []*Cluster
		for _, c := range cs {
			if c != nil && c.Leader() {
				out = append(out, c)
			}
		}
		return out
	}
	waitFor(t, "a leader", func() bool { return len(leaders()) == 1 })
	// Several renewals later, still one and the same.
	first := leaders()[0]
	for range 5 {
		time.Sleep(first.cfg.Lease / 3)
		if ls := leaders(); len(ls) > 1 {
			t.Fatalf("%d leaders at once", len(ls))
		}
	}
	if !first.Leader() {
		t.Fatalf("%s lost the lease without failing", first.Self())
	}
	for i, c := range cs {
		if c == first {
			cs[i] = nil
		}
	}
	first.kill()
	waitFor(t, "a second leader", func() bool { ls := leaders(); return len(ls) == 1 && ls[0] != first })
	second := leaders()[0]
	for i, c := range cs {
		if c == second {
			cs[i] = nil
		}
	}
	second.Close(context.Background())
	waitFor(t, "a third leader", func() bool { return len(leaders()) == 1 })
	for _, c := range cs {
		if c != nil {
			c.Close(context.Background())
		}
	}
}
