package monitor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/ebb-run/ebb/internal/jsonscan"
)

// The decoders here read only what the summaries need from bodies that ebb
// already passed on: top-level numbers of JSON events and results, and the
// tensors of Open Inference Protocol requests and responses (JSON, or a JSON
// header followed by raw tensor bytes). They run on the summariser's
// goroutine, never on a request's, and never panic on malformed input.

// scanner reads with jsonscan's strict scanner where a value is decoded
// (keys, names, datatypes, shapes) and with its lenient one where a value
// is only skipped or tried as a number, so that it survives malformed input
// and is exact with valid input.
type scanner struct {
	jsonscan.Scanner
}

// number consumes a value and says whether it was a number (a bool too, as
// 0 or 1, when bools is set).
func (s *scanner) number(bools bool) (float64, bool, error) {
	switch c := s.Peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		t := s.Bare()
		if v, ok := jsonscan.FastFloat(t); ok {
			return v, true, nil
		}
		v, err := strconv.ParseFloat(string(t), 64)
		return v, err == nil, nil
	case bools && c == 't':
		return 1, string(s.Bare()) == "true", nil
	case bools && c == 'f':
		return 0, string(s.Bare()) == "false", nil
	}
	return 0, false, s.SkipLoose()
}

// text reads a string as encoding/json decodes it.
func (s *scanner) text() (string, error) {
	v, err := s.StrBytes()
	if err != nil {
		return "", err
	}
	return jsonscan.UTF8(v), nil
}

// arrayAt walks an array, giving each element's index.
func (s *scanner) arrayAt(each func(i int) error) error {
	i := 0
	return s.Array(func() error {
		i++
		return each(i - 1)
	})
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
	s := &scanner{}
	s.Reset(b)
	if s.Peek() != '{' {
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
	err := s.Object(func(k []byte) error {
		key := jsonscan.UTF8(k)
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
	c := s.Peek()
	if c != '[' {
		v, ok, err := s.number(false)
		if ok {
			f.add(0, v, maxFeatures)
		}
		return ok, err
	}
	start := s.Pos()
	rank := 0
	numeric := true
	err = s.arrayAt(func(i int) error {
		if !numeric {
			return errNotNumeric
		}
		if s.Peek() == '[' {
			if rank == 1 {
				return errNotNumeric
			}
			rank = 2
			return s.arrayAt(func(j int) error {
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
		s.Seek(start)
		return false, s.SkipLoose()
	}
	return err == nil, err
}

var errNotNumeric = errors.New("not numeric")

// errSize refuses a shape or binary_data_size that is not a size.
var errSize = errors.New("malformed JSON: want a whole number from 0 to 2^31-1")

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
	s := &scanner{}
	s.Reset(header)
	var out []Tensor
	seen := false
	err := s.Object(func(k []byte) error {
		if string(k) != key || seen {
			return s.SkipLoose()
		}
		seen = true
		return s.Array(func() error {
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
	err := s.Object(func(k []byte) error {
		switch string(k) {
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
			return s.Array(func() error {
				v, ok, err := s.number(false)
				if err != nil {
					return err
				}
				if !ok || v != math.Trunc(v) || v < 0 || v > math.MaxInt32 {
					return errSize
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
			return s.Object(func(p []byte) error {
				if string(p) != "binary_data_size" {
					return s.SkipLoose()
				}
				v, ok, err := s.number(false)
				if err != nil {
					return err
				}
				if !ok || v != math.Trunc(v) || v < 0 || v > math.MaxInt32 {
					return errSize
				}
				t.binary = int64(v)
				return nil
			})
		}
		return s.SkipLoose()
	})
	return t, err
}

// data flattens a tensor's JSON data (nested arrays of numbers or bools);
// numeric turns false at anything else.
func (s *scanner) data(out *[]float64, numeric *bool, depth int) error {
	if s.Peek() != '[' || depth >= maxTensorRank || !*numeric {
		v, ok, err := s.number(true)
		if ok && *numeric {
			*out = append(*out, v)
		} else {
			*numeric = false
		}
		return err
	}
	return s.Array(func() error { return s.data(out, numeric, depth+1) })
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
