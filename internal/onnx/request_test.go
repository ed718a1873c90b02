package onnx

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/ebb-run/ebb/internal/jsonscan"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header string
		bin    string
		check  func(t *testing.T, r *inferRequest)
	}{
		{
			name:   "data before shape and datatype",
			header: `{"inputs":[{"data":[[1,2],[3,4]],"shape":[2,2],"name":"x","datatype":"INT16"}]}`,
			check: func(t *testing.T, r *inferRequest) {
				in := r.inputs[0].t
				want := []byte{1, 0, 2, 0, 3, 0, 4, 0}
				if string(in.data) != string(want) || in.dt != dtInt16 {
					t.Errorf("data %v %s, want %v INT16", in.data, in.dt.name, want)
				}
			},
		},
		{
			name:   "escapes and unknown fields",
			header: "{\"id\":\"a\\u00e9\\n\\ud83d\\ude00\",\"extra\":{\"deep\":[1,{\"x\":null}]},\"inputs\":[{\"name\":\"x\\\"y\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"tab\\there\"],\"other\":true}]}",
			check: func(t *testing.T, r *inferRequest) {
				if string(r.id) != "aé\n😀" {
					t.Errorf("id %q", r.id)
				}
				if in := r.inputs[0]; in.name != `x"y` || string(in.t.strs[0]) != "tab\there" {
					t.Errorf("input %q data %q", in.name, in.t.strs)
				}
			},
		},
		{
			name:   "binary inputs in request order",
			header: `{"inputs":[{"name":"b","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}},{"name":"a","datatype":"UINT8","shape":[2],"parameters":{"binary_data_size":2}}]}`,
			bin:    "\x00\x00\x80\x3f\x07\x08",
			check: func(t *testing.T, r *inferRequest) {
				if f := math.Float32frombits(binary.LittleEndian.Uint32(r.inputs[0].t.data)); f != 1 {
					t.Errorf("b = %v, want 1", f)
				}
				if a := r.inputs[1].t.data; a[0] != 7 || a[1] != 8 {
					t.Errorf("a = %v, want [7 8]", a)
				}
			},
		},
		{
			name:   "scalar as bare value",
			header: `{"inputs":[{"name":"x","datatype":"FP64","shape":[],"data":2.5}]}`,
			check: func(t *testing.T, r *inferRequest) {
				if f := math.Float64frombits(binary.LittleEndian.Uint64(r.inputs[0].t.data)); f != 2.5 {
					t.Errorf("x = %v", f)
				}
			},
		},
		{
			name:   "empty tensor",
			header: `{"inputs":[{"name":"x","datatype":"FP32","shape":[0,3],"data":[]}]}`,
			check: func(t *testing.T, r *inferRequest) {
				if len(r.inputs[0].t.data) != 0 {
					t.Errorf("data %v", r.inputs[0].t.data)
				}
			},
		},
		{
			name:   "nested empty rows",
			header: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2,0],"data":[[],[]]}]}`,
			check:  func(t *testing.T, r *inferRequest) {},
		},
		{
			name:   "outputs and parameters",
			header: `{"parameters":{"binary_data_output":true,"other":1},"inputs":[],"outputs":[{"name":"o","parameters":{"binary_data":false}},{"name":"p"}]}`,
			check: func(t *testing.T, r *inferRequest) {
				if !r.binaryOutput || len(r.outputs) != 2 || r.outputs[0].binary != 0 || r.outputs[1].binary != -1 {
					t.Errorf("got %+v", r)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseRequest([]byte(tc.header), []byte(tc.bin))
			if err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			tc.check(t, r)
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct{ header, want string }{
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1,[2]]}]}`, "nested data does not match"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[2,1],"data":[[1],2]}]}`, "nested data does not match"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1,1],"data":[[1]]}]}`, "nested data does not match"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[01]}]}`, "is not a number"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[+1]}]}`, "is not a number"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[inf]}]}`, "is not a number"},
		{`{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":[1e3]}]}`, "must be integers"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1.5],"data":[1]}]}`, "shape must be a list of integers"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"inputs":[]}`, `duplicate key "inputs"`},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],"data":[2]}]}`, `duplicate key "data"`},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],"parameters":{"binary_data_size":4}}]}`, "both data and binary_data_size"},
		{"{\"inputs\":[{\"name\":\"x\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"\x01\"]}]}", "control character"},
		{`{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]]}`, "want ',' or '}'"},
		{`{"inputs":[]} {}`, "data after the request object"},
		{strings.Repeat("[", 10000), "malformed JSON"},
		{`{"a":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `,"inputs":[]}`, "nested too deeply"},
	} {
		_, err := parseRequest([]byte(tc.header), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseRequest(%.60s): %v, want an error containing %q", tc.header, err, tc.want)
		}
		if _, ok := err.(*requestError); err != nil && !ok {
			t.Errorf("parseRequest(%.60s): %T is not a requestError", tc.header, err)
		}
	}
}

// FuzzParseRequest: no input makes the parser panic, and what it accepts is
// self-consistent.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"id":"1","inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[[1,2],[3,4]]}],"outputs":[{"name":"y"}]}`), []byte(nil))
	f.Add([]byte(`{"inputs":[{"name":"x","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":9}}]}`), []byte("\x01\x00\x00\x00a\x00\x00\x00\x00"))
	f.Add([]byte(`{"inputs":[{"name":"x","datatype":"FP16","shape":[3],"data":[NaN,-Infinity,1e-7]}]}`), []byte(nil))
	f.Add([]byte(`{"inputs":[{"name":"x","datatype":"BOOL","shape":[],"data":true}]}`), []byte(nil))
	f.Fuzz(func(t *testing.T, header, bin []byte) {
		r, err := parseRequest(header, bin)
		if err != nil {
			if _, ok := err.(*requestError); !ok {
				t.Fatalf("error %v is %T, not a requestError", err, err)
			}
			return
		}
		for _, in := range r.inputs {
			n, err := numElements(in.t.shape)
			if err != nil {
				t.Fatalf("accepted bad shape %v", in.t.shape)
			}
			if in.t.dt == dtBytes {
				if int64(len(in.t.strs)) != n {
					t.Fatalf("%d strings for shape %v", len(in.t.strs), in.t.shape)
				}
			} else if int64(len(in.t.data)) != n*int64(in.t.dt.size) {
				t.Fatalf("%d bytes for %s shape %v", len(in.t.data), in.t.dt.name, in.t.shape)
			}
		}
	})
}

func TestAppendJSONString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", `"plain"`},
		{"q\"b\\n\nt\tc\x01", `"q\"b\\n\nt\tc\u0001"`},
		{"é😀", `"é😀"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
	} {
		if got := string(appendJSONString(nil, tc.in)); got != tc.want {
			t.Errorf("appendJSONString(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestFloatParsing checks the fast path against strconv on numbers written
// in many forms, for FP64 and FP32.
func TestFloatParsing(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var toks []string
	for i := 0; i < 200000; i++ {
		x := rng.NormFloat64() * math.Pow(10, float64(rng.IntN(60)-30))
		switch i % 5 {
		case 0:
			toks = append(toks, strconv.FormatFloat(x, 'g', -1, 64))
		case 1:
			toks = append(toks, strconv.FormatFloat(float64(float32(x)), 'g', -1, 32))
		case 2:
			toks = append(toks, strconv.FormatFloat(x, 'f', rng.IntN(12), 64))
		case 3:
			toks = append(toks, strconv.FormatFloat(x, 'e', rng.IntN(16), 64))
		default:
			// Decimals right at float32 midpoints and near the subnormal range.
			f := math.Float32frombits(rng.Uint32() &^ (1 << 31))
			if math.IsInf(float64(f), 0) || math.IsNaN(float64(f)) {
				continue
			}
			mid := float64(f) + (float64(math.Nextafter32(f, float32(math.Inf(1))))-float64(f))/2
			toks = append(toks, strconv.FormatFloat(mid, 'g', -1, 64))
		}
	}
	toks = append(toks, "0", "-0", "1e22", "1e23", "123456789012345678", "0.000001", "1E5", "1e-400", "4.9e-324", "3.4028235677973366e38")
	for _, tok := range toks {
		if !jsonscan.IsNumber([]byte(tok)) {
			continue
		}
		for _, dt := range []*dtype{dtFP64, dtFP32} {
			bits := 64
			if dt == dtFP32 {
				bits = 32
			}
			want, werr := strconv.ParseFloat(tok, bits)
			got, gerr := parseFloatToken([]byte(tok), dt)
			if (werr != nil) != (gerr != nil) {
				t.Fatalf("%s %s: error %v, strconv says %v", dt.name, tok, gerr, werr)
			}
			if werr != nil {
				continue
			}
			if dt == dtFP32 {
				got, want = float64(float32(got)), float64(float32(want))
			}
			if math.Float64bits(got) != math.Float64bits(want) {
				t.Fatalf("%s %s: got %v, strconv says %v", dt.name, tok, got, want)
			}
		}
	}
}

func BenchmarkParseRequestJSON(b *testing.B) {
	body, _, _ := inferBodies(32, 1)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := parseRequest(body, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzInfer sends arbitrary bodies through a Server with a real model and
// ONNX Runtime, batching on: every answer is a 200 or a 4xx with a JSON
// error, never a panic or a 500, and a 200 has the model's outputs.
func FuzzInfer(f *testing.F) {
	s := newServer(f, "add_mul.onnx", func(c *Config) { c.MaxBatchSize = 8; c.MaxDelay = 0 })
	f.Add([]byte(`{"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]},{"name":"b","datatype":"FP32","shape":[1,4],"data":[1,1,1,1]}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"a","datatype":"FP32","shape":[2,4],"data":[[1,2,3,4],[5,6,7,8]]},{"name":"b","datatype":"FP32","shape":[2,4],"data":[1,1,1,1,2,2,2,2]}],"outputs":[{"name":"sum","parameters":{"binary_data":true}}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}},{"name":"b","datatype":"FP64","shape":[1,4],"data":[1,1,1,1]}]}`+"\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f"), 126)
	f.Add([]byte(`{"inputs":[{"name":"a","datatype":"FP32","shape":[0,4],"data":[]},{"name":"b","datatype":"FP32","shape":[0,4],"data":[]}]}`), -1)
	f.Fuzz(func(t *testing.T, body []byte, headerLen int) {
		req := httptest.NewRequest("POST", "/v2/models/m/infer", bytes.NewReader(body))
		if headerLen >= 0 {
			req.Header.Set(HeaderContentLength, strconv.Itoa(headerLen))
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		switch {
		case w.Code == 200:
			var resp struct {
				Outputs []json.RawMessage `json:"outputs"`
			}
			if w.Header().Get(HeaderContentLength) == "" && (json.Unmarshal(w.Body.Bytes(), &resp) != nil || len(resp.Outputs) == 0) {
				t.Fatalf("200 without outputs: %.300s", w.Body.Bytes())
			}
		case w.Code >= 400 && w.Code < 500:
			var e struct {
				Error string `json:"error"`
			}
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("%d without a JSON error: %.300s", w.Code, w.Body.Bytes())
			}
		default:
			t.Fatalf("status %d for %.300q: %.300s", w.Code, body, w.Body.Bytes())
		}
	})
}
