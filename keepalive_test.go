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

// FuzzParseKeepAlive: what is accepted has a canonical form that parses
// back to itself, with the same duration.
func FuzzParseKeepAlive(f *testing.F) {
	for _, s := range []string{"adaptive", "fixed:10m", "fixed:1h30m", "fixed:0.5s", "fixed:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, d, err := ParseKeepAlive(s)
		if err != nil {
			return
		}
		if c != KeepAliveAdaptive && d < time.Millisecond {
			t.Fatalf("%q accepted as %q with duration %s", s, c, d)
		}
		c2, d2, err := ParseKeepAlive(c)
		if err != nil || c2 != c || d2 != d {
			t.Fatalf("%q → %q (%s) → %q (%s), %v", s, c, d, c2, d2, err)
		}
	})
}
