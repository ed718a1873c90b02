package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"8MiB": 8 << 20, "8M": 8 << 20, "512KiB": 512 << 10, "1GiB": 1 << 30, "65536": 65536, "10B": 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "1TB", "lots", "8 MB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
	if s := formatSize(8 << 20); s != "8MiB" {
		t.Errorf("formatSize = %q", s)
	}
}
