package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMiddleware(t *testing.T) {
	var keys Keys
	secret, hash := NewKey()
	keys.Add(hash)
	h := keys.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }), "/healthz")
	tests := []struct {
		name, path, header, value string
		want                      int
	}{
		{"no key", "/v1/functions", "", "", 401},
		{"wrong key", "/v1/functions", "Authorization", "Bearer ebb_nope", 401},
		{"bearer", "/v1/functions", "Authorization", "Bearer " + secret, 200},
		{"lowercase bearer", "/v1/functions", "Authorization", "bearer " + secret, 200},
		{"basic is not bearer", "/v1/functions", "Authorization", "Basic " + secret, 401},
		{"x-api-key", "/v1/functions", "X-Api-Key", secret, 200},
		{"open path", "/healthz", "", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.path, nil)
			if tt.header != "" {
				r.Header.Set(tt.header, tt.value)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tt.want {
				t.Errorf("status = %d, want %d", w.Code, tt.want)
			}
		})
	}
	keys.Remove(hash)
	if keys.Valid(secret) {
		t.Error("removed key still valid")
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
