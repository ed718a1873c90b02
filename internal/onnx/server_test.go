package onnx

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// closeTo compares with a tolerance relative to the reference's scale; it
// returns the first index that differs.
func closeTo(got, want []float64, tol float64) (int, bool) {
	if len(got) != len(want) {
		return -1, false
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > tol*(1+math.Abs(want[i])) {
			return i, false
		}
	}
	return 0, true
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// nest turns flat data into nested lists of the given shape.
func nest(flat []float64, shape []int64) any {
	if len(shape) == 1 {
		return flat
	}
	n := len(flat) / int(shape[0])
	out := make([]any, shape[0])
	for i := range out {
		out[i] = nest(flat[i*n:(i+1)*n], shape[1:])
	}
	return out
}

func TestReferenceModels(t *testing.T) {
	for _, tc := range []struct {
		model, ref string
		nested     bool
	}{
		{"mlp.onnx", "mlp_ref.json", false},
		{"mlp.onnx", "mlp_ref.json", true},
		{"cnn.onnx", "cnn_ref.json", false},
		{"cnn.onnx", "cnn_ref.json", true},
	} {
		t.Run(fmt.Sprintf("%s/nested=%v", tc.model, tc.nested), func(t *testing.T) {
			url := serve(t, newServer(t, tc.model, nil))
			ref := loadRef(t, tc.ref)
			in := ref.Inputs[0]
			if tc.nested {
				in.Data = mustJSON(nest(floats(t, in.Data), in.Shape))
			}
			resp := inferJSON(t, url, map[string]any{"id": "r1", "inputs": []jsonTensor{in}})
			if resp.ID != "r1" || resp.ModelName != "m" {
				t.Errorf("id, model_name = %q, %q; want r1, m", resp.ID, resp.ModelName)
			}
			if len(resp.Outputs) != 1 {
				t.Fatalf("got %d outputs, want 1", len(resp.Outputs))
			}
			out, want := resp.Outputs[0], ref.Outputs[0]
			if out.Name != want.Name || out.Datatype != "FP32" || !equalShape(out.Shape, want.Shape) {
				t.Errorf("output %s %s %v, want %s FP32 %v", out.Name, out.Datatype, out.Shape, want.Name, want.Shape)
			}
			got, wantData := floats(t, out.Data), floats(t, want.Data)
			if i, ok := closeTo(got, wantData, 1e-4); !ok {
				t.Errorf("output differs from the numpy reference at %d: got %v, want %v", i, got[max(i, 0)], wantData[max(i, 0)])
			}
		})
	}
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET %s: body %q is not JSON: %v", url, b, err)
	}
	return resp.StatusCode, m
}

func TestMetadataAndHealth(t *testing.T) {
	url := serve(t, newServer(t, "mlp.onnx", nil))
	status, meta := getJSON(t, url+"/v2/models/m")
	if status != 200 {
		t.Fatalf("metadata status %d: %v", status, meta)
	}
	got, _ := json.Marshal(map[string]any{"name": meta["name"], "platform": meta["platform"], "inputs": meta["inputs"], "outputs": meta["outputs"]})
	want := `{"inputs":[{"datatype":"FP32","name":"input","shape":[-1,64]}],"name":"m","outputs":[{"datatype":"FP32","name":"logits","shape":[-1,10]}],"platform":"onnxruntime_onnx"}`
	if string(got) != want {
		t.Errorf("metadata:\n got %s\nwant %s", got, want)
	}

	for _, tc := range []struct {
		method, path string
		status       int
		field        string
		value        any
	}{
		{"GET", "/v2/health/live", 200, "live", true},
		{"GET", "/v2/health/ready", 200, "ready", true},
		{"GET", "/v2/models/m/ready", 200, "ready", true},
		{"GET", "/v2/models/m/versions/1", 200, "name", "m"},
		{"GET", "/v2/models/m/versions/1/ready", 200, "ready", true},
		{"GET", "/v2", 200, "name", "ebb"},
		{"GET", "/v2/models/other", 404, "error", `model "other" not found`},
		{"GET", "/v2/models/other/ready", 404, "error", `model "other" not found`},
		{"POST", "/v2/models/other/infer", 404, "error", `model "other" not found`},
		{"GET", "/v2/models/m/versions/2", 404, "error", `model "m" has no version "2"`},
		{"GET", "/v2/models/m/infer", 405, "error", "method GET is not allowed; use POST"},
		{"DELETE", "/v2/models/m", 405, "error", "method DELETE is not allowed; use GET"},
		{"GET", "/v1/nothing", 404, "error", "no such endpoint: /v1/nothing"},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader("{}"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var m map[string]any
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("body %q is not JSON", b)
			}
			if resp.StatusCode != tc.status || m[tc.field] != tc.value {
				t.Errorf("got %d %s, want %d with %s=%v", resp.StatusCode, b, tc.status, tc.field, tc.value)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
		})
	}
}

// echoCase is a datatype round trip through an Identity model.
type echoCase struct {
	dt    string
	shape []int64
	data  string // JSON list
	want  string // JSON list expected back; "" means data
	raw   []byte // the same elements little-endian
}

func echoCases() []echoCase {
	le := func(vals ...any) []byte {
		var b bytes.Buffer
		for _, v := range vals {
			binary.Write(&b, binary.LittleEndian, v)
		}
		return b.Bytes()
	}
	return []echoCase{
		{dt: "BOOL", shape: []int64{1, 3}, data: "[true,false,true]", raw: []byte{1, 0, 1}},
		{dt: "UINT8", shape: []int64{1, 3}, data: "[0,1,255]", raw: []byte{0, 1, 255}},
		{dt: "UINT16", shape: []int64{1, 3}, data: "[0,1,65535]", raw: le(uint16(0), uint16(1), uint16(65535))},
		{dt: "UINT32", shape: []int64{1, 3}, data: "[0,1,4294967295]", raw: le(uint32(0), uint32(1), uint32(4294967295))},
		{dt: "UINT64", shape: []int64{1, 3}, data: "[0,1,18446744073709551615]", raw: le(uint64(0), uint64(1), uint64(math.MaxUint64))},
		{dt: "INT8", shape: []int64{1, 3}, data: "[-128,0,127]", raw: le(int8(-128), int8(0), int8(127))},
		{dt: "INT16", shape: []int64{1, 3}, data: "[-32768,0,32767]", raw: le(int16(-32768), int16(0), int16(32767))},
		{dt: "INT32", shape: []int64{1, 3}, data: "[-2147483648,0,2147483647]", raw: le(int32(math.MinInt32), int32(0), int32(math.MaxInt32))},
		{dt: "INT64", shape: []int64{1, 3}, data: "[-9223372036854775808,0,9223372036854775807]", raw: le(int64(math.MinInt64), int64(0), int64(math.MaxInt64))},
		// 65504 is FP16's largest value, 5.9604645e-08 its smallest subnormal.
		{dt: "FP16", shape: []int64{2, 3}, data: "[1.5,-2.25,65504,5.9604645e-08,0,-0]", want: "[1.5,-2.25,65504,5.9604645e-08,0,-0]",
			raw: le(uint16(0x3e00), uint16(0xc080), uint16(0x7bff), uint16(0x0001), uint16(0), uint16(0x8000))},
		{dt: "FP16", shape: []int64{1, 3}, data: "[NaN,Infinity,-Infinity]", raw: le(uint16(0x7e00), uint16(0x7c00), uint16(0xfc00))},
		{dt: "FP32", shape: []int64{1, 4}, data: "[0.1,-3.4028235e+38,1e-45,NaN]", raw: le(float32(0.1), float32(-math.MaxFloat32), math.Float32frombits(1), float32(math.NaN()))},
		{dt: "FP64", shape: []int64{1, 3}, data: "[0.1,-1.7976931348623157e+308,5e-324]", raw: le(0.1, -math.MaxFloat64, math.SmallestNonzeroFloat64)},
		{dt: "BF16", shape: []int64{1, 3}, data: "[1.5,-3.3895314e+38,-Infinity]", raw: le(uint16(0x3fc0), uint16(0xff7f), uint16(0xff80))},
		{dt: "BYTES", shape: []int64{2, 1}, data: `["héllo",""]`, raw: append(le(uint32(6)), append([]byte("héllo"), le(uint32(0))...)...)},
	}
}

// TestDatatypes sends every datatype through an Identity model in each
// combination of JSON and binary, and checks the exact values come back.
func TestDatatypes(t *testing.T) {
	for _, tc := range echoCases() {
		t.Run(tc.dt+tc.data, func(t *testing.T) {
			url := serve(t, newServer(t, "identity_"+tc.dt+".onnx", nil))
			want := tc.want
			if want == "" {
				want = tc.data
			}
			for _, mode := range []struct{ binIn, binOut bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
				// Built by hand: NaN and Infinity are not JSON to encoding/json.
				in := `{"name":"x","datatype":"` + tc.dt + `","shape":` + shapeString(tc.shape)
				var bin []byte
				if mode.binIn {
					in += `,"parameters":{"binary_data_size":` + strconv.Itoa(len(tc.raw)) + `}}`
					bin = tc.raw
				} else {
					in += `,"data":` + tc.data + `}`
				}
				hdr := []byte(`{"inputs":[` + in + `],"outputs":[{"name":"y","parameters":{"binary_data":` + strconv.FormatBool(mode.binOut) + `}}]}`)
				h := http.Header{}
				if mode.binIn {
					h.Set(HeaderContentLength, strconv.Itoa(len(hdr)))
				}
				status, rh, body := post(t, url, append(hdr, bin...), h)
				if status != 200 {
					t.Fatalf("binary in %v out %v: status %d: %s", mode.binIn, mode.binOut, status, body)
				}
				jsonPart := body
				if mode.binOut {
					n, err := strconv.Atoi(rh.Get(HeaderContentLength))
					if err != nil || n > len(body) {
						t.Fatalf("bad %s %q", HeaderContentLength, rh.Get(HeaderContentLength))
					}
					jsonPart = body[:n]
					if got := body[n:]; !bytes.Equal(got, tc.raw) {
						t.Errorf("binary in %v: binary output %x, want %x", mode.binIn, got, tc.raw)
					}
				}
				var resp struct {
					Outputs []struct {
						Datatype   string          `json:"datatype"`
						Shape      []int64         `json:"shape"`
						Data       json.RawMessage `json:"data"`
						Parameters struct {
							Size int `json:"binary_data_size"`
						} `json:"parameters"`
					} `json:"outputs"`
				}
				if err := json.Unmarshal(jsonPart, &resp); err != nil && !strings.Contains(string(jsonPart), "NaN") && !strings.Contains(string(jsonPart), "Infinity") {
					t.Fatalf("response %s: %v", jsonPart, err)
				}
				if !mode.binOut {
					// NaN and Infinity are not JSON; compare the text.
					i := strings.Index(string(jsonPart), `"data":`)
					if i < 0 {
						t.Fatalf("no data in %s", jsonPart)
					}
					gotData := string(jsonPart[i+len(`"data":`) : strings.LastIndex(string(jsonPart), "]}]}")+1])
					if gotData != want {
						t.Errorf("binary in %v: data %s, want %s", mode.binIn, gotData, want)
					}
					continue
				}
				if o := resp.Outputs[0]; o.Datatype != tc.dt || !equalShape(o.Shape, tc.shape) || o.Parameters.Size != len(tc.raw) {
					t.Errorf("output %s %v size %d, want %s %v size %d", o.Datatype, o.Shape, o.Parameters.Size, tc.dt, tc.shape, len(tc.raw))
				}
			}
		})
	}
}

// TestConversions checks values that ONNX Runtime converts (Cast) against
// results worked out by hand, and the graph adapters for scalars and
// undeclared shapes.
func TestConversions(t *testing.T) {
	for _, tc := range []struct {
		model, in, want string
	}{
		// 0.1 and 1/3 round to the nearest FP16; 65519 rounds down to FP16's
		// maximum; 1e-8 is below half the smallest subnormal.
		{"cast_FP32_FP16.onnx",
			`{"name":"x","datatype":"FP32","shape":[2,3],"data":[0.1,0.33333334,65519,1e-8,-1,2048.5]}`,
			`{"name":"y","datatype":"FP16","shape":[2,3],"data":[0.099975586,0.33325195,65504,0,-1,2048]}`},
		// Cast truncates toward zero.
		{"cast_FP32_INT32.onnx",
			`{"name":"x","datatype":"FP32","shape":[2,3],"data":[1.7,-1.7,0.5,-0.5,100,2e9]}`,
			`{"name":"y","datatype":"INT32","shape":[2,3],"data":[1,-1,0,0,100,2000000000]}`},
		{"scalar_FP16.onnx",
			`{"name":"x","datatype":"FP16","shape":[],"data":[-0.5]}`,
			`{"name":"y","datatype":"FP16","shape":[],"data":[-0.5]}`},
		{"unranked.onnx",
			`{"name":"x","datatype":"FP32","shape":[],"data":[2]}`,
			`{"name":"y","datatype":"FP32","shape":[],"data":[-2]}`},
		{"unranked.onnx",
			`{"name":"x","datatype":"FP32","shape":[1,2,1],"data":[[[1],[2]]]}`,
			`{"name":"y","datatype":"FP32","shape":[1,2,1],"data":[-1,-2]}`},
	} {
		t.Run(tc.model+tc.in, func(t *testing.T) {
			url := serve(t, newServer(t, tc.model, nil))
			status, _, body := post(t, url, []byte(`{"inputs":[`+tc.in+`]}`), nil)
			if status != 200 {
				t.Fatalf("status %d: %s", status, body)
			}
			want := `{"model_name":"m","model_version":"1","outputs":[` + tc.want + `]}`
			if string(body) != want {
				t.Errorf("got  %s\nwant %s", body, want)
			}
		})
	}
}

func TestOutputsFilter(t *testing.T) {
	url := serve(t, newServer(t, "add_mul.onnx", nil))
	inputs := `"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]},{"name":"b","datatype":"FP32","shape":[1,4],"data":[2,2,2,2]}]`
	for _, tc := range []struct {
		outputs string
		want    string
	}{
		{"", `"outputs":[{"name":"sum","datatype":"FP32","shape":[1,4],"data":[3,4,5,6]},{"name":"product","datatype":"FP32","shape":[1,4],"data":[2,4,6,8]}]`},
		{`,"outputs":[]`, `"outputs":[{"name":"sum","datatype":"FP32","shape":[1,4],"data":[3,4,5,6]},{"name":"product","datatype":"FP32","shape":[1,4],"data":[2,4,6,8]}]`},
		{`,"outputs":[{"name":"product"}]`, `"outputs":[{"name":"product","datatype":"FP32","shape":[1,4],"data":[2,4,6,8]}]`},
		{`,"outputs":[{"name":"product"},{"name":"sum"}]`, `"outputs":[{"name":"product","datatype":"FP32","shape":[1,4],"data":[2,4,6,8]},{"name":"sum","datatype":"FP32","shape":[1,4],"data":[3,4,5,6]}]`},
		{`,"outputs":[{"name":"sum","parameters":{"binary_data":true}},{"name":"product"}]`,
			`"outputs":[{"name":"sum","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}},{"name":"product","datatype":"FP32","shape":[1,4],"data":[2,4,6,8]}]`},
		{`,"parameters":{"binary_data_output":true},"outputs":[{"name":"sum","parameters":{"binary_data":false}},{"name":"product"}]`,
			`"outputs":[{"name":"sum","datatype":"FP32","shape":[1,4],"data":[3,4,5,6]},{"name":"product","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}]`},
	} {
		t.Run(tc.outputs, func(t *testing.T) {
			status, h, body := post(t, url, []byte(`{"id":"x\"1",`+inputs+tc.outputs+`}`), nil)
			if status != 200 {
				t.Fatalf("status %d: %s", status, body)
			}
			jsonPart := body
			if n, err := strconv.Atoi(h.Get(HeaderContentLength)); err == nil {
				jsonPart = body[:n]
				if len(body)-n != 16 {
					t.Errorf("binary part is %d bytes, want 16", len(body)-n)
				}
				if ct := h.Get("Content-Type"); ct != "application/octet-stream" {
					t.Errorf("Content-Type %q with binary data", ct)
				}
			}
			want := `{"model_name":"m","model_version":"1","id":"x\"1",` + tc.want + `}`
			if string(jsonPart) != want {
				t.Errorf("got  %s\nwant %s", jsonPart, want)
			}
		})
	}
}

// TestBadRequests checks that every malformed or mismatched request gets a
// 4xx with a JSON error naming the problem, and never reaches the model.
func TestBadRequests(t *testing.T) {
	mlpIn := func(shape string, n int) string {
		vals := make([]string, n)
		for i := range vals {
			vals[i] = "0.5"
		}
		return `{"inputs":[{"name":"input","datatype":"FP32","shape":` + shape + `,"data":[` + strings.Join(vals, ",") + `]}]}`
	}
	for _, tc := range []struct {
		name   string
		model  string
		body   string
		bin    string // binary part; its header length is set for it
		header map[string]string
		status int
		want   string // substring of the error
	}{
		{"unknown input", "mlp.onnx", `{"inputs":[{"name":"inp","datatype":"FP32","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}]}`, "", nil, 400, `unknown input "inp"; the model's inputs are "input"`},
		{"missing input", "add_mul.onnx", `{"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}`, "", nil, 400, `missing input "b"`},
		{"duplicate input", "add_mul.onnx", `{"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]},{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}`, "", nil, 400, `input "a" is given twice`},
		{"wrong datatype", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP64","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}]}`, "", nil, 400, `input "input": datatype FP64 does not match the model's FP32`},
		{"unknown datatype", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP8","shape":[1,64],"data":[]}]}`, "", nil, 400, `unknown datatype "FP8"`},
		{"wrong rank", "mlp.onnx", mlpIn("[64]", 64), "", nil, 400, `input "input": shape [64] has 1 dimensions, the model's shape [-1,64] has 2`},
		{"wrong dimension", "mlp.onnx", mlpIn("[1,63]", 63), "", nil, 400, `input "input": shape [1,63] does not match the model's [-1,64] (dimension 1 must be 64)`},
		{"too few elements", "mlp.onnx", mlpIn("[2,64]", 127), "", nil, 400, `input "input": shape [2,64] needs 128 elements, data has 127`},
		{"too many elements", "mlp.onnx", mlpIn("[1,64]", 65), "", nil, 400, `input "input": shape [1,64] needs 64 elements, data has more`},
		{"nested mismatch", "add_mul.onnx", `{"inputs":[{"name":"a","datatype":"FP32","shape":[2,2],"data":[[1,2,3],[4]]},{"name":"b","datatype":"FP32","shape":[2,2],"data":[1,2,3,4]}]}`, "", nil, 400, `nested data does not match shape [2,2]`},
		{"negative dimension", "mlp.onnx", mlpIn("[-1,64]", 64), "", nil, 400, `invalid dimension -1 in shape`},
		{"huge shape", "mlp.onnx", mlpIn("[9223372036854775807,64]", 64), "", nil, 400, `too many elements`},
		{"huge count", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[100000000,1000],"data":[1]}]}`, "", nil, 400, `more than the data holds`},
		{"symbolic dims disagree", "add_mul.onnx", `{"inputs":[{"name":"a","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]},{"name":"b","datatype":"FP32","shape":[2,4],"data":[1,2,3,4,5,6,7,8]}]}`, "", nil, 400, `input "b": dimension 0 (batch) is 2, but input "a" has batch = 1`},
		{"int out of range", "identity_INT8.onnx", `{"inputs":[{"name":"x","datatype":"INT8","shape":[1,1],"data":[128]}]}`, "", nil, 400, `128 is out of range for INT8`},
		{"negative unsigned", "identity_UINT8.onnx", `{"inputs":[{"name":"x","datatype":"UINT8","shape":[1,1],"data":[-1]}]}`, "", nil, 400, `-1 is out of range for UINT8`},
		{"fraction for int", "identity_INT32.onnx", `{"inputs":[{"name":"x","datatype":"INT32","shape":[1,1],"data":[1.5]}]}`, "", nil, 400, `INT32 elements must be integers, got "1.5"`},
		{"fp16 overflow", "identity_FP16.onnx", `{"inputs":[{"name":"x","datatype":"FP16","shape":[1,1],"data":[70000]}]}`, "", nil, 400, `70000 is out of range for FP16`},
		{"fp32 overflow", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[1e39]}]}`, "", nil, 400, `1e39 is out of range for FP32`},
		{"number for bool", "identity_BOOL.onnx", `{"inputs":[{"name":"x","datatype":"BOOL","shape":[1,1],"data":[1]}]}`, "", nil, 400, `BOOL elements must be true or false`},
		{"string for number", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":["1"]}]}`, "", nil, 400, `input "x"`},
		{"hex number", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[0x10]}]}`, "", nil, 400, `input "x": "0x10" is not a number`},
		{"number for bytes", "identity_BYTES.onnx", `{"inputs":[{"name":"x","datatype":"BYTES","shape":[1,1],"data":[1]}]}`, "", nil, 400, `BYTES elements must be strings`},
		{"malformed JSON", "mlp.onnx", `{"inputs":[{"name":"input",`, "", nil, 400, `unexpected end of JSON`},
		{"trailing garbage", "mlp.onnx", mlpIn("[1,64]", 64) + "x", "", nil, 400, `data after the request object`},
		{"not an object", "mlp.onnx", `[1,2]`, "", nil, 400, `malformed JSON`},
		{"empty body", "mlp.onnx", ``, "", nil, 400, `unexpected end of JSON`},
		{"no inputs", "mlp.onnx", `{"id":"1"}`, "", nil, 400, `request has no "inputs"`},
		{"no data", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64]}]}`, "", nil, 400, `input "input" has no data`},
		{"no shape", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP32","data":[1]}]}`, "", nil, 400, `input "input" has no shape`},
		{"unknown output", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}],"outputs":[{"name":"probs"}]}`, "", nil, 400, `unknown output "probs"; the model's outputs are "logits"`},
		{"output twice", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}],"outputs":[{"name":"logits"},{"name":"logits"}]}`, "", nil, 400, `output "logits" is requested twice`},
		{"classification", "mlp.onnx", `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}],"outputs":[{"name":"logits","parameters":{"classification":3}}]}`, "", nil, 400, `classification is not supported`},
		{"binary size mismatch", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":4}}]}`, "\x00\x00\x80\x3f", nil, 400, `input "x": shape [1,2] of FP32 needs 8 bytes, binary_data_size is 4`},
		{"binary past end", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}`, "\x00\x00\x80\x3f", nil, 400, `runs past the end of the body`},
		{"binary left over", "identity_FP32.onnx", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"parameters":{"binary_data_size":4}}]}`, "\x00\x00\x80\x3f\x00", nil, 400, `body has 5 binary bytes but the inputs' binary_data_size add up to 4`},
		{"header length too big", "identity_FP32.onnx", `{}`, "", map[string]string{HeaderContentLength: "100"}, 400, `is not a length within the 2-byte body`},
		{"header length not a number", "identity_FP32.onnx", `{}`, "", map[string]string{HeaderContentLength: "ten"}, 400, `is not a length within`},
		{"binary bool not 0 or 1", "identity_BOOL.onnx", `{"inputs":[{"name":"x","datatype":"BOOL","shape":[1,1],"parameters":{"binary_data_size":1}}]}`, "\x02", nil, 400, `BOOL element is 2, want 0 or 1`},
		{"truncated BYTES", "identity_BYTES.onnx", `{"inputs":[{"name":"x","datatype":"BYTES","shape":[1,1],"parameters":{"binary_data_size":6}}]}`, "\x05\x00\x00\x00ab", nil, 400, `BYTES element of 5 bytes runs past binary_data_size`},
		{"body too large", "mlp.onnx", mlpIn("[40,64]", 2560), "", nil, 413, `over the 4096-byte limit`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, tc.model, func(c *Config) { c.MaxBodyBytes = 4096 })
			url := serve(t, s)
			h := http.Header{}
			if tc.bin != "" {
				h.Set(HeaderContentLength, strconv.Itoa(len(tc.body)))
			}
			for k, v := range tc.header {
				h.Set(k, v)
			}
			status, _, body := post(t, url, []byte(tc.body+tc.bin), h)
			var e struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("status %d, body %q is not a JSON error", status, body)
			}
			if status != tc.status || !strings.Contains(e.Error, tc.want) {
				t.Errorf("got %d %q\nwant %d containing %q", status, e.Error, tc.status, tc.want)
			}
		})
	}
}

// TestBodyTooLargeChunked checks the limit without a Content-Length.
func TestBodyTooLargeChunked(t *testing.T) {
	url := serve(t, newServer(t, "mlp.onnx", func(c *Config) { c.MaxBodyBytes = 100 }))
	pr, pw := io.Pipe()
	go func() {
		pw.Write(bytes.Repeat([]byte(" "), 1000))
		pw.Close()
	}()
	resp, err := http.Post(url+"/v2/models/m/infer", "application/json", pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
}

// serverTimingValues is what an answer's Server-Timing header says.
type serverTimingValues struct {
	queue, infer float64 // ms
	batch        int64   // 0 when absent
}

func parseServerTiming(t testing.TB, h string) serverTimingValues {
	t.Helper()
	var v serverTimingValues
	for _, part := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		key, val, _ := strings.Cut(params, "=")
		var err error
		switch {
		case name == "queue" && key == "dur":
			v.queue, err = strconv.ParseFloat(val, 64)
		case name == "infer" && key == "dur":
			v.infer, err = strconv.ParseFloat(val, 64)
		case name == "batch" && key == "desc":
			v.batch, err = strconv.ParseInt(val, 10, 64)
		default:
			t.Errorf("Server-Timing %q: unexpected part %q", h, part)
		}
		if err != nil {
			t.Errorf("Server-Timing %q: %v", h, err)
		}
	}
	return v
}

func TestServerTiming(t *testing.T) {
	needLibrary(t)
	url := serve(t, newServer(t, "mlp.onnx", nil))
	jsonBody, _, _ := inferBodies(4, 1)
	status, hdr, body := post(t, url, jsonBody, nil)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	h := hdr.Get("Server-Timing")
	st := parseServerTiming(t, h)
	if st.infer <= 0 || st.queue < 0 || st.batch != 0 {
		t.Errorf("Server-Timing %q: want infer > 0, queue >= 0 and no batch (batching is off)", h)
	}
	// A failed request reports no run.
	status, hdr, _ = post(t, url, []byte(`{"inputs":[]}`), nil)
	if status != 400 || hdr.Get("Server-Timing") != "" {
		t.Errorf("bad request: status %d, Server-Timing %q; want 400 and none", status, hdr.Get("Server-Timing"))
	}
}

func TestTimings(t *testing.T) {
	needLibrary(t)
	s := newServer(t, "mlp.onnx", nil)
	tm := s.Timings()
	if tm.LibraryInit <= 0 || tm.ModelRead <= 0 || tm.SessionCreate <= 0 {
		t.Errorf("timings %+v: want library init, model read and session create > 0", tm)
	}
	if tm.ProcessStart != 0 {
		t.Errorf("ProcessStart %v without SpawnedAt, want 0", tm.ProcessStart)
	}
	initStart, _ := libraryInitTimes()
	s2 := newServer(t, "mlp.onnx", func(c *Config) { c.SpawnedAt = initStart.Add(-150 * 1e6) })
	if got := s2.Timings().ProcessStart; got != 150*1e6 {
		t.Errorf("ProcessStart %v, want 150ms", got)
	}
}

func TestClose(t *testing.T) {
	s := newServer(t, "mlp.onnx", func(c *Config) { c.MaxBatchSize = 8 })
	url := serve(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ref := loadRef(t, "mlp_ref.json")
	body, _ := json.Marshal(map[string]any{"inputs": ref.Inputs})
	status, _, b := post(t, url, body, nil)
	if status != http.StatusServiceUnavailable {
		t.Errorf("infer after Close: %d %s, want 503", status, b)
	}
	if status, _ := getJSON(t, url+"/v2/health/ready"); status != http.StatusServiceUnavailable {
		t.Errorf("ready after Close: %d, want 503", status)
	}
	if status, _ := getJSON(t, url+"/v2/health/live"); status != 200 {
		t.Errorf("live after Close: %d, want 200", status)
	}
}
