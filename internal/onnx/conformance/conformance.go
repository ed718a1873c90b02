// Package conformance runs the ONNX project's backend test cases through an
// Open Inference Protocol endpoint and compares the answers with the
// expected outputs shipped with each case.
//
// A case is a directory with model.onnx and test_data_set_N/ directories of
// input_K.pb and output_K.pb TensorProtos (Debian installs them with
// libonnx-testdata under /usr/share/libonnx-testdata/data). The runner only
// speaks HTTP to a base URL, so the same cases check an in-process
// onnx.Server or the whole ebb path (gateway, dispatcher, instance process).
// Cases whose values the protocol cannot carry (sequences, maps, optionals,
// complex or 8-bit float tensors) are skipped with the reason, not failed. A
// case that ebb's own protobuf reader (onnxpb) cannot read is a failure:
// that reader is part of what is tested.
package conformance

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/ebb-run/ebb/internal/onnx/onnxpb"
)

// DefaultRoot is where Debian's libonnx-testdata puts the cases.
const DefaultRoot = "/usr/share/libonnx-testdata/data"

// Case is one backend test case.
type Case struct {
	Name  string // e.g. "node/test_abs"
	Model string // path of model.onnx
	Sets  []DataSet
	// Skip, when set, says why the protocol cannot carry this case.
	Skip string
	// Broken, when set, says why the case could not be read: its model or
	// tensors did not parse, or they disagree. It makes the case fail.
	Broken string
}

// DataSet is one test_data_set_N: inputs in model order, expected outputs.
type DataSet struct {
	Name    string
	Inputs  []Tensor
	Outputs []Tensor
}

// Tensor is a named tensor with its datatype in the protocol's terms.
type Tensor struct {
	Name     string
	Datatype string
	Shape    []int64
	Raw      []byte   // fixed-width elements, little-endian
	Strings  [][]byte // BYTES elements
	// floats holds float elements read from a JSON response, which are
	// compared by value (Raw is then nil).
	floats []float64
}

var protocolTypes = map[onnxpb.ElemType]string{
	onnxpb.Bool: "BOOL", onnxpb.Uint8: "UINT8", onnxpb.Uint16: "UINT16", onnxpb.Uint32: "UINT32",
	onnxpb.Uint64: "UINT64", onnxpb.Int8: "INT8", onnxpb.Int16: "INT16", onnxpb.Int32: "INT32",
	onnxpb.Int64: "INT64", onnxpb.Float16: "FP16", onnxpb.Float: "FP32", onnxpb.Double: "FP64",
	onnxpb.BFloat16: "BF16", onnxpb.String: "BYTES",
}

// Load finds every case under root: directories (at any depth) holding a
// model.onnx, sorted by name.
func Load(root string) ([]*Case, error) {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "model.onnx" {
			dirs = append(dirs, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load cases: %w", err)
	}
	sort.Strings(dirs)
	cases := make([]*Case, 0, len(dirs))
	for _, dir := range dirs {
		name, err := filepath.Rel(root, dir)
		if err != nil {
			name = dir
		}
		cases = append(cases, loadCase(filepath.ToSlash(name), dir))
	}
	return cases, nil
}

// loadCase reads one case. What the protocol cannot carry becomes Skip;
// anything that could not be read becomes Broken.
func loadCase(name, dir string) *Case {
	c := &Case{Name: name, Model: filepath.Join(dir, "model.onnx")}
	b, err := os.ReadFile(c.Model)
	if err != nil {
		c.Broken = "read model: " + err.Error()
		return c
	}
	m, err := onnxpb.ParseModel(b)
	if err != nil {
		c.Broken = "parse model: " + err.Error()
		return c
	}
	for _, group := range [][]onnxpb.ValueInfo{m.Inputs, m.Outputs} {
		for _, vi := range group {
			if vi.Kind != onnxpb.KindTensor {
				c.Skip = fmt.Sprintf("%q is not a tensor (%s); the protocol carries tensors only", vi.Name, vi.Kind)
				return c
			}
			if _, ok := protocolTypes[vi.Elem]; !ok {
				c.Skip = fmt.Sprintf("%q has element type %s, which the protocol cannot carry", vi.Name, vi.Elem)
				return c
			}
		}
	}
	sets, _ := filepath.Glob(filepath.Join(dir, "test_data_set_*"))
	sort.Strings(sets)
	for _, sd := range sets {
		ds := DataSet{Name: filepath.Base(sd)}
		if ds.Inputs, err = readTensors(sd, "input", m.Inputs); err != nil {
			c.Broken = ds.Name + ": " + err.Error()
			return c
		}
		if ds.Outputs, err = readTensors(sd, "output", m.Outputs); err != nil {
			c.Broken = ds.Name + ": " + err.Error()
			return c
		}
		c.Sets = append(c.Sets, ds)
	}
	if len(c.Sets) == 0 {
		c.Broken = "no test data sets"
	}
	return c
}

func readTensors(dir, prefix string, decl []onnxpb.ValueInfo) ([]Tensor, error) {
	files, _ := filepath.Glob(filepath.Join(dir, prefix+"_*.pb"))
	if len(files) != len(decl) {
		return nil, fmt.Errorf("%d %s files for %d declared %ss", len(files), prefix, len(decl), prefix)
	}
	out := make([]Tensor, len(decl))
	for i, vi := range decl {
		p := filepath.Join(dir, prefix+"_"+strconv.Itoa(i)+".pb")
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		pt, err := onnxpb.ParseTensor(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
		// The generator of these files (onnx 1.12) wrote bfloat16 tensors
		// with data_type uint16; the bits are bfloat16's.
		if pt.Elem == onnxpb.Uint16 && vi.Elem == onnxpb.BFloat16 {
			pt.Elem = onnxpb.BFloat16
		}
		if pt.Elem != vi.Elem {
			return nil, fmt.Errorf("%s: element type %s, the model declares %s", filepath.Base(p), pt.Elem, vi.Elem)
		}
		out[i] = Tensor{Name: vi.Name, Datatype: protocolTypes[pt.Elem], Shape: pt.Dims, Raw: pt.Raw, Strings: pt.Strings}
		if out[i].Shape == nil {
			out[i].Shape = []int64{}
		}
	}
	return out, nil
}

// Encoding selects how tensors travel.
type Encoding int

const (
	// JSON sends and receives every tensor as JSON data.
	JSON Encoding = iota
	// Binary uses the binary tensor data extension both ways.
	Binary
)

func (e Encoding) String() string {
	if e == Binary {
		return "binary"
	}
	return "json"
}

// Options tune Check.
type Options struct {
	Client    *http.Client // nil: http.DefaultClient
	Encodings []Encoding   // nil: JSON then Binary
	// RTol and ATol bound |got-want| <= ATol + RTol*|want| for floats,
	// as the ONNX backend tests do (defaults 1e-3 and 1e-7).
	RTol, ATol float64
}

// Status is the outcome of a case.
type Status string

const (
	Pass Status = "pass"
	Skip Status = "skip"
	Fail Status = "fail"
)

// Result is the outcome of one case.
type Result struct {
	Case   string
	Status Status
	Reason string
	// Unread says the case failed because ebb's own reader could not read
	// it (Case.Broken): a failure that no known-failure entry excuses.
	Unread bool
}

// Check runs every data set of c against the model served at
// baseURL/v2/models/{model}, in each encoding, and reports the first
// difference.
func Check(ctx context.Context, baseURL, model string, c *Case, opts Options) Result {
	if c.Broken != "" {
		return Result{Case: c.Name, Status: Fail, Reason: "read case: " + c.Broken, Unread: true}
	}
	if c.Skip != "" {
		return Result{Case: c.Name, Status: Skip, Reason: c.Skip}
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Encodings == nil {
		opts.Encodings = []Encoding{JSON, Binary}
	}
	if opts.RTol == 0 {
		opts.RTol = 1e-3
	}
	if opts.ATol == 0 {
		opts.ATol = 1e-7
	}
	url := strings.TrimRight(baseURL, "/") + "/v2/models/" + model + "/infer"
	for _, ds := range c.Sets {
		for _, enc := range opts.Encodings {
			got, err := infer(ctx, opts.Client, url, ds.Inputs, enc)
			if err != nil {
				return Result{Case: c.Name, Status: Fail, Reason: fmt.Sprintf("%s, %s: %v", ds.Name, enc, err)}
			}
			if err := compare(got, ds.Outputs, opts.RTol, opts.ATol); err != nil {
				return Result{Case: c.Name, Status: Fail, Reason: fmt.Sprintf("%s, %s: %v", ds.Name, enc, err)}
			}
		}
	}
	return Result{Case: c.Name, Status: Pass}
}

// infer sends one request and decodes the outputs.
func infer(ctx context.Context, client *http.Client, url string, inputs []Tensor, enc Encoding) (map[string]Tensor, error) {
	var hdr bytes.Buffer
	var bin []byte
	hdr.WriteString(`{"inputs":[`)
	for i, t := range inputs {
		if i > 0 {
			hdr.WriteByte(',')
		}
		fmt.Fprintf(&hdr, `{"name":%s,"datatype":%q,"shape":%s`, jsonString(t.Name), t.Datatype, shapeJSON(t.Shape))
		// BYTES that are not UTF-8 cannot be JSON strings.
		if enc == Binary || (t.Datatype == "BYTES" && !allUTF8(t.Strings)) {
			raw := rawBytes(t)
			fmt.Fprintf(&hdr, `,"parameters":{"binary_data_size":%d}}`, len(raw))
			bin = append(bin, raw...)
			continue
		}
		hdr.WriteString(`,"data":`)
		if err := writeData(&hdr, t); err != nil {
			return nil, err
		}
		hdr.WriteByte('}')
	}
	hdr.WriteString("]")
	if enc == Binary {
		hdr.WriteString(`,"parameters":{"binary_data_output":true}`)
	}
	hdr.WriteString("}")
	headerLen := hdr.Len()
	hdr.Write(bin)
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(hdr.Bytes()))
	if err != nil {
		return nil, err
	}
	if len(bin) > 0 {
		req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(headerLen))
		req.Header.Set("Content-Type", "application/octet-stream")
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, truncate(string(body), 300))
	}
	return decodeResponse(body, resp.Header.Get("Inference-Header-Content-Length"))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func allUTF8(strs [][]byte) bool {
	for _, s := range strs {
		if !utf8.Valid(s) {
			return false
		}
	}
	return true
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func shapeJSON(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func rawBytes(t Tensor) []byte {
	if t.Datatype != "BYTES" {
		return t.Raw
	}
	var b []byte
	for _, s := range t.Strings {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// writeData writes t's elements as a flat JSON list, floats in their
// shortest exact form and NaN/±Infinity as bare words.
func writeData(w *bytes.Buffer, t Tensor) error {
	vals, err := values(t)
	if err != nil {
		return err
	}
	w.WriteByte('[')
	for i, v := range vals {
		if i > 0 {
			w.WriteByte(',')
		}
		w.WriteString(v)
	}
	w.WriteByte(']')
	return nil
}

// values renders each element as JSON text.
func values(t Tensor) ([]string, error) {
	if t.Datatype == "BYTES" {
		out := make([]string, len(t.Strings))
		for i, s := range t.Strings {
			out[i] = jsonString(string(s))
		}
		return out, nil
	}
	size := typeSize(t.Datatype)
	if size == 0 || len(t.Raw)%size != 0 {
		return nil, fmt.Errorf("tensor %q: %d bytes of %s", t.Name, len(t.Raw), t.Datatype)
	}
	n := len(t.Raw) / size
	out := make([]string, n)
	for i := 0; i < n; i++ {
		f, isFloat, iv, uv := element(t.Datatype, t.Raw[i*size:])
		switch {
		case t.Datatype == "BOOL":
			out[i] = strconv.FormatBool(uv != 0)
		case isFloat:
			out[i] = formatFloat(f, t.Datatype)
		case strings.HasPrefix(t.Datatype, "UINT"):
			out[i] = strconv.FormatUint(uv, 10)
		default:
			out[i] = strconv.FormatInt(iv, 10)
		}
	}
	return out, nil
}

func formatFloat(f float64, dt string) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	bits := 32
	if dt == "FP64" {
		bits = 64
	}
	return strconv.FormatFloat(f, 'g', -1, bits)
}

func typeSize(dt string) int {
	switch dt {
	case "BOOL", "UINT8", "INT8":
		return 1
	case "UINT16", "INT16", "FP16", "BF16":
		return 2
	case "UINT32", "INT32", "FP32":
		return 4
	case "UINT64", "INT64", "FP64":
		return 8
	}
	return 0
}

// element decodes one little-endian element.
func element(dt string, b []byte) (f float64, isFloat bool, i int64, u uint64) {
	switch dt {
	case "BOOL", "UINT8":
		u = uint64(b[0])
	case "INT8":
		i = int64(int8(b[0]))
	case "UINT16":
		u = uint64(binary.LittleEndian.Uint16(b))
	case "INT16":
		i = int64(int16(binary.LittleEndian.Uint16(b)))
	case "UINT32":
		u = uint64(binary.LittleEndian.Uint32(b))
	case "INT32":
		i = int64(int32(binary.LittleEndian.Uint32(b)))
	case "UINT64":
		u = binary.LittleEndian.Uint64(b)
	case "INT64":
		i = int64(binary.LittleEndian.Uint64(b))
	case "FP16":
		return halfToFloat(binary.LittleEndian.Uint16(b)), true, 0, 0
	case "BF16":
		return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16)), true, 0, 0
	case "FP32":
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), true, 0, 0
	case "FP64":
		return math.Float64frombits(binary.LittleEndian.Uint64(b)), true, 0, 0
	}
	return 0, false, i, u
}

// halfToFloat decodes IEEE 754 binary16 (written here again rather than
// shared with the server, so that the check is independent of it).
func halfToFloat(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * mant * math.Pow(2, -24)
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * (1 + mant/1024) * math.Pow(2, float64(exp-15))
}

// response is the JSON part of an inference response.
type response struct {
	Outputs []struct {
		Name       string            `json:"name"`
		Datatype   string            `json:"datatype"`
		Shape      []int64           `json:"shape"`
		Data       []json.RawMessage `json:"data"`
		Parameters struct {
			BinaryDataSize *int `json:"binary_data_size"`
		} `json:"parameters"`
	} `json:"outputs"`
}

func decodeResponse(body []byte, headerLen string) (map[string]Tensor, error) {
	header, bin := body, []byte(nil)
	if headerLen != "" {
		n, err := strconv.Atoi(headerLen)
		if err != nil || n < 0 || n > len(body) {
			return nil, fmt.Errorf("bad Inference-Header-Content-Length %q", headerLen)
		}
		header, bin = body[:n], body[n:]
	}
	var r response
	if err := json.Unmarshal(quoteNonFinite(header), &r); err != nil {
		return nil, fmt.Errorf("decode response: %w", err)
	}
	out := map[string]Tensor{}
	for _, o := range r.Outputs {
		t := Tensor{Name: o.Name, Datatype: o.Datatype, Shape: o.Shape}
		if t.Shape == nil {
			t.Shape = []int64{}
		}
		if sz := o.Parameters.BinaryDataSize; sz != nil {
			if *sz < 0 || *sz > len(bin) {
				return nil, fmt.Errorf("output %q: binary_data_size %d past the body", o.Name, *sz)
			}
			raw := bin[:*sz]
			bin = bin[*sz:]
			if t.Datatype == "BYTES" {
				for len(raw) > 0 {
					if len(raw) < 4 {
						return nil, fmt.Errorf("output %q: truncated BYTES", o.Name)
					}
					l := int(binary.LittleEndian.Uint32(raw))
					if l > len(raw)-4 {
						return nil, fmt.Errorf("output %q: truncated BYTES", o.Name)
					}
					t.Strings = append(t.Strings, raw[4:4+l])
					raw = raw[4+l:]
				}
				if t.Strings == nil {
					t.Strings = [][]byte{}
				}
			} else {
				t.Raw = raw
			}
		} else if err := fromJSON(&t, o.Data); err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		out[o.Name] = t
	}
	if len(bin) != 0 {
		return nil, fmt.Errorf("%d binary bytes left over", len(bin))
	}
	return out, nil
}

// quoteNonFinite turns the bare words NaN, Infinity and -Infinity outside
// strings into strings, so that encoding/json accepts the document.
func quoteNonFinite(b []byte) []byte {
	var out []byte
	inStr := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			out = append(out, c)
			if c == '\\' && i+1 < len(b) {
				i++
				out = append(out, b[i])
			} else if c == '"' {
				inStr = false
			}
			continue
		}
		if c == '"' {
			inStr = true
		}
		matched := false
		for _, w := range []string{"-Infinity", "Infinity", "NaN"} {
			if bytes.HasPrefix(b[i:], []byte(w)) {
				out = append(out, '"')
				out = append(out, w...)
				out = append(out, '"')
				i += len(w) - 1
				matched = true
				break
			}
		}
		if !matched {
			out = append(out, c)
		}
	}
	return out
}

// fromJSON decodes JSON data values: floats into t.floats, others into
// t.Raw or t.Strings.
func fromJSON(t *Tensor, data []json.RawMessage) error {
	if t.Datatype == "BYTES" {
		t.Strings = make([][]byte, len(data))
		for i, d := range data {
			var s string
			if err := json.Unmarshal(d, &s); err != nil {
				return err
			}
			t.Strings[i] = []byte(s)
		}
		return nil
	}
	size := typeSize(t.Datatype)
	if size == 0 {
		return fmt.Errorf("unknown datatype %q", t.Datatype)
	}
	if isFloatType(t.Datatype) {
		t.floats = make([]float64, len(data))
		for i, d := range data {
			switch s := strings.Trim(string(d), `"`); s {
			case "NaN":
				t.floats[i] = math.NaN()
			case "Infinity":
				t.floats[i] = math.Inf(1)
			case "-Infinity":
				t.floats[i] = math.Inf(-1)
			default:
				f, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return err
				}
				t.floats[i] = f
			}
		}
		return nil
	}
	t.Raw = make([]byte, len(data)*size)
	for i, d := range data {
		b := t.Raw[i*size:]
		s := string(d)
		switch {
		case t.Datatype == "BOOL":
			switch s {
			case "true":
				b[0] = 1
			case "false":
			default:
				return fmt.Errorf("BOOL value %s", s)
			}
		case strings.HasPrefix(t.Datatype, "UINT"):
			u, err := strconv.ParseUint(s, 10, size*8)
			if err != nil {
				return err
			}
			putUint(b, u, size)
		default:
			v, err := strconv.ParseInt(s, 10, size*8)
			if err != nil {
				return err
			}
			putUint(b, uint64(v), size)
		}
	}
	return nil
}

func isFloatType(dt string) bool {
	return dt == "FP16" || dt == "BF16" || dt == "FP32" || dt == "FP64"
}

// numElements is how many elements t holds.
func (t *Tensor) numElements() int {
	switch {
	case t.floats != nil:
		return len(t.floats)
	case t.Datatype == "BYTES":
		return len(t.Strings)
	}
	if sz := typeSize(t.Datatype); sz > 0 {
		return len(t.Raw) / sz
	}
	return 0
}

// at returns element i.
func (t *Tensor) at(i int) (f float64, isFloat bool, iv int64, uv uint64) {
	if t.floats != nil {
		return t.floats[i], true, 0, 0
	}
	return element(t.Datatype, t.Raw[i*typeSize(t.Datatype):])
}

func putUint(b []byte, v uint64, size int) {
	switch size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	default:
		binary.LittleEndian.PutUint64(b, v)
	}
}

// compare checks every expected output against the response.
func compare(got map[string]Tensor, want []Tensor, rtol, atol float64) error {
	for _, w := range want {
		g, ok := got[w.Name]
		if !ok {
			return fmt.Errorf("output %q missing from the response", w.Name)
		}
		if g.Datatype != w.Datatype {
			return fmt.Errorf("output %q: datatype %s, want %s", w.Name, g.Datatype, w.Datatype)
		}
		if !equalShape(g.Shape, w.Shape) {
			return fmt.Errorf("output %q: shape %v, want %v", w.Name, g.Shape, w.Shape)
		}
		if err := compareValues(g, w, rtol, atol); err != nil {
			return fmt.Errorf("output %q: %w", w.Name, err)
		}
	}
	return nil
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

func compareValues(g, w Tensor, rtol, atol float64) error {
	if w.Datatype == "BYTES" {
		if len(g.Strings) != len(w.Strings) {
			return fmt.Errorf("%d strings, want %d", len(g.Strings), len(w.Strings))
		}
		for i := range w.Strings {
			if !bytes.Equal(g.Strings[i], w.Strings[i]) {
				return fmt.Errorf("element %d is %q, want %q", i, g.Strings[i], w.Strings[i])
			}
		}
		return nil
	}
	n := w.numElements()
	if got := g.numElements(); got != n || (g.floats == nil && len(g.Raw) != len(w.Raw)) {
		return fmt.Errorf("%d elements, want %d", got, n)
	}
	for i := 0; i < n; i++ {
		wf, isFloat, wi, wu := w.at(i)
		gf, _, gi, gu := g.at(i)
		if !isFloat {
			if wi != gi || wu != gu {
				return fmt.Errorf("element %d differs: got %v, want %v", i, valueString(w.Datatype, gi, gu), valueString(w.Datatype, wi, wu))
			}
			continue
		}
		switch {
		case math.IsNaN(wf) || math.IsNaN(gf):
			if math.IsNaN(wf) != math.IsNaN(gf) {
				return fmt.Errorf("element %d is %v, want %v", i, gf, wf)
			}
		case math.IsInf(wf, 0) || math.IsInf(gf, 0):
			if wf != gf {
				return fmt.Errorf("element %d is %v, want %v", i, gf, wf)
			}
		case math.Abs(gf-wf) > atol+rtol*math.Abs(wf):
			return fmt.Errorf("element %d is %v, want %v (rtol %g, atol %g)", i, gf, wf, rtol, atol)
		}
	}
	return nil
}

func valueString(dt string, i int64, u uint64) string {
	if strings.HasPrefix(dt, "UINT") || dt == "BOOL" {
		return strconv.FormatUint(u, 10)
	}
	return strconv.FormatInt(i, 10)
}

// Deploy makes a case's model reachable and says where: the base URL of an
// Open Inference Protocol endpoint and the model's name there. cleanup, if
// not nil, is called when the case is done.
type Deploy func(ctx context.Context, c *Case) (baseURL, model string, cleanup func(), err error)

// Run checks every case with workers running in parallel (at least 1) and
// returns the results in the order of cases. A case whose deployment fails
// is a failure with the deployment's error as the reason.
func Run(ctx context.Context, cases []*Case, deploy Deploy, workers int, opts Options) *Summary {
	results := make([]Result, len(cases))
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = runOne(ctx, cases[i], deploy, opts)
			}
		}()
	}
	for i := range cases {
		work <- i
	}
	close(work)
	wg.Wait()
	return &Summary{Results: results}
}

func runOne(ctx context.Context, c *Case, deploy Deploy, opts Options) Result {
	if c.Broken != "" {
		return Result{Case: c.Name, Status: Fail, Reason: "read case: " + c.Broken, Unread: true}
	}
	if c.Skip != "" {
		return Result{Case: c.Name, Status: Skip, Reason: c.Skip}
	}
	base, model, cleanup, err := deploy(ctx, c)
	if cleanup != nil {
		defer cleanup()
	}
	if err != nil {
		return Result{Case: c.Name, Status: Fail, Reason: "deploy: " + err.Error()}
	}
	return Check(ctx, base, model, c, opts)
}

// Summary is the outcome of a run.
type Summary struct {
	Results []Result
}

// Count returns how many results have status st.
func (s *Summary) Count(st Status) int {
	n := 0
	for _, r := range s.Results {
		if r.Status == st {
			n++
		}
	}
	return n
}

// Write prints the totals and every case that did not pass, with its reason.
func (s *Summary) Write(w io.Writer) {
	fmt.Fprintf(w, "conformance: %d cases: %d passed, %d skipped, %d failed\n",
		len(s.Results), s.Count(Pass), s.Count(Skip), s.Count(Fail))
	for _, st := range []Status{Fail, Skip} {
		for _, r := range s.Results {
			if r.Status == st {
				fmt.Fprintf(w, "  %s %s: %s\n", st, r.Case, r.Reason)
			}
		}
	}
}

// Problems returns what makes a run fail: each failure that is not a known
// one, each case ebb's reader could not read (listed or not), each known
// failure without mayPass that passed (its entry is stale), and, when full
// says every case ran, a pass count below PassFloor and any listed case
// that is not among the results (a misspelt or vanished name excuses
// nothing and hides nothing).
func (s *Summary) Problems(full bool) []string {
	var out []string
	ran := make(map[string]bool, len(s.Results))
	for _, r := range s.Results {
		ran[r.Case] = true
		k, isKnown := knownFailures[r.Case]
		switch {
		case r.Status == Fail && (!isKnown || r.Unread):
			out = append(out, fmt.Sprintf("%s: %s", r.Case, r.Reason))
		case r.Status == Pass && isKnown && !k.mayPass:
			out = append(out, fmt.Sprintf("%s passes but is listed as a known failure (%s): remove it from knownFailures and raise PassFloor", r.Case, k.why))
		}
	}
	if !full {
		return out
	}
	if passed := s.Count(Pass); passed < PassFloor {
		out = append(out, fmt.Sprintf("%d cases passed, below the floor of %d (conformance.PassFloor)", passed, PassFloor))
	}
	names := make([]string, 0, len(knownFailures))
	for name := range knownFailures {
		if !ran[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		out = append(out, fmt.Sprintf("%s is listed as a known failure but is not among the cases run: remove or correct it", name))
	}
	return out
}
