package auth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/ebb-run/ebb"
)

// ring holds one invoke key scoped to img-*, and returns its secrets.
func ring(t *testing.T, clock *time.Time, mod func(*ebb.Key)) (*Authenticator, string, string, string) {
	t.Helper()
	secret, hash := NewSecret()
	akid, sig := NewAccessKey()
	k := ebb.Key{ID: NewID(), Role: ebb.RoleInvoke, Functions: []string{"img-*"}, Hash: hash, AccessKeyID: akid, CreatedAt: *clock}
	if mod != nil {
		mod(&k)
	}
	kr := &Keyring{}
	if err := kr.Put(k, sig); err != nil {
		t.Fatal(err)
	}
	return &Authenticator{Keys: kr, Now: func() time.Time { return *clock }}, secret, akid, sig
}

func TestBearer(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a, secret, _, _ := ring(t, &now, nil)
	for _, tt := range []struct {
		name, header, value string
		err                 error
	}{
		{"no key", "", "", ErrNoCredentials},
		{"wrong key", "Authorization", "Bearer ebb_nope", ErrUnknownKey},
		{"bearer", "Authorization", "Bearer " + secret, nil},
		{"lowercase bearer", "Authorization", "bearer " + secret, nil},
		{"basic is not bearer", "Authorization", "Basic " + secret, ErrNoCredentials},
		{"x-api-key", "X-Api-Key", secret, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/v1/functions", nil)
			if tt.header != "" {
				r.Header.Set(tt.header, tt.value)
			}
			p, err := a.Authenticate(r)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && p.Key.Role != ebb.RoleInvoke {
				t.Errorf("principal = %+v", p)
			}
		})
	}
	// Revocation is immediate.
	id := ""
	for k := range a.Keys.byID {
		id = k
	}
	a.Keys.Remove(id)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	if _, err := a.Authenticate(r); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("after Remove: err = %v, want ErrUnknownKey", err)
	}
}

func TestExpiryAndRate(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a, secret, _, _ := ring(t, &now, func(k *ebb.Key) { k.ExpiresAt = now.Add(time.Hour); k.RPS = 2 })
	req := func() error {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-Api-Key", secret)
		_, err := a.Authenticate(r)
		return err
	}
	// Burst of 2, then refused until time moves.
	if err := req(); err != nil {
		t.Fatal(err)
	}
	if err := req(); err != nil {
		t.Fatal(err)
	}
	var rl *RateLimitedError
	if err := req(); !errors.As(err, &rl) || rl.RetryAfter <= 0 || rl.RetryAfter > time.Second {
		t.Fatalf("third request: err = %v, want a rate limit with a retry within 1s", err)
	}
	now = now.Add(500 * time.Millisecond)
	if err := req(); err != nil {
		t.Fatalf("after 500ms at 2 rps: %v", err)
	}
	now = now.Add(time.Hour)
	if err := req(); !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: err = %v, want ErrExpired", err)
	}
}

func TestScope(t *testing.T) {
	p := &Principal{Key: ebb.Key{ID: "0000aaaa", Role: ebb.RoleInvoke, Functions: []string{"img-*", "echo"}}}
	for _, tt := range []struct {
		perm Perm
		fn   string
		ok   bool
	}{
		{PermInvoke, "img-resize", true},
		{PermInvoke, "echo", true},
		{PermInvoke, "echo2", false},
		{PermDeploy, "img-resize", false},
		{PermDescribe, "img-x", true},
		{PermMetrics, "", false},
		{PermKeys, "", false},
	} {
		err := p.Can(tt.perm, tt.fn)
		if (err == nil) != tt.ok {
			t.Errorf("Can(%s, %q) = %v, want ok=%v", tt.perm, tt.fn, err, tt.ok)
		}
		var fe *ForbiddenError
		if err != nil && (!errors.As(err, &fe) || !strings.Contains(err.Error(), string(tt.perm))) {
			t.Errorf("Can(%s, %q) error %q does not name the permission", tt.perm, tt.fn, err)
		}
	}
	var none *Principal
	if none.Can(PermKeys, "") != nil {
		t.Error("a nil principal (keys not required) is refused")
	}
	admin := &Principal{Key: ebb.Key{Role: ebb.RoleAdmin}}
	for _, perm := range []Perm{PermDeploy, PermKeys, PermAudit, PermBuckets, PermMetrics} {
		if err := admin.Can(perm, "anything"); err != nil {
			t.Errorf("admin refused %s: %v", perm, err)
		}
	}
}

// sign signs r as the AWS SDK does for a Lambda call.
func sign(t *testing.T, r *http.Request, body, akid, secret string, at time.Time) {
	t.Helper()
	err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
		r, hashBody([]byte(body)), "lambda", "eu-west-3", at)
	if err != nil {
		t.Fatal(err)
	}
}

func TestSigV4(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a, _, akid, secret := ring(t, &now, nil)
	const body = `{"x":1}`
	newReq := func() *http.Request {
		r := httptest.NewRequest("POST", "http://127.0.0.1:8080/2015-03-31/functions/img-a/invocations?Qualifier=3", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("X-Amz-Invocation-Type", "RequestResponse")
		return r
	}
	check := func(name string, r *http.Request, wantType string) {
		t.Helper()
		p, err := a.Authenticate(r)
		var se *SigV4Error
		switch {
		case wantType == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case wantType == "" && p.Via != "sigv4":
			t.Errorf("%s: via %q", name, p.Via)
		case wantType != "" && (!errors.As(err, &se) || se.Type != wantType):
			t.Errorf("%s: err = %v, want %s", name, err, wantType)
		}
	}
	r := newReq()
	sign(t, r, body, akid, secret, now)
	check("valid", r, "")
	if b := make([]byte, len(body)); func() bool { n, _ := r.Body.Read(b); return string(b[:n]) != body }() {
		t.Error("the body was not put back for the handler")
	}

	r = newReq()
	sign(t, r, body, akid, "wrong-secret", now)
	check("wrong secret", r, "InvalidSignatureException")

	r = newReq()
	sign(t, r, body, "EBBUNKNOWN0000000000", secret, now)
	check("unknown access key", r, "UnrecognizedClientException")

	r = newReq()
	sign(t, r, body, akid, secret, now.Add(-6*time.Minute))
	check("skew", r, "InvalidSignatureException")

	// Clock skew up to 5 minutes either way is accepted; beyond, refused.
	for _, c := range []struct {
		skew time.Duration
		want string
	}{{-5*time.Minute + time.Second, ""}, {5*time.Minute - time.Second, ""}, {-5*time.Minute - 2*time.Second, "InvalidSignatureException"},
		{5*time.Minute + 2*time.Second, "InvalidSignatureException"}} {
		r = newReq()
		sign(t, r, body, akid, secret, now.Add(c.skew))
		check("skew "+c.skew.String(), r, c.want)
	}

	r = newReq()
	sign(t, r, body, akid, secret, now)
	r.Body = httptest.NewRequest("POST", "/", strings.NewReader(`{"x":2}`)).Body
	check("body swapped", r, "InvalidSignatureException")

	r = newReq()
	sign(t, r, body, akid, secret, now)
	r.Header.Set("X-Amz-Invocation-Type", "Event")
	check("signed header changed", r, "InvalidSignatureException")

	r = newReq()
	sign(t, r, body, akid, secret, now)
	r.URL.RawQuery = "Qualifier=4"
	check("query changed", r, "InvalidSignatureException")

	// Query-string signing (a presigned URL).
	pr := httptest.NewRequest("GET", "http://127.0.0.1:8080/fn/img-a/x?size=3", nil)
	q := pr.URL.Query()
	q.Set("X-Amz-Expires", "300")
	pr.URL.RawQuery = q.Encode()
	u, _, err := v4.NewSigner().PresignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
		pr, hashBody(nil), "lambda", "us-east-1", now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	r = httptest.NewRequest("GET", u, nil)
	check("presigned", r, "")
	Strip(r, true)
	if strings.Contains(r.URL.RawQuery, "X-Amz-") || r.URL.Query().Get("size") != "3" {
		t.Errorf("Strip left query %q", r.URL.RawQuery)
	}
	r = httptest.NewRequest("GET", strings.Replace(u, "size=3", "size=4", 1), nil)
	check("presigned, query changed", r, "InvalidSignatureException")
	// A presigned URL lives X-Amz-Expires (300 s from a minute ago), not
	// the clock skew.
	now = now.Add(4 * time.Minute)
	check("presigned, at its expiry", httptest.NewRequest("GET", u, nil), "")
	now = now.Add(2 * time.Second)
	check("presigned, expired", httptest.NewRequest("GET", u, nil), "InvalidSignatureException")
}

// FuzzAuthenticate: whatever a request carries (method, path and query,
// Authorization, X-Amz-Date, X-Amz-Content-Sha256, body), Authenticate
// neither panics nor answers an error outside its kinds, admits nothing
// but the one key's SigV4 signatures (the seeds are genuine ones; TestSigV4
// checks which changes break them), puts the body back, and once it has
// admitted a request, Strip leaves no credential header and no SigV4 query
// parameter for the function.
func FuzzAuthenticate(f *testing.F) {
	const akid, secret = "EBBFUZZAAAAAAAAAAAAA", "fuzz-secret-0123456789abcdefghijklmnopq"
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	_, hash := NewSecret()
	kr := &Keyring{}
	if err := kr.Put(ebb.Key{ID: "0000fuzz", Role: ebb.RoleInvoke, Hash: hash, AccessKeyID: akid, CreatedAt: now}, secret); err != nil {
		f.Fatal(err)
	}
	a := &Authenticator{Keys: kr, MaxSignedBody: 1 << 10, Now: func() time.Time { return now }}
	// Seeds: a header-signed invoke and a presigned URL, both genuine.
	r := httptest.NewRequest("POST", "http://127.0.0.1/2015-03-31/functions/f/invocations?Qualifier=3", strings.NewReader(`{"x":1}`))
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}, r,
		hashBody([]byte(`{"x":1}`)), "lambda", "eu-west-3", now); err != nil {
		f.Fatal(err)
	}
	f.Add("POST", r.URL.RequestURI(), r.Header.Get("Authorization"), r.Header.Get("X-Amz-Date"), "", []byte(`{"x":1}`))
	pr := httptest.NewRequest("GET", "http://127.0.0.1/fn/f/x?size=3&X-Amz-Expires=60", nil)
	u, _, err := v4.NewSigner().PresignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}, pr,
		hashBody(nil), "lambda", "us-east-1", now)
	if err != nil {
		f.Fatal(err)
	}
	pu, _ := url.Parse(u)
	f.Add("GET", pu.RequestURI(), "", "", "", []byte(nil))
	f.Add("GET", "/fn/f?X%2DAmz%2DSignature=1&X-Amz-Credential=EBBFUZZAAAAAAAAAAAAA/20261130/r/lambda/aws4_request", "AWS4-HMAC-SHA256 Credential=x", "20261130T120000Z", "UNSIGNED-PAYLOAD", []byte("b"))
	f.Fuzz(func(t *testing.T, method, uri, authz, date, contentSha string, body []byte) {
		if !validMethod(method) {
			return
		}
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return
		}
		r := &http.Request{Method: method, URL: u, Host: "127.0.0.1", Header: http.Header{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
		for k, v := range map[string]string{"Authorization": authz, "X-Amz-Date": date, "X-Amz-Content-Sha256": contentSha} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		p, err := a.Authenticate(r)
		var se *SigV4Error
		var rl *RateLimitedError
		switch {
		case err == nil:
		case errors.As(err, &se):
			if se.Type != "InvalidSignatureException" && se.Type != "IncompleteSignatureException" && se.Type != "UnrecognizedClientException" {
				t.Fatalf("SigV4 error of unknown type %q", se.Type)
			}
			return
		case errors.Is(err, ErrNoCredentials), errors.Is(err, ErrUnknownKey), errors.Is(err, ErrSignedBodyTooLarge), errors.As(err, &rl):
			return
		default:
			t.Fatalf("Authenticate: error of no known kind: %v", err)
		}
		if p.Key.ID != "0000fuzz" || p.Via != "sigv4" {
			t.Fatalf("admitted %+v via %q: only the key's SigV4 signatures can be genuine here", p.Key, p.Via)
		}
		if got, _ := io.ReadAll(r.Body); !bytes.Equal(got, body) {
			t.Fatalf("the body was not put back: %q, want %q", got, body)
		}
		Strip(r, true)
		for _, h := range []string{"X-Api-Key", "X-Amz-Date", "X-Amz-Content-Sha256", "X-Amz-Security-Token"} {
			if _, ok := r.Header[h]; ok {
				t.Fatalf("Strip left %s", h)
			}
		}
		// An Authorization that is no credential of ebb's (the request was
		// admitted by its query's signature) is the caller's own, for the
		// function: kept, as on a public URL. One of ebb's never is.
		if a := r.Header.Get("Authorization"); a != "" && (isSigV4Header(a) || len(a) > 7 && strings.EqualFold(a[:7], "bearer ") && IsEbbSecret(a[7:])) {
			t.Fatalf("Strip left ebb's credential in Authorization %q", a)
		}
		for part := range strings.SplitSeq(r.URL.RawQuery, "&") {
			name, _, _ := strings.Cut(part, "=")
			if n, err := url.QueryUnescape(name); err == nil && sigv4Params[n] {
				t.Fatalf("Strip left query parameter %q in %q", n, r.URL.RawQuery)
			}
		}
	})
}

// validMethod is a method net/http would send: a token.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, c) {
			return false
		}
	}
	return true
}

func TestStrip(t *testing.T) {
	secret, _ := NewSecret()
	for _, tt := range []struct {
		name        string
		keyed       bool
		set         map[string]string
		kept, gone  []string
		query, want string
	}{
		{name: "ebb bearer", keyed: true, set: map[string]string{"Authorization": "Bearer " + secret, "X-Api-Key": "x"}, gone: []string{"Authorization", "X-Api-Key"}},
		{name: "public: own authorization kept", set: map[string]string{"Authorization": "Bearer their-own-token", "X-Api-Key": "theirs"}, kept: []string{"Authorization", "X-Api-Key"}},
		{name: "public: ebb credentials still removed", set: map[string]string{"Authorization": "Bearer " + secret, "X-Api-Key": secret}, gone: []string{"Authorization", "X-Api-Key"}},
		{name: "sigv4 headers", set: map[string]string{"Authorization": "AWS4-HMAC-SHA256 Credential=x", "X-Amz-Date": "1", "X-Amz-Content-Sha256": "2", "X-Amz-Security-Token": "3"},
			gone: []string{"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256", "X-Amz-Security-Token"}},
		{name: "query", query: "a=1&X-Amz-Signature=s&b=2&X-Amz-Credential=c&x-amz-other=k", want: "a=1&b=2&x-amz-other=k"},
		{name: "query, names percent-encoded", query: "a=%41&X%2DAmz-Signature=s&%58-Amz-Credential=c", want: "a=%41"},
	} {
		r := httptest.NewRequest("GET", "/fn/x?"+tt.query, nil)
		for k, v := range tt.set {
			r.Header.Set(k, v)
		}
		Strip(r, tt.keyed)
		for _, h := range tt.kept {
			if r.Header.Get(h) != tt.set[h] {
				t.Errorf("%s: %s was changed to %q", tt.name, h, r.Header.Get(h))
			}
		}
		for _, h := range tt.gone {
			if _, ok := r.Header[h]; ok {
				t.Errorf("%s: %s was not removed", tt.name, h)
			}
		}
		if tt.query != "" && r.URL.RawQuery != tt.want {
			t.Errorf("%s: query = %q, want %q", tt.name, r.URL.RawQuery, tt.want)
		}
	}
}

func TestSealer(t *testing.T) {
	kek := make([]byte, 32)
	s, err := NewSealer(kek)
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.Seal("0000aaaa", "the-secret")
	if strings.Contains(sealed, "the-secret") {
		t.Fatal("sealed text holds the secret")
	}
	if got, err := s.Open("0000aaaa", sealed); err != nil || got != "the-secret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open("0000bbbb", sealed); err == nil {
		t.Error("a secret sealed for one key opened for another")
	}
	other, _ := NewSealer(append(make([]byte, 31), 1))
	if _, err := other.Open("0000aaaa", sealed); err == nil {
		t.Error("a secret opened under another key-encryption key")
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:8080": true, "[::1]:80": true, "localhost:1": true,
		"0.0.0.0:8080": false, ":8080": false, "10.0.0.1:80": false} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
