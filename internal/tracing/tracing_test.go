package tracing

import (
	"net/url"
	"testing"
)

func TestEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://localhost:4318", "http://localhost:4318/v1/traces"},
		{"http://localhost:4318/", "http://localhost:4318/v1/traces"},
		{"https://otel.example:443/custom/path", "https://otel.example:443/custom/path"},
		{"http://[::1]:4318", "http://[::1]:4318/v1/traces"},
		{"http://c:4318/v1/traces", "http://c:4318/v1/traces"},
	} {
		got, err := Endpoint(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Endpoint(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "localhost:4318", "grpc://c:4317", "http://", "http://:4318", "http://u:p@c:4318",
		"http://c:4318/?x=1", "http://c:4318/#f", "/v1/traces", "http://c:4318/%zz"} {
		if got, err := Endpoint(bad); err == nil {
			t.Errorf("Endpoint(%q) = %q, want an error", bad, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Endpoint: "http://c:4318"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Endpoint != "http://c:4318/v1/traces" || c.ServiceName != "ebb" || c.Logger == nil {
		t.Errorf("Validate filled %+v", c)
	}
	if err := (&Config{}).Validate(); err == nil {
		t.Error("Validate without an endpoint: want an error")
	}
}

// FuzzEndpoint: an accepted endpoint is an http(s) URL with a host and a
// path and nothing else, and accepting it again changes nothing.
func FuzzEndpoint(f *testing.F) {
	for _, s := range []string{"http://localhost:4318", "https://a:1/p", "http://[::1]", "http://u@h", "ftp://h", "http://h/%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Endpoint(s)
		if err != nil {
			return
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("Endpoint(%q) = %q, which does not parse: %v", s, got, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Path == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("Endpoint(%q) = %q: want http(s), a host and a path only", s, got)
		}
		again, err := Endpoint(got)
		if err != nil || again != got {
			t.Fatalf("Endpoint(%q) = %q, but Endpoint of that = %q, %v", s, got, again, err)
		}
	})
}
