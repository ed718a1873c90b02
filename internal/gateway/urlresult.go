package gateway

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/ebb-run/ebb/internal/respguard"
)

// InvalidResponseError is a function URL result that ebb cannot turn into a
// response: the function's fault, so the client gets a 502
// Runtime.InvalidResponse that says what was wrong.
type InvalidResponseError struct{ Msg string }

func (e *InvalidResponseError) Error() string { return "invalid function URL response: " + e.Msg }

// urlResult is what a function URL result becomes: a status, the function's
// header fields (less those respguard drops) and the decoded body.
type urlResult struct {
	status  int
	header  http.Header
	body    []byte
	dropped []respguard.Drop
}

// decodeURLResult reads a python or exec function's answer to a function URL
// event, as Lambda reads payload format 2.0 answers:
//   - a JSON object with a statusCode field is a structured response
//     {statusCode, headers, cookies, body, isBase64Encoded}. Its statusCode
//     must be an integer of 200-599, its fields of their types and a base64
//     body valid base64, or the result is an *InvalidResponseError;
//   - anything else (another JSON value, an object without statusCode, or
//     bytes that are not JSON at all) is the body of a 200 with
//     Content-Type application/json.
//
// cookies become Set-Cookie fields, one each.
func decodeURLResult(raw []byte) (*urlResult, error) {
	// Field names match exactly, as in Lambda: {"StatusCode": 200} is not a
	// structured response (Go's struct decoding would ignore case).
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil || fields["statusCode"] == nil {
		return &urlResult{status: http.StatusOK, header: http.Header{"Content-Type": {"application/json"}}, body: raw}, nil
	}
	var resp urlResponse
	for _, f := range []struct {
		name string
		dst  any
		typ  string
	}{
		{"statusCode", &resp.StatusCode, "an integer"},
		{"headers", &resp.Headers, "an object of strings"},
		{"cookies", &resp.Cookies, "an array of strings"},
		{"body", &resp.Body, "a string"},
		{"isBase64Encoded", &resp.IsBase64Encoded, "a boolean"},
	} {
		if v, ok := fields[f.name]; ok && json.Unmarshal(v, f.dst) != nil {
			return nil, &InvalidResponseError{fmt.Sprintf("%s must be %s, not %.40s", f.name, f.typ, v)}
		}
	}
	if err := respguard.Status(resp.StatusCode); err != nil {
		return nil, &InvalidResponseError{fmt.Sprintf("statusCode %d: a response status must be 200-599", resp.StatusCode)}
	}
	out := []byte(resp.Body)
	if resp.IsBase64Encoded {
		var err error
		if out, err = base64.StdEncoding.DecodeString(resp.Body); err != nil {
			return nil, &InvalidResponseError{"isBase64Encoded is true but body is not valid base64: " + err.Error()}
		}
	}
	// The function's fields, less what could frame or split the response:
	// ebb frames it (Content-Length of the decoded body).
	fh := make(http.Header, len(resp.Headers)+1)
	for k, v := range resp.Headers {
		fh.Set(k, v)
	}
	for _, c := range resp.Cookies {
		fh.Add("Set-Cookie", c)
	}
	dropped := respguard.Header(fh)
	return &urlResult{status: resp.StatusCode, header: fh, body: out, dropped: dropped}, nil
}

// splitCookies turns Cookie fields into the event's cookies array, one
// "name=value" each, as Lambda does: pairs are separated by ";" with or
// without a space, and empty pairs are dropped.
func splitCookies(fields []string) []string {
	var out []string
	for _, f := range fields {
		for _, c := range strings.Split(f, ";") {
			if c = strings.TrimSpace(c); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}
