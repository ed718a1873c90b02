package platform

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/gateway"
)

// TestCredentialsNeverReachHTTPFunctions: an http function behind a keyed
// URL sees none of ebb's credentials, however they were presented (bearer,
// X-Api-Key, a SigV4 signature in headers or a presigned query); behind a
// public URL its own Authorization header passes unchanged.
func TestCredentialsNeverReachHTTPFunctions(t *testing.T) {
	e := start(t, "", func(c *Config) { c.RequireAuth = true })
	e.deploy(fnDir(t, "name: web\nruntime: http\nhandler: ./server\n", map[string]string{"server": "@httpfn"}))
	e.deploy(fnDir(t, "name: pubweb\nruntime: http\nhandler: ./server\nfunction_url: {auth: none}\n", map[string]string{"server": "@httpfn"}))
	k, err := e.p.CreateKey(context.Background(), api.KeyRequest{Role: ebb.RoleInvoke, Functions: []string{"web"}})
	if err != nil {
		t.Fatal(err)
	}
	leaks := func(what, body string) {
		t.Helper()
		for _, secret := range []string{e.adminKey, k.Key, k.AccessKeyID, "AWS4-HMAC-SHA256", "X-Amz-Date", "X-Amz-Signature", "X-Amz-Credential", "Authorization", "X-Api-Key"} {
			if strings.Contains(body, secret) {
				t.Errorf("%s: the function saw %q: %s", what, secret, body)
			}
		}
	}
	code, body, _ := e.do("GET", "/fn/web/headers?a=1", "", map[string]string{"X-Api-Key": k.Key, "Authorization": "Bearer " + e.adminKey})
	if code != 200 || !strings.Contains(body, `"query":"a=1"`) {
		t.Fatalf("bearer: %d %s", code, body)
	}
	leaks("bearer and x-api-key", body)

	signer := v4.NewSigner()
	creds := aws.Credentials{AccessKeyID: k.AccessKeyID, SecretAccessKey: k.SecretAccessKey}
	req, _ := http.NewRequest("GET", e.url+"/fn/web/headers?a=1", nil)
	if err := signer.SignHTTP(context.Background(), creds, req, hashOf(""), "lambda", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	body = send(t, req, 200)
	leaks("sigv4 header", body)

	req, _ = http.NewRequest("GET", e.url+"/fn/web/headers?a=1&X-Amz-Expires=60", nil)
	u, _, err := signer.PresignHTTP(context.Background(), creds, req, hashOf(""), "lambda", "us-east-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest("GET", u, nil)
	body = send(t, req, 200)
	leaks("presigned", body)
	if !strings.Contains(body, `"query":"a=1"`) {
		t.Errorf("presigned: the function's own query was changed: %s", body)
	}

	// Public: no key needed; its own Authorization arrives, ebb's do not.
	req, _ = http.NewRequest("GET", e.url+"/fn/pubweb/headers", nil)
	req.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	req.Header.Set("X-Api-Key", e.adminKey)
	body = send(t, req, 200)
	if !strings.Contains(body, "Basic dXNlcjpwYXNz") || strings.Contains(body, e.adminKey) {
		t.Errorf("public URL: %s", body)
	}
}

func send(t *testing.T, req *http.Request, want int) string {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s = %d %s, want %d", req.Method, req.URL, resp.StatusCode, b.String(), want)
	}
	return b.String()
}

func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestKeyRateAndExpiry: a key's --rps refuses with 429 and Retry-After
// (counted per key), and a key stops working when it expires; both moved by
// the platform's clock, not by sleeping.
func TestKeyRateAndExpiry(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e := start(t, "", func(c *Config) { c.RequireAuth = true; c.Now = clock })
	e.deploy(goFn(t, "fn", ""))
	k, err := e.p.CreateKey(context.Background(), api.KeyRequest{Role: ebb.RoleInvoke, RPS: 2, Expires: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	call := func() (int, http.Header) {
		code, _, h := e.do("POST", "/v1/functions/fn/invoke", "{}", map[string]string{"Authorization": "Bearer " + k.Key})
		return code, h
	}
	for i := range 2 {
		if code, _ := call(); code != 200 {
			t.Fatalf("request %d within the burst = %d", i, code)
		}
	}
	code, h := call()
	if code != 429 || h.Get("Retry-After") != "1" {
		t.Fatalf("third request at the same instant = %d (Retry-After %q), want 429 with Retry-After 1", code, h.Get("Retry-After"))
	}
	advance(500 * time.Millisecond)
	if code, _ := call(); code != 200 {
		t.Errorf("after half a second at 2 rps = %d, want 200", code)
	}
	_, metrics, _ := e.do("GET", "/metrics", "", nil)
	if !strings.Contains(metrics, `ebb_rate_limited_total{name="`+k.ID+`",scope="key"} 1`) {
		t.Errorf("/metrics does not count the key's refusal")
	}
	advance(time.Hour)
	if code, _ := call(); code != 401 {
		t.Errorf("after expiry = %d, want 401", code)
	}
}

// TestFunctionRateLimitRefills: a function's rate_limit is a token bucket
// of burst tokens refilled at rps, moved by the platform's clock: the
// burst is answered, the next request is 429 with Retry-After, one
// interval brings back one token, and a long pause no more than the burst.
func TestFunctionRateLimitRefills(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e := start(t, "", func(c *Config) { c.Now = clock })
	e.deploy(goFn(t, "limited", "rate_limit: {rps: 5, burst: 5}\n"))
	admitted := func(n int) {
		t.Helper()
		for i := range n {
			if code, body, _ := e.invoke("limited", `{}`); code != 200 {
				t.Fatalf("request %d of %d with tokens left = %d %s", i+1, n, code, body)
			}
		}
	}
	refused := func(what string) {
		t.Helper()
		if code, body, h := e.invoke("limited", `{}`); code != 429 || h.Get("Retry-After") != "1" {
			t.Fatalf("%s = %d %s (Retry-After %q), want 429 with Retry-After 1", what, code, body, h.Get("Retry-After"))
		}
	}
	admitted(5)
	refused("the request after the burst, at the same instant")
	advance(199 * time.Millisecond)
	refused("199ms later at 5 rps")
	advance(time.Millisecond)
	admitted(1)
	refused("the request after the refilled token")
	advance(time.Hour)
	admitted(5)
	refused("the request after a full bucket's burst")
	_, metrics, _ := e.do("GET", "/metrics", "", nil)
	if !strings.Contains(metrics, `ebb_rate_limited_total{name="limited",scope="function"} 4`) {
		t.Errorf("/metrics does not count the 4 refusals")
	}
}

// TestLambdaInvokeAPIEdges: what AWS SDKs branch on, in Lambda's shapes:
// DryRun, the executed version, ARN and qualified names, 429
// TooManyRequestsException, 413 RequestTooLargeException, unsupported
// invocation and log types.
func TestLambdaInvokeAPIEdges(t *testing.T) {
	e := start(t, "", func(c *Config) { c.MaxSyncPayload = 64 << 10 })
	e.deploy(goFn(t, "lam", "rate_limit: {rps: 0.001, burst: 7}\n"))
	path := func(name string) string { return "/2015-03-31/functions/" + name + "/invocations" }
	check := func(what string, code int, h http.Header, wantCode int, wantType string) {
		t.Helper()
		if code != wantCode || h.Get("X-Amzn-Errortype") != wantType {
			t.Errorf("%s = %d %q, want %d %q", what, code, h.Get("X-Amzn-Errortype"), wantCode, wantType)
		}
	}
	code, body, h := e.do("POST", path("lam"), "{}", map[string]string{"X-Amz-Invocation-Type": "DryRun"})
	check("DryRun", code, h, 204, "")
	if body != "" {
		t.Errorf("DryRun answered a body: %q", body)
	}
	code, _, h = e.do("POST", path("missing"), "{}", map[string]string{"X-Amz-Invocation-Type": "DryRun"})
	check("DryRun of a missing function", code, h, 404, "ResourceNotFoundException")
	code, _, h = e.do("POST", path("lam"), "{}", map[string]string{"X-Amz-Invocation-Type": "Sometimes"})
	check("unsupported invocation type", code, h, 400, "InvalidRequestContentException")
	code, _, h = e.do("POST", path("lam"), "{}", map[string]string{"X-Amz-Log-Type": "Everything"})
	check("unsupported log type", code, h, 400, "InvalidRequestContentException")
	code, _, h = e.do("POST", path("lam"), `{"pad":"`+strings.Repeat("x", 70<<10)+`"}`, nil)
	check("over the payload limit", code, h, 413, "RequestTooLargeException")
	// Named by ARN and by a qualified name; the version that ran is said.
	for _, name := range []string{gateway.FunctionArn("lam"), "lam:1"} {
		code, body, h = e.do("POST", path(name), `{"name":"arn"}`, nil)
		if code != 200 || h.Get("X-Amz-Executed-Version") != "1" || !strings.Contains(body, "hello, arn") {
			t.Errorf("invoke %s = %d %s (executed version %q)", name, code, body, h.Get("X-Amz-Executed-Version"))
		}
	}
	// Every request to the function's invoke route took a token (six of
	// the burst of 7; the missing function's none): one more is answered,
	// the next is 429 in Lambda's shape.
	code, _, _ = e.do("POST", path("lam"), "{}", nil)
	if code != 200 {
		t.Fatalf("seventh request = %d, want the last token", code)
	}
	code, _, h = e.do("POST", path("lam"), "{}", nil)
	check("over the rate limit", code, h, 429, "TooManyRequestsException")
	if h.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
}

// TestRevokeAndRotateAtOnce: on the node that serves them, a revoked key and
// a rotated key's old secrets stop working before the call returns, not
// when the store's watch comes round (twenty of each, so that a watch that
// happens to be quick does not hide a missing step).
func TestRevokeAndRotateAtOnce(t *testing.T) {
	e := start(t, "", func(c *Config) { c.RequireAuth = true })
	ctx := context.Background()
	a := &auth.Authenticator{Keys: &e.p.keys, Now: time.Now}
	valid := func(secret string) bool {
		r := httptest.NewRequest("GET", "/v1/functions", nil)
		r.Header.Set("Authorization", "Bearer "+secret)
		_, err := a.Authenticate(r)
		return err == nil
	}
	for i := range 20 {
		k, err := e.p.CreateKey(ctx, api.KeyRequest{Role: ebb.RoleRead})
		if err != nil {
			t.Fatal(err)
		}
		if !valid(k.Key) {
			t.Fatalf("a new key is not valid at once")
		}
		rot, err := e.p.RotateKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if valid(k.Key) || !valid(rot.Key) {
			t.Fatalf("key %d: right after rotate, old secret valid %v, new secret valid %v", i, valid(k.Key), valid(rot.Key))
		}
		if err := e.p.RevokeKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if valid(rot.Key) {
			t.Fatalf("key %d is still valid right after its revocation returned", i)
		}
	}
}
