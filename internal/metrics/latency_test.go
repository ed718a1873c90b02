package metrics

import (
	"testing"
	"time"
)

func TestLatencyQuantiles(t *testing.T) {
	var h Latency
	if h.QuantileMS(0.5) != 0 {
		t.Fatal("an empty histogram has a median")
	}
	for i := 1; i <= 1000; i++ {
		h.Observe(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {0.01, 10}} {
		got := h.QuantileMS(c.q)
		// The bucket's upper bound: at or above the truth, within 25%.
		if got < c.want || got > c.want*1.25 {
			t.Errorf("q%.2f = %.1f ms, want %.0f to %.0f", c.q, got, c.want, c.want*1.25)
		}
	}
	var tiny Latency
	tiny.Observe(0)
	tiny.Observe(-time.Second)
	tiny.Observe(100 * time.Hour)
	if q := tiny.QuantileMS(1); q < 3600_000 {
		t.Errorf("a 100h observation reads as %.0f ms", q)
	}
}
