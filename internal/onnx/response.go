package onnx

import (
	"encoding/binary"
	"math"
	"net/http"
	"strconv"
	"unicode/utf8"
)

// writeResponse writes the inference response: one JSON document, or with
// the binary extension a JSON header followed by the raw bytes of the
// outputs that asked for it, in order.
func (s *Server) writeResponse(w http.ResponseWriter, req *inferRequest, outs []tensor, sel []selected) {
	b := make([]byte, 0, s.responseSize(outs, sel))
	b = append(b, `{"model_name":`...)
	b = appendJSONString(b, s.cfg.ModelName)
	b = append(b, `,"model_version":"1"`...)
	if req.hasID {
		b = append(b, `,"id":`...)
		b = appendJSONString(b, string(req.id))
	}
	b = append(b, `,"outputs":[`...)
	anyBinary := false
	for i, o := range sel {
		t := &outs[o.index]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendJSONString(b, t.name)
		b = append(b, `,"datatype":"`...)
		b = append(b, t.dt.name...)
		b = append(b, `","shape":`...)
		b = appendShape(b, t.shape)
		if o.binary {
			anyBinary = true
			b = append(b, `,"parameters":{"binary_data_size":`...)
			b = strconv.AppendInt(b, int64(binarySize(t)), 10)
			b = append(b, "}}"...)
			continue
		}
		b = append(b, `,"data":`...)
		b = appendData(b, t)
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	h := w.Header()
	if !anyBinary {
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		w.Write(b)
		return
	}
	headerLen := len(b)
	for _, o := range sel {
		if o.binary {
			b = appendBinary(b, &outs[o.index])
		}
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set(HeaderContentLength, strconv.Itoa(headerLen))
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// responseSize estimates the response so that it is built without regrowing.
func (s *Server) responseSize(outs []tensor, sel []selected) int {
	n := 128 + len(s.cfg.ModelName)
	for _, o := range sel {
		t := &outs[o.index]
		n += 96 + len(t.name) + 21*len(t.shape)
		switch {
		case o.binary:
			n += binarySize(t)
		case t.dt == dtBytes:
			n += binarySize(t) + 4*len(t.strs)
		default:
			n += len(t.data) / t.dt.size * 16
		}
	}
	return n
}

func binarySize(t *tensor) int {
	if t.dt != dtBytes {
		return len(t.data)
	}
	n := 0
	for _, s := range t.strs {
		n += 4 + len(s)
	}
	return n
}

func appendBinary(b []byte, t *tensor) []byte {
	if t.dt != dtBytes {
		return append(b, t.data...)
	}
	for _, s := range t.strs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// shapeString formats a shape as JSON does, for messages.
func shapeString(shape []int64) string { return string(appendShape(nil, shape)) }

func appendShape(b []byte, shape []int64) []byte {
	b = append(b, '[')
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	return append(b, ']')
}

// appendData writes a tensor's elements as a flat JSON list.
func appendData(b []byte, t *tensor) []byte {
	b = append(b, '[')
	d := t.data
	switch t.dt {
	case dtBytes:
		for i, s := range t.strs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, string(s))
		}
	case dtFP32:
		for i := 0; i+4 <= len(d); i += 4 {
			b = sep(b, i)
			b = appendFloat(b, float64(math.Float32frombits(binary.LittleEndian.Uint32(d[i:]))), 32)
		}
	case dtFP64:
		for i := 0; i+8 <= len(d); i += 8 {
			b = sep(b, i)
			b = appendFloat(b, math.Float64frombits(binary.LittleEndian.Uint64(d[i:])), 64)
		}
	case dtFP16, dtBF16:
		for i := 0; i+2 <= len(d); i += 2 {
			b = sep(b, i)
			v := binary.LittleEndian.Uint16(d[i:])
			var f float32
			if t.dt == dtFP16 {
				f = halfToFloat32(v)
			} else {
				f = bf16ToFloat32(v)
			}
			b = appendFloat(b, float64(f), 32)
		}
	case dtBool:
		for i, v := range d {
			b = sep(b, i)
			if v != 0 {
				b = append(b, "true"...)
			} else {
				b = append(b, "false"...)
			}
		}
	case dtUint8:
		for i, v := range d {
			b = sep(b, i)
			b = strconv.AppendUint(b, uint64(v), 10)
		}
	case dtInt8:
		for i, v := range d {
			b = sep(b, i)
			b = strconv.AppendInt(b, int64(int8(v)), 10)
		}
	case dtUint16:
		for i := 0; i+2 <= len(d); i += 2 {
			b = sep(b, i)
			b = strconv.AppendUint(b, uint64(binary.LittleEndian.Uint16(d[i:])), 10)
		}
	case dtInt16:
		for i := 0; i+2 <= len(d); i += 2 {
			b = sep(b, i)
			b = strconv.AppendInt(b, int64(int16(binary.LittleEndian.Uint16(d[i:]))), 10)
		}
	case dtUint32:
		for i := 0; i+4 <= len(d); i += 4 {
			b = sep(b, i)
			b = strconv.AppendUint(b, uint64(binary.LittleEndian.Uint32(d[i:])), 10)
		}
	case dtInt32:
		for i := 0; i+4 <= len(d); i += 4 {
			b = sep(b, i)
			b = strconv.AppendInt(b, int64(int32(binary.LittleEndian.Uint32(d[i:]))), 10)
		}
	case dtUint64:
		for i := 0; i+8 <= len(d); i += 8 {
			b = sep(b, i)
			b = strconv.AppendUint(b, binary.LittleEndian.Uint64(d[i:]), 10)
		}
	case dtInt64:
		for i := 0; i+8 <= len(d); i += 8 {
			b = sep(b, i)
			b = strconv.AppendInt(b, int64(binary.LittleEndian.Uint64(d[i:])), 10)
		}
	}
	return append(b, ']')
}

func sep(b []byte, i int) []byte {
	if i > 0 {
		return append(b, ',')
	}
	return b
}

// appendFloat writes the shortest decimal that reads back as the same value
// at the given precision. NaN and the infinities, which JSON lacks, are
// written as Python and Triton write them.
func appendFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, 1):
		return append(b, "Infinity"...)
	case math.IsInf(f, -1):
		return append(b, "-Infinity"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
