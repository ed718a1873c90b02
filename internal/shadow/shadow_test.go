package shadow

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestCompare(t *testing.T) {
	cases := []struct {
		a, b string
		tol  float64
		eq   bool
		path string
	}{
		{`{"a":1,"b":[1,2]}`, `{"b":[1,2],"a":1}`, 0, true, ""},
		{`{"a":1.0}`, `{"a":1}`, 0, true, ""},
		{`{"p":0.5}`, `{"p":0.5000001}`, 1e-6, true, ""},
		{`{"p":0.5}`, `{"p":0.50001}`, 1e-6, false, "$.p"},
		{`{"p":0.5}`, `{"p":0.50001}`, 1e-3, true, ""},
		{`{"a":{"b":[1,{"c":"x"}]}}`, `{"a":{"b":[1,{"c":"y"}]}}`, 0, false, "$.a.b[1].c"},
		{`{"a":1}`, `{"a":1,"b":2}`, 0, false, "$.b"},
		{`[1,2]`, `[1,2,3]`, 0, false, "$"},
		{`{"a":true}`, `{"a":"true"}`, 0, false, "$.a"},
		{`{"a":null}`, `{"a":null}`, 0, true, ""},
		{`not json`, `not json`, 0, true, ""},
		{`not json`, `not JSON`, 0, false, "$"},
		{`{"a":1}`, `{"a":1} {"b":2}`, 0, false, "$"},
		{`{"big":123456789012345678901}`, `{"big":123456789012345678902}`, 0, false, "$.big"},
		// Open Inference Protocol outputs: matched by tensor name.
		{`{"model_name":"m","outputs":[{"name":"y","data":[1,2]},{"name":"z","data":[3]}]}`,
			`{"model_name":"m","outputs":[{"name":"z","data":[3]},{"name":"y","data":[1,2]}]}`, 0, true, ""},
		{`{"outputs":[{"name":"y","data":[1,2]},{"name":"z","data":[3]}]}`,
			`{"outputs":[{"name":"z","data":[3]},{"name":"y","data":[1,2.5]}]}`, 1e-6, false, `$.outputs["y"].data[1]`},
		{`{"outputs":[{"name":"y"}]}`, `{"outputs":[{"name":"w"}]}`, 0, false, `$.outputs["w"]`},
	}
	for _, c := range cases {
		eq, path := Compare([]byte(c.a), []byte(c.b), c.tol)
		if eq != c.eq || path != c.path {
			t.Errorf("Compare(%s, %s, %g) = %v %q, want %v %q", c.a, c.b, c.tol, eq, path, c.eq, c.path)
		}
	}
}

func TestRunTallies(t *testing.T) {
	r := NewRun(Config{Version: 2, Percent: 50}, time.Unix(0, 0), 2)
	picked := 0
	for d := range uint32(1000) {
		if r.Pick(d) {
			picked++
		}
	}
	if picked != 500 {
		t.Fatalf("a 50%% run picks %d of 1000 draws", picked)
	}
	for i := range 30 {
		shadow := `{"v":1}`
		if i%3 == 0 {
			shadow = `{"v":2}`
		}
		var err error
		if i%10 == 9 {
			err = errors.New("Sandbox.Timedout")
		}
		r.Record(fmt.Sprint("rid-", i), []byte(`{"v":1}`), time.Millisecond, []byte(shadow), 2*time.Millisecond, err)
	}
	rep := r.Report(true)
	// i%10==9: 3 errors (9, 19, 29); of the other 27, i%3==0 differ: 0,3,6,12,15,18,21,24,27 = 9.
	if rep.Mirrored != 30 || rep.ShadowErrors != 3 || rep.Differ != 9 || rep.Equal != 18 {
		t.Fatalf("report = %+v", rep)
	}
	if len(rep.Examples) != 12 || rep.Examples[0].RequestID != "rid-0" || rep.Examples[0].Path != "$.v" {
		t.Fatalf("examples = %+v", rep.Examples)
	}
	if rep.Tol() != DefaultTolerance || rep.ShadowP50MS <= rep.PrimaryP50MS {
		t.Fatalf("report = %+v", rep)
	}
	// The in-flight bound: the third concurrent mirror is dropped.
	if !r.Begin() || !r.Begin() || r.Begin() {
		t.Fatal("Begin does not bound mirrors in flight at 2")
	}
	r.End()
	if !r.Begin() {
		t.Fatal("End did not free a slot")
	}
	if r.Report(true).Dropped != 1 {
		t.Fatal("a dropped mirror was not counted")
	}
}

// TestRunToleranceZeroIsExact: a run asked for tolerance 0 compares numbers
// exactly; one that names none uses the default.
func TestRunToleranceZeroIsExact(t *testing.T) {
	primary, shadow := []byte(`{"p":0.5}`), []byte(`{"p":0.5000000001}`)
	exact := NewRun(Config{Version: 2, Percent: 100, Tolerance: new(0.0)}, time.Unix(0, 0), 2)
	exact.Record("r", primary, time.Millisecond, shadow, time.Millisecond, nil)
	if rep := exact.Report(true); rep.Differ != 1 || rep.Tol() != 0 {
		t.Fatalf("tolerance 0: %+v, want the pair to differ", rep)
	}
	def := NewRun(Config{Version: 2, Percent: 100}, time.Unix(0, 0), 2)
	def.Record("r", primary, time.Millisecond, shadow, time.Millisecond, nil)
	if rep := def.Report(true); rep.Equal != 1 || rep.Tol() != DefaultTolerance {
		t.Fatalf("no tolerance named: %+v, want the pair equal within %g", rep, DefaultTolerance)
	}
}
