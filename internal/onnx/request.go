package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unsafe"

	"github.com/ebb-run/ebb/internal/jsonscan"
)

// tensor is one tensor of a request or a response. Fixed-width elements are
// in data, little-endian, row-major; BYTES elements are in strs.
type tensor struct {
	name  string
	dt    *dtype
	shape []int64
	data  []byte
	strs  [][]byte
}

// maxRank bounds the rank a request may declare.
const maxRank = 64

// numElements is the product of shape, or an error naming the problem.
func numElements(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %s has a negative dimension", shapeString(shape))
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("shape %s has too many elements", shapeString(shape))
		}
		n *= d
	}
	return n, nil
}

// requestError is a problem with the client's request; the server answers
// it with its status and message.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{status: 400, msg: fmt.Sprintf(format, args...)}
}

// reqInput is an input as the request states it.
type reqInput struct {
	name       string
	dt         *dtype
	shape      []int64
	hasShape   bool
	binarySize int64 // -1: data is in JSON
	dataStart  int   // offset of "data" in the header; -1 if absent
	decoded    bool
	t          tensor
}

// reqOutput is a requested output.
type reqOutput struct {
	name   string
	binary int8 // -1 unset, 0 false, 1 true
}

type inferRequest struct {
	id           []byte
	hasID        bool
	inputs       []reqInput
	outputs      []reqOutput
	hasOutputs   bool
	binaryOutput bool
}

// parseRequest parses the JSON part of an inference request. bin is the
// binary part (after Inference-Header-Content-Length bytes), possibly empty.
// Tensor data is decoded with the request's own datatype and shape; checking
// them against the model is the caller's job.
func parseRequest(header, bin []byte) (*inferRequest, error) {
	s := jsonscan.New(header)
	req := &inferRequest{}
	var seenInputs, seenParams bool
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "id":
			if req.hasID {
				return badRequest("duplicate key \"id\"")
			}
			v, err := s.StrBytes()
			if err != nil {
				return badRequest("request: id: %v", err)
			}
			req.id, req.hasID = v, true
		case "parameters":
			if seenParams {
				return badRequest("duplicate key \"parameters\"")
			}
			seenParams = true
			return s.Object(func(k []byte) error {
				switch string(k) {
				case "binary_data_output":
					v, err := s.Bool()
					if err != nil {
						return badRequest("parameters.binary_data_output: %v", err)
					}
					req.binaryOutput = v
					return nil
				case "classification":
					return badRequest("parameters.classification is not supported")
				}
				return s.Skip()
			})
		case "inputs":
			if seenInputs {
				return badRequest("duplicate key \"inputs\"")
			}
			seenInputs = true
			return s.Array(func() error {
				in, err := parseInput(s)
				if err != nil {
					return err
				}
				req.inputs = append(req.inputs, in)
				return nil
			})
		case "outputs":
			if req.hasOutputs {
				return badRequest("duplicate key \"outputs\"")
			}
			req.hasOutputs = true
			return s.Array(func() error {
				o, err := parseOutput(s)
				if err != nil {
					return err
				}
				req.outputs = append(req.outputs, o)
				return nil
			})
		default:
			return s.Skip()
		}
		return nil
	})
	if err != nil {
		return nil, asBadRequest(err)
	}
	if s.Peek() != 0 {
		return nil, badRequest("malformed JSON: data after the request object")
	}
	if !seenInputs {
		return nil, badRequest("request has no \"inputs\"")
	}
	// Binary data follows the header in the order the inputs are listed.
	var off int64
	for i := range req.inputs {
		in := &req.inputs[i]
		if in.binarySize < 0 {
			if in.dataStart < 0 {
				return nil, badRequest("input %q has no data", in.name)
			}
			if !in.decoded {
				ds := jsonscan.New(header)
				ds.Seek(in.dataStart)
				if err := in.decodeJSON(ds); err != nil {
					return nil, err
				}
			}
			continue
		}
		if in.dataStart >= 0 {
			return nil, badRequest("input %q has both data and binary_data_size", in.name)
		}
		if in.binarySize > int64(len(bin))-off {
			return nil, badRequest("input %q: binary_data_size %d runs past the end of the body (%d binary bytes)", in.name, in.binarySize, len(bin))
		}
		if err := in.decodeBinary(bin[off : off+in.binarySize]); err != nil {
			return nil, err
		}
		off += in.binarySize
	}
	if off != int64(len(bin)) {
		return nil, badRequest("body has %d binary bytes but the inputs' binary_data_size add up to %d", len(bin), off)
	}
	return req, nil
}

// asBadRequest turns a scanner error into a 400.
func asBadRequest(err error) error {
	var re *requestError
	if errors.As(err, &re) {
		return err
	}
	return badRequest("%v", err)
}

func parseInput(s *jsonscan.Scanner) (reqInput, error) {
	in := reqInput{binarySize: -1, dataStart: -1}
	var seenName, seenType bool
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "name":
			v, err := s.Str()
			if err != nil {
				return err
			}
			in.name, seenName = v, true
		case "datatype":
			v, err := s.Str()
			if err != nil {
				return err
			}
			seenType = true
			in.dt = dtypeByName(v)
			if in.dt == nil {
				return badRequest("input %q: unknown datatype %q", in.name, v)
			}
		case "shape":
			if in.hasShape {
				return badRequest("input %q: duplicate key \"shape\"", in.name)
			}
			in.hasShape = true
			in.shape = make([]int64, 0, 4)
			return s.Array(func() error {
				t, err := s.Token()
				if err != nil {
					return err
				}
				if !jsonscan.IsInteger(t) {
					return badRequest("input %q: shape must be a list of integers, got %q", in.name, t)
				}
				d, err := strconv.ParseInt(jsonscan.BytesString(t), 10, 64)
				if err != nil || d < 0 {
					return badRequest("input %q: invalid dimension %s in shape", in.name, t)
				}
				if len(in.shape) == maxRank {
					return badRequest("input %q: shape has more than %d dimensions", in.name, maxRank)
				}
				in.shape = append(in.shape, d)
				return nil
			})
		case "parameters":
			return s.Object(func(k []byte) error {
				if string(k) != "binary_data_size" {
					return s.Skip()
				}
				t, err := s.Token()
				if err != nil {
					return err
				}
				n, err := strconv.ParseInt(jsonscan.BytesString(t), 10, 64)
				if err != nil || n < 0 || !jsonscan.IsInteger(t) {
					return badRequest("input %q: invalid binary_data_size %q", in.name, t)
				}
				in.binarySize = n
				return nil
			})
		case "data":
			if in.dataStart >= 0 {
				return badRequest("input %q: duplicate key \"data\"", in.name)
			}
			in.dataStart = s.Pos()
			// Clients write name, shape and datatype before data, so the
			// data can usually be decoded in place, in one pass.
			if seenType && in.hasShape {
				return in.decodeJSON(s)
			}
			return s.Skip()
		default:
			return s.Skip()
		}
		return nil
	})
	if err != nil {
		return in, asBadRequest(err)
	}
	switch {
	case !seenName:
		return in, badRequest("an input has no name")
	case !seenType:
		return in, badRequest("input %q has no datatype", in.name)
	case !in.hasShape:
		return in, badRequest("input %q has no shape", in.name)
	}
	return in, nil
}

func parseOutput(s *jsonscan.Scanner) (reqOutput, error) {
	o := reqOutput{binary: -1}
	seenName := false
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "name":
			v, err := s.Str()
			if err != nil {
				return err
			}
			o.name, seenName = v, true
		case "parameters":
			return s.Object(func(k []byte) error {
				switch string(k) {
				case "binary_data":
					v, err := s.Bool()
					if err != nil {
						return badRequest("output %q: parameters.binary_data: %v", o.name, err)
					}
					o.binary = 0
					if v {
						o.binary = 1
					}
					return nil
				case "classification":
					return badRequest("output %q: parameters.classification is not supported", o.name)
				}
				return s.Skip()
			})
		default:
			return s.Skip()
		}
		return nil
	})
	if err != nil {
		return o, asBadRequest(err)
	}
	if !seenName {
		return o, badRequest("an output has no name")
	}
	return o, nil
}

// prepare sizes the tensor for the request's datatype and shape. limit
// bounds the element count by what the body could possibly hold, so that a
// hostile shape cannot make the server allocate more than the body.
func (in *reqInput) prepare(limit int64) (int64, error) {
	n, err := numElements(in.shape)
	if err != nil {
		return 0, badRequest("input %q: %v", in.name, err)
	}
	if n > limit {
		return 0, badRequest("input %q: shape %s has %d elements, more than the data holds", in.name, shapeString(in.shape), n)
	}
	in.t = tensor{name: in.name, dt: in.dt, shape: in.shape}
	return n, nil
}

// decodeBinary takes the input's elements from the binary part of the body.
// Fixed-width data is used in place.
func (in *reqInput) decodeBinary(b []byte) error {
	if in.dt == dtBytes {
		// Every element has at least its 4-byte length.
		n, err := in.prepare(int64(len(b)) / 4)
		if err != nil {
			return err
		}
		strs := make([][]byte, 0, n)
		for off := 0; off < len(b); {
			if len(b)-off < 4 {
				return badRequest("input %q: truncated BYTES element", in.name)
			}
			l := int(binary.LittleEndian.Uint32(b[off:]))
			off += 4
			if l > len(b)-off {
				return badRequest("input %q: BYTES element of %d bytes runs past binary_data_size", in.name, l)
			}
			strs = append(strs, b[off:off+l])
			off += l
		}
		if int64(len(strs)) != n {
			return badRequest("input %q: shape %s needs %d elements, binary data has %d", in.name, shapeString(in.shape), n, len(strs))
		}
		in.t.strs = strs
		in.decoded = true
		return nil
	}
	n, err := numElements(in.shape)
	if err != nil {
		return badRequest("input %q: %v", in.name, err)
	}
	if n > int64(len(b)) || n*int64(in.dt.size) != int64(len(b)) {
		return badRequest("input %q: shape %s of %s needs %s bytes, binary_data_size is %d", in.name, shapeString(in.shape), in.dt.name, byteCount(n, in.dt.size), len(b))
	}
	// The binary part starts wherever the JSON header ends, so elements may
	// be misaligned; kernels are entitled to aligned data.
	if len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%uintptr(in.dt.size) != 0 {
		b = append(make([]byte, 0, len(b)), b...)
	}
	in.t = tensor{name: in.name, dt: in.dt, shape: in.shape, data: b}
	if in.dt == dtBool {
		for _, v := range b {
			if v > 1 {
				return badRequest("input %q: BOOL element is %d, want 0 or 1", in.name, v)
			}
		}
	}
	in.decoded = true
	return nil
}

func byteCount(n int64, size int) string {
	if n > math.MaxInt64/int64(size) {
		return "more than 2^63"
	}
	return strconv.FormatInt(n*int64(size), 10)
}

// dataDecoder fills one tensor from its JSON "data".
type dataDecoder struct {
	s     *jsonscan.Scanner
	in    *reqInput
	n     int64 // elements expected
	k     int64 // elements stored
	shape []int64
	flat  bool // data is a flat list; else nested to match shape
}

// decodeJSON decodes the "data" value at the scanner's position.
func (in *reqInput) decodeJSON(s *jsonscan.Scanner) error {
	// Every element takes at least one byte and a separator.
	n, err := in.prepare(int64(s.Remaining())/2 + 1)
	if err != nil {
		return err
	}
	if in.dt == dtBytes {
		in.t.strs = make([][]byte, n)
	} else {
		in.t.data = make([]byte, n*int64(in.dt.size))
	}
	d := dataDecoder{s: s, in: in, n: n, shape: in.shape}
	if s.Peek() != '[' {
		// A bare value stands for a tensor of one element.
		if n != 1 {
			return badRequest("input %q: data must be a list", in.name)
		}
		if err := d.element(); err != nil {
			return err
		}
	} else if err := d.list(0); err != nil {
		return err
	}
	if d.k != n {
		return badRequest("input %q: shape %s needs %d elements, data has %d", in.name, shapeString(in.shape), n, d.k)
	}
	in.decoded = true
	return nil
}

// list reads one array at nesting depth depth. An array of scalars at depth
// 0 is the flat form; otherwise every level must match the shape.
func (d *dataDecoder) list(depth int) error {
	s := d.s
	s.Next() // '['
	if s.Peek() == ']' {
		s.Next()
		if depth > 0 && (depth != len(d.shape)-1 || d.shape[depth] != 0) {
			return d.nestErr(depth)
		}
		return nil
	}
	nested := s.Peek() == '['
	if depth == 0 {
		d.flat = !nested
	} else if d.flat || depth >= len(d.shape) {
		return d.nestErr(depth)
	}
	count := int64(0)
	for {
		if nested {
			if s.Peek() != '[' || depth+1 >= len(d.shape) {
				return d.nestErr(depth + 1)
			}
			if err := d.list(depth + 1); err != nil {
				return err
			}
		} else {
			if s.Peek() == '[' {
				return d.nestErr(depth)
			}
			if err := d.element(); err != nil {
				return err
			}
		}
		count++
		switch s.Peek() {
		case ',':
			s.Next()
			continue
		case ']':
			s.Next()
		case 0:
			return jsonscan.ErrEnd
		default:
			return badRequest("input %q: %v", d.in.name, s.Errorf("want ',' or ']' in data"))
		}
		break
	}
	if !d.flat {
		last := depth == len(d.shape)-1
		if count != d.shape[depth] || (!nested && !last) {
			return d.nestErr(depth)
		}
	}
	return nil
}

func (d *dataDecoder) nestErr(depth int) error {
	return badRequest("input %q: nested data does not match shape %s (at depth %d)", d.in.name, shapeString(d.shape), depth)
}

// element decodes one scalar into position k.
func (d *dataDecoder) element() error {
	if d.k >= d.n {
		return badRequest("input %q: shape %s needs %d elements, data has more", d.in.name, shapeString(d.shape), d.n)
	}
	s, in := d.s, d.in
	dt := in.dt
	if dt == dtBytes {
		if s.Peek() != '"' {
			return badRequest("input %q: BYTES elements must be strings", in.name)
		}
		v, err := s.StrBytes()
		if err != nil {
			return asBadRequest(err)
		}
		in.t.strs[d.k] = v
		d.k++
		return nil
	}
	tok, err := s.Token()
	if err != nil {
		return badRequest("input %q: %v", in.name, err)
	}
	out := in.t.data[d.k*int64(dt.size):]
	d.k++
	switch dt {
	case dtBool:
		switch string(tok) {
		case "true":
			out[0] = 1
		case "false":
			out[0] = 0
		default:
			return badRequest("input %q: BOOL elements must be true or false, got %q", in.name, tok)
		}
		return nil
	case dtFP32, dtFP64, dtFP16, dtBF16:
		f, err := parseFloatToken(tok, dt)
		if err != nil {
			return badRequest("input %q: %v", in.name, err)
		}
		switch dt {
		case dtFP32:
			binary.LittleEndian.PutUint32(out, math.Float32bits(float32(f)))
		case dtFP64:
			binary.LittleEndian.PutUint64(out, math.Float64bits(f))
		case dtFP16:
			h, ok := toHalf(f)
			if !ok {
				return badRequest("input %q: %s is out of range for FP16", in.name, tok)
			}
			binary.LittleEndian.PutUint16(out, h)
		case dtBF16:
			h, ok := toBF16(f)
			if !ok {
				return badRequest("input %q: %s is out of range for BF16", in.name, tok)
			}
			binary.LittleEndian.PutUint16(out, h)
		}
		return nil
	}
	if !jsonscan.IsInteger(tok) {
		return badRequest("input %q: %s elements must be integers, got %q", in.name, dt.name, tok)
	}
	str := jsonscan.BytesString(tok)
	var bits uint64 // two's complement for the signed types
	switch dt {
	case dtUint8, dtUint16, dtUint32, dtUint64:
		bits, err = strconv.ParseUint(str, 10, dt.size*8)
	default:
		var v int64
		v, err = strconv.ParseInt(str, 10, dt.size*8)
		bits = uint64(v)
	}
	if err != nil {
		return badRequest("input %q: %s is out of range for %s", in.name, tok, dt.name)
	}
	switch dt.size {
	case 1:
		out[0] = byte(bits)
	case 2:
		binary.LittleEndian.PutUint16(out, uint16(bits))
	case 4:
		binary.LittleEndian.PutUint32(out, uint32(bits))
	default:
		binary.LittleEndian.PutUint64(out, bits)
	}
	return nil
}

// parseFloatToken parses a JSON number (or NaN, Infinity, -Infinity, as
// Python and Triton write them) for a floating-point datatype, rounding once
// to the target precision for FP32.
func parseFloatToken(tok []byte, dt *dtype) (float64, error) {
	switch string(tok) {
	case "NaN":
		return math.NaN(), nil
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	if f, ok := jsonscan.FastFloat(tok); ok {
		if dt != dtFP32 {
			return f, nil
		}
		// f is the float64 nearest the decimal; rounding it again to
		// float32 is exact unless it lies on a float32 midpoint, or in
		// float32's subnormal range where midpoints fall elsewhere.
		a := math.Abs(f)
		if a == 0 || (a >= 0x1p-126 && a <= math.MaxFloat32 && math.Float64bits(f)&(1<<29-1) != 1<<28) {
			return f, nil
		}
	}
	if !jsonscan.IsNumber(tok) {
		return 0, fmt.Errorf("%q is not a number", tok)
	}
	bits := 64
	if dt == dtFP32 {
		bits = 32
	}
	f, err := strconv.ParseFloat(jsonscan.BytesString(tok), bits)
	if err != nil {
		// ParseFloat reports overflow with ±Inf; underflow is silently zero.
		return 0, fmt.Errorf("%s is out of range for %s", tok, dt.name)
	}
	return f, nil
}
