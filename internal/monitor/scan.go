package monitor

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// The decoders here read only what the summaries need from bodies that ebb
// already passed on: top-level numbers of JSON events and results, and the
// tensors of Open Inference Protocol requests and responses (JSON, or a JSON
// header followed by raw tensor bytes). They run on the summariser's
// goroutine, never on a request's, and never panic on malformed input.

var (
	errEnd    = errors.New("unexpected end of JSON")
	errSyntax = errors.New("malformed JSON")
)

// scanner is a small JSON scanner; it is lenient with malformed input (which
// only has to be survived) and exact with valid input.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte (0 at the end).
func (s *scanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *scanner) expect(c byte) error {
	if s.peek() != c {
		if s.i >= len(s.b) {
			return errEnd
		}
		return errSyntax
	}
	s.i++
	return nil
}

// str consumes a string; raw is what is between the quotes, plain says it
// has no escapes and is ASCII (so raw is its value).
func (s *scanner) str() (raw []byte, plain bool, err error) {
	if err := s.expect('"'); err != nil {
		return nil, false, err
	}
	start := s.i
	plain = true
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, plain, nil
		case c == '\\':
			plain = false
			s.i += 2
			continue
		case c >= 0x80 || c < 0x20:
			plain = false
		}
		s.i++
	}
	return nil, false, errEnd
}

// text consumes a string and returns its value as encoding/json decodes it.
func (s *scanner) text() (string, error) {
	start := s.peekPos()
	raw, plain, err := s.str()
	if err != nil {
		return "", err
	}
	if plain {
		return string(raw), nil
	}
	var v string
	if err := json.Unmarshal(s.b[start:s.i], &v); err != nil {
		return "", errSyntax
	}
	return v, nil
}

func (s *scanner) peekPos() int {
	s.ws()
	return s.i
}

// isDelim says whether c ends a bare token (number, true, false, null).
func isDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ':', ']', '}', '[', '{', '"':
		return true
	}
	return false
}

// token consumes a bare token.
func (s *scanner) token() []byte {
	s.ws()
	start := s.i
	for s.i < len(s.b) && !isDelim(s.b[s.i]) {
		s.i++
	}
	return s.b[start:s.i]
}

// number consumes a value and says whether it was a number (a bool too, as
// 0 or 1, when bools is set).
func (s *scanner) number(bools bool) (float64, bool, error) {
	switch c := s.peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		t := s.token()
		if v, ok := fastFloat(t); ok {
			return v, true, nil
		}
		v, err := strconv.ParseFloat(string(t), 64)
		return v, err == nil, nil
	case bools && c == 't':
		return 1, string(s.token()) == "true", nil
	case bools && c == 'f':
		return 0, string(s.token()) == "false", nil
	}
	return 0, false, s.skip()
}

// skip consumes one value of any kind, without recursion.
func (s *scanner) skip() error {
	depth := 0
	for {
		switch c := s.peek(); c {
		case 0:
			return errEnd
		case '"':
			if _, _, err := s.str(); err != nil {
				return err
			}
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			depth--
			s.i++
			if depth < 0 {
				return errSyntax
			}
		case ',', ':':
			if depth == 0 {
				return errSyntax
			}
			s.i++
			continue
		default:
			if len(s.token()) == 0 {
				return errSyntax
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// object walks an object; each must consume its key's value.
func (s *scanner) object(each func(key string) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		k, err := s.text()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := each(k); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		case 0:
			return errEnd
		default:
			return errSyntax
		}
	}
}

// array walks an array; each must consume one element.
func (s *scanner) array(each func(i int) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for i := 0; ; i++ {
		if err := each(i); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		case 0:
			return errEnd
		default:
			return errSyntax
		}
	}
}

// Field is one top-level number or numeric array of a JSON document, as
// (feature index, value) pairs.
type Field struct {
	Name   string
	Index  []int
	Values []float64
}

func (f *Field) add(idx int, v float64, maxFeatures int) {
	if idx < maxFeatures {
		f.Index = append(f.Index, idx)
		f.Values = append(f.Values, v)
	}
}

// RootField names the value of a JSON document that is not an object.
const RootField = "$"

// JSONFields reads the top-level numeric fields of a JSON document:
//   - a number is feature 0 of its field;
//   - an array of numbers gives element i to feature i;
//   - an array of arrays of numbers (rows) gives element j of each row to
//     feature j;
//
// anything else (strings, objects, deeper or mixed arrays) is left out.
// Feature indices at or past maxFeatures are dropped. A document that is not
// an object is one field named RootField. A key given twice counts once,
// with its last value (as encoding/json reads it).
func JSONFields(b []byte, maxFeatures int) ([]Field, error) {
	s := &scanner{b: b}
	if s.peek() != '{' {
		f := Field{Name: RootField}
		ok, err := s.fieldValue(&f, maxFeatures)
		if err != nil || !ok {
			return nil, err
		}
		return []Field{f}, nil
	}
	var out []Field
	var removed []bool
	pos := map[string]int{}
	err := s.object(func(key string) error {
		f := Field{Name: key}
		ok, err := s.fieldValue(&f, maxFeatures)
		if err != nil {
			return err
		}
		if i, dup := pos[key]; dup {
			removed[i] = true // replaced by this one, or by nothing
			delete(pos, key)
		}
		if ok {
			pos[key] = len(out)
			out = append(out, f)
			removed = append(removed, false)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	kept := out[:0]
	for i, f := range out {
		if !removed[i] {
			kept = append(kept, f)
		}
	}
	return kept, nil
}

// fieldValue reads one field's value into f; ok is false (and f empty) when
// it is not numeric.
func (s *scanner) fieldValue(f *Field, maxFeatures int) (ok bool, err error) {
	c := s.peek()
	if c != '[' {
		v, ok, err := s.number(false)
		if ok {
			f.add(0, v, maxFeatures)
		}
		return ok, err
	}
	start := s.i
	rank := 0
	numeric := true
	err = s.array(func(i int) error {
		if !numeric {
			return errNotNumeric
		}
		if s.peek() == '[' {
			if rank == 1 {
				return errNotNumeric
			}
			rank = 2
			return s.array(func(j int) error {
				v, ok, err := s.number(false)
				if err != nil {
					return err
				}
				if !ok {
					return errNotNumeric
				}
				f.add(j, v, maxFeatures)
				return nil
			})
		}
		if rank == 2 {
			return errNotNumeric
		}
		rank = 1
		v, ok, err := s.number(false)
		if err != nil {
			return err
		}
		if !ok {
			return errNotNumeric
		}
		f.add(i, v, maxFeatures)
		return nil
	})
	if err == errNotNumeric {
		f.Index, f.Values = nil, nil
		s.i = start
		return false, s.skip()
	}
	return err == nil, err
}

var errNotNumeric = errors.New("not numeric")

// Tensor is one tensor of an inference request or response, its elements
// as float64 in row-major order. Values is nil for a tensor whose data is
// not numeric (BYTES) or does not match its shape.
type Tensor struct {
	Name     string
	Datatype string
	Shape    []int64
	Values   []float64
	binary   int64 // parameters.binary_data_size; -1 when data is in JSON
	index    []int // a JSON field's: the feature of each value
}

// maxTensorRank bounds the nesting of a tensor's JSON data.
const maxTensorRank = 16

// OIP reads the tensors listed under key ("inputs" of a request, "outputs"
// of a response) of an Open Inference Protocol body. headerLen is the
// Inference-Header-Content-Length of the body (0: all of it is JSON): raw
// tensor bytes follow the header, in the order of the tensors that declare
// a binary_data_size.
func OIP(body []byte, headerLen int, key string) ([]Tensor, error) {
	var d decoder
	return d.oip(body, headerLen, key)
}

// decoder keeps its buffers from one body to the next: the tensors and
// values it returns are valid until reset.
type decoder struct {
	vals []float64
}

func (d *decoder) reset() {
	if cap(d.vals) > 1<<18 {
		d.vals = nil // an outsized body's buffer is not kept
	}
	d.vals = d.vals[:0]
}

func (d *decoder) oip(body []byte, headerLen int, key string) ([]Tensor, error) {
	if headerLen < 0 || headerLen > len(body) {
		return nil, fmt.Errorf("header length %d is outside the body (%d bytes)", headerLen, len(body))
	}
	header, bin := body, []byte(nil)
	if headerLen > 0 {
		header, bin = body[:headerLen], body[headerLen:]
	}
	s := &scanner{b: header}
	var out []Tensor
	seen := false
	err := s.object(func(k string) error {
		if k != key || seen {
			return s.skip()
		}
		seen = true
		return s.array(func(int) error {
			t, err := s.tensor(d)
			if err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	var off int64
	for i := range out {
		t := &out[i]
		if t.binary < 0 {
			continue
		}
		if t.binary > int64(len(bin))-off {
			return nil, fmt.Errorf("tensor %q: binary_data_size %d runs past the body", t.Name, t.binary)
		}
		t.Values = d.binary(t.Datatype, bin[off:off+t.binary])
		off += t.binary
	}
	for i := range out {
		t := &out[i]
		if n, ok := elements(t.Shape); !ok || n != int64(len(t.Values)) {
			t.Values = nil
		}
	}
	return out, nil
}

// elements is the product of shape; false for a negative or overflowing
// one.
func elements(shape []int64) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || (d != 0 && n > math.MaxInt64/d) {
			return 0, false
		}
		n *= d
	}
	return n, true
}

func (s *scanner) tensor(d *decoder) (Tensor, error) {
	t := Tensor{binary: -1}
	err := s.object(func(k string) error {
		switch k {
		case "name":
			v, err := s.text()
			t.Name = v
			return err
		case "datatype":
			v, err := s.text()
			t.Datatype = v
			return err
		case "shape":
			t.Shape = t.Shape[:0]
			return s.array(func(int) error {
				v, ok, err := s.number(false)
				if err != nil {
					return err
				}
				if !ok || v != math.Trunc(v) || v < 0 || v > math.MaxInt32 {
					return errSyntax
				}
				t.Shape = append(t.Shape, int64(v))
				return nil
			})
		case "data":
			// Values go at the end of the decoder's buffer; a tensor's
			// are contiguous because nothing else appends meanwhile.
			start := len(d.vals)
			numeric := true
			if err := s.data(&d.vals, &numeric, 0); err != nil {
				return err
			}
			t.Values = d.vals[start:len(d.vals):len(d.vals)]
			if !numeric {
				t.Values = nil
			}
			return nil
		case "parameters":
			return s.object(func(p string) error {
				if p != "binary_data_size" {
					return s.skip()
				}
				v, ok, err := s.number(false)
				if err != nil {
					return err
				}
				if !ok || v != math.Trunc(v) || v < 0 || v > math.MaxInt32 {
					return errSyntax
				}
				t.binary = int64(v)
				return nil
			})
		}
		return s.skip()
	})
	return t, err
}

// data flattens a tensor's JSON data (nested arrays of numbers or bools);
// numeric turns false at anything else.
func (s *scanner) data(out *[]float64, numeric *bool, depth int) error {
	if s.peek() != '[' || depth >= maxTensorRank || !*numeric {
		v, ok, err := s.number(true)
		if ok && *numeric {
			*out = append(*out, v)
		} else {
			*numeric = false
		}
		return err
	}
	return s.array(func(int) error { return s.data(out, numeric, depth+1) })
}

// binary reads little-endian elements of datatype dt into the decoder's
// buffer; nil for BYTES, an unknown type or a length that is not a whole
// number of elements.
func (d *decoder) binary(dt string, b []byte) []float64 {
	size := 0
	switch dt {
	case "BOOL", "UINT8", "INT8":
		size = 1
	case "FP16", "BF16", "INT16", "UINT16":
		size = 2
	case "FP32", "INT32", "UINT32":
		size = 4
	case "FP64", "INT64", "UINT64":
		size = 8
	default:
		return nil
	}
	if len(b)%size != 0 {
		return nil
	}
	start := len(d.vals)
	d.vals = append(d.vals, make([]float64, len(b)/size)...)
	out := d.vals[start:len(d.vals):len(d.vals)]
	le := binary.LittleEndian
	for i := range out {
		e := b[i*size:]
		switch dt {
		case "BOOL":
			out[i] = float64(min(e[0], 1))
		case "UINT8":
			out[i] = float64(e[0])
		case "INT8":
			out[i] = float64(int8(e[0]))
		case "FP16":
			out[i] = half(le.Uint16(e))
		case "BF16":
			out[i] = float64(math.Float32frombits(uint32(le.Uint16(e)) << 16))
		case "INT16":
			out[i] = float64(int16(le.Uint16(e)))
		case "UINT16":
			out[i] = float64(le.Uint16(e))
		case "FP32":
			out[i] = float64(math.Float32frombits(le.Uint32(e)))
		case "INT32":
			out[i] = float64(int32(le.Uint32(e)))
		case "UINT32":
			out[i] = float64(le.Uint32(e))
		case "FP64":
			out[i] = math.Float64frombits(le.Uint64(e))
		case "INT64":
			out[i] = float64(int64(le.Uint64(e)))
		case "UINT64":
			out[i] = float64(le.Uint64(e))
		}
	}
	return out
}

// half converts an IEEE 754 binary16 value.
func half(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(frac, -24)
	case 0x1f:
		if frac == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * math.Ldexp(1+frac/1024, exp-15)
}

// pow10 are the powers of ten that float64 holds exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// fastFloat reads a plain decimal (-?digits[.digits], at most 15 digits)
// the quick way: its digits and its power of ten are exact float64s, so one
// division is correctly rounded, as ParseFloat would round (Clinger's fast
// path). ok is false for anything else, which ParseFloat then reads.
func fastFloat(t []byte) (float64, bool) {
	neg := len(t) > 0 && t[0] == '-'
	if neg {
		t = t[1:]
	}
	if len(t) == 0 || len(t) > 16 {
		return 0, false
	}
	var mant uint64
	digits, frac, dot := 0, 0, false
	for i, c := range t {
		switch {
		case c >= '0' && c <= '9':
			mant = mant*10 + uint64(c-'0')
			digits++
			if dot {
				frac++
			}
		case c == '.' && !dot && i > 0 && i < len(t)-1:
			dot = true
		default:
			return 0, false
		}
	}
	if digits > 15 || (t[0] == '0' && len(t) > 1 && t[1] != '.') {
		return 0, false
	}
	v := float64(mant) / pow10[frac]
	if neg {
		v = -v
	}
	return v, true
}
