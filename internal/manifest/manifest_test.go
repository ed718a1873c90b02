package manifest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

func TestParseValid(t *testing.T) {
	spec, err := Parse([]byte(`
name: churn
runtime: python
handler: app.handler
memory: 512
timeout: 30s
concurrency: 2
min_instances: 1
max_instances: 4
idle_timeout: 5m
preload: [numpy, sklearn]
env: {GREETING: hello}
batching: {max_batch_size: 16, max_delay: 2ms}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := ebb.Spec{Name: "churn", Runtime: ebb.RuntimePython, Handler: "app.handler", MemoryMiB: 512,
		Timeout: 30 * time.Second, Concurrency: 2, MinInstances: 1, MaxInstances: 4, IdleTimeout: 5 * time.Minute,
		MaxQueue: ebb.DefaultMaxQueue, QueueTimeout: ebb.DefaultQueueTimeout}
	if spec.Name != want.Name || spec.Runtime != want.Runtime || spec.Handler != want.Handler ||
		spec.MemoryMiB != want.MemoryMiB || spec.Timeout != want.Timeout || spec.Concurrency != want.Concurrency ||
		spec.MinInstances != want.MinInstances || spec.MaxInstances != want.MaxInstances ||
		spec.IdleTimeout != want.IdleTimeout || spec.MaxQueue != want.MaxQueue || spec.QueueTimeout != want.QueueTimeout {
		t.Errorf("got %+v\nwant %+v", *spec, want)
	}
	if got := strings.Join(spec.Preload, ","); got != "numpy,sklearn" {
		t.Errorf("preload = %q, want numpy,sklearn", got)
	}
	if spec.Env["GREETING"] != "hello" {
		t.Errorf("env = %v", spec.Env)
	}
	if spec.Batching == nil || spec.Batching.MaxBatchSize != 16 || spec.Batching.MaxDelay != 2*time.Millisecond {
		t.Errorf("batching = %+v", spec.Batching)
	}
}

func TestParseDefaults(t *testing.T) {
	spec, err := Parse([]byte("name: a\nruntime: exec\nhandler: ./bootstrap\n"))
	if err != nil {
		t.Fatal(err)
	}
	if spec.MemoryMiB != ebb.DefaultMemoryMiB || spec.Timeout != ebb.DefaultTimeout || spec.Concurrency != 1 ||
		spec.MaxInstances != ebb.DefaultMaxInstances || spec.IdleTimeout != ebb.DefaultIdleTimeout {
		t.Errorf("defaults not applied: %+v", *spec)
	}
	spec, err = Parse([]byte("name: a\nruntime: exec\nhandler: x\nmax_queue: 0\nmemory: 1Gi\ntimeout: 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if spec.MaxQueue != 0 {
		t.Errorf("explicit max_queue: 0 = %d, want 0 (no queue)", spec.MaxQueue)
	}
	if spec.MemoryMiB != 1024 || spec.Timeout != 10*time.Second {
		t.Errorf("memory=%d timeout=%s, want 1024 and 10s", spec.MemoryMiB, spec.Timeout)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	base := "name: a\nruntime: python\nhandler: app.handler\n"
	tests := []struct {
		name, yaml, field, reason string
	}{
		{"empty", "", "", "is empty"},
		{"not a mapping", "- a\n- b\n", "", "mapping"},
		{"bad yaml", "name: [\n", "", "invalid YAML"},
		{"missing name", "runtime: python\nhandler: a.b\n", "name", "required"},
		{"bad name", "name: Hello_World\nruntime: python\nhandler: a.b\n", "name", "a-z"},
		{"unknown runtime", "name: a\nruntime: ruby\nhandler: a.b\n", "runtime", `unknown runtime "ruby"`},
		{"missing handler", "name: a\nruntime: exec\n", "handler", "required"},
		{"python handler shape", "name: a\nruntime: python\nhandler: app\n", "handler", "module.function"},
		{"unknown field", base + "max_instance: 3\n", "max_instance", `did you mean "max_instances"`},
		{"memory word", base + "memory: lots\n", "memory", "memory size"},
		{"memory too small", base + "memory: 1\n", "memory", "out of range"},
		{"timeout junk", base + "timeout: soon\n", "timeout", "not a duration"},
		{"timeout too long", base + "timeout: 1h\n", "timeout", "out of range"},
		{"negative min", base + "min_instances: -1\n", "min_instances", "negative"},
		{"bad target", base + "target: Prod!\n", "target", "not an alias name or a version number"},
		{"zero target", base + "target: \"0\"\n", "target", "not an alias name or a version number"},
		{"min over max", base + "min_instances: 5\nmax_instances: 2\n", "min_instances", "more than max_instances"},
		{"concurrency zero", base + "concurrency: 0\n", "concurrency", "at least 1"},
		{"concurrency float", base + "concurrency: 1.5\n", "concurrency", "whole number"},
		{"concurrency string", base + "concurrency: \"2\"\n", "concurrency", "whole number"},
		{"preload not list", base + "preload: numpy\n", "preload", "list"},
		{"env not map", base + "env: [a]\n", "env", "mapping"},
		{"env bad key", base + "env: {\"1X\": y}\n", "env.1X", "environment variable"},
		{"env nested", base + "env: {A: {b: c}}\n", "env.A", "single value"},
		{"duplicate field", base + "name: b\n", "name", "twice"},
		{"batching field", base + "batching: {size: 3}\n", "batching.size", "unknown"},
		{"null handler", "name: a\nruntime: exec\nhandler:\n", "handler", "empty"},
		{"zygote junk", base + "zygote: maybe\n", "zygote", "true or false"},
		{"keep_alive junk", base + "keep_alive: forever\n", "keep_alive", "adaptive or fixed:DURATION"},
		{"keep_alive fixed junk", base + "keep_alive: fixed:soon\n", "keep_alive", "duration of at least 1ms"},
		{"keep_alive fixed zero", base + "keep_alive: fixed:0s\n", "keep_alive", "at least 1ms"},
		{"keep_alive hybrid", base + "keep_alive: hybrid\n", "keep_alive", "adaptive or fixed"},
		{"keep_alive list", base + "keep_alive: [adaptive]\n", "keep_alive", "single value"},
		{"keep_alive and idle_timeout", base + "idle_timeout: 5m\nkeep_alive: adaptive\n", "keep_alive", "not both"},
		{"async not map", base + "async: 3\n", "async", "mapping"},
		{"async unknown", base + "async: {retries: 3}\n", "async.retries", "unknown field"},
		{"async negative retries", base + "async: {max_retries: -1}\n", "async.max_retries", "negative"},
		{"async too many retries", base + "async: {max_retries: 1000}\n", "async.max_retries", "out of range"},
		{"async max_age junk", base + "async: {max_age: forever}\n", "async.max_age", "not a duration"},
		{"async max_age too long", base + "async: {max_age: 9999h}\n", "async.max_age", "out of range"},
		{"async bad destination", base + "async: {on_success: \"ftp://x\"}\n", "async.on_success", "http:// or https://"},
		{"async file webhook", base + "async: {on_failure: \"file:///etc/passwd\"}\n", "async.on_failure", "http:// or https://"},
		{"async upper-case name", base + "async: {on_failure: \"Other\"}\n", "async.on_failure", "neither"},
		{"async webhook credentials", base + "async: {on_failure: \"https://u:p@h/\"}\n", "async.on_failure", "credentials"},
		{"async webhook no host", base + "async: {on_failure: \"http:///x\"}\n", "async.on_failure", "no host"},
		{"async self success", base + "async: {on_success: a}\n", "async.on_success", "itself"},
		{"async self failure", base + "async: {on_failure: a}\n", "async.on_failure", "itself"},
		{"schedule junk", base + "schedule: sometimes\n", "schedule", "5 fields"},
		{"schedule bad minute", base + "schedule: \"61 * * * *\"\n", "schedule", "minute"},
		{"schedule every tiny", base + "schedule: \"@every 1ms\"\n", "schedule", "interval"},
		{"events not list", base + "events: {subject: a}\n", "events", "list"},
		{"events item not map", base + "events: [a]\n", "events[0]", "mapping"},
		{"events unknown", base + "events: [{topic: a}]\n", "events[0].topic", "unknown field"},
		{"events both", base + "events: [{subject: a, bucket: bbb}]\n", "events[0]", "both"},
		{"events neither", base + "events: [{prefix: a}]\n", "events[0]", "needs a subject or a bucket"},
		{"events ebb subject", base + "events: [{subject: ebb.jobs.a}]\n", "events[0].subject", "NATS subject"},
		{"events bad subject", base + "events: [{subject: \"a b\"}]\n", "events[0].subject", "NATS subject"},
		{"events bad bucket", base + "events: [{bucket: B}]\n", "events[0].bucket", "3-63"},
		{"events subject prefix", base + "events: [{subject: a.b, prefix: x}]\n", "events[0]", "only to bucket"},
		{"network junk", base + "network: internet\n", "network", "outbound or none"},
		{"monitor junk", base + "monitor: yes please\n", "monitor", "true or false"},
		{"monitor http", "name: a\nruntime: http\nhandler: ./srv\nmonitor: true\n", "monitor", "not runtime http"},
		{"network list", base + "network: [outbound]\n", "network", "single value"},
		{"warmup exec", "name: a\nruntime: exec\nhandler: ./b\nwarmup: {x: 1}\n", "warmup", "only to python"},
		{"warmup onnx before runtime", "warmup: 1\nname: a\nruntime: onnx\nhandler: m.onnx\n", "warmup", "only to python"},
		{"warmup null", base + "warmup:\n", "warmup", "empty"},
		{"warmup inf", base + "warmup: {x: .inf}\n", "warmup.x", "no JSON form"},
		{"warmup bool key", base + "warmup: {true: 1}\n", "warmup", "keys must be strings"},
		{"warmup alias", base + "warmup: {a: &x 1, b: *x}\n", "warmup.b", "aliases"},
		{"warmup binary", base + "warmup: !!binary aGk=\n", "warmup", "no JSON form"},
		{"warmup duplicate key", base + "warmup: {a: 1, a: 2}\n", "warmup.a", "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("Parse error = %v, want *manifest.Error", err)
			}
			if me.Field != tt.field {
				t.Errorf("field = %q, want %q (error: %v)", me.Field, tt.field, err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not contain %q", err, tt.reason)
			}
		})
	}
}

func TestParseAsyncScheduleEvents(t *testing.T) {
	tests := []struct {
		name, extra string
		want        ebb.AsyncConfig
		schedule    string
		events      []ebb.EventSource
	}{
		{"defaults", "", ebb.AsyncConfig{MaxRetries: 2, MaxAge: ebb.DefaultAsyncMaxAge}, "", nil},
		{"explicit zero retries", "async: {max_retries: 0}\n", ebb.AsyncConfig{MaxRetries: 0, MaxAge: ebb.DefaultAsyncMaxAge}, "", nil},
		{"all async fields", "async: {max_retries: 5, max_age: 1h, on_success: \"https://hooks.example/ok\", on_failure: other}\n",
			ebb.AsyncConfig{MaxRetries: 5, MaxAge: time.Hour, OnSuccess: "https://hooks.example/ok", OnFailure: "other"}, "", nil},
		{"cron", "schedule: \"*/5 * * * *\"\n", ebb.AsyncConfig{MaxRetries: 2, MaxAge: ebb.DefaultAsyncMaxAge}, "*/5 * * * *", nil},
		{"every", "schedule: \"@every 30s\"\n", ebb.AsyncConfig{MaxRetries: 2, MaxAge: ebb.DefaultAsyncMaxAge}, "@every 30s", nil},
		{"events", "events:\n  - subject: orders.*\n  - {bucket: uploads, prefix: in/, suffix: .csv}\n",
			ebb.AsyncConfig{MaxRetries: 2, MaxAge: ebb.DefaultAsyncMaxAge}, "",
			[]ebb.EventSource{{Subject: "orders.*"}, {Bucket: "uploads", Prefix: "in/", Suffix: ".csv"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Parse([]byte("name: a\nruntime: exec\nhandler: ./b\n" + tt.extra))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if spec.Async == nil || *spec.Async != tt.want {
				t.Errorf("async = %+v, want %+v", spec.Async, tt.want)
			}
			if spec.Schedule != tt.schedule {
				t.Errorf("schedule = %q, want %q", spec.Schedule, tt.schedule)
			}
			if fmt.Sprint(spec.Events) != fmt.Sprint(tt.events) {
				t.Errorf("events = %+v, want %+v", spec.Events, tt.events)
			}
		})
	}
}

func TestParseTarget(t *testing.T) {
	for _, target := range []string{"prod", "3", "latest"} {
		spec, err := Parse([]byte("name: a\nruntime: exec\nhandler: ./b\nschedule: \"@every 1m\"\ntarget: " + target + "\n"))
		if err != nil || spec.Target != target {
			t.Errorf("target %s: %+v, %v", target, spec, err)
		}
	}
}

func TestParseWarmupAndNetwork(t *testing.T) {
	base := "name: a\nruntime: python\nhandler: app.handler\n"
	tests := []struct {
		name, extra, warmup, network string
	}{
		{"defaults", "", "", ebb.NetworkOutbound},
		{"network none", "network: none\n", "", ebb.NetworkNone},
		{"network outbound", "network: outbound\n", "", ebb.NetworkOutbound},
		{"flow mapping", "warmup: {features: [[0, 1.5]], id: \"7\", ok: true, none: null}\n", `{"features":[[0,1.5]],"id":"7","none":null,"ok":true}`, ebb.NetworkOutbound},
		{"block mapping", "warmup:\n  features:\n    - [0, 1]\n  n: 3\n", `{"features":[[0,1]],"n":3}`, ebb.NetworkOutbound},
		{"scalar string", "warmup: hello\n", `"hello"`, ebb.NetworkOutbound},
		{"empty object", "warmup: {}\n", `{}`, ebb.NetworkOutbound},
		{"list", "warmup: [1, two]\n", `[1,"two"]`, ebb.NetworkOutbound},
		{"number key", "warmup: {1: x}\n", `{"1":"x"}`, ebb.NetworkOutbound},
		{"quoted number stays a string", "warmup: {v: \"1\"}\n", `{"v":"1"}`, ebb.NetworkOutbound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Parse([]byte(base + tt.extra))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if string(spec.Warmup) != tt.warmup {
				t.Errorf("warmup = %s, want %s", spec.Warmup, tt.warmup)
			}
			if spec.Network != tt.network {
				t.Errorf("network = %q, want %q", spec.Network, tt.network)
			}
		})
	}
}

func TestWarmupErrorHasLine(t *testing.T) {
	_, err := Parse([]byte("name: a\nruntime: http\nhandler: ./srv\n\nwarmup: {x: 1}\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "ebb.yaml:5: warmup: applies only to python") {
		t.Errorf("error = %v, want prefix ebb.yaml:5: warmup: applies only to python", err)
	}
}

func TestParseErrorHasLine(t *testing.T) {
	_, err := Parse([]byte("name: a\nruntime: python\nhandler: app.handler\ntimeout: never\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "ebb.yaml:4: timeout:") {
		t.Errorf("error = %v, want prefix ebb.yaml:4: timeout:", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("name: a\nruntime: python\nhandler: app.handler\nmemory: 128\ntimeout: 3s\n"))
	f.Add([]byte("name: b\nruntime: onnx\nhandler: model.onnx\nbatching: {max_batch_size: 8, max_delay: 1ms}\n"))
	f.Add([]byte("env: {A: b}\npreload: [x, y]\nmin_instances: 2\nmax_instances: 1\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("name: e\nruntime: exec\nhandler: x\nkeep_alive: fixed:1m30s\n"))
	f.Add([]byte("name: e\nruntime: exec\nhandler: x\nkeep_alive: adaptive\nidle_timeout: 3\n"))
	f.Add([]byte("name: d\nruntime: python\nhandler: a.b\nnetwork: none\nwarmup: {x: [1, 2.5, \"s\", null, true]}\n"))
	f.Add([]byte("name: c\nruntime: exec\nhandler: x\nasync: {max_retries: 1, on_failure: d}\nschedule: \"0 9 * * mon-fri\"\nevents: [{subject: a.*}, {bucket: up, suffix: .csv}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := Parse(data)
		if err != nil {
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a *manifest.Error", err)
			}
			return
		}
		if err := spec.Validate(); err != nil {
			t.Fatalf("Parse accepted a spec that does not validate: %v", err)
		}
	})
}

func TestKeepAliveField(t *testing.T) {
	base := "name: a\nruntime: python\nhandler: app.handler\n"
	for _, c := range []struct {
		yaml, keepAlive string
		idle            time.Duration
	}{
		{base, "", ebb.DefaultIdleTimeout},
		{base + "keep_alive: adaptive\n", "adaptive", ebb.DefaultIdleTimeout},
		{base + "keep_alive: fixed:600s\n", "fixed:10m", 10 * time.Minute},
		{base + "keep_alive: fixed:90s\n", "fixed:1m30s", 90 * time.Second},
		// idle_timeout is a fixed keep-alive, whatever the server's default.
		{base + "idle_timeout: 2m\n", "fixed:2m", 2 * time.Minute},
	} {
		spec, err := Parse([]byte(c.yaml))
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if spec.KeepAlive != c.keepAlive || spec.IdleTimeout != c.idle {
			t.Errorf("%q: keep_alive %q, idle_timeout %s; want %q, %s", c.yaml, spec.KeepAlive, spec.IdleTimeout, c.keepAlive, c.idle)
		}
		if d, ok := spec.FixedKeepAlive(); ok != strings.HasPrefix(c.keepAlive, "fixed:") || (ok && d != c.idle) {
			t.Errorf("%q: FixedKeepAlive = %s, %v", c.yaml, d, ok)
		}
	}
}

func TestMonitorField(t *testing.T) {
	for _, c := range []struct {
		yaml string
		want bool
	}{
		{"name: a\nruntime: onnx\nhandler: m.onnx\n", true},
		{"name: a\nruntime: onnx\nhandler: m.onnx\nmonitor: false\n", false},
		{"name: a\nruntime: python\nhandler: app.handler\n", false},
		{"name: a\nruntime: python\nhandler: app.handler\nmonitor: true\n", true},
		{"name: a\nruntime: exec\nhandler: ./fn\nmonitor: true\n", true},
		{"name: a\nruntime: http\nhandler: ./srv\nmonitor: false\n", false},
	} {
		spec, err := Parse([]byte(c.yaml))
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if got := spec.Monitored(); got != c.want {
			t.Errorf("%q: monitored = %v, want %v", c.yaml, got, c.want)
		}
	}
}

// FuzzParseKeepAlive: keep_alive's values (ebb.ParseKeepAlive): what is accepted has a canonical form that parses
// back to itself, with the same duration.
func FuzzParseKeepAlive(f *testing.F) {
	for _, s := range []string{"adaptive", "fixed:10m", "fixed:1h30m", "fixed:0.5s", "fixed:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, d, err := ebb.ParseKeepAlive(s)
		if err != nil {
			return
		}
		if c != ebb.KeepAliveAdaptive && d < time.Millisecond {
			t.Fatalf("%q accepted as %q with duration %s", s, c, d)
		}
		c2, d2, err := ebb.ParseKeepAlive(c)
		if err != nil || c2 != c || d2 != d {
			t.Fatalf("%q → %q (%s) → %q (%s), %v", s, c, d, c2, d2, err)
		}
	})
}
