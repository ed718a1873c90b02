package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// slogLine is the line slog's JSON handler writes for inv at now: what
// record writes for an invocation that does not take the fast path.
func slogLine(t *testing.T, now time.Time, inv *ebb.Invocation) string {
	t.Helper()
	var buf bytes.Buffer
	r := slog.NewRecord(now, slog.LevelInfo, "invocation", 0)
	r.AddAttrs(invocationAttrs(inv, nil, "", nil)...)
	if err := slog.NewJSONHandler(&buf, nil).Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestInvocationLineMatchesSlog checks that the fast invocation line is,
// byte for byte, the line slog's JSON handler writes for the same record.
func TestInvocationLineMatchesSlog(t *testing.T) {
	for _, tc := range []struct {
		name string
		now  time.Time
		inv  ebb.Invocation
	}{
		{"typical", time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), ebb.Invocation{Function: "fn", Version: 3, RequestID: "8c1b1f9e-3d6a-4e8e-9a57-0c4f3b2d1e7a",
			Queued: 1500 * time.Microsecond, Duration: 2345 * time.Microsecond, MemoryMiB: 128, PeakRSS: 3 << 20, Status: 200, InstanceID: "fn-v3-1"}},
		{"zeros", time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC), ebb.Invocation{Function: "a", Version: 1, RequestID: "job-1", MemoryMiB: 64, Status: 200, InstanceID: "a-v1-9"}},
		{"large and odd", time.Date(2026, 6, 7, 8, 9, 10, 123456789, time.FixedZone("x", -7*3600-1800)), ebb.Invocation{Function: "big-fn-2", Version: 123456, RequestID: "r",
			Queued: 3*time.Second + 7*time.Nanosecond, Duration: 15*time.Minute + 999*time.Microsecond, MemoryMiB: 10240, PeakRSS: 1536<<20 + 12345, Status: 200, InstanceID: "big-fn-2-v123456-77"}},
		{"sub-millisecond", time.Date(2026, 1, 1, 0, 0, 0, 1, time.UTC), ebb.Invocation{Function: "f", Version: 2, RequestID: "x",
			Queued: time.Nanosecond, Duration: 999 * time.Microsecond, MemoryMiB: 1769, PeakRSS: 1, Status: 200, InstanceID: "f-v2-1"}},
		// Exponent notation, as encoding/json writes tiny and huge floats.
		{"exponents", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ebb.Invocation{Function: "f", Version: 2, RequestID: "x",
			Duration: time.Millisecond, MemoryMiB: 1, PeakRSS: 100, Status: 200, InstanceID: "f-v2-1"}},
		{"large peak", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ebb.Invocation{Function: "f", Version: 2, RequestID: "x",
			Duration: time.Millisecond, MemoryMiB: 1, PeakRSS: 1 << 63, Status: 200, InstanceID: "f-v2-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fast bytes.Buffer
			writeInvocationLine(&fast, tc.now, &tc.inv)
			if want := slogLine(t, tc.now, &tc.inv); fast.String() != want {
				t.Errorf("fast line differs from slog's:\nfast %s\nslog %s", fast.String(), want)
			}
		})
	}
	// A request id that would need escaping (never one ebb makes) loses
	// those characters; the line stays one line of JSON.
	inv := ebb.Invocation{Function: "fn", Version: 1, RequestID: "a\"b\\c\nd", Status: 200, InstanceID: "fn-v1-1"}
	var fast bytes.Buffer
	writeInvocationLine(&fast, time.Now(), &inv)
	var got map[string]any
	if err := json.Unmarshal(fast.Bytes(), &got); err != nil || got["request_id"] != "abcd" || strings.Count(fast.String(), "\n") != 1 {
		t.Errorf("unsafe request id: line %q (%v), want request_id abcd on one line", fast.String(), err)
	}
}

// TestInvocationLogFastPath runs the fast path end to end: a warm
// successful invocation's line goes to Config.InvocationLog, not through
// slog, and is exactly the line slog would have written for it.
func TestInvocationLogFastPath(t *testing.T) {
	var mu sync.Mutex
	var fast bytes.Buffer
	e := start(t, "", func(c *Config) { c.InvocationLog = lockedWriter{&mu, &fast} })
	e.deploy(goFn(t, "fastlog", ""))
	for i := range 3 {
		if code, body, _ := e.invoke("fastlog", `{}`); code != 200 {
			t.Fatalf("invoke %d = %d %s", i, code, body)
		}
	}
	// The cold start went through slog, with its extra fields.
	if n := strings.Count(e.logText(), `"msg":"invocation","function":"fastlog"`); n != 1 {
		t.Errorf("%d invocation lines in the slog log, want 1 (the cold start)", n)
	}
	mu.Lock()
	lines := strings.SplitAfter(fast.String(), "\n")
	mu.Unlock()
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) != 2 {
		t.Fatalf("fast log has %d lines, want 2 (the warm invocations):\n%s", len(lines), fast.String())
	}
	for _, line := range lines {
		var f struct {
			Time                                          time.Time
			Function, RequestID, Instance                 string
			Version, BilledMS, MemoryMiB, Status          int64
			ColdStart                                     bool
			InitMS, QueuedMS, DurationMS, PeakRSSMiB, GBS float64
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("fast line is not JSON: %v\n%s", err, line)
		}
		for key, dst := range map[string]any{"time": &f.Time, "function": &f.Function, "request_id": &f.RequestID, "instance": &f.Instance,
			"version": &f.Version, "billed_ms": &f.BilledMS, "memory_mib": &f.MemoryMiB, "status": &f.Status, "cold_start": &f.ColdStart,
			"init_ms": &f.InitMS, "queued_ms": &f.QueuedMS, "duration_ms": &f.DurationMS, "peak_rss_mib": &f.PeakRSSMiB, "gb_seconds": &f.GBS} {
			if err := json.Unmarshal(m[key], dst); err != nil {
				t.Fatalf("field %s of %s: %v", key, line, err)
			}
		}
		if f.Function != "fastlog" || f.Version != 1 || f.Status != 200 || f.ColdStart || f.RequestID == "" || !strings.HasPrefix(f.Instance, "fastlog-") || f.PeakRSSMiB <= 0 {
			t.Errorf("fast line %s: want a warm 200 of fastlog v1 with a request id, instance and peak RSS", line)
		}
		// The same record through slog gives the same bytes.
		inv := ebb.Invocation{Function: f.Function, Version: int(f.Version), RequestID: f.RequestID, InstanceID: f.Instance, Status: int(f.Status),
			MemoryMiB: int(f.MemoryMiB), Queued: msDuration(f.QueuedMS), Duration: msDuration(f.DurationMS), PeakRSS: uint64(f.PeakRSSMiB * (1 << 20))}
		if inv.BilledMS() != f.BilledMS {
			t.Errorf("billed_ms %d for duration_ms %v, want %d", f.BilledMS, f.DurationMS, inv.BilledMS())
		}
		if want := slogLine(t, f.Time, &inv); line != want {
			t.Errorf("fast line differs from slog's for the same record:\nfast %s\nslog %s", line, want)
		}
	}
}

func msDuration(ms float64) time.Duration { return time.Duration(ms*1000+0.5) * time.Microsecond }
