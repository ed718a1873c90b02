package onnxpb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func tensorProto(fields ...[]byte) []byte { return bytes.Join(fields, nil) }

func packed(num int, vals ...uint64) []byte {
	var p []byte
	for _, v := range vals {
		p = appendVarint(p, v)
	}
	return appendLen(nil, num, p)
}

func TestParseTensor(t *testing.T) {
	f32 := func(vals ...float32) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
		return b
	}
	neg := uint64(math.MaxUint64) // -1 as a varint
	for _, tc := range []struct {
		name    string
		proto   []byte
		elem    ElemType
		dims    []int64
		raw     []byte
		strings []string
	}{
		{"raw float", tensorProto(appendInt(nil, 1, 2), appendInt(nil, 2, int64(Float)), appendLen(nil, 9, f32(1, 2))), Float, []int64{2}, f32(1, 2), nil},
		{"packed float_data", tensorProto(packed(1, 1, 2), appendInt(nil, 2, int64(Float)), appendLen(nil, 4, f32(3, 4))), Float, []int64{1, 2}, f32(3, 4), nil},
		{"unpacked float_data", tensorProto(appendInt(nil, 2, int64(Float)), appendKey(nil, 4, wtI32), f32(5)), Float, nil, f32(5), nil},
		{"int64_data negative", tensorProto(appendInt(nil, 1, 2), appendInt(nil, 2, int64(Int64)), packed(7, neg, 7)), Int64, []int64{2},
			binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, neg), 7), nil},
		{"int32_data for int8", tensorProto(appendInt(nil, 1, 2), appendInt(nil, 2, int64(Int8)), packed(5, neg, 5)), Int8, []int64{2}, []byte{0xff, 5}, nil},
		{"int32_data for float16", tensorProto(appendInt(nil, 1, 1), appendInt(nil, 2, int64(Float16)), packed(5, 0x3c00)), Float16, []int64{1}, []byte{0x00, 0x3c}, nil},
		{"uint64_data for uint32", tensorProto(appendInt(nil, 1, 1), appendInt(nil, 2, int64(Uint32)), packed(11, 0xffffffff)), Uint32, []int64{1}, []byte{0xff, 0xff, 0xff, 0xff}, nil},
		{"strings", tensorProto(appendInt(nil, 1, 2), appendInt(nil, 2, int64(String)), appendLen(nil, 6, []byte("a")), appendLen(nil, 6, []byte(""))), String, []int64{2}, nil, []string{"a", ""}},
		{"empty", tensorProto(appendInt(nil, 1, 0), appendInt(nil, 2, int64(Float))), Float, []int64{0}, []byte{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTensor(tc.proto)
			if err != nil {
				t.Fatalf("ParseTensor: %v", err)
			}
			if got.Elem != tc.elem || len(got.Dims) != len(tc.dims) || !bytes.Equal(got.Raw, tc.raw) || len(got.Strings) != len(tc.strings) {
				t.Fatalf("got %+v, want elem %s dims %v raw %v strings %q", got, tc.elem, tc.dims, tc.raw, tc.strings)
			}
			for i := range tc.dims {
				if got.Dims[i] != tc.dims[i] {
					t.Errorf("dims %v, want %v", got.Dims, tc.dims)
				}
			}
			for i := range tc.strings {
				if string(got.Strings[i]) != tc.strings[i] {
					t.Errorf("strings %q, want %q", got.Strings, tc.strings)
				}
			}
		})
	}
	for _, tc := range []struct {
		name  string
		proto []byte
	}{
		{"truncated varint", []byte{0x08, 0x80}},
		{"length past end", []byte{0x4a, 0x05, 0x01}},
		{"raw size mismatch", tensorProto(appendInt(nil, 1, 3), appendInt(nil, 2, int64(Float)), appendLen(nil, 9, f32(1, 2)))},
		{"too few values", tensorProto(appendInt(nil, 1, 3), appendInt(nil, 2, int64(Int64)), packed(7, 1))},
		{"negative dim", tensorProto(appendInt(nil, 1, -2), appendInt(nil, 2, int64(Float)))},
		{"external", tensorProto(appendInt(nil, 2, int64(Float)), appendInt(nil, 14, 1))},
		{"field zero", []byte{0x00}},
	} {
		if _, err := ParseTensor(tc.proto); err == nil {
			t.Errorf("%s: ParseTensor accepted %x", tc.name, tc.proto)
		}
	}
}

func TestParseModelErrors(t *testing.T) {
	for _, b := range [][]byte{
		nil,
		[]byte("not a model"),
		appendLen(nil, 7, []byte{0x5a, 0x10}), // graph whose input runs past its end
	} {
		if _, err := ParseModel(b); err == nil {
			t.Errorf("ParseModel(%q) succeeded", b)
		}
	}
	if _, err := ParseModel([]byte{0x08, 0x80}); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated: %v, want ErrTruncated", err)
	}
}

// TestRewriteGraph appends an output and a node to a real model and reads it
// back.
func TestRewriteGraph(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "add_mul.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	extra := append(Node("Neg", "n", []string{"sum"}, []string{"neg"}),
		Output(ValueInfo{Name: "neg", Kind: KindTensor, Elem: Float, HasShape: true, Dims: []Dim{{Value: -1, Param: "batch"}, {Value: 4}}})...)
	out, err := RewriteGraph(b, nil, map[string]bool{"product": true}, extra)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseModel(out)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range m.Outputs {
		names = append(names, o.Name)
	}
	if len(names) != 2 || names[0] != "sum" || names[1] != "neg" {
		t.Errorf("outputs %v, want [sum neg]", names)
	}
	if d := m.Outputs[1].Dims; len(d) != 2 || d[0].Param != "batch" || d[1].Value != 4 {
		t.Errorf("neg dims %+v", d)
	}
	if m.Inputs[0].Name != "a" || m.OpsetVersion != 13 {
		t.Errorf("inputs %+v opset %d", m.Inputs, m.OpsetVersion)
	}
	names2, err := ValueNames(out)
	if err != nil || !names2["neg"] || !names2["n"] || !names2["a"] {
		t.Errorf("ValueNames = %v, %v", names2, err)
	}
}

func FuzzParseModel(f *testing.F) {
	for _, name := range []string{"add_mul.onnx", "scalar_FP16.onnx", "unranked.onnx"} {
		if b, err := os.ReadFile(filepath.Join("..", "testdata", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseModel(b)
		ValueNames(b)
		RewriteGraph(b, map[string]bool{"a": true}, map[string]bool{"sum": true}, Node("Identity", "n", []string{"a"}, []string{"b"}))
	})
}

func FuzzParseTensor(f *testing.F) {
	f.Add(tensorProto(appendInt(nil, 1, 2), appendInt(nil, 2, int64(Int64)), packed(7, 1, 2)))
	f.Add(tensorProto(appendInt(nil, 1, 1), appendInt(nil, 2, int64(String)), appendLen(nil, 6, []byte("x"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		tp, err := ParseTensor(b)
		if err != nil {
			return
		}
		n := tp.NumElements()
		if tp.Elem == String {
			if int64(len(tp.Strings)) != n {
				t.Fatalf("%d strings for %d elements", len(tp.Strings), n)
			}
		} else if int64(len(tp.Raw)) != n*int64(tp.Elem.Size()) {
			t.Fatalf("%d bytes for %d elements of %s", len(tp.Raw), n, tp.Elem)
		}
	})
}
