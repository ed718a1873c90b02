package runtimeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzRuntimeAPI drives the handler with arbitrary requests against a server
// that has one invocation handed out ("sent") and one queued ("queued"), so
// that every route can be reached without blocking. It checks that the server
// never panics, answers a status the API defines, and keeps its books.
func FuzzRuntimeAPI(f *testing.F) {
	seeds := []struct {
		method, path, headers string
		body                  []byte
		chunked               bool
	}{
		{"GET", nextPath, "", nil, false},
		{"POST", invokePrefix + "sent/response", "Content-Type: application/json", []byte(`{"ok":true}`), true},
		{"POST", invokePrefix + "sent/error", "Lambda-Runtime-Function-Error-Type: Runtime.X", []byte(`{"errorType":"E","errorMessage":"m","stackTrace":[{"path":"p","line":1}]}`), false},
		{"POST", invokePrefix + "queued/response", "", []byte(`1`), false},
		{"POST", invokePrefix + "sent/response", "", bytes.Repeat([]byte("x"), 300), false},
		{"POST", initErrorPath, "", []byte(`{"errorType":"Runtime.ImportModuleError","errorMessage":"x"}`), false},
		{"PUT", invokePrefix + "sent/error", "", nil, false},
		{"GET", "/2018-06-01/runtime/invocation//response", "", nil, false},
		{"POST", "/2018-06-01/runtime/invocation/sent/../queued/response", "", []byte("{"), true},
		{"DELETE", "/", "X: \x00", []byte("\xff"), false},
		{"", nextPath, "", nil, false}, // net/http reads an empty method as GET
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.headers, s.body, s.chunked)
	}
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte, chunked bool) {
		s := newServer(mustValidate(t, Config{FunctionName: "fuzz", MaxResponseBytes: 256}))
		sent, err := s.submit(context.Background(), Request{ID: "sent", Payload: []byte(`{"n":1}`)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.submit(context.Background(), Request{ID: "queued"}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, err := s.nextCall(ctx); err != nil || c != sent {
			t.Fatalf("nextCall = %v, %v; want the first call", c, err)
		}

		req, err := http.NewRequestWithContext(ctx, method, "http://127.0.0.1"+target, bytes.NewReader(body))
		if err != nil {
			return // not a request net/http would hand to a handler
		}
		req.RequestURI = target
		for _, line := range strings.Split(headers, "\n") {
			k, v, _ := strings.Cut(line, ":")
			req.Header.Add(k, strings.TrimSpace(v))
		}
		if chunked {
			req.ContentLength = -1
		}
		if k, v, ok := strings.Cut(headers, "="); ok {
			req.Trailer = http.Header{k: {v}}
		}

		rec := httptest.NewRecorder()
		s.serveHTTP(rec, req)

		switch rec.Code {
		case http.StatusOK:
			if !(req.Method == http.MethodGet && req.URL.Path == nextPath) {
				t.Errorf("%s %q answered 200; only GET next may", req.Method, target)
			}
			if got := rec.Header().Get(hdrRequestID); got != "queued" {
				t.Errorf("next handed out %q, want queued", got)
			}
		case http.StatusAccepted:
			var doc map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc["status"] != "OK" {
				t.Errorf("202 body %q, want {\"status\":\"OK\"}", rec.Body.Bytes())
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusRequestEntityTooLarge, http.StatusInternalServerError:
			var doc struct {
				Message *string `json:"errorMessage"`
				Type    string  `json:"errorType"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc.Message == nil || doc.Type == "" {
				t.Errorf("%d body %q is not an error document", rec.Code, rec.Body.Bytes())
			}
		default:
			t.Errorf("%s %q answered %d, not a status of the API", method, target, rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}

		// Whatever happened, the server's books stay consistent: a finished
		// call is gone from the map and a live one is in exactly one place.
		s.mu.Lock()
		defer s.mu.Unlock()
		for id, c := range s.calls {
			if c.req.ID != id || c.state == stateDone {
				t.Errorf("call %q in the map has state %d", id, c.state)
			}
		}
		if sent.state == stateDone {
			select {
			case <-sent.done:
			default:
				t.Errorf("finished call's done channel is open")
			}
		}
	})
}
