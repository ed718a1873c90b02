package runtimeapi

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkInvoke measures warm Invoke round trips through a real
// aws-lambda-go function: Invoke → /next → handler → /response → Invoke.
func BenchmarkInvoke(b *testing.B) {
	payload := []byte(`{"model":"churn","features":[0.1,0.2,0.3,0.4]}`)
	s := startServer(b, Config{FunctionName: "bench"})
	startEcho(b, s)
	ctx := context.Background()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = "bench-" + strconv.Itoa(i)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if _, err := s.Invoke(ctx, Request{ID: ids[i%len(ids)], Payload: payload}); err != nil {
			b.Fatalf("Invoke: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

// BenchmarkInvokeParallel drives one instance that polls from several
// goroutines (AWS_LAMBDA_MAX_CONCURRENCY) with as many concurrent callers.
func BenchmarkInvokeParallel(b *testing.B) {
	payload := []byte(`{"x":1}`)
	s := startServer(b, Config{FunctionName: "bench"})
	startEcho(b, s, "AWS_LAMBDA_MAX_CONCURRENCY=4")
	var seq atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(2) // with GOMAXPROCS=2: four callers for four pollers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			id := fmt.Sprintf("p-%d", seq.Add(1))
			if _, err := s.Invoke(ctx, Request{ID: id, Payload: payload}); err != nil {
				b.Errorf("Invoke: %v", err)
				return
			}
		}
	})
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}
