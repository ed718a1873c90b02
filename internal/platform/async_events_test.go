package platform

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/queue"
)

func TestBucketUploadEvents(t *testing.T) {
	e := start(t, "", fastRetries)
	e.deploy(asyncFn(t, "s3fn", "events:\n  - {bucket: uploads, prefix: in/, suffix: .csv}\n"))
	const content = "a,b\n1,2\n"
	var put struct {
		Size int64    `json:"size"`
		ETag string   `json:"etag"`
		Jobs []string `json:"jobs"`
	}
	// The subscription follows the deploy through the registry watch.
	waitFor(t, "the upload to reach s3fn", 10*time.Second, func() bool {
		code, body, _ := e.do("PUT", "/v1/buckets/uploads/in/a b.csv", content, nil)
		if code != 200 {
			t.Fatalf("PUT = %d %s", code, body)
		}
		json.Unmarshal([]byte(body), &put)
		return len(put.Jobs) == 1
	})
	sum := md5.Sum([]byte(content))
	if put.Size != int64(len(content)) || put.ETag != hex.EncodeToString(sum[:]) {
		t.Errorf("PUT reply size=%d etag=%s, want %d and the md5", put.Size, put.ETag, len(content))
	}
	j := e.waitJob(put.Jobs[0], queue.StatusSucceeded)
	var res struct {
		Event struct {
			Records []struct {
				EventSource string `json:"eventSource"`
				S3          struct {
					Bucket struct {
						Name string `json:"name"`
					} `json:"bucket"`
					Object struct {
						Key  string `json:"key"`
						Size int64  `json:"size"`
						ETag string `json:"eTag"`
					} `json:"object"`
				} `json:"s3"`
			} `json:"Records"`
		} `json:"event"`
	}
	if err := json.Unmarshal(j.Result, &res); err != nil || len(res.Event.Records) != 1 {
		t.Fatalf("result %s: %v", j.Result, err)
	}
	r := res.Event.Records[0]
	if r.EventSource != "aws:s3" || r.S3.Bucket.Name != "uploads" || r.S3.Object.Key != "in/a+b.csv" ||
		r.S3.Object.Size != int64(len(content)) || r.S3.Object.ETag != put.ETag {
		t.Errorf("S3 event record = %+v", r)
	}
	tests := []struct {
		key  string
		jobs int
	}{{"out/x.csv", 0}, {"in/x.txt", 0}, {"in/deep/y.csv", 1}}
	for _, tt := range tests {
		code, body, _ := e.do("PUT", "/v1/buckets/uploads/"+tt.key, "x", nil)
		json.Unmarshal([]byte(body), &put)
		if code != 200 || len(put.Jobs) != tt.jobs {
			t.Errorf("PUT %s = %d, %d jobs; want 200 and %d (prefix/suffix filter)", tt.key, code, len(put.Jobs), tt.jobs)
		}
	}
	code, body, _ := e.do("GET", "/v1/buckets/uploads/in/a b.csv", "", nil)
	if code != 200 || body != content {
		t.Errorf("GET = %d %q, want 200 %q", code, body, content)
	}
	for _, path := range []string{"/v1/buckets/uploads/nope", "/v1/buckets/nobucket/x"} {
		if code, _, _ := e.do("GET", path, "", nil); code != 404 {
			t.Errorf("GET %s = %d, want 404", path, code)
		}
	}
	if code, _, _ := e.do("PUT", "/v1/buckets/BAD/x", "x", nil); code != 400 {
		t.Errorf("PUT to an invalid bucket name = %d, want 400", code)
	}
}

func TestSubjectEventsAndSchedule(t *testing.T) {
	e := start(t, "", fastRetries)
	e.deploy(asyncFn(t, "subfn", "events: [{subject: orders.*}]\n"))
	e.deploy(asyncFn(t, "tick", "schedule: \"@every 1s\"\n"))
	nc := e.p.store.Conn()
	waitFor(t, "subfn to subscribe", 10*time.Second, func() bool {
		reply, err := nc.Request("orders.new", []byte(`{"order":7}`), time.Second)
		return err == nil && string(reply.Data) == `{"queued":true}`
	})
	var jobs []*queue.Job
	waitFor(t, "the subject event to run", 10*time.Second, func() bool {
		jobs, _ = e.c.Jobs(context.Background(), "subfn", queue.StatusSucceeded, 10)
		return len(jobs) >= 1
	})
	if jobs[0].Source != "event" || !json.Valid(jobs[0].Result) || string(jobs[0].Result) == "" {
		t.Errorf("subject job = %+v", jobs[0])
	}
	var res struct {
		Event map[string]any `json:"event"`
	}
	json.Unmarshal(jobs[0].Result, &res)
	if res.Event["order"] != 7.0 {
		t.Errorf("handler got %v, want the message {\"order\":7}", res.Event)
	}
	waitFor(t, "a scheduled run", 10*time.Second, func() bool {
		jobs, _ = e.c.Jobs(context.Background(), "tick", queue.StatusSucceeded, 10)
		return len(jobs) >= 1
	})
	json.Unmarshal(jobs[0].Result, &res)
	if jobs[0].Source != "schedule" || res.Event["detail-type"] != "Scheduled Event" || res.Event["source"] != "ebb.schedule" {
		t.Errorf("scheduled job %+v got event %v", jobs[0], res.Event)
	}
}

// TestSubjectEventsNotJSON publishes messages that are not JSON objects to a
// subject a python function subscribes to. The contract (README, events): a
// message that is valid JSON is the event as it is, whatever its type; any
// other message is {"subject", "data", "isBase64Encoded"}, with data the
// text when it is UTF-8 and its base64 otherwise. Every message becomes
// exactly one successful job.
func TestSubjectEventsNotJSON(t *testing.T) {
	needPython(t)
	e := start(t, "", fastRetries)
	app := "def handler(event, context):\n    return {\"event\": event}\n"
	e.deploy(fnDir(t, "name: rawsub\nruntime: python\nhandler: app.handler\nevents: [{subject: raw.*}]\n", map[string]string{"app.py": app}))
	nc := e.p.store.Conn()
	// The subscription starts with the deploy; a request says whether the
	// message was queued, so the first one also waits for it.
	publish := func(subject string, data []byte) bool {
		reply, err := nc.Request(subject, data, time.Second)
		return err == nil && string(reply.Data) == `{"queued":true}`
	}
	waitFor(t, "rawsub to subscribe", 10*time.Second, func() bool { return publish("raw.text", []byte("plain text, not JSON")) })
	binary := []byte{0xff, 0x00, 0xfe, 'x', 0x80}
	msgs := []struct {
		subject string
		data    []byte
	}{
		{"raw.bin", binary},
		{"raw.empty", nil},
		{"raw.number", []byte("42")},
		{"raw.string", []byte(`"quoted"`)},
		{"raw.broken", []byte(`{"order": 7`)},
	}
	for _, m := range msgs {
		if !publish(m.subject, m.data) {
			t.Fatalf("publish %s %q: not queued", m.subject, m.data)
		}
	}
	want := map[string]any{
		`{"data":"plain text, not JSON","isBase64Encoded":false,"subject":"raw.text"}`:                            nil,
		`{"data":"` + base64.StdEncoding.EncodeToString(binary) + `","isBase64Encoded":true,"subject":"raw.bin"}`: nil,
		`{"data":"","isBase64Encoded":false,"subject":"raw.empty"}`:                                               nil,
		`42`:       nil,
		`"quoted"`: nil,
		`{"data":"{\"order\": 7","isBase64Encoded":false,"subject":"raw.broken"}`: nil,
	}
	var jobs []*queue.Job
	waitFor(t, "every message to run", 30*time.Second, func() bool {
		all, err := e.c.Jobs(context.Background(), "rawsub", "", 100)
		if err != nil {
			t.Fatal(err)
		}
		jobs = jobs[:0]
		for _, j := range all {
			if j.Status == queue.StatusSucceeded || j.Status == queue.StatusDead || j.Status == queue.StatusFailed {
				jobs = append(jobs, j)
			}
		}
		return len(jobs) >= len(want)
	})
	if len(jobs) != len(want) {
		t.Errorf("%d finished jobs for %d messages", len(jobs), len(want))
	}
	for _, j := range jobs {
		var res struct{ Event json.RawMessage }
		if err := json.Unmarshal(j.Result, &res); j.Status != queue.StatusSucceeded || j.Source != "event" || err != nil {
			t.Errorf("job %s: status %s source %s result %s error %+v", j.ID, j.Status, j.Source, j.Result, j.Error)
			continue
		}
		// Normalise key order: python's json.dumps keeps insertion order.
		var v any
		json.Unmarshal(res.Event, &v)
		norm, _ := json.Marshal(v)
		if _, ok := want[string(norm)]; !ok {
			t.Errorf("handler got event %s, not one of those sent", norm)
		}
		delete(want, string(norm))
	}
	for ev := range want {
		t.Errorf("no job got the event %s", ev)
	}
}

// TestScheduleAndEventsPinnedToAlias: a manifest's target pins the jobs of
// its schedule and events to an alias, whatever the route says; the job
// records the version.
func TestScheduleAndEventsPinnedToAlias(t *testing.T) {
	e := start(t, "", fastRetries)
	ctx := context.Background()
	extra := "schedule: \"@every 1s\"\nevents: [{subject: pin.*}]\ntarget: stable\n"
	e.deploy(asyncFn(t, "pin", extra))
	if _, err := e.c.SetAlias(ctx, "pin", "stable", ebb.Split{{Version: 1, Percent: 100}}); err != nil {
		t.Fatal(err)
	}
	e.deploy(asyncFn(t, "pin", extra+"env: {V: \"2\"}\n")) // version 2 takes the route
	nc := e.p.store.Conn()
	waitFor(t, "pin to subscribe", 10*time.Second, func() bool {
		reply, err := nc.Request("pin.x", []byte(`{"n":1}`), time.Second)
		return err == nil && string(reply.Data) == `{"queued":true}`
	})
	var jobs []*queue.Job
	waitFor(t, "a scheduled run and an event", 20*time.Second, func() bool {
		jobs, _ = e.c.Jobs(ctx, "pin", queue.StatusSucceeded, 50)
		sources := map[string]bool{}
		for _, j := range jobs {
			sources[j.Source] = true
		}
		return sources["schedule"] && sources["event"]
	})
	for _, j := range jobs {
		if j.Version != 1 {
			t.Fatalf("%s job %s ran on version %d, want the alias's 1", j.Source, j.ID, j.Version)
		}
	}
	vs, err := e.c.Versions(ctx, "pin")
	if err != nil {
		t.Fatal(err)
	}
	if vs.Versions[1].Invocations != 0 || vs.Versions[0].Invocations == 0 {
		t.Fatalf("invocations by version: %+v, want all on version 1", vs.Versions)
	}
}
