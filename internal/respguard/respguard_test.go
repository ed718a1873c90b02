package respguard

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
)

func TestHeader(t *testing.T) {
	h := http.Header{
		"Connection":        {"keep-alive, X-Hop"},
		"X-Hop":             {"1"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"Content-Length":    {"5"},
		"Trailer":           {"X-T"},
		"Te":                {"trailers"},
		"Upgrade":           {"websocket"},
		"Proxy-Foo":         {"x"},
		"X-Split":           {"a\r\nContent-Length: 0"},
		"X-Nul":             {"a\x00b"},
		"Bad Name":          {"1"},
		"X-Lf\nName":        {"1"},
		"Set-Cookie":        {"a=1", "b=2\r\nX: y"},
		"X-Tab":             {"a\tb"},
		"Content-Type":      {"text/plain"},
	}
	drops := Header(h)
	want := http.Header{"Set-Cookie": {"a=1"}, "X-Tab": {"a\tb"}, "Content-Type": {"text/plain"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("kept %v, want %v", h, want)
	}
	if len(drops) != 5 {
		t.Errorf("drops %v, want the 5 malformed fields (not the hop-by-hop ones)", drops)
	}
}

func TestTrailer(t *testing.T) {
	h := http.Header{"X-Sum": {"42"}, "Content-Length": {"9"}, "Set-Cookie": {"a=1"}, "X-Bad": {"1\r\n"}, "Transfer-Encoding": {"x"}}
	drops := Trailer(h)
	if !reflect.DeepEqual(h, http.Header{"X-Sum": {"42"}}) || len(drops) != 4 {
		t.Errorf("kept %v, dropped %v", h, drops)
	}
	if !TrailerName("X-Sum") || TrailerName("content-length") || TrailerName("a b") {
		t.Error("TrailerName")
	}
}

func TestStatus(t *testing.T) {
	for code, ok := range map[int]bool{100: false, 101: false, 199: false, 200: true, 404: true, 599: true, 600: false, 0: false, -1: false} {
		err := Status(code)
		var se *StatusError
		if (err == nil) != ok || (err != nil && (!errors.As(err, &se) || se.Code != code)) {
			t.Errorf("Status(%d) = %v", code, err)
		}
	}
}
