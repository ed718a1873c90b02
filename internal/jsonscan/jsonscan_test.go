package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

func TestSkip(t *testing.T) {
	deep := func(n int, inner string) string {
		return strings.Repeat("[", n) + inner + strings.Repeat("]", n)
	}
	for _, c := range []struct {
		in   string
		rest string // what Skip leaves
		err  string // "" when Skip accepts
	}{
		{`{"a": [1, -2.5e3, "x\n\u00e9\ud83d\ude00", true, false, null, {}], "b": {"c": []}} tail`, " tail", ""},
		{` NaN,`, ",", ""},
		{`-Infinity]`, "]", ""},
		{`"a"b`, "b", ""},
		{`0`, "", ""},
		{deep(MaxDepth, "1"), "", ""},
		{deep(MaxDepth+1, ""), "", ""},
		{deep(MaxDepth+1, "1"), "", "nested too deeply"},
		{`{"a":` + deep(10000, "") + `}`, "", "nested too deeply"},
		{``, "", "unexpected end of JSON"},
		{`  `, "", "unexpected end of JSON"},
		{`[1,`, "", "unexpected end of JSON"},
		{`{"a":1`, "", "unexpected end of JSON"},
		{`"ab`, "", "unexpected end of JSON"},
		{`"a\u00`, "", "unexpected end of JSON"},
		{`[1 2]`, "", "malformed JSON at offset 3: want ',' or ']'"},
		{`{"a":1]`, "", "malformed JSON at offset 6: want ',' or '}'"},
		{`{"a" 1}`, "", `malformed JSON at offset 5: want ':', got '1'`},
		{`{1:2}`, "", "malformed JSON at offset 1: want a string key"},
		{`{"a":1,}`, "", "want a string key"},
		{`[1,]`, "", `malformed JSON at offset 3: unexpected ']'`},
		{"\"a\x01\"", "", "malformed JSON at offset 2: control character in string"},
		{`"\x"`, "", `invalid escape \x`},
		{`"\u12g4"`, "", `invalid \u escape`},
		{`"\ud83d\u12g4"`, "", `invalid \u escape`},
		{`01`, "", `malformed JSON at offset 2: invalid literal "01"`},
		{`+1`, "", `invalid literal "+1"`},
		{`1.`, "", `invalid literal "1."`},
		{`tru`, "", `invalid literal "tru"`},
		{`nan`, "", `invalid literal "nan"`},
		{`'a'`, "", `malformed JSON at offset 0: unexpected '\''`},
	} {
		s := New([]byte(c.in))
		err := s.Skip()
		switch {
		case c.err == "" && err != nil:
			t.Errorf("Skip(%q) = %v", c.in, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("Skip(%q) = %v, want %q", c.in, err, c.err)
		case c.err == "" && c.in[s.Pos():] != c.rest:
			t.Errorf("Skip(%q) left %q, want %q", c.in, c.in[s.Pos():], c.rest)
		}
	}
	if err := New(nil).Skip(); !errors.Is(err, ErrEnd) {
		t.Errorf("Skip of nothing = %v, want ErrEnd", err)
	}
}

// TestSkipLoose: the lenient skip balances brackets and ends strings, and
// checks nothing else, at any depth.
func TestSkipLoose(t *testing.T) {
	for _, c := range []struct {
		in, rest string
		ok       bool
	}{
		{`{"a": [1, 2]} x`, " x", true},
		{`{"a" "b" 1 2}`, "", true},
		{`{]`, "", true},
		{`[,,:]`, "", true},
		{"\"a\x01\\x\"", "", true},
		{`1é,2`, ",2", true},
		{`tru]`, "]", true},
		{strings.Repeat("[", 10000) + strings.Repeat("]", 10000), "", true},
		{`]`, "", false},
		{`][`, "", false},
		{`,`, "", false},
		{`:`, "", false},
		{`[1`, "", false},
		{`"a\"`, "", false},
		{``, "", false},
		{"\x00", "", false},
	} {
		s := New([]byte(c.in))
		err := s.SkipLoose()
		if (err == nil) != c.ok {
			t.Errorf("SkipLoose(%q) = %v, want ok %v", c.in, err, c.ok)
		} else if c.ok && c.in[s.Pos():] != c.rest {
			t.Errorf("SkipLoose(%q) left %q, want %q", c.in, c.in[s.Pos():], c.rest)
		}
	}
}

func TestObjectAndArray(t *testing.T) {
	s := New([]byte(` {"a": [1, 2], "b\u0061": "x", "c": {}} `))
	var keys []string
	var n int
	err := s.Object(func(k []byte) error {
		keys = append(keys, string(k))
		if string(k) == "a" {
			return s.Array(func() error {
				n++
				_, err := s.Token()
				return err
			})
		}
		return s.Skip()
	})
	if err != nil || strings.Join(keys, ",") != "a,ba,c" || n != 2 || s.Peek() != 0 {
		t.Fatalf("keys %q, %d elements, %v, at %d", keys, n, err, s.Pos())
	}
	// An error from the callback comes back as it is.
	stop := errors.New("stop")
	if err := New([]byte(`{"a":1}`)).Object(func([]byte) error { return stop }); err != stop {
		t.Fatalf("Object returned %v, want the callback's error", err)
	}
	if err := New([]byte(`[1]`)).Array(func() error { return stop }); err != stop {
		t.Fatalf("Array returned %v, want the callback's error", err)
	}
	if v, err := New([]byte(` false`)).Bool(); v || err != nil {
		t.Fatalf("Bool(false) = %v, %v", v, err)
	}
	if _, err := New([]byte(`1`)).Bool(); err == nil || !strings.Contains(err.Error(), `want true or false, got "1"`) {
		t.Fatalf("Bool(1) = %v", err)
	}
}

func TestStrBytes(t *testing.T) {
	in := []byte(`"plain"`)
	v, err := New(in).StrBytes()
	if err != nil || string(v) != "plain" || &v[0] != &in[1] {
		t.Fatalf("StrBytes(plain) = %q, %v, or a copy", v, err)
	}
	for _, c := range []struct{ in, want string }{
		{`"a\"\\\/\b\f\n\r\tz"`, "a\"\\/\b\f\n\r\tz"},
		{`"\u00e9\u20AC"`, "é€"},
		{`"\ud83d\ude00"`, "😀"},
		{`"\ud83d"`, "\ufffd"},
		{`"\ud83dx"`, "\ufffdx"},
		{`"\ud83d\u0041"`, "\ufffdA"},
		{`"\ude00\ud83d\ude00"`, "\ufffd😀"},
		{"\"\xff\\n\"", "\xff\n"},
	} {
		v, err := New([]byte(c.in)).StrBytes()
		if err != nil || string(v) != c.want {
			t.Errorf("StrBytes(%s) = %q, %v, want %q", c.in, v, err, c.want)
		}
	}
}

func TestUTF8(t *testing.T) {
	for _, in := range []string{"abc", "é😀", "a\xffb", "\xe2\x82", "\xe2\x82\xac\xed\xa0\x80", "\xc3\xc3\xa9"} {
		var want string
		if err := json.Unmarshal([]byte(strconv.Quote("")[:1]+in+`"`), &want); err != nil {
			t.Fatal(err)
		}
		if got := UTF8([]byte(in)); got != want {
			t.Errorf("UTF8(%q) = %q, encoding/json says %q", in, got, want)
		}
	}
}

func TestNumbers(t *testing.T) {
	for _, c := range []struct {
		in            string
		number, integ bool
	}{
		{"0", true, true}, {"-0", true, true}, {"12", true, true}, {"-12", true, true},
		{"1.5", true, false}, {"1e5", true, false}, {"1E+5", true, false}, {"-0.0e-0", true, false},
		{"", false, false}, {"-", false, false}, {"01", false, false}, {"-01", false, false}, {"+1", false, false},
		{"1.", false, false}, {".5", false, false}, {"1e", false, false}, {"1e+", false, false}, {"0x1", false, false},
		{"Infinity", false, false}, {"1 ", false, false}, {"1.5.5", false, false},
	} {
		if got := IsNumber([]byte(c.in)); got != c.number {
			t.Errorf("IsNumber(%q) = %v", c.in, got)
		}
		if got := IsInteger([]byte(c.in)); got != c.integ {
			t.Errorf("IsInteger(%q) = %v", c.in, got)
		}
	}
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"0.25", true}, {"-9.5", true}, {"1e22", true}, {"123456789012345", true}, {"1.5e-3", true},
		{"1e23", false}, {"1234567890123456", false}, {"1.", false}, {"01", false}, {"NaN", false},
	} {
		got, ok := FastFloat([]byte(c.in))
		want, _ := strconv.ParseFloat(c.in, 64)
		if ok != c.ok || (ok && got != want) {
			t.Errorf("FastFloat(%q) = %v, %v; want ok %v (%v)", c.in, got, ok, c.ok, want)
		}
	}
}

// FuzzFastFloat: the fast path accepts only JSON numbers, and agrees with
// strconv on them to the bit.
func FuzzFastFloat(f *testing.F) {
	for _, s := range []string{"0", "-0", "-1.5", "0.25", "1e5", "1.", ".5", "01", "1e", "-", "1e+", "123456789012345",
		"0.000e-3", "1.000000000000001", "99999999999999.9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := FastFloat([]byte(s))
		if !ok {
			return
		}
		if !IsNumber([]byte(s)) {
			t.Fatalf("FastFloat accepted %q, which is not a JSON number", s)
		}
		want, err := strconv.ParseFloat(s, 64)
		if err != nil || math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("FastFloat(%q) = %v, strconv says %v, %v", s, got, want, err)
		}
	})
}

// nonJSON turns the literals Skip accepts beyond JSON (NaN, Infinity,
// -Infinity) into 0, outside strings. Its tokens are Token's: runs of
// letters, digits and "+-.". b must be well formed as Skip sees it.
func nonJSON(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			j := i + 1
			for b[j] != '"' {
				if b[j] == '\\' {
					j++
				}
				j++
			}
			out = append(out, b[i:j+1]...)
			i = j + 1
		case tokenByte[c]:
			j := i
			for j < len(b) && tokenByte[b[j]] {
				j++
			}
			switch t := string(b[i:j]); t {
			case "NaN", "Infinity", "-Infinity":
				out = append(out, '0')
			default:
				out = append(out, t...)
			}
			i = j
		default:
			out = append(out, c)
			i++
		}
	}
	return out
}

// nesting is the most brackets open at once in b, outside strings. b must
// be well formed as Skip sees it.
func nesting(b []byte) int {
	depth, most, in := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case in && c == '\\':
			i++
		case c == '"':
			in = !in
		case in:
		case c == '[' || c == '{':
			depth++
			most = max(most, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return most
}

// FuzzScanner: whatever the input, Skip either fails or consumes exactly
// one value, which is JSON once its NaN and Infinity literals are numbers;
// it accepts the whole of every JSON text nested at most MaxDepth deep
// (a value inside MaxDepth+1 brackets is too deep; one inside MaxDepth+2
// must be refused). SkipLoose accepts everything Skip accepts, ending at
// the same place, and a JSON string decodes as encoding/json decodes it.
func FuzzScanner(f *testing.F) {
	for _, s := range []string{`{"a": [1, -2.5e3, "x\n\u00e9", true, null, {}]}`, ` NaN `, `[-Infinity, Infinity]`, `"a"b`,
		`[1 2]`, `{"a" 1}`, `01`, "\"\xff\\ud83d\\ude00\"", `"\ud83d\u0041"`, `[[[[]]]]`, `{"a":{"b":{}}}  `, `1e400`, `tru`, `[nul]`, "\"\x01\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := New(b)
		err := s.Skip()
		valid := json.Valid(b)
		if err != nil {
			if valid {
				// Only depth refuses a JSON text.
				n := nesting(b)
				if n <= MaxDepth || !strings.Contains(err.Error(), "nested too deeply") {
					t.Fatalf("Skip refused JSON %q (nesting %d): %v", b, n, err)
				}
			}
			return
		}
		end := s.Pos()
		if end < 1 || end > len(b) {
			t.Fatalf("Skip(%q) ended at %d", b, end)
		}
		if n := nesting(b[:end]); n > MaxDepth+1 {
			t.Fatalf("Skip(%q) accepted nesting %d", b, n)
		}
		value := bytes.TrimLeft(b[:end], " \t\n\r")
		if !json.Valid(nonJSON(value)) {
			t.Fatalf("Skip(%q) consumed %q, which is not one JSON value", b, value)
		}
		whole := s.Peek() == 0 && s.Pos() == len(b)
		if valid != (whole && bytes.Equal(nonJSON(value), value)) {
			t.Fatalf("Skip(%q): whole input %v, json.Valid %v", b, whole, valid)
		}
		if whole {
			l := New(b)
			if err := l.SkipLoose(); err != nil || l.Pos() != end {
				t.Fatalf("SkipLoose(%q) = %v at %d, Skip ended at %d", b, err, l.Pos(), end)
			}
		}
		if value[0] == '"' {
			v, err := New(value).StrBytes()
			var want string
			if err != nil || json.Unmarshal(value, &want) != nil || UTF8(v) != want {
				t.Fatalf("string %s = %q (%v), encoding/json says %q", value, v, err, want)
			}
		}
	})
}

// BenchmarkFastFloat reads the numbers of a tensor as JSON writes them.
func BenchmarkFastFloat(b *testing.B) {
	toks := [][]byte{[]byte("0.25"), []byte("-1.5"), []byte("0.123456789"), []byte("12"), []byte("-3.25e-3"), []byte("0")}
	var sum float64
	for b.Loop() {
		for _, t := range toks {
			v, _ := FastFloat(t)
			sum += v
		}
	}
	if sum == 1 {
		b.Log(sum)
	}
}
