package onnxpb

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The encoders below write just enough of the format to append small nodes
// and outputs to an existing graph; see RewriteGraph.

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendKey(b []byte, num, wt int) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(wt))
}

func appendLen(b []byte, num int, v []byte) []byte {
	b = appendKey(b, num, wtLen)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendInt(b []byte, num int, v int64) []byte {
	b = appendKey(b, num, wtVarint)
	return appendVarint(b, uint64(v))
}

// Attr is an encoded AttributeProto.
type Attr []byte

// IntAttr is an INT attribute.
func IntAttr(name string, v int64) Attr {
	var b []byte
	b = appendLen(b, 1, []byte(name))
	b = appendInt(b, 3, v)
	return appendInt(b, 20, 2) // type = INT
}

// Int64TensorAttr is a TENSOR attribute holding an int64 tensor.
func Int64TensorAttr(name string, dims []int64, vals []int64) Attr {
	var t []byte
	for _, d := range dims {
		t = appendInt(t, 1, d)
	}
	t = appendInt(t, 2, int64(Int64))
	raw := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	// raw_data is written even when empty so that a zero-element tensor is
	// unambiguous about where its data is.
	t = appendLen(t, 9, raw)
	var b []byte
	b = appendLen(b, 1, []byte(name))
	b = appendLen(b, 5, t)
	return appendInt(b, 20, 4) // type = TENSOR
}

// Node encodes a NodeProto of the default domain as a GraphProto.node field.
func Node(op, name string, inputs, outputs []string, attrs ...Attr) []byte {
	var n []byte
	for _, s := range inputs {
		n = appendLen(n, 1, []byte(s))
	}
	for _, s := range outputs {
		n = appendLen(n, 2, []byte(s))
	}
	n = appendLen(n, 3, []byte(name))
	n = appendLen(n, 4, []byte(op))
	for _, a := range attrs {
		n = appendLen(n, 5, a)
	}
	return appendLen(nil, 1, n)
}

// Input encodes a tensor ValueInfoProto as a GraphProto.input field.
func Input(vi ValueInfo) []byte { return appendLen(nil, 11, valueInfo(vi)) }

// Output encodes a tensor ValueInfoProto as a GraphProto.output field.
func Output(vi ValueInfo) []byte { return appendLen(nil, 12, valueInfo(vi)) }

func valueInfo(vi ValueInfo) []byte {
	var tt []byte
	tt = appendInt(tt, 1, int64(vi.Elem))
	if vi.HasShape {
		var shape []byte
		for _, d := range vi.Dims {
			var dim []byte
			switch {
			case d.Value >= 0:
				dim = appendInt(dim, 1, d.Value)
			case d.Param != "":
				dim = appendLen(dim, 2, []byte(d.Param))
			}
			shape = appendLen(shape, 1, dim)
		}
		tt = appendLen(tt, 2, shape)
	}
	typ := appendLen(nil, 1, tt)
	var b []byte
	b = appendLen(b, 1, []byte(vi.Name))
	return appendLen(b, 2, typ)
}

// RewriteGraph returns a copy of the serialized model in which the graph
// declares none of the inputs in dropInputs and none of the outputs in
// dropOutputs, and has extra (encoded GraphProto fields: nodes, inputs,
// outputs) appended. Appended nodes come after every existing node, so they
// may consume any value of the graph. Every other field is copied byte for
// byte.
func RewriteGraph(model []byte, dropInputs, dropOutputs map[string]bool, extra []byte) ([]byte, error) {
	out := make([]byte, 0, len(model)+len(extra)+16)
	r := reader{b: model}
	graphs := 0
	for !r.done() {
		start := r.off
		num, wt, err := r.key()
		if err != nil {
			return nil, fmt.Errorf("rewrite model: %w", err)
		}
		if num != 7 || wt != wtLen {
			if err := r.skip(wt); err != nil {
				return nil, fmt.Errorf("rewrite model: %w", err)
			}
			out = append(out, model[start:r.off]...)
			continue
		}
		g, err := r.bytes()
		if err != nil {
			return nil, fmt.Errorf("rewrite model: %w", err)
		}
		graphs++
		ng, err := rewriteGraph(g, dropInputs, dropOutputs, extra)
		if err != nil {
			return nil, fmt.Errorf("rewrite model: graph: %w", err)
		}
		out = appendLen(out, 7, ng)
	}
	if graphs != 1 {
		return nil, errors.New("rewrite model: want exactly one graph")
	}
	return out, nil
}

func rewriteGraph(g []byte, dropInputs, dropOutputs map[string]bool, extra []byte) ([]byte, error) {
	out := make([]byte, 0, len(g)+len(extra))
	r := reader{b: g}
	for !r.done() {
		start := r.off
		num, wt, err := r.key()
		if err != nil {
			return nil, err
		}
		if (num == 11 || num == 12) && wt == wtLen {
			v, err := r.bytes()
			if err != nil {
				return nil, err
			}
			vi, err := parseValueInfo(v)
			if err != nil {
				return nil, err
			}
			if (num == 11 && dropInputs[vi.Name]) || (num == 12 && dropOutputs[vi.Name]) {
				continue
			}
		} else if err := r.skip(wt); err != nil {
			return nil, err
		}
		out = append(out, g[start:r.off]...)
	}
	return append(out, extra...), nil
}

// ValueNames returns every value name the graph of a serialized model uses
// (inputs, outputs, initializers, node outputs), so that a rewrite can pick
// names that collide with none of them.
func ValueNames(model []byte) (map[string]bool, error) {
	names := map[string]bool{}
	r := reader{b: model}
	for !r.done() {
		num, wt, err := r.key()
		if err != nil {
			return nil, err
		}
		if num != 7 || wt != wtLen {
			if err := r.skip(wt); err != nil {
				return nil, err
			}
			continue
		}
		g, err := r.bytes()
		if err != nil {
			return nil, err
		}
		gr := reader{b: g}
		for !gr.done() {
			gn, gwt, err := gr.key()
			if err != nil {
				return nil, err
			}
			if gwt != wtLen {
				if err := gr.skip(gwt); err != nil {
					return nil, err
				}
				continue
			}
			v, err := gr.bytes()
			if err != nil {
				return nil, err
			}
			switch gn {
			case 1: // node: outputs and name
				nr := reader{b: v}
				for !nr.done() {
					nn, nwt, err := nr.key()
					if err != nil {
						return nil, err
					}
					if (nn == 2 || nn == 3) && nwt == wtLen {
						s, err := nr.bytes()
						if err != nil {
							return nil, err
						}
						names[string(s)] = true
					} else if err := nr.skip(nwt); err != nil {
						return nil, err
					}
				}
			case 5:
				name, _, err := tensorNameOnly(v)
				if err != nil {
					return nil, err
				}
				names[name] = true
			case 11, 12, 13:
				vi, err := parseValueInfo(v)
				if err != nil {
					return nil, err
				}
				names[vi.Name] = true
			}
		}
	}
	return names, nil
}
