package platform

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// BenchmarkInvokeWarm measures a warm exec (aws-lambda-go) invoke end to end
// over HTTP on loopback, as a client sees it.
func BenchmarkInvokeWarm(b *testing.B) { benchInvokeWarm(b, "") }

// benchInvokeWarm is BenchmarkInvokeWarm with more manifest lines (the
// keep-alive's variant in keepalive_test.go).
func benchInvokeWarm(b *testing.B, manifest string) {
	e := start(b, "")
	e.deploy(goFn(b, "bench", "min_instances: 1\n"+manifest))
	url := e.url + "/v1/functions/bench/invoke"
	body := []byte(`{"name":"bench"}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	do := func() {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	do()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		do()
	}
}

// BenchmarkProxyWarm measures a warm http function through /fn/ end to end.
func BenchmarkProxyWarm(b *testing.B) {
	e := start(b, "")
	e.deploy(fnDir(b, "name: web\nruntime: http\nhandler: ./server\nmin_instances: 1\nconcurrency: 64\n", map[string]string{"server": "@httpfn"}))
	url := e.url + "/fn/web/log"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	do := func() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	do()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		do()
	}
}
