package runtimeapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// rawRuntime speaks the Runtime API by hand, to test what aws-lambda-go
// never sends.
type rawRuntime struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newRawRuntime(t *testing.T, s *Server) *rawRuntime {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawRuntime{t: t, base: "http://" + s.Addr(), c: &http.Client{Transport: tr}}
}

type rawResponse struct {
	status int
	header http.Header
	body   []byte
}

func (rt *rawRuntime) do(ctx context.Context, method, path string, body io.Reader, hdr map[string]string, trailer http.Header) (rawResponse, error) {
	req, err := http.NewRequestWithContext(ctx, method, rt.base+path, body)
	if err != nil {
		return rawResponse{}, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	req.Trailer = trailer
	resp, err := rt.c.Do(req)
	if err != nil {
		return rawResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResponse{resp.StatusCode, resp.Header, b}, err
}

func (rt *rawRuntime) mustDo(method, path, body string, hdr map[string]string) rawResponse {
	rt.t.Helper()
	r, err := rt.do(invokeCtx(rt.t), method, path, strings.NewReader(body), hdr, nil)
	if err != nil {
		rt.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// next polls /next and fails the test unless it gets an invocation.
func (rt *rawRuntime) next() rawResponse {
	rt.t.Helper()
	r, err := rt.do(invokeCtx(rt.t), http.MethodGet, nextPath, nil, nil, nil)
	if err != nil {
		rt.t.Fatalf("GET next: %v", err)
	}
	if r.status != http.StatusOK {
		rt.t.Fatalf("GET next = %d %s, want 200", r.status, r.body)
	}
	return r
}

type invokeResult struct {
	body []byte
	err  error
}

// invokeAsync starts an Invoke and returns where its result will arrive.
func invokeAsync(ctx context.Context, s *Server, req Request) chan invokeResult {
	ch := make(chan invokeResult, 1)
	go func() {
		b, err := s.Invoke(ctx, req)
		ch <- invokeResult{b, err}
	}()
	return ch
}

func errorDoc(t *testing.T, r rawResponse) (typ string) {
	t.Helper()
	var doc struct {
		Message *string `json:"errorMessage"`
		Type    string  `json:"errorType"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil || doc.Message == nil || doc.Type == "" {
		t.Errorf("error body %q is not an {errorMessage, errorType} document", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return doc.Type
}

func TestNextHeaders(t *testing.T) {
	s := startServer(t, Config{FunctionName: "hdr", FunctionVersion: "2"})
	rt := newRawRuntime(t, s)
	deadline := time.UnixMilli(1_900_000_000_123)
	res := invokeAsync(invokeCtx(t), s, Request{
		ID: "id-1", Payload: []byte(`{"x":1}`), Deadline: deadline,
		TraceID: "Root=1-a", ClientContext: `{"custom":{}}`, CognitoIdentity: `{"CognitoIdentityID":"c"}`,
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "k=v",
	})
	r := rt.next()
	want := map[string]string{
		"Content-Type":                        "application/json",
		"Content-Length":                      "7",
		"Lambda-Runtime-Aws-Request-Id":       "id-1",
		"Lambda-Runtime-Deadline-Ms":          "1900000000123",
		"Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:local:000000000000:function:hdr:2",
		"Lambda-Runtime-Trace-Id":             "Root=1-a",
		"Lambda-Runtime-Client-Context":       `{"custom":{}}`,
		"Lambda-Runtime-Cognito-Identity":     `{"CognitoIdentityID":"c"}`,
		"Traceparent":                         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"Tracestate":                          "k=v",
	}
	for k, v := range want {
		if got := r.header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if string(r.body) != `{"x":1}` {
		t.Errorf("body = %q, want %q", r.body, `{"x":1}`)
	}
	if a := rt.mustDo(http.MethodPost, invokePrefix+"id-1/response", `"ok"`, nil); a.status != http.StatusAccepted || string(a.body) != "{\"status\":\"OK\"}\n" {
		t.Errorf("POST response = %d %q, want 202 {\"status\":\"OK\"}", a.status, a.body)
	}
	if got := <-res; got.err != nil || string(got.body) != `"ok"` {
		t.Errorf("Invoke = %q, %v; want %q, nil", got.body, got.err, `"ok"`)
	}

	// Optional headers are left out when unset.
	res = invokeAsync(invokeCtx(t), s, Request{ID: "id-2"})
	r = rt.next()
	for _, k := range []string{"Lambda-Runtime-Client-Context", "Lambda-Runtime-Cognito-Identity", "Traceparent", "Tracestate"} {
		if _, ok := r.header[k]; ok {
			t.Errorf("header %s present without a value to carry", k)
		}
	}
	rt.mustDo(http.MethodPost, invokePrefix+"id-2/response", ``, nil)
	if got := <-res; got.err != nil || len(got.body) != 0 {
		t.Errorf("Invoke with an empty response = %q, %v; want empty, nil", got.body, got.err)
	}
}

func TestResultProtocol(t *testing.T) {
	type post struct {
		path    string
		body    string
		chunked bool
		hdr     map[string]string
		trailer http.Header
	}
	cases := []struct {
		name       string
		max        int64
		post       post
		wantStatus int
		wantType   string // errorType of the answer to the runtime, if an error
		wantBody   string // Invoke's result, if it succeeds
		wantErr    *ebb.HandlerError
	}{
		{
			name: "response", post: post{path: "ID/response", body: `{"r":1}`},
			wantStatus: 202, wantBody: `{"r":1}`,
		},
		{
			name: "chunked response", post: post{path: "ID/response", body: `[1,2]`, chunked: true},
			wantStatus: 202, wantBody: `[1,2]`,
		},
		{
			name: "error document", post: post{path: "ID/error", body: `{"errorType":"ValueError","errorMessage":"bad","stackTrace":["  File \"app.py\", line 3"]}`},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "ValueError", Message: "bad", Trace: []string{`  File "app.py", line 3`}},
		},
		{
			name: "go stack frames", post: post{path: "ID/error", body: `{"errorType":"E","errorMessage":"m","stackTrace":[{"path":"main.go","line":7,"label":"main"}]}`},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "E", Message: "m", Trace: []string{"main.go:7 main"}},
		},
		{
			name: "type from header", post: post{path: "ID/error", body: `{"errorMessage":"m"}`, hdr: map[string]string{hdrErrorType: "Runtime.Custom"}},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "Runtime.Custom", Message: "m"},
		},
		{
			name: "no type anywhere", post: post{path: "ID/error", body: ``},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "Unhandled"},
		},
		{
			name: "raw text error", post: post{path: "ID/error", body: "segfault in libfoo\n"},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "Unhandled", Message: "segfault in libfoo"},
		},
		{
			name: "streamed response failed midway",
			post: post{path: "ID/response", body: `partial`, chunked: true, trailer: http.Header{
				hdrErrorType: {"Runtime.StreamError"},
				hdrErrorBody: {base64.StdEncoding.EncodeToString([]byte(`{"errorType":"Runtime.StreamError","errorMessage":"eof"}`))},
			}},
			wantStatus: 202, wantErr: &ebb.HandlerError{Type: "Runtime.StreamError", Message: "eof"},
		},
		{
			name: "body at the limit", max: 8, post: post{path: "ID/response", body: `"123456"`},
			wantStatus: 202, wantBody: `"123456"`,
		},
		{
			name: "too large with length", max: 8, post: post{path: "ID/response", body: `"1234567"`},
			wantStatus: 413, wantType: "RequestEntityTooLarge",
			wantErr: &ebb.HandlerError{Type: "Function.ResponseSizeTooLarge", Message: "Response payload size exceeded maximum allowed payload size (8 bytes)."},
		},
		{
			name: "too large chunked", max: 8, post: post{path: "ID/response", body: `"1234567"`, chunked: true},
			wantStatus: 413, wantType: "RequestEntityTooLarge",
			wantErr: &ebb.HandlerError{Type: "Function.ResponseSizeTooLarge", Message: "Response payload size exceeded maximum allowed payload size (8 bytes)."},
		},
		{
			name: "too large error document", max: 8, post: post{path: "ID/error", body: `{"errorType":"E","errorMessage":"long"}`},
			wantStatus: 413, wantType: "RequestEntityTooLarge",
			wantErr: &ebb.HandlerError{Type: "Function.ResponseSizeTooLarge", Message: "Response payload size exceeded maximum allowed payload size (8 bytes)."},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{MaxResponseBytes: tc.max})
			rt := newRawRuntime(t, s)
			res := invokeAsync(invokeCtx(t), s, Request{ID: "ID"})
			rt.next()
			var body io.Reader = strings.NewReader(tc.post.body)
			if tc.post.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			r, err := rt.do(invokeCtx(t), http.MethodPost, invokePrefix+tc.post.path, body, tc.post.hdr, tc.post.trailer)
			if err != nil {
				t.Fatalf("POST: %v", err)
			}
			if r.status != tc.wantStatus {
				t.Errorf("status = %d %s, want %d", r.status, r.body, tc.wantStatus)
			}
			if tc.wantType != "" {
				if typ := errorDoc(t, r); typ != tc.wantType {
					t.Errorf("errorType = %q, want %q", typ, tc.wantType)
				}
			}
			got := <-res
			if tc.wantErr == nil {
				if got.err != nil || string(got.body) != tc.wantBody {
					t.Errorf("Invoke = %q, %v; want %q, nil", got.body, got.err, tc.wantBody)
				}
				return
			}
			var he *ebb.HandlerError
			if !errors.As(got.err, &he) {
				t.Fatalf("Invoke error = %v (%T), want *ebb.HandlerError", got.err, got.err)
			}
			if !reflect.DeepEqual(he, tc.wantErr) {
				t.Errorf("HandlerError = %#v, want %#v", he, tc.wantErr)
			}
			if got.body != nil {
				t.Errorf("Invoke body = %q alongside an error, want nil", got.body)
			}
		})
	}
}

func TestBadRuntimeRequests(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	res := invokeAsync(invokeCtx(t), s, Request{ID: "live"})
	rt.next()
	queued := invokeAsync(invokeCtx(t), s, Request{ID: "queued"})
	waitState(t, s, "queued", stateQueued)

	cases := []struct {
		name, method, path string
		wantStatus         int
		wantType           string
		wantAllow          string
	}{
		{"unknown id", "POST", invokePrefix + "nope/response", 400, "InvalidRequestID", ""},
		{"queued id not yet handed out", "POST", invokePrefix + "queued/response", 400, "InvalidRequestID", ""},
		{"unknown verb", "POST", invokePrefix + "live/finish", 404, "NotFound", ""},
		{"no id", "POST", invokePrefix + "/response", 404, "NotFound", ""},
		{"other api version", "GET", "/2020-01-01/runtime/invocation/next", 404, "NotFound", ""},
		{"extension api", "POST", "/2020-01-01/extension/register", 404, "NotFound", ""},
		{"root", "GET", "/", 404, "NotFound", ""},
		{"POST next", "POST", nextPath, 405, "MethodNotAllowed", "GET"},
		{"GET response", "GET", invokePrefix + "live/response", 405, "MethodNotAllowed", "POST"},
		{"PUT init error", "PUT", initErrorPath, 405, "MethodNotAllowed", "POST"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rt.mustDo(tc.method, tc.path, `{}`, nil)
			if r.status != tc.wantStatus {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, r.status, tc.wantStatus)
			}
			if typ := errorDoc(t, r); typ != tc.wantType {
				t.Errorf("errorType = %q, want %q", typ, tc.wantType)
			}
			if got := r.header.Get("Allow"); got != tc.wantAllow {
				t.Errorf("Allow = %q, want %q", got, tc.wantAllow)
			}
		})
	}

	// None of that disturbed the live invocation.
	if r := rt.mustDo("POST", invokePrefix+"live/response", `1`, nil); r.status != 202 {
		t.Fatalf("POST live response = %d, want 202", r.status)
	}
	if got := <-res; got.err != nil || string(got.body) != "1" {
		t.Errorf("Invoke = %q, %v; want 1, nil", got.body, got.err)
	}
	for _, verb := range []string{"response", "error"} {
		r := rt.mustDo("POST", invokePrefix+"live/"+verb, `2`, nil)
		if r.status != 400 || errorDoc(t, r) != "InvalidRequestID" {
			t.Errorf("POST %s after completion = %d %s, want 400 InvalidRequestID", verb, r.status, r.body)
		}
	}
	rt.next()
	rt.mustDo("POST", invokePrefix+"queued/response", `3`, nil)
	if got := <-queued; got.err != nil || string(got.body) != "3" {
		t.Errorf("queued Invoke = %q, %v; want 3, nil", got.body, got.err)
	}
}

func TestLateResponseRefused(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	res := invokeAsync(ctx, s, Request{ID: "late"})
	rt.next()
	cancel()
	if got := <-res; !errors.Is(got.err, context.Canceled) {
		t.Fatalf("Invoke = %v, want context.Canceled", got.err)
	}
	r := rt.mustDo("POST", invokePrefix+"late/response", `1`, nil)
	if r.status != 400 || errorDoc(t, r) != "InvalidRequestID" {
		t.Errorf("late response = %d %s, want 400 InvalidRequestID", r.status, r.body)
	}
}

func TestAbandonedQueuedInvocationIsNotHandedOut(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	res := invokeAsync(ctx, s, Request{ID: "gone"})
	waitState(t, s, "gone", stateQueued)
	cancel()
	<-res
	kept := invokeAsync(invokeCtx(t), s, Request{ID: "kept"})
	if r := rt.next(); r.header.Get(hdrRequestID) != "kept" {
		t.Errorf("next handed out %q, want kept", r.header.Get(hdrRequestID))
	}
	rt.mustDo("POST", invokePrefix+"kept/response", `1`, nil)
	<-kept
}

func TestDroppedPollDoesNotLoseInvocation(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	polled := make(chan error, 1)
	go func() {
		_, err := rt.do(ctx, http.MethodGet, nextPath, nil, nil, nil)
		polled <- err
	}()
	// Wait until the poll is parked, then hang it up.
	waitPolls(t, s, 1)
	if err := s.WaitReady(invokeCtx(t)); err != nil {
		t.Errorf("WaitReady after the first poll = %v, want nil", err)
	}
	cancel()
	<-polled
	waitPolls(t, s, 0)
	res := invokeAsync(invokeCtx(t), s, Request{ID: "after-drop"})
	if r := rt.next(); r.header.Get(hdrRequestID) != "after-drop" {
		t.Errorf("next handed out %q, want after-drop", r.header.Get(hdrRequestID))
	}
	rt.mustDo("POST", invokePrefix+"after-drop/response", `1`, nil)
	if got := <-res; got.err != nil {
		t.Errorf("Invoke = %v, want nil", got.err)
	}
}

func TestDropPollRequeuesDeliveredCall(t *testing.T) {
	// The race where an invocation lands in a poll's channel just as its
	// connection goes away, driven directly on the state.
	s := newServer(mustValidate(t, Config{FunctionName: "f"}))
	p := pollPool.Get().(*poll)
	s.mu.Lock()
	s.polls.push(p)
	s.mu.Unlock()
	c, err := s.submit(context.Background(), Request{ID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	if c.state != stateSent || len(p.ch) != 1 {
		t.Fatalf("call state %d, poll holds %d calls; want sent and 1", c.state, len(p.ch))
	}
	s.dropPollLocked(p)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	got, err := s.nextCall(ctx)
	if err != nil || got != c {
		t.Errorf("nextCall after the drop = %v, %v; want the requeued call", got, err)
	}
}

// waitPolls waits until n /next polls are parked on s.
func waitPolls(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		got := s.polls.len()
		s.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d polls parked, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func mustValidate(t testing.TB, cfg Config) Config {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestNextAfterFail(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	parked := make(chan rawResponse, 1)
	go func() {
		r, _ := rt.do(invokeCtx(t), http.MethodGet, nextPath, nil, nil, nil)
		parked <- r
	}()
	waitPolls(t, s, 1)
	s.Fail(ebb.ErrOutOfMemory)
	if r := <-parked; r.status != 500 || errorDoc(t, r) != "Runtime.InstanceStopped" {
		t.Errorf("parked poll after Fail = %d %s, want 500", r.status, r.body)
	}
	if r := rt.mustDo("GET", nextPath, "", nil); r.status != 500 {
		t.Errorf("new poll after Fail = %d %s, want 500", r.status, r.body)
	}
}

func TestInitError(t *testing.T) {
	cases := []struct {
		name string
		body string
		hdr  map[string]string
		want ebb.InitError
	}{
		{"document", `{"errorType":"Runtime.ImportModuleError","errorMessage":"Unable to import module 'app': No module named 'x'"}`, nil,
			ebb.InitError{Type: "Runtime.ImportModuleError", Message: "Unable to import module 'app': No module named 'x'"}},
		{"header type", `{"errorMessage":"no handler"}`, map[string]string{hdrErrorType: "Runtime.HandlerNotFound"},
			ebb.InitError{Type: "Runtime.HandlerNotFound", Message: "no handler"}},
		{"empty", ``, nil, ebb.InitError{Type: "Runtime.Unknown"}},
		{"garbage", "\x00\xffnot json", nil, ebb.InitError{Type: "Runtime.Unknown", Message: "\x00\uFFFDnot json"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{})
			rt := newRawRuntime(t, s)
			pending := invokeAsync(invokeCtx(t), s, Request{ID: "waiting"})
			waitState(t, s, "waiting", stateQueued)
			r := rt.mustDo("POST", initErrorPath, tc.body, tc.hdr)
			if r.status != 202 {
				t.Errorf("POST init/error = %d %s, want 202", r.status, r.body)
			}
			err := s.WaitReady(invokeCtx(t))
			var ie *ebb.InitError
			if !errors.As(err, &ie) {
				t.Fatalf("WaitReady = %v (%T), want *ebb.InitError", err, err)
			}
			if *ie != tc.want {
				t.Errorf("InitError = %#v, want %#v", *ie, tc.want)
			}
			if got := <-pending; !errors.As(got.err, &ie) {
				t.Errorf("waiting Invoke = %v, want the *ebb.InitError", got.err)
			}
		})
	}
}

func TestParseHandlerErrorNeverFails(t *testing.T) {
	cases := []struct {
		body string
		want ebb.HandlerError
	}{
		{`{"errorType":"A","errorMessage":"b","stackTrace":"l1\nl2\n"}`, ebb.HandlerError{Type: "A", Message: "b", Trace: []string{"l1", "l2"}}},
		{`{"errorType":"A","stackTrace":[1,{"x":2},"s"]}`, ebb.HandlerError{Type: "A", Trace: []string{"1", `{"x":2}`, "s"}}},
		{`{"errorType":"A","stackTrace":{"not":"a list"}}`, ebb.HandlerError{Type: "A"}},
		{`{"errorType":7}`, ebb.HandlerError{Type: "fallback", Message: `{"errorType":7}`}},
		{`[]`, ebb.HandlerError{Type: "fallback", Message: "[]"}},
		{strings.Repeat("z", 5000), ebb.HandlerError{Type: "fallback", Message: strings.Repeat("z", maxErrorMessageBytes)}},
	}
	for i, tc := range cases {
		got := parseHandlerError([]byte(tc.body), "", "fallback")
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("case %d: parseHandlerError(%.40q) = %#v, want %#v", i, tc.body, *got, tc.want)
		}
	}
}

func TestFIFO(t *testing.T) {
	var q fifo[int]
	var want []int
	for i := range 20 {
		q.push(i)
		want = append(want, i)
		if i%3 == 0 {
			v, _ := q.pop()
			if v != want[0] {
				t.Fatalf("pop = %d, want %d", v, want[0])
			}
			want = want[1:]
		}
	}
	q.pushFront(-1)
	want = append([]int{-1}, want...)
	if !q.remove(10) || q.remove(99) {
		t.Fatalf("remove(10) should succeed and remove(99) fail")
	}
	for i, v := range want {
		if v == 10 {
			want = append(want[:i:i], want[i+1:]...)
			break
		}
	}
	var got []int
	for {
		v, ok := q.pop()
		if !ok {
			break
		}
		got = append(got, v)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("drained %v, want %v", got, want)
	}
}

// TestHeaderValuesAreSafe checks that caller-supplied header values cannot
// split the response to the runtime.
func TestHeaderValuesAreSafe(t *testing.T) {
	s := startServer(t, Config{})
	rt := newRawRuntime(t, s)
	res := invokeAsync(invokeCtx(t), s, Request{ID: "h", TraceID: "a\r\nX-Injected: 1", ClientContext: "{\n}"})
	r := rt.next()
	if r.header.Get("X-Injected") != "" {
		t.Errorf("a header value injected a header")
	}
	if got := r.header.Get(hdrRequestID); got != "h" {
		t.Errorf("request id = %q, want h", got)
	}
	rt.mustDo("POST", invokePrefix+"h/response", strconv.Quote("ok"), nil)
	if got := <-res; !bytes.Equal(got.body, []byte(`"ok"`)) {
		t.Errorf("Invoke = %q, %v", got.body, got.err)
	}
}
