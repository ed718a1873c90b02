package platform

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/ebbtest"
)

func TestExecScaleFromZeroAndBack(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "hello", "idle_timeout: 300ms\nmemory: 128\nenv: {GREETING: hi}\n"))
	if n := e.instances("hello"); n != 0 {
		t.Fatalf("instances after deploy = %d, want 0 (scaled to zero)", n)
	}
	code, body, h := e.invoke("hello", `{"name":"ebb","env":"GREETING"}`)
	if code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	if h.Get("Ebb-Cold-Start") != "true" {
		t.Errorf("first invoke Ebb-Cold-Start = %q, want true", h.Get("Ebb-Cold-Start"))
	}
	m := decode(t, body)
	if m["message"] != "hello, ebb" || m["env"] != "hi" {
		t.Errorf("reply = %v", m)
	}
	if m["request_id"] != h.Get("Ebb-Request-Id") || h.Get("Ebb-Request-Id") == "" {
		t.Errorf("handler saw request id %v, header says %q", m["request_id"], h.Get("Ebb-Request-Id"))
	}
	if !strings.HasSuffix(m["arn"].(string), ":function:hello:1") {
		t.Errorf("arn = %v", m["arn"])
	}
	if got := m["function_env"]; got != "hello,1,128,./bootstrap" {
		t.Errorf("lambda env = %v, want hello,1,128,./bootstrap", got)
	}
	if dl := int64(m["deadline_ms"].(float64)); dl < time.Now().Add(25*time.Second).UnixMilli() {
		t.Errorf("deadline %d is not ~30s ahead", dl)
	}
	code, _, h = e.invoke("hello", `{}`)
	if code != 200 || h.Get("Ebb-Cold-Start") != "false" {
		t.Errorf("second invoke = %d cold=%q, want 200 false", code, h.Get("Ebb-Cold-Start"))
	}
	// The instance's process as the host sees it (the pid it reports is
	// its sandbox's), with its cgroup, and the bwrap around it.
	proc := e.instanceProc("hello", int(m["pid"].(float64)))
	e.checkCgroup(proc)
	var bwrap *hostProc
	if e.sandboxed() {
		bwrap = e.bwrapOf(proc)
		if m["cwd"] != "/var/task" || m["tmp"] != "/tmp" {
			t.Errorf("sandboxed cwd %v TMPDIR %v, want /var/task and its private /tmp", m["cwd"], m["tmp"])
		}
	}
	waitFor(t, "scale to zero", 5*time.Second, func() bool { return e.instances("hello") == 0 })
	e.checkGone(proc, bwrap, "after scale to zero")
	// The instance's own directories are gone with it: unsandboxed, its
	// work dir on the host; sandboxed, its /tmp went with its mount
	// namespace (checkGone), and ebb made none on the host.
	if !e.sandboxed() {
		if _, err := os.Stat(m["cwd"].(string)); !os.IsNotExist(err) {
			t.Errorf("work dir %v still exists", m["cwd"])
		}
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "instances")); len(left) > 0 {
		t.Errorf("instance directories left after scale to zero: %v", left)
	}
	code, _, h = e.invoke("hello", `{}`)
	if code != 200 || h.Get("Ebb-Cold-Start") != "true" {
		t.Errorf("after idle: %d cold=%q, want 200 true", code, h.Get("Ebb-Cold-Start"))
	}
	st, _ := e.c.Status(context.Background(), "hello")
	if st.Invocations != 3 || st.ColdStarts != 2 {
		t.Errorf("status invocations=%d cold=%d, want 3 and 2", st.Invocations, st.ColdStarts)
	}
	if !strings.Contains(e.logText(), `"msg":"invocation"`) || !strings.Contains(e.logText(), `"billed_ms"`) {
		t.Errorf("no invocation log line with billed_ms")
	}
}

func TestHandlerErrorAndBadInput(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "errs", ""))
	code, body, _ := e.invoke("errs", `{"error":"boom"}`)
	if code != 500 {
		t.Fatalf("handler error status = %d, want 500", code)
	}
	m := decode(t, body)
	if m["errorMessage"] != "boom" || m["errorType"] != "errorString" {
		t.Errorf("error body = %v, want errorString/boom", m)
	}
	tests := []struct {
		name, path, body string
		want             int
	}{
		{"invalid json", "/v1/functions/errs/invoke", `{"a":`, 400},
		{"unknown function", "/v1/functions/nope/invoke", `{}`, 404},
		{"oversize", "/v1/functions/errs/invoke", `{"x":"` + strings.Repeat("a", 1<<20) + `"}`, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := e.do("POST", tt.path, tt.body, nil)
			if code != tt.want {
				t.Errorf("status = %d, want %d (%s)", code, tt.want, body)
			}
			var eb map[string]any
			if json.Unmarshal([]byte(body), &eb) != nil || eb["errorType"] == nil {
				t.Errorf("body %q is not a structured error", body)
			}
			if strings.Contains(body, e.dataDir) {
				t.Errorf("error leaks a server path: %s", body)
			}
		})
	}
}

func TestDeployRejectsBadManifests(t *testing.T) {
	e := start(t, "")
	tests := []struct {
		name, manifest, want string
	}{
		{"unknown runtime", "name: bad\nruntime: ruby\nhandler: x\n", "runtime"},
		{"bad field", "name: bad\nruntime: exec\nhandler: ./bootstrap\nmemory: lots\n", "memory"},
		{"unknown field", "name: bad\nruntime: exec\nhandler: ./bootstrap\nmax_instance: 2\n", "max_instance"},
		{"missing binary", "name: bad\nruntime: exec\nhandler: ./nothere\n", "handler"},
		{"missing module", "name: bad\nruntime: python\nhandler: nomod.handler\n", "handler"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fnDir(t, tt.manifest, map[string]string{"bootstrap": "@lambdafn"})
			code, body := deployRaw(t, e, "bad", dir)
			if code != 400 {
				t.Fatalf("deploy = %d %s, want 400", code, body)
			}
			if !strings.Contains(body, tt.want) {
				t.Errorf("error %s does not name %q", body, tt.want)
			}
		})
	}
	code, body, _ := e.do("PUT", "/v1/functions/bad", "not a tarball", nil)
	if code != 400 {
		t.Errorf("garbage bundle = %d %s, want 400", code, body)
	}
	if n, _ := e.c.List(context.Background()); len(n) != 0 {
		t.Errorf("a rejected deploy left %d functions", len(n))
	}
}

func TestConcurrencyQueueAnd429(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "busy", "max_instances: 2\nconcurrency: 1\nmax_queue: 2\nqueue_timeout: 30s\n"))
	gate := e.newGate("busy")
	held := `{"hold":"` + gate.path + `"}`
	// 2 instances busy + 2 queued fit; the 5th and 6th are refused at once.
	// Each stage starts once the status shows the one before in place, and
	// nothing ends until the gate opens.
	var admitted []<-chan string
	admitted = append(admitted, e.goInvoke("busy", held), e.goInvoke("busy", held))
	e.waitStatus("busy", "2 requests running", func(st api.FunctionStatus) bool { return st.InFlight == 2 })
	admitted = append(admitted, e.goInvoke("busy", held), e.goInvoke("busy", held))
	e.waitStatus("busy", "2 requests queued", func(st api.FunctionStatus) bool { return st.InFlight == 2 && st.Waiting == 2 })
	// Refused at once, not queued and later timed out (that is a 429 too):
	// while they are answered the queue must never hold more than 2.
	refused := make(chan []string, 1)
	go func() {
		var bad []string
		for i := 5; i <= 6; i++ {
			code, body, h, err := e.tryDo("POST", "/v1/functions/busy/invoke", held, nil)
			if err != nil || code != 429 || h.Get("Retry-After") == "" {
				bad = append(bad, fmt.Sprintf("request %d with 2 running and 2 queued = %d %s %v (Retry-After %q), want 429 with Retry-After", i, code, body, err, h.Get("Retry-After")))
			}
		}
		refused <- bad
	}()
	e.waitStatus("busy", "the 5th and 6th requests answered", func(st api.FunctionStatus) bool {
		if st.Waiting > 2 {
			t.Fatalf("%d requests queued, more than max_queue 2", st.Waiting)
		}
		select {
		case bad := <-refused:
			for _, b := range bad {
				t.Error(b)
			}
			return true
		default:
			return false
		}
	})
	gate.open()
	for _, r := range admitted {
		if got := <-r; !strings.HasPrefix(got, "200 ") {
			t.Errorf("admitted request = %s, want 200", got)
		}
	}
	if got := e.instances("busy"); got > 2 {
		t.Errorf("instances = %d, more than max_instances 2", got)
	}
}

func TestQueueTimeoutGives429(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "slow", "max_instances: 1\nmax_queue: 5\nqueue_timeout: 200ms\n"))
	// The first request holds the only instance until the gate opens, which
	// is after the queued one is answered: a 429 then can only come from
	// its queue_timeout, not from a slot that came free.
	gate := e.newGate("slow")
	first := e.goInvoke("slow", `{"hold":"`+gate.path+`"}`)
	e.waitStatus("slow", "first request in flight", func(st api.FunctionStatus) bool { return st.InFlight == 1 })
	code, body, _ := e.invoke("slow", `{}`)
	if code != 429 {
		t.Errorf("queued request = %d %s, want 429 after queue_timeout", code, body)
	}
	gate.open()
	if got := <-first; !strings.HasPrefix(got, "200 ") {
		t.Errorf("first request = %s", got)
	}
}

func TestMinInstancesWarm(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "warm", "min_instances: 2\nmax_instances: 3\nidle_timeout: 50ms\n"))
	waitFor(t, "2 warm instances", 5*time.Second, func() bool { return e.idle("warm") == 2 })
	_, _, h := e.invoke("warm", `{}`)
	if h.Get("Ebb-Cold-Start") != "false" {
		t.Errorf("invoke on a warm function was cold")
	}
	// Three requests at once take all three instances; they end together,
	// so all three go idle at once. The idle reaper has run once an
	// instance is gone, and it must stop at min_instances.
	gate := e.newGate("warm")
	var held []<-chan string
	for range 3 {
		held = append(held, e.goInvoke("warm", `{"hold":"`+gate.path+`"}`))
	}
	serving := map[string]bool{}
	e.waitStatus("warm", "3 requests running", func(st api.FunctionStatus) bool {
		for _, in := range st.Instances {
			serving[in.ID] = true
		}
		return st.InFlight == 3
	})
	gate.open()
	for _, r := range held {
		if got := <-r; !strings.HasPrefix(got, "200 ") {
			t.Fatalf("held request = %s", got)
		}
	}
	// The two left are two of those three, not replacements started after
	// the floor was undercut.
	var left []api.InstanceStatus
	e.waitStatus("warm", "the instance above min_instances to be reaped", func(st api.FunctionStatus) bool {
		left = st.Instances
		return len(left) <= 2
	})
	if len(left) != 2 || !serving[left[0].ID] || !serving[left[1].ID] || left[0].Phase != "idle" || left[1].Phase != "idle" {
		t.Errorf("instances after idle = %+v, want 2 idle ones of the 3 that served (%v)", left, serving)
	}
}

func TestTimeoutKillsInstance(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "sleepy", "timeout: 200ms\n"))
	_, body, _ := e.invoke("sleepy", `{}`)
	proc := e.instanceProc("sleepy", int(decode(t, body)["pid"].(float64)))
	e.checkCgroup(proc)
	var bwrap *hostProc
	if e.sandboxed() {
		bwrap = e.bwrapOf(proc)
	}
	// The handler would answer 200 after a minute: a 504 is the timeout.
	code, body, _ := e.invoke("sleepy", `{"sleep_ms":60000}`)
	if code != 504 {
		t.Fatalf("status = %d %s, want 504", code, body)
	}
	if m := decode(t, body); m["errorType"] != "Sandbox.Timedout" {
		t.Errorf("body = %v", m)
	}
	waitFor(t, "timed-out instance to die", 5*time.Second, func() bool { return !alive(proc.pid) })
	waitFor(t, "the timed-out instance to leave the pool", 5*time.Second, func() bool { return e.instances("sleepy") == 0 })
	e.checkGone(proc, bwrap, "after the timeout")
	code, _, h := e.invoke("sleepy", `{}`)
	if code != 200 || h.Get("Ebb-Cold-Start") != "true" {
		t.Errorf("after timeout: %d cold=%s, want a fresh instance", code, h.Get("Ebb-Cold-Start"))
	}
}

func TestCrashGives502AndIsReplaced(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "crashy", "max_instances: 2\nconcurrency: 1\n"))
	// A neighbour on the other instance is in flight, held, when the crash
	// happens, and must not be disturbed by it.
	gate := e.newGate("crashy")
	other := e.goInvoke("crashy", `{"hold":"`+gate.path+`"}`)
	e.waitStatus("crashy", "the neighbour in flight", func(st api.FunctionStatus) bool { return st.InFlight == 1 })
	code, body, _ := e.invoke("crashy", `{"crash":true}`)
	if code != 502 {
		t.Fatalf("crash = %d %s, want 502", code, body)
	}
	if m := decode(t, body); m["errorType"] != "Runtime.ExitError" {
		t.Errorf("crash body = %v", m)
	}
	gate.open()
	if got := <-other; !strings.HasPrefix(got, "200 ") {
		t.Errorf("neighbour request = %s, want 200", got)
	}
	if code, _, _ := e.invoke("crashy", `{}`); code != 200 {
		t.Errorf("after crash = %d, want 200", code)
	}
}

func TestMemoryLimit(t *testing.T) {
	e := start(t, "")
	if e.p.CgroupMode() == "none" {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "no cgroup: memory limits are not enforced here")
	}
	e.deploy(goFn(t, "hungry", "memory: 64\n"))
	code, body, _ := e.invoke("hungry", `{"alloc_mb":200}`)
	if code != 502 {
		t.Fatalf("over memory = %d %s, want 502", code, body)
	}
	if m := decode(t, body); m["errorType"] != "Runtime.OutOfMemory" {
		t.Errorf("body = %v, want Runtime.OutOfMemory", m)
	}
	if code, _, _ := e.invoke("hungry", `{"alloc_mb":8}`); code != 200 {
		t.Errorf("within memory = %d", code)
	}
}

func TestRedeployWhileServing(t *testing.T) {
	e := start(t, "")
	dir := goFn(t, "rolling", "max_instances: 4\n")
	e.deploy(dir)
	// The old version's request is in flight, held, across the redeploy.
	gate := e.newGate("rolling")
	slow := e.goInvoke("rolling", `{"hold":"`+gate.path+`","env":"VERSION_TAG"}`)
	e.waitStatus("rolling", "the version 1 request in flight", func(st api.FunctionStatus) bool { return st.InFlight == 1 })
	os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte("name: rolling\nruntime: exec\nhandler: ./bootstrap\nmax_instances: 4\nenv: {VERSION_TAG: two}\n"), 0o644)
	if v := e.deploy(dir); v != 2 {
		t.Fatalf("redeploy version = %d, want 2", v)
	}
	code, body, h := e.invoke("rolling", `{"env":"VERSION_TAG"}`)
	if code != 200 || decode(t, body)["env"] != "two" || h.Get("Ebb-Version") != "2" {
		t.Errorf("after redeploy: %d %s version=%s, want the new version", code, body, h.Get("Ebb-Version"))
	}
	if st, err := e.c.Status(context.Background(), "rolling"); err != nil || len(st.Draining) != 1 || st.Draining[0] != 1 {
		t.Errorf("draining while version 1 serves = %v (%v), want [1]", st.Draining, err)
	}
	gate.open()
	got := <-slow
	if !strings.HasPrefix(got, "200 ") || strings.Contains(got, `"env":"two"`) {
		t.Errorf("in-flight request on the old version = %s, want 200 from version 1", got)
	}
	waitFor(t, "old version drained", 5*time.Second, func() bool {
		st, _ := e.c.Status(context.Background(), "rolling")
		return len(st.Draining) == 0
	})
}

func TestRestartKeepsFunctions(t *testing.T) {
	dataDir := t.TempDir()
	e := start(t, dataDir)
	e.deploy(goFn(t, "durable", ""))
	e.stop()
	e2 := start(t, dataDir)
	code, body, _ := e2.invoke("durable", `{"name":"again"}`)
	if code != 200 || decode(t, body)["message"] != "hello, again" {
		t.Errorf("after restart: %d %s", code, body)
	}
	st, err := e2.c.Status(context.Background(), "durable")
	if err != nil || st.Version != 1 {
		t.Errorf("status after restart = %+v, %v", st, err)
	}
}

func TestAuth(t *testing.T) {
	e := start(t, "", func(c *Config) { c.RequireAuth = true })
	if !strings.HasPrefix(e.adminKey, "ebb_") {
		t.Fatalf("admin key = %q", e.adminKey)
	}
	e.deploy(goFn(t, "secret", ""))
	tests := []struct {
		name, auth string
		want       int
	}{
		{"no key", "-", 401},
		{"bad key", "Bearer ebb_0000", 401},
		{"admin key", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tt.auth == "-" {
				hdr["Authorization"] = "Bearer "
			} else if tt.auth != "" {
				hdr["Authorization"] = tt.auth
			}
			code, body, _ := e.do("POST", "/v1/functions/secret/invoke", `{}`, hdr)
			if code != tt.want {
				t.Errorf("status = %d %s, want %d", code, body, tt.want)
			}
		})
	}
	if code, _, _ := e.do("GET", "/healthz", "", map[string]string{"Authorization": "x"}); code != 200 {
		t.Errorf("healthz = %d without a key, want 200", code)
	}
	// The key survives a restart, and no new one is made.
	e.stop()
	e2 := start(t, e.dataDir, func(c *Config) { c.RequireAuth = true })
	if e2.adminKey != "" {
		t.Errorf("a second admin key was made on restart")
	}
	e2.adminKey = e.adminKey
	if code, _, _ := e2.invoke("secret", `{}`); code != 200 {
		t.Errorf("old key after restart = %d", code)
	}
}

func TestLogsTaggedWithRequestID(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "chatty", ""))
	_, _, h := e.invoke("chatty", `{"print":"hello from the handler"}`)
	rid := h.Get("Ebb-Request-Id")
	var found bool
	waitFor(t, "log line", 5*time.Second, func() bool {
		code, body, _ := e.do("GET", "/v1/functions/chatty/logs", "", nil)
		if code != 200 {
			t.Fatalf("logs = %d %s", code, body)
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.Contains(line, "hello from the handler") {
				found = strings.Contains(line, rid)
				return true
			}
		}
		return false
	})
	if !found {
		t.Errorf("log line is not tagged with request id %s", rid)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "counted", ""))
	e.invoke("counted", `{}`)
	e.invoke("counted", `{"error":"x"}`)
	code, body, _ := e.do("GET", "/metrics", "", nil)
	if code != 200 {
		t.Fatalf("metrics = %d", code)
	}
	for _, want := range []string{
		`ebb_invocations_total{code="200",function="counted"} 1`,
		`ebb_invocation_errors_total{function="counted",kind="handler"} 1`,
		`ebb_cold_starts_total{function="counted"} 1`,
		`ebb_invocation_duration_seconds_bucket{function="counted"`,
		`ebb_instances{function="counted",state="idle"} 1`,
		`ebb_queue_depth{function="counted"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestRemove(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "gone", "min_instances: 1\n"))
	waitFor(t, "warm instance", 5*time.Second, func() bool { return e.instances("gone") == 1 })
	if err := e.c.Remove(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := e.invoke("gone", `{}`); code != 404 {
		t.Errorf("invoke after rm = %d, want 404", code)
	}
	if code, _, _ := e.do("DELETE", "/v1/functions/gone", "", nil); code != 404 {
		t.Errorf("second rm = %d, want 404", code)
	}
}

func TestLambdaInvokeAPI(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "lam", ""))
	code, body, h := e.do("POST", "/2015-03-31/functions/lam/invocations", `{"name":"sdk"}`, nil)
	if code != 200 || decode(t, body)["message"] != "hello, sdk" {
		t.Errorf("invoke = %d %s", code, body)
	}
	code, body, h = e.do("POST", "/2015-03-31/functions/lam/invocations", `{"error":"bad"}`, nil)
	if code != 200 || h.Get("X-Amz-Function-Error") != "Unhandled" || decode(t, body)["errorMessage"] != "bad" {
		t.Errorf("function error = %d %s %v", code, body, h)
	}
	code, _, h = e.do("POST", "/2015-03-31/functions/nope/invocations", `{}`, nil)
	if code != 404 || h.Get("X-Amzn-Errortype") != "ResourceNotFoundException" {
		t.Errorf("unknown = %d %v", code, h)
	}
}

func TestHTTPRuntime(t *testing.T) {
	e := start(t, "")
	e.deploy(fnDir(t, "name: web\nruntime: http\nhandler: ./server\ntimeout: 1s\n", map[string]string{"server": "@httpfn"}))
	code, body, h := e.do("POST", "/fn/web/some/path?q=1&r=2", "payload", map[string]string{"X-Test": "yes"})
	if code != 200 {
		t.Fatalf("proxy = %d %s", code, body)
	}
	m := decode(t, body)
	if m["method"] != "POST" || m["path"] != "/some/path" || m["query"] != "q=1&r=2" || m["header"] != "yes" || m["body"] != "payload" {
		t.Errorf("function saw %v", m)
	}
	if h.Get("X-Fn") != "httpfn" || h.Get("Ebb-Cold-Start") != "true" || m["request_id"] != h.Get("Ebb-Request-Id") {
		t.Errorf("headers = %v", h)
	}
	// Streaming: the first chunk reaches the client while the handler is
	// still running. The handler holds after it until /release reaches the
	// same instance (one instance, concurrency 2), and /release says
	// whether it was still holding: if ebb buffered the chunk, the client
	// gets it only once the handler has given up.
	e.deploy(fnDir(t, "name: webstream\nruntime: http\nhandler: ./server\nmax_instances: 1\nconcurrency: 2\n", map[string]string{"server": "@httpfn"}))
	resp, err := http.Get(e.url + "/fn/webstream/stream")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if line, _ := br.ReadString('\n'); line != "chunk 0\n" {
		t.Errorf("first chunk = %q", line)
	}
	if code, body, _ := e.do("GET", "/fn/webstream/release", "", nil); code != 200 || body != "released\n" {
		t.Errorf("release after the first chunk = %d %q, want the handler still holding", code, body)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "chunk 1\n" {
		t.Errorf("rest of the stream = %q, want chunk 1", rest)
	}
	resp.Body.Close()
	code, body, _ = e.do("GET", "/fn/web/sleep?d=3s", "", nil)
	if code != 504 {
		t.Errorf("slow http = %d %s, want 504", code, body)
	}
	code, body, _ = e.do("GET", "/fn/web/crash", "", nil)
	if code != 502 {
		t.Errorf("crashing http = %d %s, want 502", code, body)
	}
	if code, _, _ := e.do("GET", "/fn/web/", "", nil); code != 200 {
		t.Errorf("after crash = %d", code)
	}
}

func TestPythonRuntime(t *testing.T) {
	needPython(t)
	e := start(t, "")
	app := `
import os
calls = 0
loaded_pid = os.getpid()

class ValidationError(Exception):
    pass

def handler(event, context):
    global calls
    calls += 1
    if event.get("fail"):
        raise ValidationError("bad input: " + event["fail"])
    print("handling", context.aws_request_id)
    return {"calls": calls, "pid": os.getpid(), "request_id": context.aws_request_id,
            "function_name": context.function_name, "memory": context.memory_limit_in_mb,
            "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 30000}
`
	e.deploy(fnDir(t, "name: py\nruntime: python\nhandler: app.handler\nmemory: 128\n", map[string]string{"app.py": app}))
	code, body, h := e.invoke("py", `{}`)
	if code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	m := decode(t, body)
	if m["calls"] != 1.0 || m["request_id"] != h.Get("Ebb-Request-Id") || m["function_name"] != "py" || m["memory"] != 128.0 || m["remaining_ok"] != true {
		t.Errorf("reply = %v", m)
	}
	// The module may have been imported in a zygote (another pid); what
	// matters is that its scope ran once for this instance.
	_, body, _ = e.invoke("py", `{}`)
	if m2 := decode(t, body); m2["calls"] != 2.0 || m2["pid"] != m["pid"] {
		t.Errorf("module scope ran again: %v after %v", m2, m)
	}
	code, body, _ = e.invoke("py", `{"fail":"x"}`)
	if code != 500 {
		t.Fatalf("exception = %d %s", code, body)
	}
	if m := decode(t, body); m["errorType"] != "ValidationError" || m["errorMessage"] != "bad input: x" {
		t.Errorf("exception body = %v", m)
	}
	e.deploy(fnDir(t, "name: pybroken\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": "import nosuchmodule\n"}))
	code, body, _ = e.invoke("pybroken", `{}`)
	if code != 502 || decode(t, body)["errorType"] != "Runtime.ImportModuleError" {
		t.Errorf("import error = %d %s, want 502 Runtime.ImportModuleError", code, body)
	}
}

func TestFunctionURLForEventFunctions(t *testing.T) {
	needPython(t)
	e := start(t, "")
	app := `
def handler(event, context):
    return {"statusCode": 201, "headers": {"X-Path": event["rawPath"]}, "body": event["requestContext"]["http"]["method"] + " " + event.get("body", "")}
`
	e.deploy(fnDir(t, "name: urlfn\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": app}))
	code, body, h := e.do("PUT", "/fn/urlfn/a/b", "data", nil)
	if code != 201 || body != "PUT data" || h.Get("X-Path") != "/a/b" {
		t.Errorf("function URL = %d %q %v", code, body, h)
	}
}
