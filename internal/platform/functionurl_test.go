package platform

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// urlApp is a python function behind /fn/urlev: /echo answers with the
// event it got, /reply answers with whatever JSON the request body holds
// (so the test controls the function's result exactly), /binary with a
// base64 body and cookies.
const urlApp = `
import base64, json

def handler(event, context):
    path = event["rawPath"]
    if path == "/echo":
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(event)}
    if path == "/reply":
        return json.loads(event["body"])
    if path == "/binary":
        return {"statusCode": 200, "isBase64Encoded": True, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(bytes(range(256))).decode(),
                "cookies": ["a=1; Path=/", "b=2; HttpOnly; Secure"]}
    return {"statusCode": 404, "body": "no route " + path}
`

// urlDo sends one request to the function URL and returns the answer.
func urlDo(t *testing.T, e *env, method, path string, body []byte, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+"/fn/urlev"+path, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

// TestFunctionURLEvent checks the Lambda function URL event (payload format
// 2.0) a python function gets, and how its answer becomes the response:
// base64 bodies both ways, cookies both ways, query strings, and the
// answers ebb refuses with a 502 that says why.
func TestFunctionURLEvent(t *testing.T) {
	needPython(t)
	e := start(t, "")
	e.deploy(fnDir(t, "name: urlev\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": urlApp}))

	type event struct {
		RawPath         string            `json:"rawPath"`
		RawQueryString  string            `json:"rawQueryString"`
		Cookies         []string          `json:"cookies"`
		Headers         map[string]string `json:"headers"`
		QueryParameters map[string]string `json:"queryStringParameters"`
		Body            string            `json:"body"`
		IsBase64Encoded bool              `json:"isBase64Encoded"`
		RequestContext  struct {
			HTTP struct{ Method, Path string }
		} `json:"requestContext"`
	}
	echo := func(method, query string, body []byte, hdr http.Header) event {
		t.Helper()
		resp, b := urlDo(t, e, method, "/echo"+query, body, hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("echo = %d %s", resp.StatusCode, b)
		}
		var ev event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatalf("decode echoed event %s: %v", b, err)
		}
		return ev
	}

	t.Run("query string", func(t *testing.T) {
		ev := echo("GET", "?a=1&b=x%20y&a=2&c=", nil, nil)
		if ev.RawQueryString != "a=1&b=x%20y&a=2&c=" {
			t.Errorf("rawQueryString = %q, want the query as sent", ev.RawQueryString)
		}
		// Repeated keys are joined by commas; values are decoded.
		if want := map[string]string{"a": "1,2", "b": "x y", "c": ""}; !maps.Equal(ev.QueryParameters, want) {
			t.Errorf("queryStringParameters = %v, want %v", ev.QueryParameters, want)
		}
		if ev.RawPath != "/echo" || ev.RequestContext.HTTP.Method != "GET" || ev.RequestContext.HTTP.Path != "/echo" {
			t.Errorf("rawPath %q, http %+v", ev.RawPath, ev.RequestContext.HTTP)
		}
		if ev := echo("GET", "", nil, nil); ev.RawQueryString != "" || ev.QueryParameters != nil {
			t.Errorf("no query: rawQueryString %q, queryStringParameters %v; want empty and absent", ev.RawQueryString, ev.QueryParameters)
		}
	})

	t.Run("cookies in", func(t *testing.T) {
		ev := echo("GET", "", nil, http.Header{"Cookie": {"c1=v1; c2=v2", "c3=v3;c4=v4"}, "X-Other": {"o"}})
		if want := []string{"c1=v1", "c2=v2", "c3=v3", "c4=v4"}; !slices.Equal(ev.Cookies, want) {
			t.Errorf("cookies = %q, want %q", ev.Cookies, want)
		}
		if _, ok := ev.Headers["cookie"]; ok || ev.Headers["x-other"] != "o" {
			t.Errorf("headers = %v: want the cookies only in cookies, x-other kept", ev.Headers)
		}
	})

	t.Run("body in", func(t *testing.T) {
		if ev := echo("POST", "", []byte("héllo text"), nil); ev.IsBase64Encoded || ev.Body != "héllo text" {
			t.Errorf("text body: isBase64Encoded %v body %q", ev.IsBase64Encoded, ev.Body)
		}
		bin := []byte{0xff, 0xfe, 0, 1, 2, 0x80, 'x'}
		ev := echo("POST", "", bin, nil)
		got, err := base64.StdEncoding.DecodeString(ev.Body)
		if !ev.IsBase64Encoded || err != nil || !bytes.Equal(got, bin) {
			t.Errorf("binary body: isBase64Encoded %v body %q (%v), want base64 of %x", ev.IsBase64Encoded, ev.Body, err, bin)
		}
	})

	t.Run("base64 body and cookies out", func(t *testing.T) {
		resp, b := urlDo(t, e, "GET", "/binary", nil, nil)
		want := make([]byte, 256)
		for i := range want {
			want[i] = byte(i)
		}
		if resp.StatusCode != 200 || !bytes.Equal(b, want) || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Errorf("binary = %d %q %v, want 200 and bytes 0..255", resp.StatusCode, b, resp.Header)
		}
		if got := resp.Header.Values("Set-Cookie"); !slices.Equal(got, []string{"a=1; Path=/", "b=2; HttpOnly; Secure"}) {
			t.Errorf("Set-Cookie = %q, want one field per cookie", got)
		}
	})

	t.Run("results", func(t *testing.T) {
		for _, tt := range []struct {
			result   string
			status   int
			body     string // exact body, or for a 502 a fragment of its message
			location string
		}{
			// Structured responses.
			{`{"statusCode": 201, "body": "made", "headers": {"Location": "/x"}}`, 201, "made", "/x"},
			{`{"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}`, 200, "hi", ""},
			{`{"statusCode": 599, "body": ""}`, 599, "", ""},
			// No statusCode, or not an object: the JSON is a 200's body.
			{`{"message": "hi"}`, 200, `{"message":"hi"}`, ""},
			{`[1, 2]`, 200, `[1,2]`, ""},
			{`"just a string"`, 200, `"just a string"`, ""},
			// Refused: 502 Runtime.InvalidResponse that names the problem.
			{`{"statusCode": 200, "body": "not base64!", "isBase64Encoded": true}`, 502, "not valid base64", ""},
			{`{"statusCode": 0, "body": "x"}`, 502, "statusCode 0", ""},
			{`{"statusCode": 99}`, 502, "statusCode 99", ""},
			{`{"statusCode": 1000}`, 502, "statusCode 1000", ""},
			{`{"statusCode": -200}`, 502, "statusCode -200", ""},
			{`{"statusCode": 101}`, 502, "statusCode 101", ""},
			{`{"statusCode": null}`, 502, "statusCode 0", ""},
			{`{"statusCode": "200"}`, 502, "statusCode", ""},
			{`{"statusCode": 200.5}`, 502, "statusCode", ""},
			{`{"statusCode": 200, "headers": {"x-n": 1}}`, 502, "headers", ""},
			{`{"statusCode": 200, "body": {"nested": true}}`, 502, "body", ""},
		} {
			resp, b := urlDo(t, e, "POST", "/reply", []byte(tt.result), nil)
			if resp.StatusCode != tt.status {
				t.Errorf("%s: %d %s, want %d", tt.result, resp.StatusCode, b, tt.status)
				continue
			}
			if tt.status != 502 {
				if string(b) != tt.body || resp.Header.Get("Location") != tt.location {
					t.Errorf("%s: body %q Location %q, want %q %q", tt.result, b, resp.Header.Get("Location"), tt.body, tt.location)
				}
				if structured := strings.Contains(tt.result, "statusCode"); !structured && resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("%s: Content-Type %q, want application/json", tt.result, resp.Header.Get("Content-Type"))
				}
				continue
			}
			var eb struct{ ErrorType, ErrorMessage string }
			if err := json.Unmarshal(b, &eb); err != nil || eb.ErrorType != "Runtime.InvalidResponse" || !strings.Contains(eb.ErrorMessage, tt.body) {
				t.Errorf("%s: 502 body %s, want Runtime.InvalidResponse naming %q", tt.result, b, tt.body)
			}
		}
	})
}
