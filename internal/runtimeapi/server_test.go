package runtimeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

func invokeCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEchoRoundTrip(t *testing.T) {
	s := startServer(t, Config{})
	startEcho(t, s)
	big := `"` + strings.Repeat("a", 1<<20) + `"`
	cases := []struct {
		name    string
		payload string
		want    string
	}{
		{"object", `{"a":1,"b":[true,null,"x"]}`, `{"a":1,"b":[true,null,"x"]}`},
		{"string", `"hello"`, `"hello"`},
		{"number", `42`, `42`},
		{"unicode", `{"k":"żółw 🐢"}`, `{"k":"żółw 🐢"}`},
		{"empty payload is an empty object", ``, `{}`},
		{"one MiB", big, big},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Invoke(invokeCtx(t), Request{ID: fmt.Sprintf("req-%d", i), Payload: []byte(tc.payload)})
			if err != nil {
				t.Fatalf("Invoke: %v", err)
			}
			if string(got) != tc.want {
				t.Errorf("Invoke = %.100q, want %.100q", got, tc.want)
			}
		})
	}
	s.mu.Lock()
	left := len(s.calls)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("calls in flight after all invocations returned: %d, want 0", left)
	}
}

func TestHandlerError(t *testing.T) {
	s := startServer(t, Config{})
	startEcho(t, s)
	_, err := s.Invoke(invokeCtx(t), Request{ID: "e1", Payload: []byte(`{"error":"bad input: x < 0"}`)})
	var he *ebb.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Invoke error = %v (%T), want *ebb.HandlerError", err, err)
	}
	if he.Type != "EchoError" || he.Message != "bad input: x < 0" {
		t.Errorf("HandlerError = {%q, %q}, want {%q, %q}", he.Type, he.Message, "EchoError", "bad input: x < 0")
	}
	// The function goes on serving after a returned error.
	got, err := s.Invoke(invokeCtx(t), Request{ID: "e2", Payload: []byte(`"still here"`)})
	if err != nil || string(got) != `"still here"` {
		t.Errorf("Invoke after error = %q, %v; want %q, nil", got, err, `"still here"`)
	}
}

func TestHandlerPanicThenCrash(t *testing.T) {
	s := startServer(t, Config{})
	p := startEcho(t, s)
	_, err := s.Invoke(invokeCtx(t), Request{ID: "p1", Payload: []byte(`{"panic":"boom"}`)})
	var he *ebb.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Invoke error = %v (%T), want *ebb.HandlerError", err, err)
	}
	if he.Type != "string" || he.Message != "boom" {
		t.Errorf("HandlerError = {%q, %q}, want {%q, %q}", he.Type, he.Message, "string", "boom")
	}
	if len(he.Trace) == 0 || !strings.Contains(strings.Join(he.Trace, "\n"), "main.go") {
		t.Errorf("stack trace = %q, want frames naming main.go", he.Trace)
	}
	// aws-lambda-go exits after a panic; the watcher then fails the server.
	<-p.exited
	if _, err := s.Invoke(invokeCtx(t), Request{ID: "p2", Payload: []byte(`1`)}); !errors.Is(err, ebb.ErrCrashed) {
		t.Errorf("Invoke after the process exited: error = %v, want ebb.ErrCrashed", err)
	}
}

func TestContextSeenByHandler(t *testing.T) {
	s := startServer(t, Config{FunctionName: "ctx-fn", FunctionVersion: "7", Region: "eu-local-1", AccountID: "123456789012"})
	startEcho(t, s)
	deadline := time.Now().Add(42 * time.Second).Truncate(time.Millisecond)
	req := Request{
		ID:              "8476a536-e9f4-11e8-9739-2dfe598c3fcd",
		Payload:         []byte(`{"context":true}`),
		Deadline:        deadline,
		TraceID:         "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
		ClientContext:   `{"env":{"locale":"pl"}}`,
		CognitoIdentity: `{"CognitoIdentityID":"eu:id-1"}`,
	}
	body, err := s.Invoke(invokeCtx(t), req)
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	var got struct {
		RequestID   string            `json:"request_id"`
		FunctionARN string            `json:"function_arn"`
		DeadlineMS  int64             `json:"deadline_ms"`
		TraceID     string            `json:"trace_id"`
		ClientEnv   map[string]string `json:"client_env"`
		IdentityID  string            `json:"identity_id"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	wantARN := "arn:aws:lambda:eu-local-1:123456789012:function:ctx-fn:7"
	if s.FunctionARN() != wantARN {
		t.Errorf("FunctionARN() = %q, want %q", s.FunctionARN(), wantARN)
	}
	checks := []struct{ field, got, want string }{
		{"request id", got.RequestID, req.ID},
		{"function arn", got.FunctionARN, wantARN},
		{"deadline", fmt.Sprint(got.DeadlineMS), fmt.Sprint(deadline.UnixMilli())},
		{"trace id", got.TraceID, req.TraceID},
		{"client context env", got.ClientEnv["locale"], "pl"},
		{"cognito identity", got.IdentityID, "eu:id-1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s seen by handler = %q, want %q", c.field, c.got, c.want)
		}
	}
}

func TestDefaultDeadlineAndTrace(t *testing.T) {
	s := startServer(t, Config{})
	startEcho(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	body, err := s.Invoke(ctx, Request{ID: "d1", Payload: []byte(`{"context":true}`)})
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	var got struct {
		DeadlineMS int64  `json:"deadline_ms"`
		TraceID    string `json:"trace_id"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	if got.DeadlineMS != want.UnixMilli() {
		t.Errorf("deadline without Request.Deadline = %d, want ctx deadline %d", got.DeadlineMS, want.UnixMilli())
	}
	if !strings.HasPrefix(got.TraceID, "Root=1-") || len(got.TraceID) != len("Root=1-")+8+1+24+len(";Sampled=0") {
		t.Errorf("generated trace id = %q, want an X-Ray Root=1-xxxxxxxx-<24 hex>;Sampled=0", got.TraceID)
	}
}

func TestConcurrentInvocations(t *testing.T) {
	const perServer = 4
	// Two instances of the function, each polling from four goroutines.
	servers := []*Server{startServer(t, Config{}), startServer(t, Config{})}
	for _, s := range servers {
		startEcho(t, s, fmt.Sprintf("AWS_LAMBDA_MAX_CONCURRENCY=%d", perServer))
	}
	// Each server's four invocations meet at a barrier: none can finish
	// until all four are running at once, so served one at a time they
	// would fail at their deadline.
	var wg sync.WaitGroup
	errs := make(chan error, 2*perServer)
	for si, s := range servers {
		barrier := t.TempDir()
		for i := range perServer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("s%d-r%d", si, i)
				payload := fmt.Sprintf(`{"barrier":%q,"parties":%d,"id":%q}`, barrier, perServer, id)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				got, err := s.Invoke(ctx, Request{ID: id, Payload: []byte(payload)})
				switch {
				case err != nil:
					errs <- fmt.Errorf("Invoke %s: %w", id, err)
				case string(got) != payload:
					errs <- fmt.Errorf("Invoke %s = %s, want %s", id, got, payload)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestManyInvocationsRouteToTheirCallers(t *testing.T) {
	s := startServer(t, Config{})
	startEcho(t, s, "AWS_LAMBDA_MAX_CONCURRENCY=3")
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				id := fmt.Sprintf("g%d-%d", g, i)
				want := fmt.Sprintf(`{"id":%q}`, id)
				got, err := s.Invoke(invokeCtx(t), Request{ID: id, Payload: []byte(want)})
				if err != nil || string(got) != want {
					errs <- fmt.Errorf("Invoke %s = %s, %v; want %s, nil", id, got, err, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestInvokeContextTimeout(t *testing.T) {
	s := startServer(t, Config{})
	p := startEcho(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Invoke(ctx, Request{ID: "slow", Payload: []byte(`{"sleep_ms":400}`)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Invoke error = %v, want context.DeadlineExceeded", err)
	}
	s.mu.Lock()
	_, still := s.calls["slow"]
	s.mu.Unlock()
	if still {
		t.Errorf("timed-out invocation is still registered")
	}
	// The late response is refused, and aws-lambda-go exits on a refused
	// response, as a Lambda runtime does when its sandbox is reset.
	<-p.exited
	if !strings.Contains(p.out.String(), "400") {
		t.Errorf("runtime output does not mention the refused late response:\n%s", p.out.String())
	}
}

func TestFailWhilePending(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"crashed", ebb.ErrCrashed},
		{"out of memory", ebb.ErrOutOfMemory},
		{"nil means crashed", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{})
			startEcho(t, s)
			started := make(chan error, 1)
			go func() {
				_, err := s.Invoke(invokeCtx(t), Request{ID: "long", Payload: []byte(`{"sleep_ms":5000}`)})
				started <- err
			}()
			waitState(t, s, "long", stateSent)
			s.Fail(tc.err)
			want := tc.err
			if want == nil {
				want = ebb.ErrCrashed
			}
			if err := <-started; !errors.Is(err, want) {
				t.Errorf("pending Invoke error = %v, want %v", err, want)
			}
			if _, err := s.Invoke(invokeCtx(t), Request{ID: "after", Payload: []byte(`1`)}); !errors.Is(err, want) {
				t.Errorf("later Invoke error = %v, want %v", err, want)
			}
			// Fail after readiness leaves WaitReady's answer alone.
			if err := s.WaitReady(invokeCtx(t)); err != nil {
				t.Errorf("WaitReady after ready then Fail = %v, want nil", err)
			}
		})
	}
}

// waitState waits until invocation id reaches state: the one fact a test
// cannot learn from the outside without racing the runtime.
func waitState(t *testing.T, s *Server, id string, want callState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		c := s.calls[id]
		ok := c != nil && c.state == want
		s.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("invocation %s never reached state %d", id, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseFailsPending(t *testing.T) {
	s, err := New(Config{FunctionName: "f"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Invoke(invokeCtx(t), Request{ID: "queued", Payload: []byte(`1`)})
		done <- err
	}()
	waitState(t, s, "queued", stateQueued)
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-done; !errors.Is(err, ebb.ErrClosed) {
		t.Errorf("pending Invoke after Close = %v, want ebb.ErrClosed", err)
	}
	if err := s.WaitReady(invokeCtx(t)); !errors.Is(err, ebb.ErrClosed) {
		t.Errorf("WaitReady after Close = %v, want ebb.ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWaitReadyContext(t *testing.T) {
	s := startServer(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady with no runtime = %v, want context.DeadlineExceeded", err)
	}
}

func TestInvokeRejectsBadRequests(t *testing.T) {
	s := startServer(t, Config{})
	cases := []struct {
		name string
		id   string
	}{
		{"empty id", ""},
		{"slash", "a/b"},
		{"query", "a?b"},
		{"space", "a b"},
		{"newline", "a\nb"},
		{"percent", "a%2F"},
		{"too long", strings.Repeat("x", maxRequestIDBytes+1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Invoke(invokeCtx(t), Request{ID: tc.id}); err == nil {
				t.Errorf("Invoke with id %q succeeded, want an error", tc.id)
			}
		})
	}
	t.Run("duplicate id in flight", func(t *testing.T) {
		go func() { _, _ = s.Invoke(invokeCtx(t), Request{ID: "dup"}) }()
		waitState(t, s, "dup", stateQueued)
		_, err := s.Invoke(invokeCtx(t), Request{ID: "dup"})
		if err == nil || !strings.Contains(err.Error(), "already in flight") {
			t.Errorf("second Invoke with the same id = %v, want an 'already in flight' error", err)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Invoke(ctx, Request{ID: "c"}); !errors.Is(err, context.Canceled) {
			t.Errorf("Invoke with a cancelled ctx = %v, want context.Canceled", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		wantErr bool
		wantARN string
	}{
		{"defaults", Config{FunctionName: "f"}, false, "arn:aws:lambda:local:000000000000:function:f:$LATEST"},
		{"all set", Config{FunctionName: "f", FunctionVersion: "3", Region: "r", AccountID: "1"}, false, "arn:aws:lambda:r:1:function:f:3"},
		{"no name", Config{}, true, ""},
		{"colon in name", Config{FunctionName: "a:b"}, true, ""},
		{"space in version", Config{FunctionName: "f", FunctionVersion: "1 2"}, true, ""},
		{"negative max response", Config{FunctionName: "f", MaxResponseBytes: -1}, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				if _, err := New(tc.cfg); err == nil {
					t.Errorf("New accepted a config that Validate refuses")
				}
				return
			}
			if cfg.MaxResponseBytes != DefaultMaxResponseBytes && tc.cfg.MaxResponseBytes == 0 {
				t.Errorf("MaxResponseBytes default = %d, want %d", cfg.MaxResponseBytes, DefaultMaxResponseBytes)
			}
			s := startServer(t, tc.cfg)
			if s.FunctionARN() != tc.wantARN {
				t.Errorf("FunctionARN() = %q, want %q", s.FunctionARN(), tc.wantARN)
			}
			if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
				t.Errorf("Addr() = %q, want 127.0.0.1:PORT", s.Addr())
			}
		})
	}
}

func TestResponseTooLargeFromFunction(t *testing.T) {
	s := startServer(t, Config{MaxResponseBytes: 64 << 10})
	p := startEcho(t, s)
	_, err := s.Invoke(invokeCtx(t), Request{ID: "big", Payload: []byte(`{"big":100000}`)})
	var he *ebb.HandlerError
	if !errors.As(err, &he) || he.Type != "Function.ResponseSizeTooLarge" {
		t.Fatalf("Invoke error = %v, want HandlerError Function.ResponseSizeTooLarge", err)
	}
	// aws-lambda-go treats the 413 as fatal, as in Lambda.
	<-p.exited
	if !bytes.Contains([]byte(p.out.String()), []byte("413")) {
		t.Errorf("runtime output does not mention the 413:\n%s", p.out.String())
	}
}
