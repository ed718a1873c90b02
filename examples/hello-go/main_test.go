package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
)

// asFunctionEnv makes the test binary run main() instead of the tests, so the
// process test exercises the real program without a separate go build.
const asFunctionEnv = "HELLO_GO_AS_FUNCTION"

func TestMain(m *testing.M) {
	if os.Getenv(asFunctionEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestHandle(t *testing.T) {
	tests := []struct {
		name      string
		req       request
		requestID string
		want      response
	}{
		{"named", request{Name: "ada"}, "req-1", response{Message: "hello, ada", RequestID: "req-1"}},
		{"empty name defaults to world", request{}, "req-2", response{Message: "hello, world", RequestID: "req-2"}},
		{"unicode name", request{Name: "Zoë"}, "req-3", response{Message: "hello, Zoë", RequestID: "req-3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: tt.requestID})
			got, err := handle(ctx, tt.req)
			if err != nil {
				t.Fatalf("handle: got error %v, want nil", err)
			}
			if got != tt.want {
				t.Errorf("handle: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHandleWithoutLambdaContext(t *testing.T) {
	got, err := handle(context.Background(), request{Name: "x"})
	if err != nil {
		t.Fatalf("handle: got error %v, want nil", err)
	}
	if want := (response{Message: "hello, x"}); got != want {
		t.Errorf("handle: got %+v, want %+v", got, want)
	}
}

// fakeInvoke is one event the fake Runtime API hands to the function.
type fakeInvoke struct {
	id      string
	payload string
}

// fakeResult is what the function posted back for one invocation.
type fakeResult struct {
	id      string
	isError bool
	body    []byte
}

// newFakeRuntimeAPI serves the part of the Lambda Runtime API that
// aws-lambda-go uses: next, response and error.
func newFakeRuntimeAPI(t *testing.T) (addr string, invokes chan<- fakeInvoke, results <-chan fakeResult) {
	t.Helper()
	in := make(chan fakeInvoke)
	out := make(chan fakeResult, 16)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /2018-06-01/runtime/invocation/next", func(w http.ResponseWriter, r *http.Request) {
		select {
		case inv := <-in:
			w.Header().Set("Lambda-Runtime-Aws-Request-Id", inv.id)
			w.Header().Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(time.Now().Add(30*time.Second).UnixMilli(), 10))
			w.Header().Set("Lambda-Runtime-Invoked-Function-Arn", "arn:ebb:function:hello-go")
			io.WriteString(w, inv.payload)
		case <-r.Context().Done():
		}
	})
	post := func(isError bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			out <- fakeResult{id: r.PathValue("id"), isError: isError, body: body}
			w.WriteHeader(http.StatusAccepted)
		}
	}
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/response", post(false))
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/error", post(true))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), in, out
}

// TestProcessSpeaksRuntimeAPI runs the real program against a fake Runtime
// API, the way ebb's exec runtime starts it, and checks that one process
// serves several invocations, including a malformed event, without dying.
func TestProcessSpeaksRuntimeAPI(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find test binary: %v", err)
	}
	addr, invokes, results := newFakeRuntimeAPI(t)

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), asFunctionEnv+"=1", "AWS_LAMBDA_RUNTIME_API="+addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start function: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})

	tests := []struct {
		name    string
		payload string
		wantErr bool
		want    response
	}{
		{name: "named", payload: `{"name":"ada"}`, want: response{Message: "hello, ada"}},
		{name: "no name", payload: `{}`, want: response{Message: "hello, world"}},
		{name: "malformed event", payload: `{"name":`, wantErr: true},
		{name: "wrong type", payload: `{"name":42}`, wantErr: true},
		{name: "still serving after errors", payload: `{"name":"bob"}`, want: response{Message: "hello, bob"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "req-" + strconv.Itoa(i)
			select {
			case invokes <- fakeInvoke{id: id, payload: tt.payload}:
			case err := <-exited:
				t.Fatalf("function exited before invocation: %v\nstderr:\n%s", err, stderr.String())
			case <-time.After(10 * time.Second):
				t.Fatalf("function never asked for the next invocation\nstderr:\n%s", stderr.String())
			}
			var res fakeResult
			select {
			case res = <-results:
			case err := <-exited:
				t.Fatalf("function exited during invocation: %v\nstderr:\n%s", err, stderr.String())
			case <-time.After(10 * time.Second):
				t.Fatalf("no result for invocation %s\nstderr:\n%s", id, stderr.String())
			}
			if res.id != id {
				t.Errorf("result id: got %q, want %q", res.id, id)
			}
			if res.isError != tt.wantErr {
				t.Fatalf("reported as error: got %v, want %v (body %s)", res.isError, tt.wantErr, res.body)
			}
			if tt.wantErr {
				var e struct {
					ErrorType    string `json:"errorType"`
					ErrorMessage string `json:"errorMessage"`
				}
				if err := json.Unmarshal(res.body, &e); err != nil || e.ErrorMessage == "" {
					t.Errorf("error body: got %s (%v), want a Lambda error document", res.body, err)
				}
				return
			}
			var got response
			if err := json.Unmarshal(res.body, &got); err != nil {
				t.Fatalf("decode response %s: %v", res.body, err)
			}
			want := tt.want
			want.RequestID = id
			if got != want {
				t.Errorf("response: got %+v, want %+v", got, want)
			}
		})
	}
}
