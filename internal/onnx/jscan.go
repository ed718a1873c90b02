package onnx

import (
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// jscan is a small JSON scanner for inference requests. encoding/json would
// decode tensor data into []any (or []float64) and then copy it again into
// the typed buffer ONNX Runtime reads; scanning by hand puts each element
// straight where it belongs, which is most of the cost of a JSON request.
type jscan struct {
	b []byte
	i int
}

// maxJSONDepth bounds nesting in skipped values so that hostile input cannot
// exhaust the stack.
const maxJSONDepth = 256

var errJSONEnd = errors.New("unexpected end of JSON")

func (s *jscan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it (0 at the end).
func (s *jscan) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *jscan) errorf(format string, args ...any) error {
	return fmt.Errorf("malformed JSON at offset %d: %s", s.i, fmt.Sprintf(format, args...))
}

// expect consumes byte c (after spaces) or fails.
func (s *jscan) expect(c byte) error {
	if s.peek() != c {
		if s.i >= len(s.b) {
			return errJSONEnd
		}
		return s.errorf("want %q, got %q", c, s.b[s.i])
	}
	s.i++
	return nil
}

// object iterates over the members of an object, calling f with each key
// (a view into the buffer or a decoded copy) with the scanner positioned at
// the value; f must consume the value.
func (s *jscan) object(f func(key []byte) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.peek() != '"' {
			if s.i >= len(s.b) {
				return errJSONEnd
			}
			return s.errorf("want a string key")
		}
		key, err := s.strBytes()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		s.ws()
		if err := f(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		case 0:
			return errJSONEnd
		default:
			return s.errorf("want ',' or '}'")
		}
	}
}

// array iterates over the elements of an array; f must consume each.
func (s *jscan) array(f func() error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		s.ws()
		if err := f(); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		case 0:
			return errJSONEnd
		default:
			return s.errorf("want ',' or ']'")
		}
	}
}

// strBytes reads a string. Without escapes the result aliases the buffer;
// with escapes it is a fresh decoded copy.
func (s *jscan) strBytes() ([]byte, error) {
	if err := s.expect('"'); err != nil {
		return nil, err
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, nil
		case c == '\\':
			return s.strSlow(start)
		case c < 0x20:
			return nil, s.errorf("control character in string")
		}
		s.i++
	}
	return nil, errJSONEnd
}

func (s *jscan) strSlow(start int) ([]byte, error) {
	out := append([]byte(nil), s.b[start:s.i]...)
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return out, nil
		case c < 0x20:
			return nil, s.errorf("control character in string")
		case c != '\\':
			out = append(out, c)
			s.i++
			continue
		}
		if s.i+1 >= len(s.b) {
			return nil, errJSONEnd
		}
		e := s.b[s.i+1]
		s.i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, err := s.hex4()
			if err != nil {
				return nil, err
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(utf8.RuneError)
				if s.i+1 < len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
					save := s.i
					s.i += 2
					if lo, err := s.hex4(); err == nil {
						if d := utf16.DecodeRune(r, lo); d != utf8.RuneError {
							r2 = d
						} else {
							s.i = save
						}
					} else {
						return nil, err
					}
				}
				r = r2
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, s.errorf("invalid escape \\%c", e)
		}
	}
	return nil, errJSONEnd
}

func (s *jscan) hex4() (rune, error) {
	if s.i+4 > len(s.b) {
		return 0, errJSONEnd
	}
	var r rune
	for _, c := range s.b[s.i : s.i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, s.errorf("invalid \\u escape")
		}
	}
	s.i += 4
	return r, nil
}

func (s *jscan) str() (string, error) {
	b, err := s.strBytes()
	return string(b), err
}

// tokenByte marks the bytes of bare literals and numbers.
var tokenByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' || c == '.'
	}
	return t
}()

// token reads a bare literal or number (true, false, null, NaN, 1.5e3 …).
func (s *jscan) token() ([]byte, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && tokenByte[s.b[s.i]] {
		s.i++
	}
	if s.i == start {
		if s.i >= len(s.b) {
			return nil, errJSONEnd
		}
		return nil, s.errorf("unexpected %q", s.b[s.i])
	}
	return s.b[start:s.i], nil
}

// bool reads true or false.
func (s *jscan) bool() (bool, error) {
	t, err := s.token()
	if err != nil {
		return false, err
	}
	switch string(t) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, s.errorf("want true or false, got %q", t)
}

// skip consumes one value of any kind, checking its syntax.
func (s *jscan) skip() error { return s.skipDepth(0) }

func (s *jscan) skipDepth(depth int) error {
	if depth > maxJSONDepth {
		return s.errorf("nested too deeply")
	}
	switch s.peek() {
	case '{':
		return s.object(func([]byte) error { return s.skipDepth(depth + 1) })
	case '[':
		return s.array(func() error { return s.skipDepth(depth + 1) })
	case '"':
		_, err := s.strBytes()
		return err
	case 0:
		return errJSONEnd
	}
	t, err := s.token()
	if err != nil {
		return err
	}
	switch string(t) {
	case "true", "false", "null", "NaN", "Infinity", "-Infinity":
		return nil
	}
	if !isJSONNumber(t) {
		return s.errorf("invalid literal %q", t)
	}
	return nil
}

// isJSONNumber checks the JSON number grammar, which is stricter than
// strconv's: no '+', no leading zeros, no hex, no "inf".
func isJSONNumber(t []byte) bool {
	i := 0
	if i < len(t) && t[i] == '-' {
		i++
	}
	if i >= len(t) {
		return false
	}
	if t[i] == '0' {
		i++
	} else if t[i] >= '1' && t[i] <= '9' {
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
	} else {
		return false
	}
	if i < len(t) && t[i] == '.' {
		i++
		d := i
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		d := i
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	return i == len(t)
}

// isJSONInteger is isJSONNumber without fraction or exponent.
func isJSONInteger(t []byte) bool {
	i := 0
	if i < len(t) && t[i] == '-' {
		i++
	}
	if i >= len(t) {
		return false
	}
	if t[i] == '0' {
		return i+1 == len(t)
	}
	for ; i < len(t); i++ {
		if t[i] < '0' || t[i] > '9' {
			return false
		}
	}
	return true
}

// bytesString views b as a string without copying, for strconv calls that
// do not keep it.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// pow10 holds the powers of ten that float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// fastFloat converts a JSON number whose decimal significand has at most
// 15 digits and whose exponent is within ±22: both are then exact float64s,
// and one multiplication or division rounds correctly (Clinger's fast
// path). It checks the JSON grammar as it goes; ok is false for anything it
// does not handle, valid or not, which the caller passes to the strict slow
// path.
func fastFloat(t []byte) (float64, bool) {
	i, n := 0, len(t)
	neg := n > 0 && t[0] == '-'
	if neg {
		i = 1
	}
	if i >= n || t[i] < '0' || t[i] > '9' || (t[i] == '0' && i+1 < n && t[i+1] >= '0' && t[i+1] <= '9') {
		return 0, false
	}
	var mant uint64
	digits, exp := 0, 0
	for ; i < n && t[i] >= '0' && t[i] <= '9'; i++ {
		mant = mant*10 + uint64(t[i]-'0')
		if mant != 0 {
			digits++
		}
	}
	if i < n && t[i] == '.' {
		i++
		start := i
		for ; i < n && t[i] >= '0' && t[i] <= '9'; i++ {
			mant = mant*10 + uint64(t[i]-'0')
			if mant != 0 {
				digits++
			}
			exp--
		}
		if i == start {
			return 0, false
		}
	}
	if digits > 15 {
		return 0, false
	}
	if i < n && (t[i] == 'e' || t[i] == 'E') {
		i++
		eneg := false
		if i < n && (t[i] == '+' || t[i] == '-') {
			eneg = t[i] == '-'
			i++
		}
		start, e := i, 0
		for ; i < n && t[i] >= '0' && t[i] <= '9'; i++ {
			if e < 10000 {
				e = e*10 + int(t[i]-'0')
			}
		}
		if i == start {
			return 0, false
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if i != n {
		return 0, false
	}
	f := float64(mant)
	switch {
	case mant == 0 || exp == 0:
	case exp > 0 && exp <= 22:
		f *= pow10[exp]
	case exp < 0 && exp >= -22:
		f /= pow10[-exp]
	default:
		return 0, false
	}
	if neg {
		f = -f
	}
	return f, true
}
