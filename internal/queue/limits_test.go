package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// A → B → A: each success makes a job of the other, and the hop count ends
// the chain after MaxHops deliveries.
func TestHopCountStopsDestinationLoop(t *testing.T) {
	f := newFixture(t, nil)
	var runs atomic.Int64
	run := func(id string, n int, p []byte) ([]byte, error) { runs.Add(1); return []byte(`{}`), nil }
	f.handle("a", Settings{Workers: 1, MaxAge: time.Hour, OnSuccess: "b"}, run)
	f.handle("b", Settings{Workers: 1, MaxAge: time.Hour, OnSuccess: "a"}, run)
	f.enqueue("a", "loop", "{}")
	// The last job of the chain is MaxHops hops from the first.
	id := "loop"
	for i := 0; i < MaxHops; i++ {
		id = "d-" + id
	}
	last := f.wait(id, StatusSucceeded)
	if last.Hops != MaxHops || last.Destination == nil || last.Destination.Delivered || !strings.Contains(last.Destination.Error, "hops") {
		t.Fatalf("last job = hops %d, destination %+v; want %d hops and an undelivered destination naming hops", last.Hops, last.Destination, MaxHops)
	}
	// Nothing more runs after it: the record above says its destination
	// was refused, and deliver enqueues (or refuses) before that is
	// recorded, so no further job exists and every run has been counted.
	if _, err := f.q.Get(context.Background(), "d-"+id); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("job past the hop limit: %v, want ErrNotFound", err)
	}
	if n := runs.Load(); n != MaxHops+1 {
		t.Errorf("%d runs, want %d", n, MaxHops+1)
	}
}

func TestFullQueueRefusesAsOverloaded(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxQueuedBytes = 64 << 10; c.MaxPayload = 16 << 10 })
	payload := strings.Repeat("x", 15<<10)
	var err error
	for i := 0; i < 20 && err == nil; i++ {
		_, err = f.q.Enqueue(context.Background(), "nobody", fmt.Sprintf("j%d", i), []byte(payload), EnqueueOptions{})
	}
	if !errors.Is(err, ebb.ErrOverloaded) || !strings.Contains(err.Error(), "full") {
		t.Fatalf("enqueue past MaxQueuedBytes: %v, want ErrOverloaded saying the queue is full", err)
	}
}

func TestRecordsDropOldestPastMaxBytes(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxRecordBytes = 1 << 20; c.MaxResultBytes = 64 << 10 })
	f.handle("r", Settings{Workers: 4, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		return []byte(`"` + strings.Repeat("y", 60<<10) + `"`), nil
	})
	for i := 0; i < 40; i++ {
		f.enqueue("r", fmt.Sprintf("rec%02d", i), "{}")
	}
	f.wait("rec39", StatusSucceeded)
	st, err := f.q.js.Stream(context.Background(), "KV_"+RecordsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > 1<<20 {
		t.Errorf("records hold %d bytes, over MaxRecordBytes", info.State.Bytes)
	}
	if _, err := f.q.Get(context.Background(), "rec00"); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("oldest record still there (err %v)", err)
	}
}

func TestListPagesNewestFirst(t *testing.T) {
	f := newFixture(t, nil)
	const n = 1300 // more than two windows
	for i := 0; i < n; i++ {
		f.enqueue("p", fmt.Sprintf("p%04d", i), "{}")
	}
	// Another function's records interleave and must not show.
	f.enqueue("other", "o1", "{}")
	seen := map[string]bool{}
	var before uint64
	pages := 0
	for {
		jobs, next, err := f.q.ListPage(context.Background(), "p", "", 500, before)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for k, j := range jobs {
			if j.Function != "p" || seen[j.ID] {
				t.Fatalf("page %d: job %s of %s (seen %v)", pages, j.ID, j.Function, seen[j.ID])
			}
			seen[j.ID] = true
			if pages == 1 && k == 0 && j.ID != fmt.Sprintf("p%04d", n-1) {
				t.Errorf("first job = %s, want the newest", j.ID)
			}
		}
		if next == 0 {
			break
		}
		before = next
	}
	if len(seen) != n || pages != 3 {
		t.Errorf("listed %d jobs in %d pages, want %d in 3", len(seen), pages, n)
	}
	jobs, next, err := f.q.ListPage(context.Background(), "p", StatusDead, 10, 0)
	if err != nil || len(jobs) != 0 || next != 0 {
		t.Errorf("dead jobs = %d, next %d, %v; want none", len(jobs), next, err)
	}
}

// Listing and looking up jobs leaves no consumers behind: the server caps
// a stream's consumers (1000 by default), and a client polling the listing
// once made every later listing and lookup fail with "maximum consumers
// limit reached" (CI, 2026-12-01: TestAsyncDurabilityKill9's poll after a
// restart).
func TestListingsLeaveNoConsumers(t *testing.T) {
	f := newFixture(t, nil)
	for i := range 3 {
		f.enqueue("p", fmt.Sprintf("c%d", i), "{}")
	}
	ctx := context.Background()
	const polls = 1100
	for i := range polls {
		if _, _, err := f.q.ListPage(ctx, "p", "", 10, 0); err != nil {
			t.Fatalf("listing %d: %v", i, err)
		}
		if i%10 == 0 {
			if _, err := f.q.Get(ctx, "c1"); err != nil {
				t.Fatalf("lookup after %d listings: %v", i, err)
			}
		}
	}
	st, err := f.q.js.Stream(ctx, "KV_"+RecordsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers > 5 {
		t.Errorf("%d consumers on the records stream after %d listings, want them deleted", info.State.Consumers, polls)
	}
}
