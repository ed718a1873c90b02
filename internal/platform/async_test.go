package platform

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/queue"
)

// asyncFnBinary builds testdata/asyncfn once per test run.
func asyncFnBinary(t *testing.T) string {
	t.Helper()
	return ebbtest.GoBinary(t, ebbtest.Go{Pkg: "./internal/platform/testdata/asyncfn", Env: []string{"CGO_ENABLED=0"}})
}

// asyncFn writes a function directory running asyncfn.
func asyncFn(t *testing.T, name, extra string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(asyncFnBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bootstrap"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	m := "name: " + name + "\nruntime: exec\nhandler: ./bootstrap\n" + extra
	if err := os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func fastRetries(c *Config) {
	c.Async.RetryBase = 10 * time.Millisecond
	c.Async.RetryMax = 50 * time.Millisecond
	c.Async.MaxPayload = 64 << 10
}

// submit posts an Event invocation and returns the job id.
func (e *env) submit(name, payload string) string {
	e.t.Helper()
	code, body, _ := e.do("POST", "/v1/functions/"+name+"/invoke", payload, map[string]string{"Ebb-Invocation-Type": "Event"})
	if code != 202 {
		e.t.Fatalf("async invoke %s = %d %s, want 202", name, code, body)
	}
	id, _ := decode(e.t, body)["id"].(string)
	if id == "" {
		e.t.Fatalf("async invoke reply %s has no id", body)
	}
	return id
}

// job reads a job record over HTTP.
func (e *env) job(id string) *queue.Job {
	e.t.Helper()
	code, body, _ := e.do("GET", "/v1/jobs/"+id, "", nil)
	if code != 200 {
		e.t.Fatalf("GET /v1/jobs/%s = %d %s", id, code, body)
	}
	var j queue.Job
	if err := json.Unmarshal([]byte(body), &j); err != nil {
		e.t.Fatal(err)
	}
	return &j
}

func (e *env) waitJob(id string, status queue.Status) *queue.Job {
	e.t.Helper()
	var j *queue.Job
	waitFor(e.t, "job "+id+" "+string(status), 20*time.Second, func() bool {
		j = e.job(id)
		return j.Status == status
	})
	return j
}

func TestAsyncInvokeEdge(t *testing.T) {
	e := start(t, "", fastRetries)
	e.deploy(asyncFn(t, "echo", ""))
	tests := []struct {
		name   string
		path   string
		hdr    map[string]string
		body   string
		status int
	}{
		{"native", "/v1/functions/echo/invoke", map[string]string{"Ebb-Invocation-Type": "Event"}, `{"a":1}`, 202},
		{"amz header on native", "/v1/functions/echo/invoke", map[string]string{"X-Amz-Invocation-Type": "Event"}, `{"a":2}`, 202},
		{"lambda api", "/2015-03-31/functions/echo/invocations", map[string]string{"X-Amz-Invocation-Type": "Event"}, `{"a":3}`, 202},
		{"unknown function", "/v1/functions/nope/invoke", map[string]string{"Ebb-Invocation-Type": "Event"}, `{}`, 404},
		{"not json", "/v1/functions/echo/invoke", map[string]string{"Ebb-Invocation-Type": "Event"}, `{`, 400},
		{"over the async limit", "/v1/functions/echo/invoke", map[string]string{"Ebb-Invocation-Type": "Event"}, `"` + strings.Repeat("x", 64<<10) + `"`, 413},
		{"unknown type", "/v1/functions/echo/invoke", map[string]string{"Ebb-Invocation-Type": "Later"}, `{}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := e.do("POST", tt.path, tt.body, tt.hdr)
			if code != tt.status {
				t.Fatalf("status = %d %s, want %d", code, body, tt.status)
			}
			if code != 202 {
				return
			}
			id, _ := decode(t, body)["id"].(string)
			j := e.waitJob(id, queue.StatusSucceeded)
			var res struct {
				RequestID string `json:"request_id"`
				Event     any    `json:"event"`
			}
			json.Unmarshal(j.Result, &res)
			if res.RequestID != id {
				t.Errorf("handler saw request id %q, want the job id %q", res.RequestID, id)
			}
			if fmt.Sprint(res.Event) != fmt.Sprint(decode(t, tt.body)) {
				t.Errorf("handler got event %v, want %s", res.Event, tt.body)
			}
			if j.Attempts != 1 || j.Function != "echo" || j.FinishedAt.IsZero() {
				t.Errorf("record = %+v", j)
			}
		})
	}
	if code, _, _ := e.do("GET", "/v1/jobs/does-not-exist", "", nil); code != 404 {
		t.Errorf("GET unknown job = %d, want 404", code)
	}
}

func TestAsyncRetriesDeadLettersAndRedrive(t *testing.T) {
	e := start(t, "", fastRetries)
	// The functions count their attempts with the test's counter, which
	// outlives their instances.
	cnt := newCounter(t)
	for _, fn := range []struct{ name, extra string }{{"flaky", "async: {max_retries: 2}\n"}, {"crashy", "async: {max_retries: 1}\n"}, {"doomed", "async: {max_retries: 1}\n"}} {
		e.deploy(asyncFn(t, fn.name, fn.extra))
		cnt.into(e.codeDir(fn.name))
	}
	e.deploy(asyncFn(t, "slow", "timeout: 300ms\nasync: {max_retries: 0}\n"))

	// Fails its first two attempts, succeeds on the third.
	flaky := e.submit("flaky", fmt.Sprintf(`{"count":%q,"fail_until":2}`, counterSock))
	// The instance dies in the first attempt.
	crashy := e.submit("crashy", fmt.Sprintf(`{"count":%q,"crash_until":1}`, counterSock))
	// Fails three attempts: dead after two, then redriven, fails once more
	// and succeeds.
	doomed := e.submit("doomed", fmt.Sprintf(`{"count":%q,"fail_until":3}`, counterSock))
	// Times out with no retries left.
	slow := e.submit("slow", `{"sleep_ms":2000}`)

	j := e.waitJob(flaky, queue.StatusSucceeded)
	if j.Attempts != 3 || j.Failures != 2 {
		t.Errorf("flaky: attempts=%d failures=%d, want 3 and 2", j.Attempts, j.Failures)
	}
	j = e.waitJob(crashy, queue.StatusSucceeded)
	if j.Attempts != 2 || j.Failures != 1 {
		t.Errorf("crashy: attempts=%d failures=%d, want 2 and 1", j.Attempts, j.Failures)
	}
	j = e.waitJob(slow, queue.StatusDead)
	if j.Error == nil || j.Error.Type != "Sandbox.Timedout" || j.Attempts != 1 {
		t.Errorf("slow: %+v, want dead after 1 attempt with Sandbox.Timedout", j)
	}
	j = e.waitJob(doomed, queue.StatusDead)
	if j.Attempts != 2 || j.Error == nil || j.Error.Message != "attempt 2 fails" {
		t.Errorf("doomed: attempts=%d error=%+v, want 2 and 'attempt 2 fails'", j.Attempts, j.Error)
	}
	code, body, _ := e.do("GET", "/v1/functions/doomed/jobs?status=dead", "", nil)
	if code != 200 || !strings.Contains(body, doomed) {
		t.Errorf("dead letters of doomed = %d %s, want it listed", code, body)
	}
	code, body, _ = e.do("POST", "/v1/functions/doomed/jobs/redrive", "", nil)
	if code != 200 || decode(t, body)["redriven"] != 1.0 {
		t.Fatalf("redrive = %d %s, want 1 redriven", code, body)
	}
	j = e.waitJob(doomed, queue.StatusSucceeded)
	if j.Attempts != 4 || j.Redrives != 1 {
		t.Errorf("doomed after redrive: attempts=%d redrives=%d, want 4 and 1", j.Attempts, j.Redrives)
	}
	// What the functions counted agrees with ebb's records: every attempt
	// ran, once.
	runs, _ := cnt.counts()
	if runs[flaky] != 3 || runs[crashy] != 2 || runs[doomed] != 4 {
		t.Errorf("executions counted: flaky %d crashy %d doomed %d, want 3, 2 and 4", runs[flaky], runs[crashy], runs[doomed])
	}
}

func TestAsyncWebhookDestinationDown(t *testing.T) {
	// A destination that is down: every connection is closed unanswered.
	// (A port picked free and closed could be taken by another process
	// meanwhile; this one stays the test's.)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dead := "http://" + ln.Addr().String() + "/hook"
	e := start(t, "", fastRetries, func(c *Config) { c.Async.WebhookAttempts = 3 })
	e.deploy(asyncFn(t, "hooked", "async: {max_retries: 0, on_failure: \""+dead+"\"}\n"))
	id := e.submit("hooked", `{"fail":"nope"}`)
	var j *queue.Job
	waitFor(t, "failed delivery recorded", 20*time.Second, func() bool {
		j = e.job(id)
		return j.Destination != nil && j.Destination.Error != ""
	})
	if j.Status != queue.StatusDead || j.Destination.Attempts != 3 || j.Destination.Delivered || j.Destination.Target != dead {
		t.Errorf("record = %+v, destination %+v; want dead, 3 delivery attempts, not delivered", j, j.Destination)
	}
}

// TestAsyncWebhookRetriedAfterFailure: a webhook destination that answers
// 500 to the first delivery and 200 to the second gets the job exactly
// twice, and the record says delivered on the second attempt.
func TestAsyncWebhookRetriedAfterFailure(t *testing.T) {
	type delivery struct {
		jobID string
		job   queue.Job
	}
	var mu sync.Mutex
	var got []delivery
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var d delivery
		d.jobID = r.Header.Get("Ebb-Job-Id")
		err := json.NewDecoder(r.Body).Decode(&d.job)
		mu.Lock()
		got = append(got, d)
		n := len(got)
		mu.Unlock()
		if err != nil {
			t.Errorf("delivery %d: decode job: %v", n, err)
		}
		if n == 1 {
			http.Error(w, "not yet", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer hook.Close()
	deliveries := func() []delivery {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	e := start(t, "", fastRetries, func(c *Config) { c.Async.WebhookAttempts = 4 })
	e.deploy(asyncFn(t, "hookok", "async: {on_success: \""+hook.URL+"/hook\"}\n"))
	id := e.submit("hookok", `{}`)
	var j *queue.Job
	waitFor(t, "the delivery recorded", 20*time.Second, func() bool {
		j = e.job(id)
		return j.Status == queue.StatusDead || j.Destination != nil && (j.Destination.Delivered || j.Destination.Error != "")
	})
	if j.Status != queue.StatusSucceeded || !j.Destination.Delivered || j.Destination.Attempts != 2 || j.Destination.Error != "" || j.Destination.Target != hook.URL+"/hook" {
		t.Errorf("record = %+v, destination %+v; want succeeded, delivered on attempt 2", j, j.Destination)
	}
	// Closing the platform stops its workers: a delivery sent more than
	// twice would have arrived by then.
	e.stop()
	ds := deliveries()
	if len(ds) != 2 {
		t.Fatalf("webhook got %d deliveries, want 2 (one refused, one accepted)", len(ds))
	}
	for i, d := range ds {
		if d.jobID != id || d.job.ID != id || d.job.Status != queue.StatusSucceeded {
			t.Errorf("delivery %d: Ebb-Job-Id %q, job %q status %q; want %q succeeded", i+1, d.jobID, d.job.ID, d.job.Status, id)
		}
	}
}
