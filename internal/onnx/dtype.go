package onnx

import (
	"math"

	"github.com/ebb-run/ebb/internal/onnx/onnxpb"
)

// dtype is a tensor datatype of the Open Inference Protocol together with
// the ONNX element type it maps to.
type dtype struct {
	name string // protocol name: "FP32", "BYTES" …
	elem onnxpb.ElemType
	size int // bytes per element in the binary encoding; 0 for BYTES
}

var (
	dtBool   = &dtype{"BOOL", onnxpb.Bool, 1}
	dtUint8  = &dtype{"UINT8", onnxpb.Uint8, 1}
	dtUint16 = &dtype{"UINT16", onnxpb.Uint16, 2}
	dtUint32 = &dtype{"UINT32", onnxpb.Uint32, 4}
	dtUint64 = &dtype{"UINT64", onnxpb.Uint64, 8}
	dtInt8   = &dtype{"INT8", onnxpb.Int8, 1}
	dtInt16  = &dtype{"INT16", onnxpb.Int16, 2}
	dtInt32  = &dtype{"INT32", onnxpb.Int32, 4}
	dtInt64  = &dtype{"INT64", onnxpb.Int64, 8}
	dtFP16   = &dtype{"FP16", onnxpb.Float16, 2}
	dtFP32   = &dtype{"FP32", onnxpb.Float, 4}
	dtFP64   = &dtype{"FP64", onnxpb.Double, 8}
	dtBF16   = &dtype{"BF16", onnxpb.BFloat16, 2}
	dtBytes  = &dtype{"BYTES", onnxpb.String, 0}
)

var allDtypes = []*dtype{dtBool, dtUint8, dtUint16, dtUint32, dtUint64, dtInt8, dtInt16, dtInt32, dtInt64, dtFP16, dtFP32, dtFP64, dtBF16, dtBytes}

func dtypeByName(name string) *dtype {
	for _, d := range allDtypes {
		if d.name == name {
			return d
		}
	}
	return nil
}

func dtypeByElem(e onnxpb.ElemType) *dtype {
	for _, d := range allDtypes {
		if d.elem == e {
			return d
		}
	}
	return nil
}

// isFloat reports whether JSON values of d are floating-point numbers.
func (d *dtype) isFloat() bool {
	return d == dtFP16 || d == dtFP32 || d == dtFP64 || d == dtBF16
}

// toSmallFloat rounds f to nearest even in a binary floating-point format
// with expBits exponent bits and mantBits fraction bits (FP16: 5, 10; BF16:
// 8, 7), straight from float64 so that no value is rounded twice. ok is false
// when a finite value is too large for the format.
func toSmallFloat(f float64, expBits, mantBits uint) (bits uint16, ok bool) {
	b := math.Float64bits(f)
	sign := uint16(b>>63) << (expBits + mantBits)
	expAll := uint16(1)<<expBits - 1
	inf := sign | expAll<<mantBits
	switch {
	case math.IsNaN(f):
		return inf | 1<<(mantBits-1), true // quiet NaN
	case math.IsInf(f, 0):
		return inf, true
	}
	exp64 := int((b >> 52) & 0x7ff)
	if exp64 == 0 {
		return sign, true // zero or float64 subnormal: far below any target
	}
	bias := 1<<(expBits-1) - 1
	emin, emax := 1-bias, bias
	e := exp64 - 1023
	m := b&(1<<52-1) | 1<<52 // 53-bit significand: f = m * 2^(e-52)
	shift := uint(52 - mantBits)
	if e < emin {
		shift += uint(emin - e)
		if shift >= 54 {
			return sign, true // below half the smallest subnormal
		}
	}
	q := m >> shift
	rest := m & (1<<shift - 1)
	if half := uint64(1) << (shift - 1); rest > half || (rest == half && q&1 == 1) {
		q++
	}
	if e < emin {
		// Subnormal; a carry to 1<<mantBits lands exactly on the smallest
		// normal number's encoding.
		return sign | uint16(q), true
	}
	if q == 1<<(mantBits+1) {
		q >>= 1
		e++
	}
	if e > emax {
		return inf, false
	}
	return sign | uint16(e+bias)<<mantBits | uint16(q)&(1<<mantBits-1), true
}

func toHalf(f float64) (uint16, bool) { return toSmallFloat(f, 5, 10) }
func toBF16(f float64) (uint16, bool) { return toSmallFloat(f, 8, 7) }

// halfToFloat32 converts IEEE 754 binary16 to float32 exactly.
func halfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// subnormal: normalise
	e := uint32(113)
	for mant&0x400 == 0 {
		mant <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
}

func bf16ToFloat32(v uint16) float32 { return math.Float32frombits(uint32(v) << 16) }
