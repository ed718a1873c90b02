// Package onnxpb decodes the few parts of the ONNX protobuf format that ebb
// needs: the inputs and outputs a model declares (ModelProto) and tensors
// serialized on their own (TensorProto, as in the ONNX backend test cases).
//
// It reads the protobuf wire format by hand because the module carries no
// protobuf runtime or generated ONNX code, and because only a handful of
// fields matter: everything else, including the weights, is skipped without
// being copied, so describing a large model costs a scan of its structure,
// not a second load of it. Decoding never panics on malformed input; it
// returns an error.
package onnxpb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ElemType is an ONNX TensorProto.DataType value.
type ElemType int32

// ONNX element types (onnx.proto, TensorProto.DataType).
const (
	Undefined  ElemType = 0
	Float      ElemType = 1
	Uint8      ElemType = 2
	Int8       ElemType = 3
	Uint16     ElemType = 4
	Int16      ElemType = 5
	Int32      ElemType = 6
	Int64      ElemType = 7
	String     ElemType = 8
	Bool       ElemType = 9
	Float16    ElemType = 10
	Double     ElemType = 11
	Uint32     ElemType = 12
	Uint64     ElemType = 13
	Complex64  ElemType = 14
	Complex128 ElemType = 15
	BFloat16   ElemType = 16
)

var elemNames = map[ElemType]string{
	Float: "float", Uint8: "uint8", Int8: "int8", Uint16: "uint16", Int16: "int16",
	Int32: "int32", Int64: "int64", String: "string", Bool: "bool", Float16: "float16",
	Double: "double", Uint32: "uint32", Uint64: "uint64", Complex64: "complex64",
	Complex128: "complex128", BFloat16: "bfloat16", 17: "float8e4m3fn",
	18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
}

func (t ElemType) String() string {
	if n, ok := elemNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", int32(t))
}

// Size is the width in bytes of one element in raw_data, or 0 for types
// without a fixed width (string, sub-byte and unknown types).
func (t ElemType) Size() int {
	switch t {
	case Uint8, Int8, Bool, 17, 18, 19, 20:
		return 1
	case Uint16, Int16, Float16, BFloat16:
		return 2
	case Float, Int32, Uint32:
		return 4
	case Int64, Uint64, Double, Complex64:
		return 8
	case Complex128:
		return 16
	}
	return 0
}

// Kind says what sort of value a graph input or output carries.
type Kind int

const (
	KindTensor Kind = iota
	KindSparseTensor
	KindSequence
	KindMap
	KindOptional
	KindOpaque
	KindUnknown
)

func (k Kind) String() string {
	switch k {
	case KindTensor:
		return "tensor"
	case KindSparseTensor:
		return "sparse tensor"
	case KindSequence:
		return "sequence"
	case KindMap:
		return "map"
	case KindOptional:
		return "optional"
	case KindOpaque:
		return "opaque"
	}
	return "unknown"
}

// Dim is one dimension of a declared shape: Value when it is fixed, -1 with
// Param naming it (possibly "") when it is dynamic.
type Dim struct {
	Value int64
	Param string
}

// ValueInfo describes a graph input or output.
type ValueInfo struct {
	Name string
	Kind Kind
	Elem ElemType // for tensors
	// HasShape is false when the model does not declare a shape at all (any
	// rank); Dims is then nil.
	HasShape bool
	Dims     []Dim
}

// Model is what ebb needs to know about a ModelProto.
type Model struct {
	IRVersion    int64
	ProducerName string
	GraphName    string
	OpsetVersion int64 // of the default ("" or "ai.onnx") domain; 0 if absent
	Inputs       []ValueInfo
	Outputs      []ValueInfo
	ExternalData bool // some initializer lives in a separate file
	initializers map[string]bool
}

// ErrTruncated reports input that ends inside a field.
var ErrTruncated = errors.New("truncated protobuf")

// wire types
const (
	wtVarint = 0
	wtI64    = 1
	wtLen    = 2
	wtSGroup = 3
	wtEGroup = 4
	wtI32    = 5
)

// reader walks one protobuf message.
type reader struct {
	b   []byte
	off int
}

func (r *reader) done() bool { return r.off >= len(r.b) }

func (r *reader) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if r.off >= len(r.b) {
			return 0, ErrTruncated
		}
		c := r.b[r.off]
		r.off++
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint overflows 64 bits")
}

// key reads a field key and returns the field number and wire type.
func (r *reader) key() (int, int, error) {
	k, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	num := k >> 3
	if num == 0 || num > math.MaxInt32 {
		return 0, 0, fmt.Errorf("invalid field number %d", num)
	}
	return int(num), int(k & 7), nil
}

func (r *reader) bytes() ([]byte, error) {
	n, err := r.varint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)-r.off) {
		return nil, ErrTruncated
	}
	b := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return b, nil
}

func (r *reader) fixed(n int) ([]byte, error) {
	if n > len(r.b)-r.off {
		return nil, ErrTruncated
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b, nil
}

// skip steps over a field of wire type wt whose key has been read.
func (r *reader) skip(wt int) error {
	return r.skipDepth(wt, 0)
}

func (r *reader) skipDepth(wt, depth int) error {
	switch wt {
	case wtVarint:
		_, err := r.varint()
		return err
	case wtI64:
		_, err := r.fixed(8)
		return err
	case wtI32:
		_, err := r.fixed(4)
		return err
	case wtLen:
		_, err := r.bytes()
		return err
	case wtSGroup:
		if depth > 64 {
			return errors.New("groups nested too deeply")
		}
		for {
			if r.done() {
				return ErrTruncated
			}
			_, w, err := r.key()
			if err != nil {
				return err
			}
			if w == wtEGroup {
				return nil
			}
			if err := r.skipDepth(w, depth+1); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("invalid wire type %d", wt)
}

// lenField reads a length-delimited field whose key (num, wt) has been read.
func (r *reader) lenField(num, wt int) ([]byte, error) {
	if err := expect(num, wt, wtLen); err != nil {
		return nil, err
	}
	return r.bytes()
}

// varintField reads a varint field whose key (num, wt) has been read.
func (r *reader) varintField(num, wt int) (uint64, error) {
	if err := expect(num, wt, wtVarint); err != nil {
		return 0, err
	}
	return r.varint()
}

// expect checks that field num arrived with wire type want.
func expect(num, wt, want int) error {
	if wt != want {
		return fmt.Errorf("field %d has wire type %d, want %d", num, wt, want)
	}
	return nil
}

// ParseModel decodes the declared inputs and outputs of a serialized
// ModelProto. Inputs that are initializers (constants with a default value)
// are left out, as ONNX Runtime leaves them out of a session's inputs.
func ParseModel(b []byte) (*Model, error) {
	m := &Model{initializers: map[string]bool{}}
	r := reader{b: b}
	seenGraph := false
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return nil, fmt.Errorf("parse model: %w", err)
		}
		switch num {
		case 1: // ir_version
			v, err := r.varintField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse model: %w", err)
			}
			m.IRVersion = int64(v)
		case 2: // producer_name
			v, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse model: %w", err)
			}
			m.ProducerName = string(v)
		case 7: // graph
			g, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse model: %w", err)
			}
			if err := m.parseGraph(g); err != nil {
				return nil, fmt.Errorf("parse model: graph: %w", err)
			}
			seenGraph = true
		case 8: // opset_import
			o, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse model: %w", err)
			}
			domain, version, err := parseOpset(o)
			if err != nil {
				return nil, fmt.Errorf("parse model: opset_import: %w", err)
			}
			if domain == "" || domain == "ai.onnx" {
				m.OpsetVersion = version
			}
		default:
			if err := r.skip(wt); err != nil {
				return nil, fmt.Errorf("parse model: field %d: %w", num, err)
			}
		}
	}
	if !seenGraph {
		return nil, errors.New("parse model: no graph (is this an ONNX model?)")
	}
	// Initializers may be listed before or after the inputs, so inputs are
	// filtered once the whole graph has been read.
	kept := m.Inputs[:0]
	for _, in := range m.Inputs {
		if !m.initializers[in.Name] {
			kept = append(kept, in)
		}
	}
	m.Inputs = kept
	m.initializers = nil
	return m, nil
}

func parseOpset(b []byte) (string, int64, error) {
	r := reader{b: b}
	var domain string
	var version int64
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return "", 0, err
		}
		switch {
		case num == 1 && wt == wtLen:
			v, err := r.bytes()
			if err != nil {
				return "", 0, err
			}
			domain = string(v)
		case num == 2 && wt == wtVarint:
			v, err := r.varint()
			if err != nil {
				return "", 0, err
			}
			version = int64(v)
		default:
			if err := r.skip(wt); err != nil {
				return "", 0, err
			}
		}
	}
	return domain, version, nil
}

func (m *Model) parseGraph(b []byte) error {
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return err
		}
		switch num {
		case 2, 5, 11, 12, 15:
			v, err := r.lenField(num, wt)
			if err != nil {
				return err
			}
			switch num {
			case 2: // name
				m.GraphName = string(v)
			case 5: // initializer
				name, external, err := tensorNameOnly(v)
				if err != nil {
					return fmt.Errorf("initializer: %w", err)
				}
				m.initializers[name] = true
				m.ExternalData = m.ExternalData || external
			case 15: // sparse_initializer: its name is that of its values
				name, err := sparseName(v)
				if err != nil {
					return fmt.Errorf("sparse_initializer: %w", err)
				}
				m.initializers[name] = true
			case 11, 12:
				vi, err := parseValueInfo(v)
				if err != nil {
					return fmt.Errorf("value info: %w", err)
				}
				if num == 11 {
					m.Inputs = append(m.Inputs, vi)
				} else {
					m.Outputs = append(m.Outputs, vi)
				}
			}
		default:
			if err := r.skip(wt); err != nil {
				return err
			}
		}
	}
	return nil
}

// tensorNameOnly reads a TensorProto's name and whether its data is
// external, skipping its data.
func tensorNameOnly(b []byte) (string, bool, error) {
	r := reader{b: b}
	var name string
	external := false
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return "", false, err
		}
		switch {
		case num == 8 && wt == wtLen:
			v, err := r.bytes()
			if err != nil {
				return "", false, err
			}
			name = string(v)
		case num == 14 && wt == wtVarint:
			v, err := r.varint()
			if err != nil {
				return "", false, err
			}
			external = v == 1
		default:
			if err := r.skip(wt); err != nil {
				return "", false, err
			}
		}
	}
	return name, external, nil
}

func sparseName(b []byte) (string, error) {
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return "", err
		}
		if num == 1 && wt == wtLen {
			v, err := r.bytes()
			if err != nil {
				return "", err
			}
			name, _, err := tensorNameOnly(v)
			return name, err
		}
		if err := r.skip(wt); err != nil {
			return "", err
		}
	}
	return "", nil
}

func parseValueInfo(b []byte) (ValueInfo, error) {
	vi := ValueInfo{Kind: KindUnknown}
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return vi, err
		}
		switch {
		case num == 1 && wt == wtLen:
			v, err := r.bytes()
			if err != nil {
				return vi, err
			}
			vi.Name = string(v)
		case num == 2 && wt == wtLen:
			v, err := r.bytes()
			if err != nil {
				return vi, err
			}
			if err := parseType(v, &vi); err != nil {
				return vi, fmt.Errorf("%q: %w", vi.Name, err)
			}
		default:
			if err := r.skip(wt); err != nil {
				return vi, err
			}
		}
	}
	return vi, nil
}

func parseType(b []byte, vi *ValueInfo) error {
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return err
		}
		if wt != wtLen {
			if err := r.skip(wt); err != nil {
				return err
			}
			continue
		}
		v, err := r.bytes()
		if err != nil {
			return err
		}
		switch num {
		case 1, 8: // tensor_type, sparse_tensor_type
			vi.Kind = KindTensor
			if num == 8 {
				vi.Kind = KindSparseTensor
			}
			if err := parseTensorType(v, vi); err != nil {
				return err
			}
		case 4:
			vi.Kind = KindSequence
		case 5:
			vi.Kind = KindMap
		case 7:
			vi.Kind = KindOpaque
		case 9:
			vi.Kind = KindOptional
		}
	}
	return nil
}

func parseTensorType(b []byte, vi *ValueInfo) error {
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return err
		}
		switch {
		case num == 1 && wt == wtVarint:
			v, err := r.varint()
			if err != nil {
				return err
			}
			vi.Elem = ElemType(int32(v))
		case num == 2 && wt == wtLen:
			v, err := r.bytes()
			if err != nil {
				return err
			}
			vi.HasShape = true
			vi.Dims = vi.Dims[:0]
			if err := parseShape(v, vi); err != nil {
				return err
			}
		default:
			if err := r.skip(wt); err != nil {
				return err
			}
		}
	}
	return nil
}

func parseShape(b []byte, vi *ValueInfo) error {
	r := reader{b: b}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return err
		}
		if num != 1 || wt != wtLen {
			if err := r.skip(wt); err != nil {
				return err
			}
			continue
		}
		v, err := r.bytes()
		if err != nil {
			return err
		}
		d := Dim{Value: -1}
		dr := reader{b: v}
		for !dr.done() {
			dn, dwt, err := dr.key()
			if err != nil {
				return err
			}
			switch {
			case dn == 1 && dwt == wtVarint:
				x, err := dr.varint()
				if err != nil {
					return err
				}
				// dim_value and dim_param are a oneof: the last one wins.
				d.Value, d.Param = int64(x), ""
			case dn == 2 && dwt == wtLen:
				x, err := dr.bytes()
				if err != nil {
					return err
				}
				d.Value, d.Param = -1, string(x)
			default:
				if err := dr.skip(dwt); err != nil {
					return err
				}
			}
		}
		// A dimension whose value is negative on the wire (or absent) is
		// dynamic; ONNX Runtime reports it as -1.
		if d.Value < 0 {
			d.Value = -1
		}
		vi.Dims = append(vi.Dims, d)
	}
	return nil
}

// Tensor is a decoded TensorProto. Raw holds the elements in little-endian
// order for every fixed-width type, whichever field the file used; Strings
// holds them for String tensors.
type Tensor struct {
	Name    string
	Elem    ElemType
	Dims    []int64
	Raw     []byte
	Strings [][]byte
}

// NumElements is the product of Dims (1 for a scalar); -1 on overflow.
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		if d < 0 || (d != 0 && n > math.MaxInt64/d) {
			return -1
		}
		n *= d
	}
	return n
}

// ParseTensor decodes a serialized TensorProto whose data is inline.
func ParseTensor(b []byte) (*Tensor, error) {
	t := &Tensor{}
	r := reader{b: b}
	var (
		floats, doubles      []byte
		int32s, int64s, u64s []uint64
		haveRaw, external    bool
		floatCount, dblCount int
	)
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return nil, fmt.Errorf("parse tensor: %w", err)
		}
		switch num {
		case 1: // dims
			vals, err := r.varints(wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: dims: %w", err)
			}
			for _, v := range vals {
				t.Dims = append(t.Dims, int64(v))
			}
		case 2: // data_type
			v, err := r.varintField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: %w", err)
			}
			t.Elem = ElemType(int32(v))
		case 4: // float_data
			b, err := r.fixedWidth(wt, wtI32, 4)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: float_data: %w", err)
			}
			floats = append(floats, b...)
			floatCount += len(b) / 4
		case 5: // int32_data
			vals, err := r.varints(wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: int32_data: %w", err)
			}
			int32s = append(int32s, vals...)
		case 6: // string_data
			v, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: string_data: %w", err)
			}
			t.Strings = append(t.Strings, v)
		case 7: // int64_data
			vals, err := r.varints(wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: int64_data: %w", err)
			}
			int64s = append(int64s, vals...)
		case 8: // name
			v, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: %w", err)
			}
			t.Name = string(v)
		case 9: // raw_data
			v, err := r.lenField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: %w", err)
			}
			t.Raw = v
			haveRaw = true
		case 10: // double_data
			b, err := r.fixedWidth(wt, wtI64, 8)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: double_data: %w", err)
			}
			doubles = append(doubles, b...)
			dblCount += len(b) / 8
		case 11: // uint64_data
			vals, err := r.varints(wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: uint64_data: %w", err)
			}
			u64s = append(u64s, vals...)
		case 14: // data_location
			v, err := r.varintField(num, wt)
			if err != nil {
				return nil, fmt.Errorf("parse tensor: %w", err)
			}
			external = v == 1
		default:
			if err := r.skip(wt); err != nil {
				return nil, fmt.Errorf("parse tensor: field %d: %w", num, err)
			}
		}
	}
	if external {
		return nil, errors.New("parse tensor: external data is not supported")
	}
	n := t.NumElements()
	if n < 0 {
		return nil, errors.New("parse tensor: invalid dims")
	}
	if t.Elem == String {
		if haveRaw {
			return nil, errors.New("parse tensor: string tensor with raw_data")
		}
		if int64(len(t.Strings)) != n {
			return nil, fmt.Errorf("parse tensor: %d strings for %d elements", len(t.Strings), n)
		}
		return t, nil
	}
	size := t.Elem.Size()
	if size == 0 {
		return nil, fmt.Errorf("parse tensor: unsupported element type %s", t.Elem)
	}
	if n > int64(math.MaxInt32) {
		return nil, errors.New("parse tensor: too many elements")
	}
	want := int(n) * size
	if haveRaw {
		if len(t.Raw) != want {
			return nil, fmt.Errorf("parse tensor: raw_data has %d bytes, want %d", len(t.Raw), want)
		}
		return t, nil
	}
	// Count first: the dims alone must not decide how much is allocated.
	count, wantCount := 0, int(n)
	switch t.Elem {
	case Float, Complex64:
		count = floatCount
	case Double, Complex128:
		count = dblCount
	case Int64:
		count = len(int64s)
	case Uint32, Uint64:
		count = len(u64s)
	default:
		count = len(int32s)
	}
	if t.Elem == Complex64 || t.Elem == Complex128 {
		wantCount = 2 * int(n)
	}
	if count != wantCount {
		return nil, fmt.Errorf("parse tensor: %d values for %d elements of %s", count, n, t.Elem)
	}
	out := make([]byte, want)
	switch t.Elem {
	case Float, Complex64:
		copy(out, floats)
	case Double, Complex128:
		copy(out, doubles)
	case Int64:
		for i, v := range int64s {
			binary.LittleEndian.PutUint64(out[i*8:], v)
		}
	case Uint32, Uint64:
		for i, v := range u64s {
			if size == 4 {
				binary.LittleEndian.PutUint32(out[i*4:], uint32(v))
			} else {
				binary.LittleEndian.PutUint64(out[i*8:], v)
			}
		}
	default:
		// int32_data carries every type of 32 bits or fewer, each element in
		// its own int32 (float16 and bfloat16 as their bit patterns).
		for i, v := range int32s {
			switch size {
			case 1:
				out[i] = byte(v)
			case 2:
				binary.LittleEndian.PutUint16(out[i*2:], uint16(v))
			case 4:
				binary.LittleEndian.PutUint32(out[i*4:], uint32(v))
			}
		}
	}
	t.Raw = out
	return t, nil
}

// varints reads a repeated varint field, packed (wtLen) or not.
func (r *reader) varints(wt int) ([]uint64, error) {
	switch wt {
	case wtVarint:
		v, err := r.varint()
		if err != nil {
			return nil, err
		}
		return []uint64{v}, nil
	case wtLen:
		b, err := r.bytes()
		if err != nil {
			return nil, err
		}
		pr := reader{b: b}
		var out []uint64
		for !pr.done() {
			v, err := pr.varint()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("wire type %d for a varint field", wt)
}

// fixedWidth reads a repeated fixed-width field, packed or not, and returns
// its bytes.
func (r *reader) fixedWidth(wt, single, width int) ([]byte, error) {
	switch wt {
	case single:
		return r.fixed(width)
	case wtLen:
		b, err := r.bytes()
		if err != nil {
			return nil, err
		}
		if len(b)%width != 0 {
			return nil, fmt.Errorf("packed field of %d bytes is not a multiple of %d", len(b), width)
		}
		return b, nil
	}
	return nil, fmt.Errorf("wire type %d for a fixed-width field", wt)
}
