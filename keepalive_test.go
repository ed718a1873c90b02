package ebb

import (
	"strings"
	"testing"
	"time"
)

func TestParseKeepAlive(t *testing.T) {
	for _, c := range []struct {
		in, want string
		d        time.Duration
	}{
		{"adaptive", "adaptive", 0},
		{"fixed:10m", "fixed:10m", 10 * time.Minute},
		{"fixed:600s", "fixed:10m", 10 * time.Minute},
		{"fixed:2h", "fixed:2h", 2 * time.Hour},
		{"fixed:1ms", "fixed:1ms", time.Millisecond},
	} {
		got, d, err := ParseKeepAlive(c.in)
		if err != nil || got != c.want || d != c.d {
			t.Errorf("ParseKeepAlive(%q) = %q, %s, %v; want %q, %s", c.in, got, d, err, c.want, c.d)
		}
	}
	for _, in := range []string{"", "Adaptive", "fixed", "fixed:", "fixed:0", "fixed:-1m", "fixed:999us", "hybrid", "fixed:10m ", "fixed:" + strings.Repeat("1", 70) + "ns"} {
		if got, _, err := ParseKeepAlive(in); err == nil {
			t.Errorf("ParseKeepAlive(%q) = %q, want an error", in, got)
		}
	}
}
