package main

// Issue 11's access control, against a real `ebb serve --require-auth`.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/aws/smithy-go"

	"github.com/ebb-run/ebb/internal/bundle"
)

// echoFn is a python function that prints a marker and answers its event.
func echoFn(name, extra string) map[string]string {
	return map[string]string{
		"ebb.yaml": "name: " + name + "\nruntime: python\nhandler: app.handler\n" + extra,
		"app.py":   "def handler(event, context):\n    print('tail-marker', context.aws_request_id)\n    return event\n",
	}
}

// authServe starts ebb with keys required and reads the admin key it prints.
func authServe(t *testing.T, flags ...string) *server {
	t.Helper()
	s := startServe(t, append([]string{"--require-auth"}, flags...)...)
	m := regexp.MustCompile(`ebb_[0-9a-f]{48}`).FindString(s.out.String())
	if m == "" {
		t.Fatalf("no admin key printed; stdout:\n%s", s.out)
	}
	s.key = m
	return s
}

// cli runs an ebb client command with key.
func (s *server) cli(t *testing.T, key string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url, "EBB_API_KEY="+key)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

type createdKey struct {
	ID              string   `json:"id"`
	Key             string   `json:"key"`
	AccessKeyID     string   `json:"access_key_id"`
	SecretAccessKey string   `json:"secret_access_key"`
	Role            string   `json:"role"`
	Functions       []string `json:"functions"`
	Expires         *string  `json:"expires"`
}

func (s *server) createKey(t *testing.T, args ...string) createdKey {
	t.Helper()
	out, err := s.cli(t, s.key, append([]string{"keys", "create", "--json"}, args...)...)
	if err != nil {
		t.Fatalf("ebb keys create %v: %v\n%s", args, err, out)
	}
	var k createdKey
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.Key == "" || k.AccessKeyID == "" || k.SecretAccessKey == "" {
		t.Fatalf("ebb keys create --json printed %s (%v)", out, err)
	}
	return k
}

// call sends one request with an optional bearer key and extra headers.
func (s *server) call(t *testing.T, method, path, key, body string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestEveryRoleOnEveryRoute: each role, with keys scoped to echo-*, on every
// route of the table: allowed routes pass auth, the rest are 403 naming the
// permission; a function outside the globs is 403; no key is 401.
func TestEveryRoleOnEveryRoute(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("echo-a", ""))
	s.deploy(t, echoFn("other-b", ""))
	tgz := bundleOf(t, echoFn("echo-a", ""))

	keys := map[string]string{"admin": s.key}
	for _, role := range []string{"deploy", "invoke", "read"} {
		keys[role] = s.createKey(t, "--role", role, "--functions", "echo-*").Key
	}
	type rt struct {
		method, path, body string
		perm               string // the permission the route needs
		allowed            []string
	}
	all := []string{"admin", "deploy", "invoke", "read"}
	routes := []rt{
		{"PUT", "/v1/functions/echo-a", tgz, "deploy", []string{"admin", "deploy"}},
		{"GET", "/v1/functions", "", "describe", all},
		{"GET", "/v1/functions/echo-a", "", "describe", all},
		{"GET", "/v1/functions/echo-a/logs", "", "logs", []string{"admin", "deploy", "read"}},
		{"GET", "/v1/functions/echo-a/jobs", "", "jobs", all},
		{"POST", "/v1/functions/echo-a/jobs/redrive", "", "deploy", []string{"admin", "deploy"}},
		{"POST", "/v1/functions/echo-a/invoke", `{}`, "invoke", []string{"admin", "invoke"}},
		{"POST", "/2015-03-31/functions/echo-a/invocations", `{}`, "invoke", []string{"admin", "invoke"}},
		{"GET", "/2015-03-31/functions/echo-a", "", "describe", all},
		{"GET", "/2015-03-31/functions/echo-a/configuration", "", "describe", all},
		{"GET", "/2015-03-31/functions/", "", "describe", all},
		{"GET", "/2015-03-31/functions", "", "describe", all},
		{"GET", "/fn/echo-a/x", "", "invoke", []string{"admin", "invoke"}},
		{"POST", "/v2/models/echo-a/infer", `{}`, "invoke", []string{"admin", "invoke"}},
		{"GET", "/metrics", "", "metrics", []string{"admin", "read"}},
		{"GET", "/v1/keys", "", "keys", []string{"admin"}},
		{"GET", "/v1/audit", "", "audit", []string{"admin"}},
		{"PUT", "/v1/buckets/b1/k", "x", "buckets", []string{"admin"}},
		{"GET", "/v1/jobs/nope", "", "jobs", all},
		{"GET", "/v1/functions/echo-a/versions", "", "describe", all},
		{"GET", "/v2", "", "describe", all},
		{"PUT", "/v1/functions/echo-a/shadow", `{"version":1,"percent":10}`, "deploy", []string{"admin", "deploy"}},
		{"GET", "/v1/functions/echo-a/shadow", "", "describe", all},
		{"DELETE", "/v1/functions/echo-a/shadow", "", "deploy", []string{"admin", "deploy"}},
		{"GET", "/v1/functions/echo-a/aliases", "", "describe", all},
		{"PUT", "/v1/functions/echo-a/route", `{"split":[{"version":1,"percent":100}]}`, "deploy", []string{"admin", "deploy"}},
		{"POST", "/v1/functions/echo-a/promote", "", "deploy", []string{"admin", "deploy"}},
		{"POST", "/v1/functions/echo-a/rollback", "", "deploy", []string{"admin", "deploy"}},
		{"PUT", "/v1/functions/echo-a/aliases/prod", `{"split":[{"version":1,"percent":100}]}`, "deploy", []string{"admin", "deploy"}},
		{"POST", "/v1/functions/echo-a:prod/invoke", `{}`, "invoke", []string{"admin", "invoke"}},
		{"POST", "/2015-03-31/functions/echo-a:1/invocations", `{}`, "invoke", []string{"admin", "invoke"}},
		{"GET", "/fn/echo-a:1/x", "", "invoke", []string{"admin", "invoke"}},
		{"DELETE", "/v1/functions/echo-a/aliases/prod", "", "deploy", []string{"admin", "deploy"}},
		{"DELETE", "/v1/functions/echo-a/versions/99", "", "deploy", []string{"admin", "deploy"}},
		// The rest of the table; destructive ones on names that do not
		// exist, so that an allowed call answers 404, not a change.
		{"GET", "/fn/echo-a", "", "invoke", []string{"admin", "invoke"}},
		{"GET", "/v2/models/echo-a", "", "invoke", []string{"admin", "invoke"}},
		{"GET", "/v2/models/echo-a/ready", "", "invoke", []string{"admin", "invoke"}},
		{"GET", "/v1/functions/echo-a/usage", "", "describe", all},
		{"GET", "/v1/functions/echo-a/invocations", "", "describe", all},
		{"GET", "/v1/functions/echo-a/cost", "", "describe", all},
		{"GET", "/v1/functions/echo-a/monitor", "", "describe", all},
		{"GET", "/v1/usage", "", "describe", all},
		{"GET", "/v1/warm", "", "describe", all},
		{"GET", "/v1/nodes", "", "describe", all},
		{"GET", "/v1/buckets/b1/k", "", "buckets", []string{"admin"}},
		{"POST", "/v1/keys", `{}`, "keys", []string{"admin"}},
		{"DELETE", "/v1/keys/nope", "", "keys", []string{"admin"}},
		{"POST", "/v1/keys/nope/rotate", "", "keys", []string{"admin"}},
		{"DELETE", "/v1/functions/echo-gone", "", "deploy", []string{"admin", "deploy"}},
	}
	// Open routes: no key needed.
	open := []struct{ method, path string }{
		{"GET", "/healthz"}, {"GET", "/v2/health/live"}, {"GET", "/v2/health/ready"}, {"GET", "/ui"}, {"GET", "/ui/index.html"},
	}
	// Every route of ebb's table is in this matrix: a route added without
	// a row here fails, so no route escapes the role check.
	covered := routeCoverage(t)
	for _, r := range routes {
		covered(r.method, r.path)
	}
	for _, o := range open {
		covered(o.method, o.path)
		if code, body, _ := s.call(t, o.method, o.path, "", "", nil); code == 401 || code == 403 || code >= 500 {
			t.Errorf("open route %s %s without a key = %d %s", o.method, o.path, code, body)
		}
	}
	for _, r := range routes {
		if code, body, _ := s.call(t, r.method, r.path, "", r.body, nil); code != 401 {
			t.Errorf("%s %s without a key = %d %s, want 401", r.method, r.path, code, body)
		}
		if code, _, _ := s.call(t, r.method, r.path, "ebb_"+strings.Repeat("0", 48), r.body, nil); code != 401 {
			t.Errorf("%s %s with an unknown key = %d, want 401", r.method, r.path, code)
		}
		for _, role := range all {
			code, body, _ := s.call(t, r.method, r.path, keys[role], r.body, nil)
			want := strings.Contains(strings.Join(r.allowed, ","), role)
			switch {
			case want && (code == 401 || code == 403):
				t.Errorf("%s %s as %s = %d %s, want allowed", r.method, r.path, role, code, body)
			case !want && code != 403:
				t.Errorf("%s %s as %s = %d %s, want 403", r.method, r.path, role, code, body)
			case !want && !strings.Contains(body, `\"`+r.perm+`\"`):
				t.Errorf("%s %s as %s: 403 body %s does not name permission %q", r.method, r.path, role, body, r.perm)
			}
		}
	}
	// Out of scope: the same routes on other-b are refused to scoped keys.
	for _, role := range []string{"deploy", "invoke", "read"} {
		for _, path := range []string{"/v1/functions/other-b", "/v1/functions/other-b/invoke", "/fn/other-b/", "/v1/functions/other-b:1/invoke", "/fn/other-b:1/", "/v1/functions/other-b/versions"} {
			method := "GET"
			if strings.HasSuffix(path, "invoke") {
				method = "POST"
			}
			if code, body, _ := s.call(t, method, path, keys[role], "{}", nil); code != 403 {
				t.Errorf("%s %s as scoped %s = %d %s, want 403", method, path, role, code, body)
			}
		}
		// A listing shows only what the key covers.
		_, body, _ := s.call(t, "GET", "/v1/functions", keys[role], "", nil)
		if strings.Contains(body, "other-b") || !strings.Contains(body, "echo-a") {
			t.Errorf("GET /v1/functions as scoped %s lists %s", role, body)
		}
	}
	// Unknown paths and methods get the same JSON error shape.
	for _, c := range []struct {
		method, path string
		want         int
	}{{"GET", "/nope", 404}, {"DELETE", "/v1/functions", 405}, {"PATCH", "/v1/keys", 405}} {
		code, body, _ := s.call(t, c.method, c.path, s.key, "", nil)
		var e struct{ ErrorType, ErrorMessage string }
		if code != c.want || json.Unmarshal([]byte(body), &e) != nil || e.ErrorMessage == "" {
			t.Errorf("%s %s = %d %q, want %d with a JSON error", c.method, c.path, code, body, c.want)
		}
	}
	if code, _, _ := s.call(t, "GET", "/healthz", "", "", nil); code != 200 {
		t.Errorf("/healthz without a key = %d, want 200", code)
	}
}

// routeCoverage reads every route pattern declared in ebb's sources (the
// Pattern of each route.Route literal) and returns a function that marks
// the pattern a request would take; when the test ends, a pattern no
// request took is an error.
func routeCoverage(t *testing.T) func(method, path string) {
	t.Helper()
	var patterns []string
	for _, root := range []string{"../../internal", "../../web"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				kv, ok := n.(*ast.KeyValueExpr)
				if !ok {
					return true
				}
				if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != "Pattern" {
					return true
				}
				lit, ok := kv.Value.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: a route Pattern that is not a string literal cannot be checked here", path)
					return true
				}
				p, _ := strconv.Unquote(lit.Value)
				patterns = append(patterns, p)
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(patterns) < 40 {
		t.Fatalf("found only %d route patterns in the sources: %v", len(patterns), patterns)
	}
	mux := http.NewServeMux()
	for _, p := range patterns {
		mux.HandleFunc(p, func(http.ResponseWriter, *http.Request) {})
	}
	hit := map[string]bool{}
	t.Cleanup(func() {
		for _, p := range patterns {
			if !hit[p] {
				t.Errorf("route %q is not in the role × route matrix", p)
			}
		}
	})
	return func(method, path string) {
		_, p := mux.Handler(httptest.NewRequest(method, path, nil))
		hit[p] = true
	}
}

// bundleOf packs files as `ebb deploy` would, for a raw PUT.
func bundleOf(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(dir+"/"+name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestAWSSDKWithEbbKeys: the real aws-sdk-go-v2 Lambda client, signing with
// an ebb-issued pair, invokes with Tail and looks functions up; a wrong
// secret is refused in the shape the SDK parses.
func TestAWSSDKWithEbbKeys(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("echo-a", ""))
	s.deploy(t, echoFn("other-b", ""))
	k := s.createKey(t, "--role", "invoke", "--functions", "echo-*")
	client := func(secret string) *lambda.Client {
		return lambda.New(lambda.Options{Region: "eu-west-3", BaseEndpoint: aws.String(s.url), RetryMaxAttempts: 1,
			Credentials: credentials.NewStaticCredentialsProvider(k.AccessKeyID, secret, "")})
	}
	ctx := context.Background()
	c := client(k.SecretAccessKey)
	out, err := c.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("echo-a"), Payload: []byte(`{"n":7}`), LogType: types.LogTypeTail})
	if err != nil {
		t.Fatalf("Invoke: %v\n%s", err, s.log)
	}
	if string(out.Payload) != `{"n": 7}` && string(out.Payload) != `{"n":7}` {
		t.Errorf("Invoke payload = %s", out.Payload)
	}
	tail, err := base64.StdEncoding.DecodeString(aws.ToString(out.LogResult))
	if err != nil || !strings.Contains(string(tail), "tail-marker") {
		t.Errorf("LogResult = %q (%v), want the invocation's own line", tail, err)
	}
	if out.ExecutedVersion == nil || *out.ExecutedVersion != "1" {
		t.Errorf("ExecutedVersion = %v, want 1", out.ExecutedVersion)
	}
	gf, err := c.GetFunction(ctx, &lambda.GetFunctionInput{FunctionName: aws.String("echo-a")})
	if err != nil {
		t.Fatalf("GetFunction: %v", err)
	}
	if cfg := gf.Configuration; aws.ToString(cfg.FunctionName) != "echo-a" || aws.ToString(cfg.Handler) != "app.handler" || cfg.Environment != nil {
		t.Errorf("GetFunction configuration = %+v", cfg)
	}
	gc, err := c.GetFunctionConfiguration(ctx, &lambda.GetFunctionConfigurationInput{FunctionName: aws.String("echo-a")})
	if err != nil || aws.ToInt32(gc.MemorySize) == 0 {
		t.Errorf("GetFunctionConfiguration = %+v, %v", gc, err)
	}
	lf, err := c.ListFunctions(ctx, &lambda.ListFunctionsInput{})
	if err != nil {
		t.Fatalf("ListFunctions: %v", err)
	}
	if len(lf.Functions) != 1 || aws.ToString(lf.Functions[0].FunctionName) != "echo-a" {
		t.Errorf("ListFunctions = %d functions, want only echo-a (the key's scope)", len(lf.Functions))
	}
	var nf *types.ResourceNotFoundException
	if _, err := c.GetFunction(ctx, &lambda.GetFunctionInput{FunctionName: aws.String("echo-missing")}); !errors.As(err, &nf) {
		t.Errorf("GetFunction(missing) = %v, want ResourceNotFoundException", err)
	}
	for _, tt := range []struct {
		name string
		c    *lambda.Client
		fn   string
		code string
	}{
		{"wrong secret", client("not-the-secret"), "echo-a", "InvalidSignatureException"},
		{"out of scope", c, "other-b", "AccessDeniedException"},
	} {
		_, err := tt.c.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String(tt.fn), Payload: []byte(`{}`)})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tt.code {
			t.Errorf("%s: err = %v, want %s", tt.name, err, tt.code)
		}
	}
	bad := lambda.New(lambda.Options{Region: "eu-west-3", BaseEndpoint: aws.String(s.url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("EBBNOSUCHKEY00000000", "x", "")})
	_, err = bad.Invoke(ctx, &lambda.InvokeInput{FunctionName: aws.String("echo-a"), Payload: []byte(`{}`)})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "UnrecognizedClientException" {
		t.Errorf("unknown access key: err = %v, want UnrecognizedClientException", err)
	}
}

// TestKeysCreateJSON: `ebb keys create --json` prints exactly the fields
// it promises, with what was asked for.
func TestKeysCreateJSON(t *testing.T) {
	s := authServe(t)
	before := time.Now()
	out, err := s.cli(t, s.key, "keys", "create", "--role", "invoke", "--functions", "a-*,b-*", "--name", "ci", "--expires", "30d", "--rps", "3", "--json")
	if err != nil {
		t.Fatalf("ebb keys create: %v %s", err, out)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &fields); err != nil {
		t.Fatalf("ebb keys create --json printed %s", out)
	}
	var names []string
	for k := range fields {
		names = append(names, k)
	}
	slices.Sort(names)
	if want := []string{"access_key_id", "expires", "functions", "id", "key", "role", "secret_access_key"}; !slices.Equal(names, want) {
		t.Errorf("ebb keys create --json printed fields %v, want exactly %v", names, want)
	}
	var k struct {
		ID, Key, Role   string
		AccessKeyID     string `json:"access_key_id"`
		SecretAccessKey string `json:"secret_access_key"`
		Functions       []string
		Expires         time.Time
	}
	json.Unmarshal([]byte(out), &k)
	if k.ID == "" || !strings.HasPrefix(k.Key, "ebb_") || k.AccessKeyID == "" || len(k.SecretAccessKey) < 30 || k.Role != "invoke" ||
		!slices.Equal(k.Functions, []string{"a-*", "b-*"}) {
		t.Errorf("ebb keys create --json = %s", out)
	}
	if lo, hi := before.Add(30*24*time.Hour-time.Minute), time.Now().Add(30*24*time.Hour+time.Minute); k.Expires.Before(lo) || k.Expires.After(hi) {
		t.Errorf("expires = %s, want 30 days from now", k.Expires)
	}
	// An unscoped key that never expires says so: functions [] and
	// expires null, not missing.
	out, err = s.cli(t, s.key, "keys", "create", "--role", "read", "--json")
	if err != nil || !strings.Contains(out, `"functions": []`) || !strings.Contains(out, `"expires": null`) {
		t.Errorf("ebb keys create --role read --json = %v %s", err, out)
	}
	// The name and rps were kept.
	out, err = s.cli(t, s.key, "keys", "ls", "--json")
	var listed []struct {
		ID, Name string
		RPS      float64
	}
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("keys ls --json: %v %s", err, out)
	}
	if i := slices.IndexFunc(listed, func(l struct {
		ID, Name string
		RPS      float64
	}) bool {
		return l.ID == k.ID
	}); i < 0 || listed[i].Name != "ci" || listed[i].RPS != 3 {
		t.Errorf("keys ls = %s, want key %s named ci with rps 3", out, k.ID)
	}
}

// TestLambdaTailIsTheInvocationsOwn: LogType Tail answers the last 4 KB of
// the invocation's own log lines, even while other invocations of the same
// function are logging.
func TestLambdaTailIsTheInvocationsOwn(t *testing.T) {
	s := authServe(t)
	s.deploy(t, map[string]string{
		"ebb.yaml": "name: chatty\nruntime: python\nhandler: app.handler\n",
		"app.py": "def handler(event, context):\n    rid = context.aws_request_id\n" +
			"    for i in range(event['n']):\n        print(rid, 'line %04d' % i, 'x' * 60, flush=True)\n" +
			"    print(rid, 'end', flush=True)\n    return {}\n",
	})
	k := s.createKey(t, "--role", "invoke")
	c := lambda.New(lambda.Options{Region: "eu-west-3", BaseEndpoint: aws.String(s.url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(k.AccessKeyID, k.SecretAccessKey, "")})
	var wg sync.WaitGroup
	for n := range 4 {
		wg.Go(func() {
			out, err := c.Invoke(context.Background(), &lambda.InvokeInput{FunctionName: aws.String("chatty"),
				Payload: []byte(fmt.Sprintf(`{"n":%d}`, 150+n*50)), LogType: types.LogTypeTail})
			if err != nil {
				t.Errorf("Invoke: %v", err)
				return
			}
			tail, err := base64.StdEncoding.DecodeString(aws.ToString(out.LogResult))
			if err != nil {
				t.Errorf("LogResult is not base64: %v", err)
				return
			}
			lines := strings.Split(strings.TrimSuffix(string(tail), "\n"), "\n")
			last := lines[len(lines)-1]
			rid, _, _ := strings.Cut(last, " ")
			switch {
			case len(tail) > 4096 || len(tail) < 3500:
				t.Errorf("Tail of %d lines is %d bytes, want the last 4 KB", 150+n*50, len(tail))
			case !strings.HasSuffix(last, " end"):
				t.Errorf("Tail ends with %q, want the invocation's last line", last)
			case strings.Contains(string(tail), "line 0000"):
				t.Errorf("Tail holds the first line of %d: not the last 4 KB", 150+n*50)
			}
			// Every whole line is this invocation's (the first may be cut).
			for _, l := range lines[1:] {
				if !strings.HasPrefix(l, rid+" ") {
					t.Errorf("Tail of %s holds another invocation's line %q", rid, l)
					break
				}
			}
		})
	}
	wg.Wait()
}

// TestRevokeAndRotate: revocation and rotation take effect at once, and
// both are in the audit log under the admin key.
func TestRevokeAndRotate(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("echo-a", ""))
	k := s.createKey(t, "--role", "invoke", "--name", "ci")
	invoke := func(key string) int {
		code, _, _ := s.call(t, "POST", "/v1/functions/echo-a/invoke", key, `{}`, nil)
		return code
	}
	if c := invoke(k.Key); c != 200 {
		t.Fatalf("new key = %d", c)
	}
	out, err := s.cli(t, s.key, "keys", "ls", "--json")
	var listed []struct {
		ID       string  `json:"id"`
		LastUsed *string `json:"last_used"`
		Hash     *string `json:"hash"`
	}
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 2 {
		t.Fatalf("keys ls --json: %v\n%s", err, out)
	}
	for _, l := range listed {
		if l.ID == k.ID && l.LastUsed == nil {
			t.Errorf("keys ls shows no last use of a key just used: %s", out)
		}
		if l.Hash != nil || strings.Contains(out, "sealed") {
			t.Errorf("keys ls shows stored secrets: %s", out)
		}
	}
	out, err = s.cli(t, s.key, "keys", "rotate", k.ID, "--json")
	if err != nil {
		t.Fatalf("keys rotate: %v %s", err, out)
	}
	var rot createdKey
	json.Unmarshal([]byte(out), &rot)
	if rot.ID != k.ID || rot.Key == k.Key || rot.AccessKeyID == k.AccessKeyID {
		t.Fatalf("rotate = %+v, want the same id with new secrets", rot)
	}
	if c := invoke(k.Key); c != 401 {
		t.Errorf("old secret after rotate = %d, want 401", c)
	}
	if c := invoke(rot.Key); c != 200 {
		t.Errorf("rotated secret = %d, want 200", c)
	}
	out, err = s.cli(t, s.key, "keys", "ls")
	if err != nil || !strings.Contains(out, k.ID) || !strings.Contains(out, "ci") || strings.Contains(out, rot.Key) {
		t.Errorf("keys ls = %v\n%s", err, out)
	}
	if out, err := s.cli(t, s.key, "keys", "revoke", k.ID); err != nil {
		t.Fatalf("keys revoke: %v %s", err, out)
	}
	if c := invoke(rot.Key); c != 401 {
		t.Errorf("revoked key = %d, want 401 at once", c)
	}
	if out, err := s.cli(t, s.key, "keys", "revoke", k.ID); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("revoking twice: %v %s, want a not-found error", err, out)
	}
	out, err = s.cli(t, s.key, "audit", "--json")
	if err != nil {
		t.Fatalf("ebb audit: %v %s", err, out)
	}
	var recs []struct {
		KeyID  string `json:"key_id"`
		Action string `json:"action"`
		Target string `json:"target"`
	}
	json.Unmarshal([]byte(out), &recs)
	want := map[string]string{"function.deploy": "echo-a", "key.create": k.ID, "key.rotate": k.ID, "key.revoke": k.ID}
	adminID := ""
	for _, r := range recs {
		if r.Action == "function.deploy" {
			adminID = r.KeyID
		}
		if want[r.Action] == r.Target {
			delete(want, r.Action)
		}
	}
	if len(want) > 0 || adminID == "" {
		t.Errorf("audit log %s lacks %v (or a key id)", out, want)
	}
}

// TestPublicFunctionURL: function_url {auth: none} needs no key, and no ebb
// credential reaches the function, while its own Authorization does.
func TestPublicFunctionURL(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("pub", "function_url: {auth: none}\n"))
	s.deploy(t, echoFn("priv", ""))
	code, body, _ := s.call(t, "GET", "/fn/pub/x?q=1", "", "", map[string]string{"Authorization": "Bearer their-own", "X-Api-Key": s.key})
	if code != 200 {
		t.Fatalf("public URL without an ebb key = %d %s", code, body)
	}
	if strings.Contains(body, s.key) || !strings.Contains(body, "Bearer their-own") || !strings.Contains(body, `"q"`) {
		t.Errorf("public URL event = %s: want its own Authorization and no ebb key", body)
	}
	code, body, _ = s.call(t, "GET", "/fn/pub/x", s.key, "", nil)
	if code != 200 || strings.Contains(body, s.key) || strings.Contains(strings.ToLower(body), "authorization") {
		t.Errorf("public URL with an ebb key = %d %s: the key must not reach the function", code, body)
	}
	if code, _, _ := s.call(t, "GET", "/fn/priv/x", "", "", nil); code != 401 {
		t.Errorf("keyed URL without a key = %d, want 401", code)
	}
	code, body, _ = s.call(t, "GET", "/fn/priv/x", "", "", map[string]string{"X-Api-Key": s.key})
	if code != 200 || strings.Contains(body, s.key) || strings.Contains(body, "x-api-key") {
		t.Errorf("keyed URL = %d %s: the key must not reach the function", code, body)
	}
	// The public URL does not open the function's other routes.
	if code, _, _ := s.call(t, "POST", "/v1/functions/pub/invoke", "", "{}", nil); code != 401 {
		t.Errorf("native invoke of a public-URL function without a key = %d, want 401", code)
	}
}

// TestFunctionRateLimit: through a real ebb serve, a function's burst is
// answered and the next request is 429 with Retry-After, counted in
// /metrics. The rate is so low (one token in 1000 s) that no refill can
// happen during the test, so the count is exact whatever the machine's
// load; the refill at rps is TestFunctionRateLimitRefills in
// internal/platform, on a moved clock.
func TestFunctionRateLimit(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("limited", "rate_limit: {rps: 0.001, burst: 5}\n"))
	for i := range 5 {
		if code, body, _ := s.call(t, "POST", "/v1/functions/limited/invoke", s.key, `{}`, nil); code != 200 {
			t.Fatalf("request %d of the burst of 5 = %d %s", i+1, code, body)
		}
	}
	for i := range 3 {
		code, body, h := s.call(t, "POST", "/v1/functions/limited/invoke", s.key, `{}`, nil)
		if code != 429 || h.Get("Retry-After") == "" {
			t.Errorf("request %d past the burst = %d %s (Retry-After %q), want 429 with Retry-After", i+6, code, body, h.Get("Retry-After"))
		}
	}
	_, metrics, _ := s.call(t, "GET", "/metrics", s.key, "", nil)
	if !strings.Contains(metrics, `ebb_rate_limited_total{name="limited",scope="function"} 3`) {
		t.Errorf("/metrics does not count the 3 refusals")
	}
}

// TestFunctionRateLimitOverThreeSeconds is the rate limit as a user sees
// it (issue 11's check): 5 rps with a burst of 5, 3 s of requests, about 20
// answered (±20%), the rest 429 with Retry-After. Its bounds rest on wall
// clock; the exact checks are TestFunctionRateLimit and, for the refill,
// TestFunctionRateLimitRefills on a moved clock.
func TestFunctionRateLimitOverThreeSeconds(t *testing.T) {
	s := authServe(t)
	s.deploy(t, echoFn("limited", "rate_limit: {rps: 5, burst: 5}\n"))
	// Four instances warm first (four of the bucket's five tokens), so that
	// cold starts holding all four senders do not leave tokens unspent;
	// then a second for the bucket to fill again (5 rps, burst 5).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if code, body, _ := s.call(t, "POST", "/v1/functions/limited/invoke", s.key, `{}`, nil); code != 200 {
				t.Errorf("warm-up invoke = %d %s", code, body)
			}
		})
	}
	wg.Wait()
	time.Sleep(1100 * time.Millisecond)
	var ok, limited, other atomic.Int64
	var badRetry atomic.Bool
	deadline := time.Now().Add(3 * time.Second)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				code, _, h := s.call(t, "POST", "/v1/functions/limited/invoke", s.key, `{}`, nil)
				switch code {
				case 200:
					ok.Add(1)
				case 429:
					limited.Add(1)
					if h.Get("Retry-After") == "" {
						badRetry.Store(true)
					}
				default:
					other.Add(1)
				}
				// Paced, so that the load generator does not starve the
				// server of the 2 CPUs: still ~10× the limit.
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	t.Logf("3s at 5 rps, burst 5: %d answered, %d refused with 429, %d other", ok.Load(), limited.Load(), other.Load())
	if n := ok.Load(); n < 16 || n > 24 {
		t.Errorf("%d answered, want 20 ± 20%%", n)
	}
	if limited.Load() == 0 || other.Load() != 0 || badRetry.Load() {
		t.Errorf("refusals: %d 429s, %d other statuses, missing Retry-After: %v", limited.Load(), other.Load(), badRetry.Load())
	}
	_, metrics, _ := s.call(t, "GET", "/metrics", s.key, "", nil)
	if !strings.Contains(metrics, `ebb_rate_limited_total{name="limited",scope="function"}`) {
		t.Errorf("/metrics does not count the refusals")
	}
}

// TestForeignHost: on loopback, a Host that is not a loopback name is 421
// (DNS rebinding); --allowed-hosts admits more.
func TestForeignHost(t *testing.T) {
	s := startServe(t, "--allowed-hosts", "ebb.internal")
	for host, want := range map[string]int{"evil.example": 421, "evil.example:80": 421, "localhost": 200,
		"127.0.0.1": 200, "ebb.internal:8080": 200, "app.localhost": 200} {
		if code, body, _ := s.call(t, "GET", "/healthz", "", "", map[string]string{"Host": host}); code != want {
			t.Errorf("Host %q = %d %s, want %d", host, code, body, want)
		}
	}
	// No CORS unless asked for.
	_, _, h := s.call(t, "GET", "/healthz", "", "", map[string]string{"Origin": "https://evil.example"})
	if h.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("CORS header sent without --cors-origins")
	}
	// --cors-origins lists the origins that get CORS headers, and only them.
	s = startServe(t, "--cors-origins", "https://app.example")
	for origin, want := range map[string]string{"https://app.example": "https://app.example", "https://evil.example": ""} {
		code, _, h := s.call(t, "OPTIONS", "/v1/functions", "", "", map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET"})
		if got := h.Get("Access-Control-Allow-Origin"); got != want || (want != "" && code != 204) {
			t.Errorf("preflight from %s = %d, Access-Control-Allow-Origin %q, want %q", origin, code, got, want)
		}
		_, _, h = s.call(t, "GET", "/healthz", "", "", map[string]string{"Origin": origin})
		if got := h.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("GET from %s: Access-Control-Allow-Origin %q, want %q", origin, got, want)
		}
	}
}

// TestNonLoopbackRequiresKeys: listening beyond loopback, ebb requires keys
// without --require-auth (and prints the admin key once), and it answers any
// Host (it cannot know its names) unless --allowed-hosts lists them.
func TestNonLoopbackRequiresKeys(t *testing.T) {
	s := startServe(t, "--listen", "0.0.0.0:0")
	m := regexp.MustCompile(`ebb_[0-9a-f]{48}`).FindString(s.out.String())
	if m == "" {
		t.Fatalf("no admin key printed listening on 0.0.0.0; stdout:\n%s", s.out)
	}
	_, port, _ := strings.Cut(s.addr, "]:")
	if port == "" {
		_, port, _ = strings.Cut(s.addr, ":")
	}
	s.url = "http://127.0.0.1:" + port
	if code, body, _ := s.call(t, "GET", "/v1/functions", "", "", nil); code != 401 {
		t.Errorf("no key on a non-loopback listener = %d %s, want 401", code, body)
	}
	if code, _, _ := s.call(t, "GET", "/v1/functions", m, "", map[string]string{"Host": "ebb.example.com"}); code != 200 {
		t.Errorf("admin key with a public Host = %d, want 200", code)
	}
	if !strings.Contains(s.log.String(), `"auth":true`) {
		t.Errorf("the serving line does not say auth is on:\n%s", s.log)
	}
}
