package conformance

import (
	"fmt"
	"strings"
	"testing"
)

// ortNoKernel is the kind of generic ONNX Runtime message that once excused
// any failure containing it.
const ortNoKernel = "status 500: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Max(13) node with name ''"

// TestProblemsExcuseByName: the excuse list names cases; a failure is
// excused only for a listed case, never for its message, and never when
// ebb's own reader could not read the case.
func TestProblemsExcuseByName(t *testing.T) {
	for _, tc := range []struct {
		name    string
		r       Result
		problem bool
	}{
		{"unlisted case failing with generic ONNX Runtime text", Result{Case: "node/test_max_int32", Status: Fail, Reason: ortNoKernel}, true},
		{"listed case failing", Result{Case: "node/test_max_int16", Status: Fail, Reason: ortNoKernel}, false},
		{"listed case ebb's reader cannot read", Result{Case: "node/test_max_int16", Status: Fail, Reason: "read case: parse model: truncated", Unread: true}, true},
		{"unlisted case ebb's reader cannot read", Result{Case: "node/test_abs", Status: Fail, Reason: "read case: parse model: truncated", Unread: true}, true},
		{"listed case passing (stale entry)", Result{Case: "node/test_adam", Status: Pass}, true},
		{"listed case that may pass, passing", Result{Case: "node/test_bernoulli", Status: Pass}, false},
		{"unlisted case passing", Result{Case: "node/test_abs", Status: Pass}, false},
		{"unlisted case skipped", Result{Case: "node/test_sequence_insert_at_back", Status: Skip, Reason: "not a tensor"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := (&Summary{Results: []Result{tc.r}}).Problems(false)
			if (len(got) > 0) != tc.problem {
				t.Errorf("Problems(%+v) = %q, want a problem: %v", tc.r, got, tc.problem)
			}
		})
	}
}

// TestProblemsFloor: a full run fails below PassFloor and when a listed
// case is not among the results; a partial run checks neither.
func TestProblemsFloor(t *testing.T) {
	var all []Result
	for name := range knownFailures {
		all = append(all, Result{Case: name, Status: Fail, Reason: "known"})
	}
	for i := range PassFloor {
		all = append(all, Result{Case: fmt.Sprintf("node/test_pass_%d", i), Status: Pass})
	}
	if got := (&Summary{Results: all}).Problems(true); len(got) != 0 {
		t.Errorf("a full run at the floor with every listed case failing: problems %q, want none", got)
	}
	short := all[:len(all)-1] // one pass fewer
	got := (&Summary{Results: short}).Problems(true)
	if len(got) != 1 || !strings.Contains(got[0], "below the floor") {
		t.Errorf("a full run one below the floor: problems %q, want the floor", got)
	}
	if got := (&Summary{Results: short}).Problems(false); len(got) != 0 {
		t.Errorf("a partial run below the floor: problems %q, want none", got)
	}
	missing := all[1:] // the first listed case did not run
	got = (&Summary{Results: missing}).Problems(true)
	if len(got) != 1 || !strings.Contains(got[0], all[0].Case+" is listed") {
		t.Errorf("a full run without %s: problems %q, want that listed case named", all[0].Case, got)
	}
}
