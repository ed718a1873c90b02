package pyruntime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/runtimeapi"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

// instance is a Python function process attached to its Runtime API server.
type instance struct {
	srv            *runtimeapi.Server
	cmd            *exec.Cmd
	stdout, stderr *ebbtest.Buffer
	exited         chan struct{} // closed once the process has been waited for
	exitErr        error         // valid once exited is closed
}

func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(DefaultPython); err != nil {
		t.Skipf("no %s: %v", DefaultPython, err)
	}
}

// start runs handler from a task directory holding files, the way ebb runs a
// python function: the shim, via Command, against a fresh Server. When the
// process exits the server fails with ebb.ErrCrashed, as the instance
// manager would.
func start(t *testing.T, files map[string]string, handler string, cfg runtimeapi.Config) *instance {
	t.Helper()
	return startWith(t, files, handler, cfg)
}

// startWith is start with extra environment variables ("K=V").
func startWith(t *testing.T, files map[string]string, handler string, cfg runtimeapi.Config, env ...string) *instance {
	t.Helper()
	needPython(t)
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shim, err := WriteShim(t.TempDir())
	if err != nil {
		t.Fatalf("WriteShim: %v", err)
	}
	if cfg.FunctionName == "" {
		cfg.FunctionName = "py"
	}
	srv, err := runtimeapi.New(cfg)
	if err != nil {
		t.Fatalf("runtimeapi.New: %v", err)
	}
	t.Cleanup(func() { srv.Close() })

	in := &instance{srv: srv, stdout: &ebbtest.Buffer{}, stderr: &ebbtest.Buffer{}, exited: make(chan struct{})}
	argv := Command("", shim)
	in.cmd = exec.Command(argv[0], argv[1:]...)
	in.cmd.Dir = root
	in.cmd.Env = []string{
		"PATH=/usr/bin:/bin",
		"AWS_LAMBDA_RUNTIME_API=" + srv.Addr(),
		"_HANDLER=" + handler,
		"LAMBDA_TASK_ROOT=" + root,
		"AWS_LAMBDA_FUNCTION_NAME=" + cfg.FunctionName,
		"AWS_LAMBDA_FUNCTION_VERSION=" + cfg.FunctionVersion,
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=512",
	}
	in.cmd.Env = append(in.cmd.Env, env...)
	in.cmd.Stdout, in.cmd.Stderr = in.stdout, in.stderr
	if err := in.cmd.Start(); err != nil {
		t.Fatalf("start python: %v", err)
	}
	go func() {
		defer close(in.exited)
		in.exitErr = in.cmd.Wait()
		srv.Fail(ebb.ErrCrashed)
	}()
	t.Cleanup(func() {
		_ = in.cmd.Process.Kill()
		<-in.exited
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", in.stdout.String(), in.stderr.String())
		}
	})
	return in
}

func timeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startReady is start plus WaitReady.
func startReady(t *testing.T, files map[string]string, handler string, cfg runtimeapi.Config) *instance {
	t.Helper()
	in := start(t, files, handler, cfg)
	if err := in.srv.WaitReady(timeout(t)); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	return in
}

func (in *instance) invoke(t *testing.T, id, payload string) ([]byte, error) {
	t.Helper()
	return in.srv.Invoke(timeout(t), runtimeapi.Request{ID: id, Payload: []byte(payload)})
}

const appPy = `
import decimal

def handler(event, context):
    op = event.get("op") if isinstance(event, dict) else None
    if op == "raise":
        raise ValueError("bad value: %s" % event.get("v"))
    if op == "set":
        return {1, 2}
    if op == "none":
        return None
    if op == "decimal":
        return {"d": decimal.Decimal("1.5"), "i": decimal.Decimal("3")}
    if op == "print":
        print("hello from the handler", event.get("v"))
        return "printed"
    if op == "big":
        return "x" * event["n"]
    return event
`

func TestResultRoundTrip(t *testing.T) {
	in := startReady(t, map[string]string{"app.py": appPy}, "app.handler", runtimeapi.Config{})
	cases := []struct {
		name, payload, want string
	}{
		{"object", `{"a":[1,2.5,"x",null,true]}`, `{"a":[1,2.5,"x",null,true]}`},
		{"string", `"text"`, `"text"`},
		{"list", `[1,[2,[3]]]`, `[1,[2,[3]]]`},
		{"unicode", `{"k":"żółw 🐢"}`, `{"k":"żółw 🐢"}`},
		{"None is null", `{"op":"none"}`, `null`},
		{"decimal", `{"op":"decimal"}`, `{"d":1.5,"i":3}`},
		{"empty event", ``, `{}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := in.invoke(t, "r-"+strings.ReplaceAll(tc.name, " ", "-"), tc.payload)
			if err != nil {
				t.Fatalf("Invoke: %v", err)
			}
			if string(got) != tc.want {
				t.Errorf("Invoke = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestContextFields(t *testing.T) {
	files := map[string]string{"ctxapp.py": `
import os

def handler(event, context):
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "has_log_stream": bool(context.log_stream_name),
        "identity_id": context.identity.cognito_identity_id,
        "client_env": context.client_context.env if context.client_context else None,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "trace_env": os.environ.get("_X_AMZN_TRACE_ID"),
        "trace_context": context.trace_context,
    }
`}
	in := startReady(t, files, "ctxapp.handler", runtimeapi.Config{FunctionName: "churn", FunctionVersion: "3"})
	req := runtimeapi.Request{
		ID:              "5f2e0c1a-req",
		Payload:         []byte(`{}`),
		Deadline:        time.Now().Add(20 * time.Second),
		TraceID:         "Root=1-00000001-000000000000000000000001;Sampled=0",
		ClientContext:   `{"env":{"locale":"pl"}}`,
		CognitoIdentity: `{"cognitoIdentityId":"id-7","cognitoIdentityPoolId":"pool"}`,
		TraceParent:     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		TraceState:      "k=v",
	}
	body, err := in.srv.Invoke(timeout(t), req)
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	want := map[string]any{
		"aws_request_id":       req.ID,
		"function_name":        "churn",
		"function_version":     "3",
		"invoked_function_arn": in.srv.FunctionARN(),
		"memory_limit_in_mb":   float64(512),
		"log_group_name":       "/aws/lambda/churn",
		"has_log_stream":       true,
		"identity_id":          "id-7",
		"client_env":           map[string]any{"locale": "pl"},
		"trace_env":            req.TraceID,
		"trace_context":        map[string]any{"traceparent": req.TraceParent, "tracestate": req.TraceState},
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("context %s = %#v, want %#v", k, got[k], w)
		}
	}
	// The deadline is 20 s out; allow for a slow machine but not for a
	// wrong unit or a missing header (0).
	if ms, _ := got["remaining_ms"].(float64); ms < 10_000 || ms > 20_000 {
		t.Errorf("get_remaining_time_in_millis() = %v, want about 20000", got["remaining_ms"])
	}

	// Untraced: an empty trace_context, not the last invocation's.
	body, err = in.srv.Invoke(timeout(t), runtimeapi.Request{ID: "untraced", Payload: []byte(`{}`)})
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	got = nil
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if tc, ok := got["trace_context"].(map[string]any); !ok || len(tc) != 0 {
		t.Errorf("untraced context.trace_context = %#v, want {}", got["trace_context"])
	}
}

func TestHandlerException(t *testing.T) {
	in := startReady(t, map[string]string{"app.py": appPy}, "app.handler", runtimeapi.Config{})
	_, err := in.invoke(t, "x1", `{"op":"raise","v":7}`)
	var he *ebb.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("Invoke error = %v (%T), want *ebb.HandlerError", err, err)
	}
	if he.Type != "ValueError" || he.Message != "bad value: 7" {
		t.Errorf("HandlerError = {%q, %q}, want {ValueError, bad value: 7}", he.Type, he.Message)
	}
	trace := strings.Join(he.Trace, "")
	if !strings.Contains(trace, "app.py") || strings.Contains(trace, ShimName) {
		t.Errorf("stack trace = %q, want the user's frames only", he.Trace)
	}
	// The log line may reach the pipe after the error was posted.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(in.stderr.String(), "[ERROR] ValueError: bad value: 7"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("stderr lacks the error line:\n%s", in.stderr.String())
			break
		}
	}
	// The instance keeps serving.
	if got, err := in.invoke(t, "x2", `"ok"`); err != nil || string(got) != `"ok"` {
		t.Errorf("Invoke after an exception = %s, %v; want \"ok\", nil", got, err)
	}
}

func TestModuleScopeRunsOnce(t *testing.T) {
	files := map[string]string{"counter.py": `
imports = 0
imports += 1
calls = 0

def handler(event, context):
    global calls
    calls += 1
    return {"imports": imports, "calls": calls}
`}
	in := startReady(t, files, "counter.handler", runtimeapi.Config{})
	var last []byte
	for i, id := range []string{"a", "b", "c"} {
		got, err := in.invoke(t, id, `{}`)
		if err != nil {
			t.Fatalf("Invoke %d: %v", i, err)
		}
		last = got
	}
	if want := `{"imports":1,"calls":3}`; string(last) != want {
		t.Errorf("after 3 invocations = %s, want %s", last, want)
	}
}

func TestInitErrors(t *testing.T) {
	cases := []struct {
		name     string
		files    map[string]string
		handler  string
		wantType string
		wantMsg  string // substring
	}{
		{"missing module", map[string]string{}, "app.handler",
			"Runtime.ImportModuleError", "Unable to import module 'app': No module named 'app'"},
		{"missing dependency", map[string]string{"app.py": "import notinstalled\n"}, "app.handler",
			"Runtime.ImportModuleError", "Unable to import module 'app': No module named 'notinstalled'"},
		{"exception in module scope", map[string]string{"app.py": "raise RuntimeError('no model file')\n"}, "app.handler",
			"Runtime.ImportModuleError", "Unable to import module 'app': no model file"},
		{"exit in module scope", map[string]string{"app.py": "import sys\nsys.exit(3)\n"}, "app.handler",
			"Runtime.ImportModuleError", "Unable to import module 'app': 3"},
		{"syntax error", map[string]string{"app.py": "def handler(event, context)\n    return 1\n"}, "app.handler",
			"Runtime.UserCodeSyntaxError", "Syntax error in module 'app'"},
		{"missing handler", map[string]string{"app.py": "def other(e, c):\n    return 1\n"}, "app.handler",
			"Runtime.HandlerNotFound", "Handler 'handler' missing on module 'app'"},
		{"handler not callable", map[string]string{"app.py": "handler = 42\n"}, "app.handler",
			"Runtime.HandlerNotFound", "Handler 'handler' on module 'app' is not callable"},
		{"malformed handler name", map[string]string{"app.py": ""}, "handler",
			"Runtime.MalformedHandlerName", "Bad handler 'handler'"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := start(t, tc.files, tc.handler, runtimeapi.Config{})
			err := in.srv.WaitReady(timeout(t))
			var ie *ebb.InitError
			if !errors.As(err, &ie) {
				t.Fatalf("WaitReady = %v (%T), want *ebb.InitError", err, err)
			}
			if ie.Type != tc.wantType || !strings.Contains(ie.Message, tc.wantMsg) {
				t.Errorf("InitError = {%q, %q}, want {%q, containing %q}", ie.Type, ie.Message, tc.wantType, tc.wantMsg)
			}
			<-in.exited
			if in.exitErr == nil {
				t.Errorf("process exited 0 after an init error, want non-zero")
			}
			// The log shows the error and the user's frames, not the runtime's.
			stderr := in.stderr.String()
			if !strings.Contains(stderr, "[ERROR] "+tc.wantType+": ") || strings.Contains(stderr, "importlib") {
				t.Errorf("stderr = %q, want an [ERROR] %s line and no importlib frames", stderr, tc.wantType)
			}
		})
	}
}

func TestMarshalAndUnmarshalErrors(t *testing.T) {
	in := startReady(t, map[string]string{"app.py": appPy}, "app.handler", runtimeapi.Config{})
	cases := []struct {
		name, payload, wantType, wantMsg string
	}{
		{"set result", `{"op":"set"}`, "Runtime.MarshalError", "Unable to marshal response: Object of type set is not JSON serializable"},
		{"malformed event", `{"op":`, "Runtime.UnmarshalError", "Unable to unmarshal input"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := in.invoke(t, "m"+string(rune('0'+i)), tc.payload)
			var he *ebb.HandlerError
			if !errors.As(err, &he) {
				t.Fatalf("Invoke error = %v (%T), want *ebb.HandlerError", err, err)
			}
			if he.Type != tc.wantType || !strings.Contains(he.Message, tc.wantMsg) {
				t.Errorf("HandlerError = {%q, %q}, want {%q, containing %q}", he.Type, he.Message, tc.wantType, tc.wantMsg)
			}
		})
	}
}

func TestPrintReachesStdout(t *testing.T) {
	in := startReady(t, map[string]string{"app.py": appPy}, "app.handler", runtimeapi.Config{})
	if _, err := in.invoke(t, "p1", `{"op":"print","v":"abc"}`); err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	// -u means the line is written before the response is posted, but it
	// reaches the buffer through a pipe and a copying goroutine, which may
	// not have run yet: wait for it.
	if !in.stdout.WaitFor("hello from the handler abc\n", 30*time.Second) {
		t.Errorf("stdout = %q, want the handler's print", in.stdout.String())
	}
}

func TestVendorAndPackages(t *testing.T) {
	files := map[string]string{
		"pkg/__init__.py":        "",
		"pkg/mod.py":             "import helper\nimport extra\n\ndef run(event, context):\n    return helper.NAME + extra.NAME\n",
		"vendor/helper.py":       "NAME = 'vendored'\n",
		"site-packages/extra.py": "NAME = '+site'\n",
	}
	in := startReady(t, files, "pkg.mod.run", runtimeapi.Config{})
	got, err := in.invoke(t, "v1", `{}`)
	if err != nil || string(got) != `"vendored+site"` {
		t.Errorf("Invoke = %s, %v; want \"vendored+site\", nil", got, err)
	}
}

// TestShimDoesNotShadowUserModules checks that the shim's own directory is
// not on sys.path: a user module named like the shim is the user's, and
// without one the shim cannot be imported by accident.
func TestShimDoesNotShadowUserModules(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"user module named bootstrap", map[string]string{
			"bootstrap.py": "def handler(event, context):\n    return 'user bootstrap'\n",
			"app.py":       "import bootstrap\nhandler = bootstrap.handler\n",
		}, `"user bootstrap"`},
		{"shim not importable", map[string]string{
			"app.py": "def handler(event, context):\n    try:\n        import bootstrap\n    except ImportError:\n        return 'hidden'\n    return 'visible at ' + bootstrap.__file__\n",
		}, `"hidden"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := startReady(t, tc.files, "app.handler", runtimeapi.Config{})
			if got, err := in.invoke(t, "b1", `{}`); err != nil || string(got) != tc.want {
				t.Errorf("Invoke = %s, %v; want %s, nil", got, err, tc.want)
			}
		})
	}
}

func TestSurvivesRefusedResult(t *testing.T) {
	in := startReady(t, map[string]string{"app.py": appPy}, "app.handler", runtimeapi.Config{MaxResponseBytes: 1000})
	_, err := in.invoke(t, "big", `{"op":"big","n":5000}`)
	var he *ebb.HandlerError
	if !errors.As(err, &he) || he.Type != "Function.ResponseSizeTooLarge" {
		t.Fatalf("Invoke error = %v, want HandlerError Function.ResponseSizeTooLarge", err)
	}
	// The 413 closes the connection; the shim reconnects and goes on.
	if got, err := in.invoke(t, "small", `"fine"`); err != nil || string(got) != `"fine"` {
		t.Errorf("Invoke after a refused result = %s, %v; want \"fine\", nil", got, err)
	}
}

func TestWriteShim(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "runtime")
	path, err := WriteShim(dir)
	if err != nil {
		t.Fatalf("WriteShim: %v", err)
	}
	if path != filepath.Join(dir, ShimName) {
		t.Errorf("path = %q, want %q", path, filepath.Join(dir, ShimName))
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, Shim) {
		t.Fatalf("shim file differs from Shim (err %v)", err)
	}
	st1, _ := os.Stat(path)
	// Same content: the file is not rewritten.
	if _, err := WriteShim(dir); err != nil {
		t.Fatalf("second WriteShim: %v", err)
	}
	st2, _ := os.Stat(path)
	if !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("identical shim was rewritten")
	}
	// Other content is replaced.
	if err := os.WriteFile(path, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteShim(dir); err != nil {
		t.Fatalf("WriteShim over a stale file: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, Shim) {
		t.Errorf("stale shim was not replaced")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only the shim (no temp files left)", len(entries))
	}
}

func TestCommand(t *testing.T) {
	cases := []struct {
		python, shim string
		want         []string
	}{
		{"", "/x/bootstrap.py", []string{DefaultPython, "-u", "/x/bootstrap.py"}},
		{"/opt/py/bin/python3.12", "b.py", []string{"/opt/py/bin/python3.12", "-u", "b.py"}},
	}
	for _, tc := range cases {
		if got := Command(tc.python, tc.shim); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Command(%q, %q) = %q, want %q", tc.python, tc.shim, got, tc.want)
		}
	}
}
