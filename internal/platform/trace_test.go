package platform

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/queue"
	"github.com/ebb-run/ebb/internal/tracing"
)

// otlpReceiver is an OTLP/HTTP trace collector: it decodes the protobuf
// ExportTraceServiceRequests it is sent and keeps their spans.
type otlpReceiver struct {
	url   string
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t testing.TB) *otlpReceiver {
	rc := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != tracing.DefaultPath {
			http.Error(w, "not an OTLP traces request", http.StatusNotFound)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				rc.spans = append(rc.spans, ss.Spans...)
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(srv.Close)
	rc.url = srv.URL
	return rc
}

// all returns the spans received so far.
func (rc *otlpReceiver) all() []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*tracepb.Span(nil), rc.spans...)
}

// find returns the received span named name whose string attribute key is
// val, or nil.
func (rc *otlpReceiver) find(name, key, val string) *tracepb.Span {
	for _, s := range rc.all() {
		if s.Name == name && attr(s, key) == val {
			return s
		}
	}
	return nil
}

// children returns the received spans whose parent is s, by name.
func (rc *otlpReceiver) children(s *tracepb.Span) map[string]*tracepb.Span {
	out := map[string]*tracepb.Span{}
	for _, c := range rc.all() {
		if string(c.ParentSpanId) == string(s.SpanId) && string(c.TraceId) == string(s.TraceId) {
			out[c.Name] = c
		}
	}
	return out
}

// attr renders span attribute key as a string ("" if absent).
func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key != key {
			continue
		}
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue
		case *commonpb.AnyValue_BoolValue:
			if v.BoolValue {
				return "true"
			}
			return "false"
		case *commonpb.AnyValue_IntValue:
			return strconv.FormatInt(v.IntValue, 10)
		}
	}
	return ""
}

// tracedEnv is a platform whose spans go to a receiver, and the provider,
// which the test flushes.
func tracedEnv(t *testing.T) (*env, *otlpReceiver, *sdktrace.TracerProvider) {
	rc := newOTLPReceiver(t)
	tp, err := tracing.New(tracing.Config{Endpoint: rc.url})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, "", func(c *Config) { c.TracerProvider = tp })
	return e, rc, tp
}

// waitSpan flushes tp until the receiver has the span named name whose
// string attribute key is val. A proxied invocation's span ends after its
// response reached the client, so it may come a moment after.
func waitSpan(t *testing.T, tp *sdktrace.TracerProvider, rc *otlpReceiver, name, key, val string) *tracepb.Span {
	t.Helper()
	var s *tracepb.Span
	waitFor(t, "span "+name+" with "+key+"="+val, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tp.ForceFlush(ctx); err != nil {
			t.Fatalf("flush spans: %v", err)
		}
		s = rc.find(name, key, val)
		return s != nil
	})
	return s
}

// A caller's trace context: trace id, span id and the headers carrying them.
const (
	callerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan   = "00f067aa0ba902b7"
	callerParent = "00-" + callerTrace + "-" + callerSpan + "-01"
	callerState  = "vendor=opaque,other=1"
)

func callerHeaders() map[string]string {
	return map[string]string{"Traceparent": callerParent, "Tracestate": callerState}
}

// rawRuntimeFn is an exec function with a Runtime API client of its own
// that answers each event with the trace headers its /next carried.
func rawRuntimeFn(t *testing.T, name string) string {
	dir := fnDir(t, "name: "+name+"\nruntime: exec\nhandler: ./bootstrap\n", map[string]string{"bootstrap": `#!/usr/bin/python3
import json, os, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        out = {k: r.headers.get(k) for k in ("traceparent", "tracestate", "Lambda-Runtime-Trace-Id")}
        r.read()
    urllib.request.urlopen(urllib.request.Request(api + rid + "/response", data=json.dumps(out).encode(), method="POST")).read()
`})
	if err := os.Chmod(filepath.Join(dir, "bootstrap"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pyTraceFn is a python function that answers with context.trace_context.
func pyTraceFn(t *testing.T, name string) string {
	return fnDir(t, "name: "+name+"\nruntime: python\nhandler: app.handler\n", map[string]string{
		"app.py": "def handler(event, context):\n    return context.trace_context\n"})
}

// httpFn is the http test function.
func httpFn(t *testing.T, name string) string {
	return fnDir(t, "name: "+name+"\nruntime: http\nhandler: ./server\n", map[string]string{"server": "@httpfn"})
}

// seenHeaders is what httpfn's /headers reports.
func seenHeaders(t *testing.T, body string) http.Header {
	t.Helper()
	var got struct{ Header http.Header }
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return got.Header
}

func spanHex(b []byte) string { return hex.EncodeToString(b) }

// xray is the Lambda-Runtime-Trace-Id of trace tid with parent span sid.
func xray(tid, sid string) string {
	return "Root=1-" + tid[:8] + "-" + tid[8:] + ";Parent=" + sid + ";Sampled=1"
}

// checkInvocation checks the span of invocation rid of fn, made for a
// caller with callerHeaders, and returns it with its children: the
// caller's span is its parent, its attributes say what ran, and it has a
// queue wait and, when cold, a cold start split into process start and
// init.
func checkInvocation(t *testing.T, tp *sdktrace.TracerProvider, rc *otlpReceiver, fn, rid string, cold bool) (*tracepb.Span, map[string]*tracepb.Span) {
	t.Helper()
	inv := waitSpan(t, tp, rc, "invoke "+fn, "faas.invocation_id", rid)
	if got := spanHex(inv.TraceId); got != callerTrace {
		t.Errorf("%s: trace id %s, want the caller's %s", fn, got, callerTrace)
	}
	if got := spanHex(inv.ParentSpanId); got != callerSpan {
		t.Errorf("%s: parent span %s, want the caller's %s", fn, got, callerSpan)
	}
	if inv.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("%s: kind %v, want server", fn, inv.Kind)
	}
	for k, want := range map[string]string{"faas.name": fn, "faas.version": "1", "ebb.trigger": "sync", "ebb.status": "200",
		"faas.coldstart": map[bool]string{true: "true", false: "false"}[cold]} {
		if got := attr(inv, k); got != want {
			t.Errorf("%s: attribute %s = %q, want %q", fn, k, got, want)
		}
	}
	if attr(inv, "ebb.billed_ms") == "" || attr(inv, "ebb.billed_ms") == "0" {
		t.Errorf("%s: ebb.billed_ms = %q, want a positive number", fn, attr(inv, "ebb.billed_ms"))
	}
	kids := rc.children(inv)
	if kids["queue wait"] == nil {
		t.Errorf("%s: no queue wait span under the invocation; children %v", fn, names(kids))
	}
	cs := kids["cold start"]
	if (cs != nil) != cold {
		t.Fatalf("%s: cold start span %v, want one: %v", fn, cs != nil, cold)
	}
	if cold {
		phases := rc.children(cs)
		ps, in := phases["process start"], phases["init"]
		if ps == nil || in == nil {
			t.Fatalf("%s: cold start phases %v, want process start and init", fn, names(phases))
		}
		if ps.StartTimeUnixNano != cs.StartTimeUnixNano || ps.EndTimeUnixNano != in.StartTimeUnixNano || in.EndTimeUnixNano != cs.EndTimeUnixNano {
			t.Errorf("%s: process start [%d, %d] and init [%d, %d] do not split the cold start [%d, %d]", fn,
				ps.StartTimeUnixNano, ps.EndTimeUnixNano, in.StartTimeUnixNano, in.EndTimeUnixNano, cs.StartTimeUnixNano, cs.EndTimeUnixNano)
		}
	}
	return inv, kids
}

// TestTracingSpans: with a TracerProvider, an invocation whose caller sent
// a traceparent is a span of the caller's trace, the caller's span its
// parent, with children for its queue wait, its cold start (process start,
// then init) and its handler run or proxy hop; each kind of function gets
// the handler's or proxy hop's span as its trace context, where its own
// spans would join the trace.
func TestTracingSpans(t *testing.T) {
	needPython(t)
	e, rc, tp := tracedEnv(t)
	e.deploy(goFn(t, "tr-go", ""))
	e.deploy(rawRuntimeFn(t, "tr-raw"))
	e.deploy(pyTraceFn(t, "tr-py"))
	e.deploy(httpFn(t, "tr-http"))

	checkInvocation := func(fn, rid string, cold bool) (*tracepb.Span, map[string]*tracepb.Span) {
		t.Helper()
		return checkInvocation(t, tp, rc, fn, rid, cold)
	}

	t.Run("exec aws-lambda-go", func(t *testing.T) {
		code, body, h := e.do("POST", "/v1/functions/tr-go/invoke", `{"env":"_X_AMZN_TRACE_ID"}`, callerHeaders())
		if code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
		_, kids := checkInvocation("tr-go", h.Get("Ebb-Request-Id"), true)
		hs := kids["handler"]
		if hs == nil {
			t.Fatalf("no handler span; children %v", names(kids))
		}
		if got, want := decode(t, body)["env"], xray(callerTrace, spanHex(hs.SpanId)); got != want {
			t.Errorf("the function's _X_AMZN_TRACE_ID = %v, want %s (the handler span)", got, want)
		}
	})
	t.Run("exec runtime", func(t *testing.T) {
		code, body, h := e.do("POST", "/v1/functions/tr-raw/invoke", `{}`, callerHeaders())
		if code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
		_, kids := checkInvocation("tr-raw", h.Get("Ebb-Request-Id"), true)
		hs := kids["handler"]
		if hs == nil {
			t.Fatalf("no handler span; children %v", names(kids))
		}
		got := decode(t, body)
		sid := spanHex(hs.SpanId)
		for k, want := range map[string]string{"traceparent": "00-" + callerTrace + "-" + sid + "-01", "tracestate": callerState,
			"Lambda-Runtime-Trace-Id": xray(callerTrace, sid)} {
			if got[k] != want {
				t.Errorf("/next header %s = %v, want %s", k, got[k], want)
			}
		}
		// Warm now: no cold start span.
		code, _, h = e.do("POST", "/v1/functions/tr-raw/invoke", `{}`, callerHeaders())
		if code != 200 {
			t.Fatalf("second invoke = %d", code)
		}
		checkInvocation("tr-raw", h.Get("Ebb-Request-Id"), false)
	})
	t.Run("python", func(t *testing.T) {
		code, body, h := e.do("POST", "/v1/functions/tr-py/invoke", `{}`, callerHeaders())
		if code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
		inv, kids := checkInvocation("tr-py", h.Get("Ebb-Request-Id"), true)
		if attr(inv, "faas.coldstart") != "true" {
			t.Errorf("not a cold start")
		}
		hs := kids["handler"]
		if hs == nil {
			t.Fatalf("no handler span; children %v", names(kids))
		}
		got := decode(t, body)
		want := map[string]any{"traceparent": "00-" + callerTrace + "-" + spanHex(hs.SpanId) + "-01", "tracestate": callerState}
		if len(got) != 2 || got["traceparent"] != want["traceparent"] || got["tracestate"] != want["tracestate"] {
			t.Errorf("context.trace_context = %v, want %v", got, want)
		}
	})
	t.Run("http", func(t *testing.T) {
		code, body, h := e.do("GET", "/fn/tr-http/headers", "", callerHeaders())
		if code != 200 {
			t.Fatalf("GET = %d %s", code, body)
		}
		_, kids := checkInvocation("tr-http", h.Get("Ebb-Request-Id"), true)
		ps := kids["proxy"]
		if ps == nil {
			t.Fatalf("no proxy span; children %v", names(kids))
		}
		if ps.Kind != tracepb.Span_SPAN_KIND_CLIENT {
			t.Errorf("proxy span kind %v, want client", ps.Kind)
		}
		seen := seenHeaders(t, body)
		if got, want := seen.Get("Traceparent"), "00-"+callerTrace+"-"+spanHex(ps.SpanId)+"-01"; got != want {
			t.Errorf("the function's traceparent = %q, want %q (the proxy span)", got, want)
		}
		if got := seen.Get("Tracestate"); got != callerState {
			t.Errorf("the function's tracestate = %q, want %q", got, callerState)
		}
	})
	t.Run("malformed traceparent", func(t *testing.T) {
		for _, bad := range []string{"00-" + callerTrace + "-" + callerSpan, "zz-" + callerTrace + "-" + callerSpan + "-01",
			"00-00000000000000000000000000000000-" + callerSpan + "-01", "00-" + strings.ToUpper(callerTrace) + "-" + callerSpan + "-01", "garbage"} {
			code, body, h := e.do("GET", "/fn/tr-http/headers", "", map[string]string{"Traceparent": bad, "Tracestate": callerState})
			if code != 200 {
				t.Fatalf("traceparent %q: GET = %d %s, want 200", bad, code, body)
			}
			inv := waitSpan(t, tp, rc, "invoke tr-http", "faas.invocation_id", h.Get("Ebb-Request-Id"))
			if len(inv.ParentSpanId) != 0 || spanHex(inv.TraceId) == callerTrace {
				t.Errorf("traceparent %q: invocation span in trace %x under %x, want a new root", bad, inv.TraceId, inv.ParentSpanId)
			}
			ps := rc.children(inv)["proxy"]
			if ps == nil {
				t.Fatalf("traceparent %q: no proxy span", bad)
			}
			seen := seenHeaders(t, body)
			if got, want := seen.Get("Traceparent"), "00-"+spanHex(inv.TraceId)+"-"+spanHex(ps.SpanId)+"-01"; got != want {
				t.Errorf("traceparent %q: the function's traceparent = %q, want ebb's new %q", bad, got, want)
			}
			if got := seen.Get("Tracestate"); got != "" {
				t.Errorf("traceparent %q: the function got the caller's tracestate %q without its traceparent", bad, got)
			}
		}
	})
	t.Run("async", func(t *testing.T) {
		hdr := callerHeaders()
		hdr["Ebb-Invocation-Type"] = "Event"
		code, body, _ := e.do("POST", "/v1/functions/tr-raw/invoke", `{}`, hdr)
		if code != 202 {
			t.Fatalf("async invoke = %d %s", code, body)
		}
		id, _ := decode(t, body)["id"].(string)
		inv := waitSpan(t, tp, rc, "invoke tr-raw", "faas.invocation_id", id)
		if attr(inv, "ebb.trigger") != "async" || inv.Kind != tracepb.Span_SPAN_KIND_CONSUMER {
			t.Errorf("job span: trigger %q kind %v, want async consumer", attr(inv, "ebb.trigger"), inv.Kind)
		}
		// The job's run joins the caller's trace, under the enqueue.
		enq := waitSpan(t, tp, rc, "enqueue tr-raw", "faas.invocation_id", id)
		if enq.Kind != tracepb.Span_SPAN_KIND_PRODUCER || spanHex(enq.TraceId) != callerTrace || spanHex(enq.ParentSpanId) != callerSpan {
			t.Errorf("enqueue span: kind %v trace %s parent %s, want a producer under the caller's span", enq.Kind, spanHex(enq.TraceId), spanHex(enq.ParentSpanId))
		}
		if spanHex(inv.TraceId) != callerTrace || !bytes.Equal(inv.ParentSpanId, enq.SpanId) {
			t.Errorf("job span: trace %s parent %s, want the caller's trace under the enqueue span %s", spanHex(inv.TraceId), spanHex(inv.ParentSpanId), spanHex(enq.SpanId))
		}
		if rc.children(inv)["handler"] == nil {
			t.Errorf("job span has no handler child")
		}
	})
	t.Run("unknown function", func(t *testing.T) {
		code, _, h := e.do("POST", "/v1/functions/no-such-fn/invoke", `{}`, callerHeaders())
		if code != 404 {
			t.Fatalf("invoke of no function = %d, want 404", code)
		}
		inv := waitSpan(t, tp, rc, "invoke", "faas.invocation_id", h.Get("Ebb-Request-Id"))
		if attr(inv, "faas.name") != "no-such-fn" || attr(inv, "ebb.status") != "404" || spanHex(inv.ParentSpanId) != callerSpan {
			t.Errorf("span of an unknown function: faas.name %q, ebb.status %q, parent %x", attr(inv, "faas.name"), attr(inv, "ebb.status"), inv.ParentSpanId)
		}
	})
	t.Run("failure", func(t *testing.T) {
		code, _, h := e.do("POST", "/v1/functions/tr-go/invoke", `{"error":"boom"}`, callerHeaders())
		if code == 200 {
			t.Fatalf("invoke of a failing handler = 200")
		}
		inv := waitSpan(t, tp, rc, "invoke tr-go", "faas.invocation_id", h.Get("Ebb-Request-Id"))
		if inv.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || attr(inv, "ebb.error") != "handler" || attr(inv, "ebb.status") != strconv.Itoa(code) {
			t.Errorf("failed invocation span: status %v, ebb.error %q, ebb.status %q; want error, handler, %d",
				inv.Status, attr(inv, "ebb.error"), attr(inv, "ebb.status"), code)
		}
	})
}

// TestTracingFreshColdStart: a cold start with no spare to claim (the
// node's warm budget holds none: a fresh process, in a sandbox set up on
// the request's path) is split at the process's spawn too.
func TestTracingFreshColdStart(t *testing.T) {
	rc := newOTLPReceiver(t)
	tp, err := tracing.New(tracing.Config{Endpoint: rc.url})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, "", func(c *Config) { c.TracerProvider, c.WarmMax = tp, -1 })
	e.deploy(goFn(t, "fresh", ""))
	code, body, h := e.do("POST", "/v1/functions/fresh/invoke", `{}`, callerHeaders())
	if code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	inv, kids := checkInvocation(t, tp, rc, "fresh", h.Get("Ebb-Request-Id"), true)
	if attr(inv, "ebb.spare") == "true" || attr(kids["cold start"], "ebb.spare") == "true" {
		t.Errorf("the cold start claimed a spare; want a fresh process")
	}
}

func names(m map[string]*tracepb.Span) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestTraceContextWithoutExporter: with no TracerProvider (no
// --otlp-endpoint) ebb records nothing, and passes a caller's trace context
// to the function as it came: the caller's span is the function's parent.
// A malformed traceparent reaches no function, and fails no request.
func TestTraceContextWithoutExporter(t *testing.T) {
	needPython(t)
	e := start(t, "")
	if e.p.tracer != nil {
		t.Fatal("a tracer without a TracerProvider")
	}
	e.deploy(rawRuntimeFn(t, "pt-raw"))
	e.deploy(pyTraceFn(t, "pt-py"))
	e.deploy(httpFn(t, "pt-http"))

	code, body, _ := e.do("POST", "/v1/functions/pt-raw/invoke", `{}`, callerHeaders())
	if code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	got := decode(t, body)
	for k, want := range map[string]string{"traceparent": callerParent, "tracestate": callerState, "Lambda-Runtime-Trace-Id": xray(callerTrace, callerSpan)} {
		if got[k] != want {
			t.Errorf("exec: /next header %s = %v, want %s", k, got[k], want)
		}
	}
	code, body, _ = e.do("POST", "/v1/functions/pt-py/invoke", `{}`, callerHeaders())
	if code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	if got := decode(t, body); got["traceparent"] != callerParent || got["tracestate"] != callerState {
		t.Errorf("python: context.trace_context = %v, want the caller's", got)
	}
	code, body, _ = e.do("GET", "/fn/pt-http/headers", "", callerHeaders())
	if code != 200 {
		t.Fatalf("GET = %d %s", code, body)
	}
	if h := seenHeaders(t, body); h.Get("Traceparent") != callerParent || h.Get("Tracestate") != callerState {
		t.Errorf("http: traceparent %q tracestate %q, want the caller's", h.Get("Traceparent"), h.Get("Tracestate"))
	}

	// An async job carries the caller's trace context to its run.
	hdr := callerHeaders()
	hdr["Ebb-Invocation-Type"] = "Event"
	code, body, _ = e.do("POST", "/v1/functions/pt-raw/invoke", `{}`, hdr)
	if code != 202 {
		t.Fatalf("async invoke = %d %s", code, body)
	}
	job := e.waitJob(decode(t, body)["id"].(string), queue.StatusSucceeded)
	var seen map[string]any
	if err := json.Unmarshal(job.Result, &seen); err != nil || seen["traceparent"] != callerParent || seen["tracestate"] != callerState {
		t.Errorf("async exec: /next headers %s (%v), want the caller's traceparent and tracestate", job.Result, err)
	}

	// Untraced callers and malformed headers: the function gets no trace
	// context (an exec runtime a fresh X-Ray root, as before).
	for _, hdr := range []map[string]string{nil, {"Traceparent": "00-bad", "Tracestate": callerState}} {
		code, body, _ = e.do("POST", "/v1/functions/pt-raw/invoke", `{}`, hdr)
		if code != 200 {
			t.Fatalf("invoke with %v = %d %s", hdr, code, body)
		}
		got := decode(t, body)
		if got["traceparent"] != nil || got["tracestate"] != nil {
			t.Errorf("exec with %v: /next traceparent %v tracestate %v, want none", hdr, got["traceparent"], got["tracestate"])
		}
		if x, _ := got["Lambda-Runtime-Trace-Id"].(string); !strings.HasPrefix(x, "Root=1-") || strings.Contains(x, callerTrace[8:]) {
			t.Errorf("exec with %v: Lambda-Runtime-Trace-Id %q, want a fresh root", hdr, x)
		}
		code, body, _ = e.do("POST", "/v1/functions/pt-py/invoke", `{}`, hdr)
		if code != 200 || body != "{}" {
			t.Errorf("python with %v: %d %s, want 200 {} (an empty trace_context)", hdr, code, body)
		}
		code, body, _ = e.do("GET", "/fn/pt-http/headers", "", hdr)
		if h := seenHeaders(t, body); code != 200 || h.Get("Traceparent") != "" || h.Get("Tracestate") != "" {
			t.Errorf("http with %v: %d, traceparent %q tracestate %q, want 200 and none", hdr, code, h.Get("Traceparent"), h.Get("Tracestate"))
		}
	}
}

// TestServeOTLPEndpoint runs `ebb serve`: with --otlp-endpoint (a URL
// without a path: the collector's /v1/traces is meant) the invocation's
// spans reach the collector by the time ebb has exited, and the http
// function sees the caller's trace under ebb's proxy span; without it
// nothing is exported, even with OpenTelemetry's own endpoint variable
// set, and the function sees the caller's traceparent as it came.
func TestServeOTLPEndpoint(t *testing.T) {
	dir := httpFn(t, "web")
	var bundleBuf bytes.Buffer
	if _, err := bundle.Pack(dir, &bundleBuf); err != nil {
		t.Fatal(err)
	}
	packed := bundleBuf.Bytes()
	// run deploys web on a fresh ebb serve, calls it with the caller's
	// trace context, stops ebb and waits until it is gone; it returns the
	// headers web saw and the request id.
	run := func(t *testing.T, flags ...string) (http.Header, string) {
		cmd, url := serve(t, t.TempDir(), flags...)
		if code, body := call(t, "PUT", url+"/v1/functions/web", bytes.NewReader(packed)); code != 201 {
			t.Fatalf("deploy = %d %s", code, body)
		}
		req, _ := http.NewRequest("GET", url+"/fn/web/headers", nil)
		for k, v := range callerHeaders() {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET = %d %s", resp.StatusCode, body)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		waitFor(t, "ebb serve to exit", 30*time.Second, func() bool { return syscall.Kill(cmd.Process.Pid, 0) != nil })
		return seenHeaders(t, string(body)), resp.Header.Get("Ebb-Request-Id")
	}
	t.Run("on", func(t *testing.T) {
		rc := newOTLPReceiver(t)
		seen, rid := run(t, "--otlp-endpoint", rc.url)
		inv := rc.find("invoke web", "faas.invocation_id", rid)
		if inv == nil {
			t.Fatalf("the collector got no span of the invocation (%d spans)", len(rc.all()))
		}
		if spanHex(inv.TraceId) != callerTrace || spanHex(inv.ParentSpanId) != callerSpan {
			t.Errorf("invocation span in trace %x under %x, want %s under %s", inv.TraceId, inv.ParentSpanId, callerTrace, callerSpan)
		}
		ps := rc.children(inv)["proxy"]
		if ps == nil {
			t.Fatalf("no proxy span under the invocation")
		}
		if got, want := seen.Get("Traceparent"), "00-"+callerTrace+"-"+spanHex(ps.SpanId)+"-01"; got != want {
			t.Errorf("the function's traceparent = %q, want %q", got, want)
		}
	})
	t.Run("off", func(t *testing.T) {
		rc := newOTLPReceiver(t)
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rc.url)
		t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
		seen, _ := run(t)
		if got := seen.Get("Traceparent"); got != callerParent {
			t.Errorf("the function's traceparent = %q, want the caller's %q", got, callerParent)
		}
		if n := len(rc.all()); n != 0 {
			t.Errorf("the collector got %d spans from an ebb without --otlp-endpoint", n)
		}
	})
}

// BenchmarkInvokeWarmTracing measures a warm exec invoke with tracing off
// (the default: no TracerProvider), off with a traced caller (its context
// passed on), and on with a traced caller (four spans exported to a
// collector that discards them), for their ratios in one run.
func BenchmarkInvokeWarmTracing(b *testing.B) {
	discard := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	b.Cleanup(discard.Close)
	for _, bc := range []struct {
		name   string
		on     bool
		header map[string]string
	}{{"off", false, nil}, {"off traced caller", false, callerHeaders()}, {"on traced caller", true, callerHeaders()}} {
		b.Run(bc.name, func(b *testing.B) {
			var opts []envOpt
			if bc.on {
				tp, err := tracing.New(tracing.Config{Endpoint: discard.URL})
				if err != nil {
					b.Fatal(err)
				}
				opts = append(opts, func(c *Config) { c.TracerProvider = tp })
			}
			e := start(b, "", opts...)
			e.deploy(goFn(b, "bench", "min_instances: 1\n"))
			url := e.url + "/v1/functions/bench/invoke"
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			do := func() {
				req, _ := http.NewRequest("POST", url, strings.NewReader(`{"name":"bench"}`))
				for k, v := range bc.header {
					req.Header[k] = []string{v}
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			do()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				do()
			}
		})
	}
}

// FuzzTraceContext feeds arbitrary traceparent and tracestate headers to
// withTraceContext: no request fails for them, and the handler behind it
// either gets the caller's span (a valid one, from exactly the header sent,
// which stays on the request) or no trace context at all, with neither
// header left for a function to see.
func FuzzTraceContext(f *testing.F) {
	f.Add(callerParent, callerState, true)
	f.Add("00-"+callerTrace+"-"+callerSpan+"-00", "", true)
	f.Add("ff-"+callerTrace+"-"+callerSpan+"-01", "a=b", true)
	f.Add("01-"+callerTrace+"-"+callerSpan+"-01-extra", "", true)
	f.Add("00-00000000000000000000000000000000-"+callerSpan+"-01", "", true)
	f.Add("garbage", "x", false)
	f.Fuzz(func(t *testing.T, parent, state string, withState bool) {
		var got *http.Request
		h := withTraceContext(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r }))
		r := httptest.NewRequest("GET", "/fn/f/", nil)
		r.Header["Traceparent"] = []string{parent}
		if withState {
			r.Header["Tracestate"] = []string{state}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if got == nil || w.Code != http.StatusOK {
			t.Fatalf("traceparent %q: the request did not go through (%d)", parent, w.Code)
		}
		sc := oteltrace.SpanContextFromContext(got.Context())
		if !sc.IsValid() {
			if len(got.Header["Traceparent"]) != 0 || len(got.Header["Tracestate"]) != 0 {
				t.Fatalf("traceparent %q ignored, but headers %v stay for the function", parent, got.Header)
			}
			return
		}
		if !sc.IsRemote() || got.Header.Get("Traceparent") != parent {
			t.Fatalf("traceparent %q: span context %v (remote %v), header now %q", parent, sc, sc.IsRemote(), got.Header.Get("Traceparent"))
		}
		if tid, sid := sc.TraceID().String(), sc.SpanID().String(); !strings.Contains(parent, tid+"-"+sid) {
			t.Fatalf("traceparent %q read as trace %s span %s", parent, tid, sid)
		}
		if st := got.Header.Get("Tracestate"); st != "" && (!withState || st != state || sc.TraceState().Len() == 0) {
			t.Fatalf("tracestate %q (sent: %v) left on the request as %q, read as %q", state, withState, st, sc.TraceState())
		}
	})
}
