package ebbtest

import (
	"fmt"
	"os"
	"testing"
)

// Gates CI sets (see .ci/run) for what its machine is known to provide.
// Under a gate, a test that finds the thing missing fails instead of
// skipping, so that a suite which ran none of those tests cannot pass.
const (
	// RequireCgroups: cgroups work (memory and pids limits are enforced).
	RequireCgroups = "EBB_REQUIRE_CGROUPS"
	// RequireONNX: ONNX Runtime and the ONNX backend test cases
	// (libonnx-testdata) are installed.
	RequireONNX = "EBB_REQUIRE_ONNX"
)

// Required says whether gate is set to 1.
func Required(gate string) bool { return os.Getenv(gate) == "1" }

// SkipUnlessRequired skips t saying why, or fails it when gate is set.
func SkipUnlessRequired(t testing.TB, gate, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if Required(gate) {
		t.Fatalf("%s=1 but %s", gate, why)
	}
	t.Skip(why)
}
