package monitor

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"testing"
)

type pair struct {
	idx int
	v   float64
}

// fieldsMap indexes fields by name; a name given twice is "#dup".
func fieldsMap(fs []Field) map[string][]pair {
	out := map[string][]pair{}
	for _, f := range fs {
		ps := []pair{}
		for i, v := range f.Values {
			ps = append(ps, pair{f.Index[i], v})
		}
		if _, dup := out[f.Name]; dup {
			out["#dup"] = nil
		}
		out[f.Name] = ps
	}
	return out
}

// refFields is JSONFields' rule written over encoding/json's reading of b;
// false when encoding/json refuses b.
func refFields(b []byte, maxFeatures int) (map[string][]pair, bool) {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil, false
	}
	obj, ok := v.(map[string]any)
	if !ok {
		obj = map[string]any{RootField: v}
	}
	out := map[string][]pair{}
	for k, x := range obj {
		if ps, ok := refValue(x, maxFeatures); ok {
			out[k] = ps
		}
	}
	return out, true
}

func refValue(x any, maxFeatures int) ([]pair, bool) {
	ps := []pair{}
	add := func(i int, v float64) {
		if i < maxFeatures {
			ps = append(ps, pair{i, v})
		}
	}
	switch x := x.(type) {
	case float64:
		add(0, x)
		return ps, true
	case []any:
		rows := len(x) > 0
		for _, e := range x {
			if _, ok := e.([]any); !ok {
				rows = false
			}
		}
		for i, e := range x {
			if rows {
				for j, c := range e.([]any) {
					f, ok := c.(float64)
					if !ok {
						return nil, false
					}
					add(j, f)
				}
				continue
			}
			f, ok := e.(float64)
			if !ok {
				return nil, false
			}
			add(i, f)
		}
		return ps, true
	}
	return nil, false
}

func TestJSONFields(t *testing.T) {
	b := []byte(`{"age": 41, "name": "x", "features": [[1, 2.5, 3], [4, 5, 6]], "v": [7, 8], "o": {"a": 1},
		"mixed": [1, "a"], "deep": [[[1]]], "age": 42, "esc\u0061ped": -1e3, "flag": true}`)
	got, err := JSONFields(b, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]pair{
		"age":      {{0, 42}},
		"features": {{0, 1}, {1, 2.5}, {0, 4}, {1, 5}},
		"v":        {{0, 7}, {1, 8}},
		"escaped":  {{0, -1000}},
	}
	gm := fieldsMap(got)
	if len(gm) != len(want) {
		t.Fatalf("fields = %v, want %v", gm, want)
	}
	for k, w := range want {
		if !slices.Equal(gm[k], w) {
			t.Errorf("field %q = %v, want %v", k, gm[k], w)
		}
	}
	if got, _ := JSONFields([]byte(`[0.5, 1.5]`), 64); len(got) != 1 || got[0].Name != RootField || !slices.Equal(got[0].Values, []float64{0.5, 1.5}) {
		t.Errorf("root array = %+v", got)
	}
}

// TestJSONFieldsLenient: a value that is only skipped, or tried as a
// number, is read leniently (brackets balance, strings end), so a body
// with a malformed part still gives its other fields; a key is decoded as
// encoding/json decodes it.
func TestJSONFieldsLenient(t *testing.T) {
	for _, c := range []struct {
		in   string
		want map[string][]pair // nil: an error
	}{
		{`{"a": {"x" "y"}, "b": 1}`, map[string][]pair{"b": {{0, 1}}}},
		{`{"a": [1é], "b": 2}`, map[string][]pair{"b": {{0, 2}}}},
		{`{"a": 0x1p4, "b": 1e5, "c": 1x}`, map[string][]pair{"a": {{0, 16}}, "b": {{0, 1e5}}}},
		{"{\"\xffa\": [1]}", map[string][]pair{"\ufffda": {{0, 1}}}},
		{`{"a": 1}x`, map[string][]pair{"a": {{0, 1}}}},
		{`{"a": [1 2]}`, nil},
		{`{"a" 1}`, nil},
		{`{"a": ]}`, nil},
	} {
		got, err := JSONFields([]byte(c.in), 3)
		if c.want == nil {
			if err == nil {
				t.Errorf("JSONFields(%q) = %v, want an error", c.in, got)
			}
			continue
		}
		gm := fieldsMap(got)
		if err != nil || len(gm) != len(c.want) {
			t.Errorf("JSONFields(%q) = %v, %v, want %v", c.in, gm, err, c.want)
			continue
		}
		for k, w := range c.want {
			if !slices.Equal(gm[k], w) {
				t.Errorf("JSONFields(%q)[%q] = %v, want %v", c.in, k, gm[k], w)
			}
		}
	}
}

func FuzzJSONFields(f *testing.F) {
	for _, s := range []string{`{"a": 1, "b": [1, 2], "c": [[1, 2], [3]], "a": "x"}`, `[1, [2]]`, `7`, `{"\u00e9": [1e-400, -0]}`,
		`{"a": [[], []], "b": [[1, [2]]], "": 3}`, `{"x": {"y": [1, 2]}, "z": [true]}`, `{"a":1}x`, `{"a" 1}`, `[[[`, "{\"\xff\": [1]}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := JSONFields(b, 3)
		want, ok := refFields(b, 3)
		if !ok {
			return // not JSON: surviving it is the whole requirement
		}
		if err != nil {
			t.Fatalf("JSONFields(%q) failed on valid JSON: %v", b, err)
		}
		gm := fieldsMap(got)
		if len(gm) != len(want) {
			t.Fatalf("JSONFields(%q) = %v, want %v", b, gm, want)
		}
		for k, w := range want {
			g, ok := gm[k]
			if !ok || !slices.Equal(g, w) {
				t.Fatalf("JSONFields(%q)[%q] = %v, want %v", b, k, g, w)
			}
		}
	})
}

func TestOIPJSONAndBinary(t *testing.T) {
	req := []byte(`{"id": "1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
		{"name": "flag", "shape": [2], "datatype": "BOOL", "data": [true, false]},
		{"name": "s", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}`)
	ts, err := OIP(req, 0, "inputs")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 3 || ts[0].Name != "x" || !slices.Equal(ts[0].Values, []float64{1, 2, 3, 4}) || !slices.Equal(ts[0].Shape, []int64{2, 2}) ||
		!slices.Equal(ts[1].Values, []float64{1, 0}) || ts[2].Values != nil {
		t.Fatalf("tensors = %+v", ts)
	}
	// The binary extension: a JSON header, then the raw bytes.
	header := []byte(`{"model_name":"m","outputs":[{"name":"p","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}},` +
		`{"name":"label","datatype":"INT64","shape":[1],"parameters":{"binary_data_size":8}}]}`)
	body := slices.Clone(header)
	body = binary.LittleEndian.AppendUint32(body, math.Float32bits(0.25))
	body = binary.LittleEndian.AppendUint32(body, math.Float32bits(0.75))
	body = binary.LittleEndian.AppendUint64(body, uint64(1))
	ts, err = OIP(body, len(header), "outputs")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || !slices.Equal(ts[0].Values, []float64{0.25, 0.75}) || !slices.Equal(ts[1].Values, []float64{1}) {
		t.Fatalf("binary tensors = %+v", ts)
	}
	if _, err := OIP(body[:len(body)-1], len(header), "outputs"); err == nil {
		t.Fatal("a short binary part was accepted")
	}
	// Data that does not fill the shape is left out.
	ts, _ = OIP([]byte(`{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}`), 0, "inputs")
	if len(ts) != 1 || ts[0].Values != nil {
		t.Fatalf("mismatched data = %+v", ts)
	}
	if h := half(0x3c00); h != 1 {
		t.Fatalf("half(1.0) = %v", h)
	}
	if h := half(0xc000); h != -2 {
		t.Fatalf("half(-2.0) = %v", h)
	}
}

func FuzzOIP(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}`), 0)
	f.Add([]byte(`{"outputs":[{"name":"p","datatype":"FP16","shape":[1,2],"parameters":{"binary_data_size":4}}]}`+"\x00\x3c\x00\xc0"), 93)
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[[[[true]]]]}],"inputs":[]}`), 0)
	f.Fuzz(func(t *testing.T, body []byte, headerLen int) {
		for _, key := range []string{"inputs", "outputs"} {
			ts, err := OIP(body, headerLen, key)
			if err != nil {
				continue
			}
			for _, tn := range ts {
				if tn.Values == nil {
					continue
				}
				if n, ok := elements(tn.Shape); !ok || n != int64(len(tn.Values)) {
					t.Fatalf("tensor %q has %d values for shape %v", tn.Name, len(tn.Values), tn.Shape)
				}
			}
		}
	})
}
