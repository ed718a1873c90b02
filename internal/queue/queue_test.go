package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/store"
)

// fakeInvoker runs a per-function handler and counts executions per id.
type fakeInvoker struct {
	mu    sync.Mutex // guards runs and fns
	runs  map[string]int
	fns   map[string]func(id string, n int, payload []byte) ([]byte, error)
	calls atomic.Int64
}

func (f *fakeInvoker) Invoke(ctx context.Context, name string, _ int, id string, payload []byte) ([]byte, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.runs[id]++
	n := f.runs[id]
	fn := f.fns[name]
	f.mu.Unlock()
	if fn == nil {
		return nil, &PermanentError{ebb.ErrNotFound}
	}
	return fn(id, n, payload)
}

func (f *fakeInvoker) runsOf(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.runs[id]
}

type fixture struct {
	t   *testing.T
	q   *Queue
	inv *fakeInvoker
	st  *store.Store
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	st := ebbtest.Store(t, store.Config{})
	inv := &fakeInvoker{runs: map[string]int{}, fns: map[string]func(string, int, []byte) ([]byte, error){}}
	cfg := Config{JetStream: st.JetStream(), Invoker: inv, RetryBase: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		OverloadDelay: 5 * time.Millisecond, AckWait: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	q, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := q.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &fixture{t: t, q: q, inv: inv, st: st}
}

func (f *fixture) handle(name string, set Settings, fn func(id string, n int, payload []byte) ([]byte, error)) {
	f.t.Helper()
	f.inv.mu.Lock()
	f.inv.fns[name] = fn
	f.inv.mu.Unlock()
	if err := f.q.Start(context.Background(), name, set); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) enqueue(name, id, payload string) {
	f.t.Helper()
	if _, err := f.q.Enqueue(context.Background(), name, id, []byte(payload), EnqueueOptions{}); err != nil {
		f.t.Fatalf("Enqueue %s: %v", id, err)
	}
}

// wait polls job id until it has status, failing after a few seconds.
func (f *fixture) wait(id string, status Status) *Job {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := f.q.Get(context.Background(), id)
		if err == nil && j.Status == status {
			return j
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("job %s: status %v (err %v), want %s", id, statusOf(j), err, status)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statusOf(j *Job) Status {
	if j == nil {
		return ""
	}
	return j.Status
}

func echo(id string, n int, p []byte) ([]byte, error) { return p, nil }

func TestEnqueueRunsAndRecords(t *testing.T) {
	f := newFixture(t, nil)
	// One worker takes jobs in stream order, so a job enqueued later runs
	// after any duplicate would have (see below).
	f.handle("echo", Settings{Workers: 1, MaxRetries: 2, MaxAge: time.Hour}, echo)
	f.enqueue("echo", "job-1", `{"x":1}`)
	j := f.wait("job-1", StatusSucceeded)
	if string(j.Result) != `{"x":1}` || j.Attempts != 1 || j.Failures != 0 || j.Function != "echo" || j.Source != "invoke" {
		t.Errorf("record = %+v, want result {\"x\":1}, 1 attempt", j)
	}
	if j.StartedAt.IsZero() || j.FinishedAt.Before(j.StartedAt) || j.StartedAt.Before(j.EnqueuedAt) {
		t.Errorf("timestamps out of order: %+v", j)
	}
	// The same id again within the dedupe window is not a second job: the
	// caller gets the existing record, and a sentinel job enqueued after it
	// (run by the one worker only once everything queued before it has
	// run) finishes with job-1 still run once.
	again, err := f.q.Enqueue(context.Background(), "echo", "job-1", []byte(`{"x":2}`), EnqueueOptions{})
	if err != nil || again.Status != StatusSucceeded || string(again.Result) != `{"x":1}` {
		t.Errorf("re-enqueue = %+v, %v; want the existing succeeded record", again, err)
	}
	f.enqueue("echo", "sentinel", `{}`)
	f.wait("sentinel", StatusSucceeded)
	if n := f.inv.runsOf("job-1"); n != 1 {
		t.Errorf("runs of a re-enqueued id = %d, want 1", n)
	}
	if _, err := f.q.Get(context.Background(), "nope"); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := f.q.Get(context.Background(), "*"); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("Get(wildcard) = %v, want ErrNotFound", err)
	}
}

func TestRetriesThenSucceeds(t *testing.T) {
	f := newFixture(t, nil)
	f.handle("flaky", Settings{Workers: 1, MaxRetries: 2, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		if n <= 2 {
			return nil, &ebb.HandlerError{Type: "Boom", Message: fmt.Sprintf("attempt %d", n)}
		}
		return []byte(`"ok"`), nil
	})
	f.enqueue("flaky", "f1", `{}`)
	j := f.wait("f1", StatusSucceeded)
	if j.Attempts != 3 || j.Failures != 2 || j.Error != nil || string(j.Result) != `"ok"` {
		t.Errorf("record = %+v, want 3 attempts, 2 failures, result ok, no error", j)
	}
}

func TestDeadLetterAndRedrive(t *testing.T) {
	f := newFixture(t, nil)
	var fixed atomic.Bool
	f.handle("bad", Settings{Workers: 1, MaxRetries: 1, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		if fixed.Load() {
			return p, nil
		}
		return nil, fmt.Errorf("%w: exit status 3", ebb.ErrCrashed)
	})
	f.enqueue("bad", "d1", `{"n":1}`)
	f.enqueue("bad", "d2", `{"n":2}`)
	for _, id := range []string{"d1", "d2"} {
		j := f.wait(id, StatusDead)
		if j.Attempts != 2 || j.Failures != 2 || j.Error == nil || j.Error.Type != "Runtime.ExitError" {
			t.Errorf("%s: record = %+v, want 2 attempts and Runtime.ExitError", id, j)
		}
	}
	dead, err := f.q.List(context.Background(), "bad", StatusDead, 0)
	if err != nil || len(dead) != 2 {
		t.Fatalf("List(dead) = %d jobs, %v; want 2", len(dead), err)
	}
	fixed.Store(true)
	n, err := f.q.Redrive(context.Background(), "bad")
	if err != nil || n != 2 {
		t.Fatalf("Redrive = %d, %v; want 2", n, err)
	}
	for _, id := range []string{"d1", "d2"} {
		j := f.wait(id, StatusSucceeded)
		if j.Redrives != 1 || j.Attempts != 3 {
			t.Errorf("%s after redrive: %+v, want redrives 1, attempts 3", id, j)
		}
	}
	if n, err := f.q.Redrive(context.Background(), "bad"); err != nil || n != 0 {
		t.Errorf("second Redrive = %d, %v; want 0", n, err)
	}
}

func TestPermanentErrorGoesDead(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.q.Start(context.Background(), "ghost", Settings{Workers: 1, MaxRetries: 5, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	f.enqueue("ghost", "g1", `{}`)
	j := f.wait("g1", StatusDead)
	if j.Attempts != 1 || j.Error == nil || j.Error.Type != "ResourceNotFound" {
		t.Errorf("record = %+v, want 1 attempt, ResourceNotFound", j)
	}
}

func TestOverloadIsNotAnAttempt(t *testing.T) {
	f := newFixture(t, nil)
	f.handle("busy", Settings{Workers: 1, MaxRetries: 0, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		if n <= 3 {
			return nil, ebb.ErrOverloaded
		}
		return []byte(`1`), nil
	})
	f.enqueue("busy", "b1", `{}`)
	j := f.wait("b1", StatusSucceeded)
	if j.Attempts != 1 || j.Failures != 0 {
		t.Errorf("record = %+v, want 1 attempt (overloads do not count)", j)
	}
}

func TestMaxAgeExpires(t *testing.T) {
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	f := newFixture(t, func(c *Config) { c.Now = func() time.Time { return time.Unix(0, clock.Load()) } })
	f.enqueue("old", "o1", `{}`)
	clock.Store(now.Add(2 * time.Hour).UnixNano())
	f.handle("old", Settings{Workers: 1, MaxRetries: 2, MaxAge: time.Hour}, echo)
	j := f.wait("o1", StatusDead)
	if j.Attempts != 0 || j.Error == nil || j.Error.Type != "Ebb.JobExpired" {
		t.Errorf("record = %+v, want 0 attempts, Ebb.JobExpired", j)
	}
}

func TestLargePayloadSpillsToObjectStore(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxPayload = 2 << 20 })
	var got atomic.Int64
	f.handle("big", Settings{Workers: 1, MaxRetries: 0, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		got.Store(int64(len(p)))
		return []byte(`true`), nil
	})
	big := `"` + strings.Repeat("a", 1<<20) + `"`
	f.enqueue("big", "big1", big)
	f.wait("big1", StatusSucceeded)
	if got.Load() != int64(len(big)) {
		t.Errorf("handler got %d bytes, want %d", got.Load(), len(big))
	}
	if _, err := f.q.Enqueue(context.Background(), "big", "big2", make([]byte, 2<<20+1), EnqueueOptions{}); !errors.Is(err, ebb.ErrPayloadTooLarge) {
		t.Errorf("over-limit Enqueue = %v, want ErrPayloadTooLarge", err)
	}
}

func TestDestinations(t *testing.T) {
	var mu sync.Mutex
	var hooks []Job
	var fails atomic.Int64
	okHook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var j Job
		json.NewDecoder(r.Body).Decode(&j)
		mu.Lock()
		hooks = append(hooks, j)
		mu.Unlock()
	}))
	defer okHook.Close()
	downHook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fails.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer downHook.Close()
	f := newFixture(t, func(c *Config) { c.WebhookAttempts = 3 })
	var sinkGot atomic.Value
	f.handle("sink", Settings{Workers: 1, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		sinkGot.Store(string(p))
		return nil, nil
	})
	f.handle("good", Settings{Workers: 1, MaxAge: time.Hour, OnSuccess: okHook.URL, OnFailure: "sink"}, func(id string, n int, p []byte) ([]byte, error) {
		if bytes.Contains(p, []byte("fail")) {
			return nil, &ebb.HandlerError{Type: "E", Message: "failed"}
		}
		return []byte(`"done"`), nil
	})
	f.handle("down", Settings{Workers: 1, MaxAge: time.Hour, OnSuccess: downHook.URL}, echo)

	f.enqueue("good", "s1", `{}`)
	j := f.wait("s1", StatusSucceeded)
	waitCond(t, "webhook delivery", func() bool { mu.Lock(); defer mu.Unlock(); return len(hooks) == 1 })
	mu.Lock()
	if hooks[0].ID != "s1" || string(hooks[0].Result) != `"done"` || hooks[0].Status != StatusSucceeded {
		t.Errorf("webhook got %+v, want the succeeded record of s1", hooks[0])
	}
	mu.Unlock()
	waitCond(t, "delivery recorded", func() bool {
		j, _ = f.q.Get(context.Background(), "s1")
		return j.Destination != nil && j.Destination.Delivered
	})

	f.enqueue("good", "f1", `{"fail":1}`)
	f.wait("f1", StatusDead)
	f.wait("d-f1", StatusSucceeded)
	var rec Job
	if err := json.Unmarshal([]byte(sinkGot.Load().(string)), &rec); err != nil || rec.ID != "f1" || rec.Status != StatusDead || rec.Error.Message != "failed" {
		t.Errorf("failure destination got %v (%v), want the dead record of f1", sinkGot.Load(), err)
	}

	f.enqueue("down", "w1", `{}`)
	waitCond(t, "failed delivery recorded", func() bool {
		j, _ = f.q.Get(context.Background(), "w1")
		return j != nil && j.Destination != nil && j.Destination.Error != ""
	})
	if fails.Load() != 3 || j.Destination.Attempts != 3 || j.Destination.Delivered || j.Status != StatusSucceeded {
		t.Errorf("down webhook: %d posts, record %+v; want 3 attempts recorded, not delivered, job succeeded", fails.Load(), j.Destination)
	}
}

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		n        int
		min, max time.Duration
	}{
		{1, 500 * time.Millisecond, 1500 * time.Millisecond},
		{2, time.Second, 3 * time.Second},
		{3, 2 * time.Second, 6 * time.Second},
		{20, 5 * time.Second, 15 * time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if d := Backoff(time.Second, 10*time.Second, tt.n); d < tt.min || d >= tt.max {
				t.Fatalf("Backoff(1s, 10s, %d) = %s, want in [%s, %s)", tt.n, d, tt.min, tt.max)
			}
		}
	}
}

func TestCloseWaitsForRunningJobs(t *testing.T) {
	f := newFixture(t, nil)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	f.handle("slow", Settings{Workers: 1, MaxAge: time.Hour}, func(id string, n int, p []byte) ([]byte, error) {
		started <- struct{}{}
		<-release
		return []byte(`1`), nil
	})
	f.enqueue("slow", "c1", `{}`)
	<-started
	// The job is let go only once Close has begun, so Close must wait for it.
	go func() {
		defer close(release)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			f.q.mu.Lock()
			closing := f.q.closed
			f.q.mu.Unlock()
			if closing {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.q.Close(ctx); err != nil {
		t.Fatalf("Close = %v, want nil (the job finished in time)", err)
	}
	j, err := f.q.get(context.Background(), "slow", "c1")
	if err != nil || j.Status != StatusSucceeded {
		t.Errorf("after Close: %+v, %v; want succeeded", j, err)
	}
}

// A removed function's consumer is deleted and its queued jobs purged: they
// do not run if a function of that name is deployed again, and the consumer
// slot is not held forever.
func TestRemovePurgesQueuedJobs(t *testing.T) {
	f := newFixture(t, nil)
	f.handle("gone", Settings{Workers: 1, MaxRetries: 2, MaxAge: time.Hour}, echo)
	f.q.Stop("gone") // jobs now stay queued
	for _, id := range []string{"g-1", "g-2", "g-3"} {
		f.enqueue("gone", id, `{}`)
	}
	ctx := context.Background()
	if err := f.q.Remove(ctx, "gone"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := f.st.JetStream().Consumer(ctx, JobsStream, "fn-gone"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("consumer after Remove: %v, want ErrConsumerNotFound", err)
	}
	// A sentinel enqueued after the function is back runs after anything
	// still queued under its name (one worker takes jobs in stream order):
	// once it has run, a purged job that survived would have run too.
	f.handle("gone", Settings{Workers: 1, MaxRetries: 2, MaxAge: time.Hour}, echo)
	f.enqueue("gone", "g-sentinel", `{}`)
	f.wait("g-sentinel", StatusSucceeded)
	if n := f.inv.calls.Load(); n != 1 {
		t.Errorf("%d purged jobs ran after the function came back", n-1)
	}
	if err := f.q.Remove(ctx, "never-deployed"); err != nil {
		t.Errorf("Remove of a function without a consumer: %v", err)
	}
}

// TestHeldElsewhereGoesToAnotherNode: two nodes' workers share a function's
// consumer. A job that node A cannot start (every instance slot held by
// others: HeldElsewhere) is not an attempt, and A pulls nothing more for
// the pause it asked, so that node B's workers run every job.
func TestHeldElsewhereGoesToAnotherNode(t *testing.T) {
	f := newFixture(t, nil)
	set := Settings{Workers: 1, MaxRetries: 0, MaxAge: time.Hour}
	f.handle("one", set, func(id string, n int, p []byte) ([]byte, error) {
		return nil, &HeldElsewhere{Wait: time.Hour, Err: ebb.ErrOverloaded}
	})
	for i := range 5 {
		f.enqueue("one", fmt.Sprintf("j%d", i), `{}`)
	}
	waitCond(t, "node A to hand a job back", func() bool { return f.inv.calls.Load() >= 1 })

	// Node B: another Queue on the same JetStream, whose worker runs them.
	inv := &fakeInvoker{runs: map[string]int{}, fns: map[string]func(string, int, []byte) ([]byte, error){"one": echo}}
	b, err := New(context.Background(), Config{JetStream: f.st.JetStream(), Invoker: inv, RetryBase: 5 * time.Millisecond,
		RetryMax: 20 * time.Millisecond, OverloadDelay: 5 * time.Millisecond, AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	if err := b.Start(context.Background(), "one", set); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		j := f.wait(fmt.Sprintf("j%d", i), StatusSucceeded)
		if j.Attempts != 1 {
			t.Errorf("job %s: %d attempts, want 1 (a job handed back is no attempt)", j.ID, j.Attempts)
		}
	}
	if got := f.inv.calls.Load(); got != 1 {
		t.Errorf("node A was handed %d jobs, want 1: after handing one back it pulls nothing during its pause", got)
	}
	if got := inv.calls.Load(); got != 5 {
		t.Errorf("node B ran %d jobs, want 5", got)
	}
}
