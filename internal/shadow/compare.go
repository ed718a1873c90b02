// Package shadow compares a shadow version's answers with the primary's:
// JSON-aware (key order does not matter, numbers agree within a relative
// tolerance, Open Inference Protocol outputs are matched by tensor name),
// and keeps the counts, latencies and example differences of a shadow run.
package shadow

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"sort"
	"strconv"

	"github.com/ebb-run/ebb"
)

// DefaultTolerance is the relative difference under which two numbers are
// taken as equal.
const DefaultTolerance = ebb.DefaultShadowTolerance

// Compare says whether the shadow's answer b agrees with the primary's a.
// Two JSON documents agree when they have the same structure, the same
// strings, booleans and nulls, and numbers within tol of each other
// (relative to the larger; exact for tol 0); objects are compared by key,
// whatever their order, and an Open Inference Protocol "outputs" array by
// tensor name. Anything that is not JSON agrees only byte for byte. When
// they differ, path is the first place they do ("$" for the whole).
func Compare(a, b []byte, tol float64) (equal bool, path string) {
	va, errA := decode(a)
	vb, errB := decode(b)
	if errA != nil || errB != nil {
		if bytes.Equal(a, b) {
			return true, ""
		}
		return false, "$"
	}
	if p, ok := diff(va, vb, "$", tol); !ok {
		return false, p
	}
	return true, ""
}

func decode(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errTrailing
	}
	return v, nil
}

type trailingError struct{}

func (trailingError) Error() string { return "trailing data after the JSON value" }

var errTrailing = trailingError{}

// diff returns the first path where a and b differ, and false; or "", true.
func diff(a, b any, path string, tol float64) (string, bool) {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok {
			return path, false
		}
		keys := make([]string, 0, len(x)+len(y))
		for k := range x {
			keys = append(keys, k)
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := path + "." + k
			va, okA := x[k]
			vb, okB := y[k]
			if !okA || !okB {
				return p, false
			}
			if k == "outputs" {
				if p, ok := diffTensors(va, vb, p, tol); !ok {
					return p, false
				}
				continue
			}
			if p, ok := diff(va, vb, p, tol); !ok {
				return p, false
			}
		}
		return "", true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return path, false
		}
		for i := range x {
			if p, ok := diff(x[i], y[i], path+"["+strconv.Itoa(i)+"]", tol); !ok {
				return p, false
			}
		}
		return "", true
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return path, false
		}
		if x == y {
			return "", true
		}
		if tol == 0 {
			// Exact: as decimals, not through float64's 53 bits.
			ba, okA := new(big.Float).SetPrec(512).SetString(string(x))
			bb, okB := new(big.Float).SetPrec(512).SetString(string(y))
			if !okA || !okB || ba.Cmp(bb) != 0 {
				return path, false
			}
			return "", true
		}
		fa, errA := x.Float64()
		fb, errB := y.Float64()
		if errA != nil || errB != nil {
			return path, false
		}
		if !close(fa, fb, tol) {
			return path, false
		}
		return "", true
	default:
		// strings, booleans and null compare as they are.
		if a != b {
			return path, false
		}
		return "", true
	}
}

// close says whether a and b agree within the relative tolerance tol.
func close(a, b, tol float64) bool {
	if a == b {
		return true
	}
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) <= tol*math.Max(math.Abs(a), math.Abs(b))
}

// diffTensors compares two Open Inference Protocol output lists tensor by
// tensor, matched by "name" when every element has one (a server may list
// outputs in any order); otherwise as plain arrays.
func diffTensors(a, b any, path string, tol float64) (string, bool) {
	byName := func(v any) (map[string]any, bool) {
		arr, ok := v.([]any)
		if !ok {
			return nil, false
		}
		m := make(map[string]any, len(arr))
		for _, e := range arr {
			obj, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			name, ok := obj["name"].(string)
			if !ok {
				return nil, false
			}
			m[name] = obj
		}
		return m, true
	}
	ma, okA := byName(a)
	mb, okB := byName(b)
	if !okA || !okB {
		return diff(a, b, path, tol)
	}
	names := make([]string, 0, len(ma)+len(mb))
	for n := range ma {
		names = append(names, n)
	}
	for n := range mb {
		if _, ok := ma[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		p := path + "[" + strconv.Quote(n) + "]"
		ta, okA := ma[n]
		tb, okB := mb[n]
		if !okA || !okB {
			return p, false
		}
		if p, ok := diff(ta, tb, p, tol); !ok {
			return p, false
		}
	}
	return "", true
}
