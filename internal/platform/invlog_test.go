package platform

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// TestInvocationLineMatchesSlog checks that the fast invocation line is the
// same JSON, with the same fields, as the slog line it stands in for.
func TestInvocationLineMatchesSlog(t *testing.T) {
	inv := ebb.Invocation{Function: "fn", Version: 3, RequestID: "req-\"1\"", Queued: 1500 * time.Microsecond,
		Duration: 2345 * time.Microsecond, MemoryMiB: 128, PeakRSS: 3 << 20, Status: 200, InstanceID: "fn-v3-1"}
	var fast bytes.Buffer
	writeInvocationLine(&fast, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), &inv)
	var got map[string]any
	if err := json.Unmarshal(fast.Bytes(), &got); err != nil {
		t.Fatalf("fast line is not JSON: %v\n%s", err, fast.String())
	}
	if !strings.HasSuffix(fast.String(), "}\n") || strings.Count(fast.String(), "\n") != 1 {
		t.Errorf("fast line is not one line: %q", fast.String())
	}
	want := map[string]any{"function": "fn", "version": 3.0, "request_id": "req-1", "cold_start": false, "init_ms": 0.0,
		"queued_ms": 1.5, "duration_ms": 2.345, "billed_ms": 3.0, "memory_mib": 128.0, "peak_rss_mib": 3.0,
		"gb_seconds": 0.000375, "status": 200.0, "instance": "fn-v3-1", "level": "INFO", "msg": "invocation"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) != len(want)+1 { // + time
		t.Errorf("fields = %v", keys)
	}
}
