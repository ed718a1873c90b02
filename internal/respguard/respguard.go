// Package respguard makes what a function answers safe for ebb to send. A
// function is untrusted code: the status, header fields and trailers it
// returns (a python or exec function's function URL result, an http
// instance's response) must not let it frame the response itself, end it
// early, or write a byte outside it (response splitting). ebb frames every
// response on its own, so this package removes the framing and hop-by-hop
// fields, drops fields whose name or value could break the message, and
// refuses statuses that are not a final answer.
//
// The edge (internal/gateway) and the http proxy (the upstream client) both
// call it, so there is one definition of what a function may send.
package respguard

import (
	"fmt"
	"net/http"
	"strings"
)

// Drop is a field removed from a function's response because it could break
// the message: its name, and why. Hop-by-hop and framing fields, which ebb
// removes from every response, are not reported.
type Drop struct {
	Name   string
	Reason string
}

// StatusError is a function's answer with a status ebb does not send: only
// final statuses 200–599 are passed on (1xx would start another message on
// the connection, 101 would hand the connection to the function).
type StatusError struct{ Code int }

func (e *StatusError) Error() string {
	return fmt.Sprintf("the function answered with status %d; a response status must be 200-599", e.Code)
}

// Status returns nil when code is a status ebb may send, else a
// *StatusError naming it.
func Status(code int) error {
	if code < 200 || code > 599 {
		return &StatusError{Code: code}
	}
	return nil
}

// hopByHop are the fields that belong to one connection, or that frame the
// message: ebb sets them itself for its own connection (RFC 9110 §7.6.1,
// RFC 9112 §6).
var hopByHop = []string{"Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Trailer", "Te",
	"Upgrade", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Authentication-Info"}

// Header cleans a function's response header in place: it removes the
// hop-by-hop and framing fields (and those the Connection field names),
// every Proxy-* field, and every field whose name is not a token or whose
// value holds CR, LF, NUL or another control character (only the bad
// values of a field with several go). It returns the fields of the last
// kind, for the caller to log.
func Header(h http.Header) []Drop {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" && ValidName(f) {
				delete(h, http.CanonicalHeaderKey(f))
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
	var drops []Drop
	for k, vs := range h {
		switch {
		case !ValidName(k):
			drops = append(drops, Drop{k, "invalid field name"})
			delete(h, k)
			continue
		case len(k) > 6 && strings.EqualFold(k[:6], "proxy-"):
			delete(h, k)
			continue
		}
		bad := 0
		for _, v := range vs {
			if !ValidValue(v) {
				bad++
			}
		}
		if bad == 0 {
			continue // the common case: nothing allocated
		}
		drops = append(drops, Drop{k, "control character in value"})
		if bad == len(vs) {
			delete(h, k)
			continue
		}
		kept := make([]string, 0, len(vs)-bad)
		for _, v := range vs {
			if ValidValue(v) {
				kept = append(kept, v)
			}
		}
		h[k] = kept
	}
	return drops
}

// forbiddenTrailers may not be sent after the body: they frame, route or
// authenticate a message, or say how to read its content (RFC 9110 §6.5.1).
var forbiddenTrailers = map[string]bool{
	"Authorization": true, "Cache-Control": true, "Content-Encoding": true, "Content-Range": true,
	"Content-Type": true, "Date": true, "Expect": true, "Host": true, "Max-Forwards": true,
	"Pragma": true, "Set-Cookie": true, "Www-Authenticate": true, "Location": true, "Retry-After": true,
	"Vary": true, "Age": true, "Expires": true,
}

// Trailer cleans trailer fields in place as Header cleans a header, and
// also removes the fields that may not be trailers. It returns the fields
// removed for being malformed or forbidden, for the caller to log.
func Trailer(h http.Header) []Drop {
	var drops []Drop
	for k, vs := range h {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case !ValidName(k):
			drops = append(drops, Drop{k, "invalid field name"})
		case forbiddenTrailers[ck] || isHopByHop(ck) || strings.HasPrefix(ck, "Proxy-"):
			drops = append(drops, Drop{k, "not allowed as a trailer"})
		default:
			ok := true
			for _, v := range vs {
				if !ValidValue(v) {
					ok = false
					break
				}
			}
			if ok {
				continue
			}
			drops = append(drops, Drop{k, "control character in value"})
		}
		delete(h, k)
	}
	return drops
}

// TrailerName says whether name may be declared and sent as a trailer.
func TrailerName(name string) bool {
	ck := http.CanonicalHeaderKey(name)
	return ValidName(name) && !forbiddenTrailers[ck] && !isHopByHop(ck) && !strings.HasPrefix(ck, "Proxy-")
}

func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if k == h {
			return true
		}
	}
	return false
}

// ValidName says whether s is a field name: a non-empty token (RFC 9110 §5.1).
func ValidName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// ValidValue says whether s may be sent as a field value: no CR, LF, NUL or
// other control character but horizontal tab.
func ValidValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
