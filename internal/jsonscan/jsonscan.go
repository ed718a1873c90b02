// Package jsonscan scans JSON in place, without allocating and without
// encoding/json's reflection. It exists for the bodies on the hot path:
// ONNX inference requests are decoded straight into the tensors ONNX
// Runtime reads (internal/onnx), and the monitor reads the numbers of
// requests and responses that ebb has already passed on (internal/monitor).
// encoding/json would first build maps and []any and then copy them again,
// which is most of the cost of a JSON request.
//
// A Scanner is strict by default: Object, Array, StrBytes, Token and Skip
// accept JSON (and the literals NaN, Infinity and -Infinity, as Python and
// Triton write them) and name the offset of what they refuse. Bare and
// SkipLoose are lenient, for readers that only have to survive malformed
// input someone else accepted.
package jsonscan

import (
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// Scanner reads one JSON document from a buffer; the zero value (or Reset)
// scans nothing until given one.
type Scanner struct {
	b []byte
	i int
}

// MaxDepth bounds the nesting of the values Skip consumes, so that hostile
// input cannot exhaust the stack.
const MaxDepth = 256

// ErrEnd is the error for input that stops inside a value.
var ErrEnd = errors.New("unexpected end of JSON")

// New returns a Scanner at the start of b.
func New(b []byte) *Scanner { return &Scanner{b: b} }

// Reset makes s scan b from its start.
func (s *Scanner) Reset(b []byte) { s.b, s.i = b, 0 }

// Pos is the offset of the next byte to read.
func (s *Scanner) Pos() int { return s.i }

// Seek moves to offset i, one that Pos returned for the same buffer.
func (s *Scanner) Seek(i int) { s.i = i }

// Next consumes one byte, the one Peek returned.
func (s *Scanner) Next() { s.i++ }

// Remaining is the number of bytes not read yet.
func (s *Scanner) Remaining() int { return len(s.b) - s.i }

func (s *Scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// Peek skips spaces and returns the next byte without consuming it (0 at
// the end).
func (s *Scanner) Peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

// Errorf is an error at the current offset.
func (s *Scanner) Errorf(format string, args ...any) error {
	return fmt.Errorf("malformed JSON at offset %d: %s", s.i, fmt.Sprintf(format, args...))
}

// Expect consumes byte c (after spaces) or fails.
func (s *Scanner) Expect(c byte) error {
	if s.Peek() != c {
		if s.i >= len(s.b) {
			return ErrEnd
		}
		return s.Errorf("want %q, got %q", c, s.b[s.i])
	}
	s.i++
	return nil
}

// Object iterates over the members of an object, calling f with each key
// (a view into the buffer or a decoded copy, as StrBytes returns it) with
// the scanner positioned at the value; f must consume the value. An error
// from f is returned as it is.
func (s *Scanner) Object(f func(key []byte) error) error {
	if err := s.Expect('{'); err != nil {
		return err
	}
	if s.Peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.Peek() != '"' {
			if s.i >= len(s.b) {
				return ErrEnd
			}
			return s.Errorf("want a string key")
		}
		key, err := s.StrBytes()
		if err != nil {
			return err
		}
		if err := s.Expect(':'); err != nil {
			return err
		}
		s.ws()
		if err := f(key); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		case 0:
			return ErrEnd
		default:
			return s.Errorf("want ',' or '}'")
		}
	}
}

// Array iterates over the elements of an array; f must consume each, and
// the spaces before it (every reading method here skips them). An error
// from f is returned as it is.
func (s *Scanner) Array(f func() error) error {
	if err := s.Expect('['); err != nil {
		return err
	}
	if s.Peek() == ']' {
		s.i++
		return nil
	}
	for {
		if err := f(); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		case 0:
			return ErrEnd
		default:
			return s.Errorf("want ',' or ']'")
		}
	}
}

// StrBytes reads a string. Without escapes the result aliases the buffer;
// with escapes it is a fresh decoded copy. Bytes that are not UTF-8 are
// kept as they are (UTF8 replaces them as encoding/json does).
func (s *Scanner) StrBytes() ([]byte, error) {
	if err := s.Expect('"'); err != nil {
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
			return nil, s.Errorf("control character in string")
		}
		s.i++
	}
	return nil, ErrEnd
}

func (s *Scanner) strSlow(start int) ([]byte, error) {
	out := append([]byte(nil), s.b[start:s.i]...)
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return out, nil
		case c < 0x20:
			return nil, s.Errorf("control character in string")
		case c != '\\':
			out = append(out, c)
			s.i++
			continue
		}
		if s.i+1 >= len(s.b) {
			return nil, ErrEnd
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
			return nil, s.Errorf("invalid escape \\%c", e)
		}
	}
	return nil, ErrEnd
}

func (s *Scanner) hex4() (rune, error) {
	if s.i+4 > len(s.b) {
		return 0, ErrEnd
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
			return 0, s.Errorf("invalid \\u escape")
		}
	}
	s.i += 4
	return r, nil
}

// Str reads a string into a fresh string.
func (s *Scanner) Str() (string, error) {
	b, err := s.StrBytes()
	return string(b), err
}

// UTF8 is b as a string, each byte that does not start a valid UTF-8
// sequence replaced by U+FFFD: a string StrBytes returned, as encoding/json
// would decode it.
func UTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			out = utf8.AppendRune(out, r)
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return string(out)
}

// tokenByte marks the bytes of bare literals and numbers.
var tokenByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' || c == '.'
	}
	return t
}()

// Token reads a bare literal or number (true, false, null, NaN, 1.5e3 …):
// the letters, digits and '+', '-', '.' that follow, unchecked.
func (s *Scanner) Token() ([]byte, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && tokenByte[s.b[s.i]] {
		s.i++
	}
	if s.i == start {
		if s.i >= len(s.b) {
			return nil, ErrEnd
		}
		return nil, s.Errorf("unexpected %q", s.b[s.i])
	}
	return s.b[start:s.i], nil
}

// Bool reads true or false.
func (s *Scanner) Bool() (bool, error) {
	t, err := s.Token()
	if err != nil {
		return false, err
	}
	switch string(t) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, s.Errorf("want true or false, got %q", t)
}

// Skip consumes one value of any kind, checking its syntax, nested at most
// MaxDepth deep.
func (s *Scanner) Skip() error { return s.skipDepth(0) }

func (s *Scanner) skipDepth(depth int) error {
	if depth > MaxDepth {
		return s.Errorf("nested too deeply")
	}
	switch s.Peek() {
	case '{':
		return s.Object(func([]byte) error { return s.skipDepth(depth + 1) })
	case '[':
		return s.Array(func() error { return s.skipDepth(depth + 1) })
	case '"':
		_, err := s.StrBytes()
		return err
	case 0:
		return ErrEnd
	}
	t, err := s.Token()
	if err != nil {
		return err
	}
	switch string(t) {
	case "true", "false", "null", "NaN", "Infinity", "-Infinity":
		return nil
	}
	if !IsNumber(t) {
		return s.Errorf("invalid literal %q", t)
	}
	return nil
}

// isDelim says whether c ends a bare token for Bare.
func isDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ':', ']', '}', '[', '{', '"':
		return true
	}
	return false
}

// Bare consumes the bytes up to the next space or structural character,
// whatever they are (possibly none).
func (s *Scanner) Bare() []byte {
	s.ws()
	start := s.i
	for s.i < len(s.b) && !isDelim(s.b[s.i]) {
		s.i++
	}
	return s.b[start:s.i]
}

// SkipLoose consumes one value, without recursion and at any depth, checking
// only that brackets balance (of either kind) and strings end: it accepts
// every JSON value, ending where Skip does, and much that is not JSON.
func (s *Scanner) SkipLoose() error {
	depth := 0
	for {
		switch c := s.Peek(); c {
		case 0:
			return ErrEnd
		case '"':
			if err := s.looseStr(); err != nil {
				return err
			}
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			depth--
			s.i++
			if depth < 0 {
				return s.Errorf("unbalanced %q", c)
			}
		case ',', ':':
			if depth == 0 {
				return s.Errorf("unexpected %q", c)
			}
			s.i++
			continue
		default:
			if len(s.Bare()) == 0 {
				return s.Errorf("unexpected %q", c)
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// looseStr consumes a string up to its closing quote, not checking what is
// in it.
func (s *Scanner) looseStr() error {
	if err := s.Expect('"'); err != nil {
		return err
	}
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			s.i++
			return nil
		case '\\':
			s.i += 2
			continue
		}
		s.i++
	}
	return ErrEnd
}
