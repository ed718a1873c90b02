package onnx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ebb-run/ebb/internal/onnx/onnxpb"
)

// ioSpec is a model input or output as clients see it, and how the session
// carries it.
type ioSpec struct {
	name   string
	dt     *dtype
	ranked bool     // false: the model declares no shape (any rank)
	dims   []int64  // -1 for a dynamic dimension
	params []string // the dimension's symbolic name, "" if none

	// ortName is the value's name in the session, which differs from name
	// when the graph was adapted (see model.adapt).
	ortName string
	// For outputs: shapeName, when set, names a session output holding the
	// real shape; the value itself then arrives flattened to one dimension.
	shapeName string
	// viaFloat: the session hands over FP32 that is converted back to dt
	// (FP16, BF16) exactly.
	viaFloat bool
	// For inputs: asVector means the session takes the scalar as a
	// one-element vector.
	asVector bool
	isOutput bool
}

// needsAdapter reports whether the value cannot cross onnxruntime_go as it
// is (see adapt): FP16/BF16 outputs, outputs that may be scalars, and
// scalar inputs of types the binding has no Scalar for.
func (s *ioSpec) needsAdapter() bool {
	if s.isOutput {
		return s.dt == dtFP16 || s.dt == dtBF16 || s.rank() <= 0
	}
	return s.rank() == 0 && (s.dt == dtFP16 || s.dt == dtBF16 || s.dt == dtBytes)
}

// rank is the declared rank, or -1 if unknown.
func (s *ioSpec) rank() int {
	if !s.ranked {
		return -1
	}
	return len(s.dims)
}

// shapeJSON is the shape as the metadata endpoint reports it.
func (s *ioSpec) shapeJSON() []int64 {
	if !s.ranked {
		return []int64{-1}
	}
	if s.dims == nil {
		return []int64{}
	}
	return s.dims
}

// model is a loaded model file: its declared interface and what to hand to
// ONNX Runtime.
type model struct {
	size    int64
	inputs  []ioSpec
	outputs []ioSpec // servable outputs, in model order
	// unservable lists outputs the protocol cannot carry, with the reason.
	unservable []string
	// sessionInputs and sessionOutputs are the names the session is
	// created with, in order: every input's ortName (or the placeholder),
	// and every servable output's ortName followed by its shapeName if any.
	sessionInputs  []string
	sessionOutputs []string
	// bytes is the rewritten model when the graph was adapted, until the
	// session is created from it; nil means load path as it is.
	bytes []byte
	path  string
	// externalDir is set when bytes is used and the model keeps weights in
	// separate files, which ONNX Runtime must find relative to the original.
	externalDir string
	// batchable: every input and output has a dynamic first dimension, so
	// requests can be stacked along it.
	batchable bool
	// placeholder names the unused input added to a model without inputs.
	placeholder string
}

// maxModelBytes bounds a model file; protobuf cannot describe more than 2 GiB
// in one message (larger models keep weights in external files).
const maxModelBytes = 2<<30 - 1

// loadModel reads the model file's interface. The file is mapped rather than
// read so that describing a large model does not copy its weights; ONNX
// Runtime then loads it from the path (or from the rewritten bytes).
func loadModel(path string) (*model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open model: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat model: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("open model: %s is not a regular file", filepath.Base(path))
	}
	if fi.Size() == 0 {
		return nil, errors.New("open model: file is empty")
	}
	if fi.Size() > maxModelBytes {
		return nil, fmt.Errorf("open model: %d bytes is more than a single ONNX file can hold", fi.Size())
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map model: %w", err)
	}
	defer syscall.Munmap(data)

	pm, err := onnxpb.ParseModel(data)
	if err != nil {
		return nil, err
	}
	m := &model{size: fi.Size(), path: path}
	if err := m.describe(pm); err != nil {
		return nil, err
	}
	if err := m.adapt(pm, data); err != nil {
		return nil, err
	}
	return m, nil
}

func specFrom(vi onnxpb.ValueInfo) (ioSpec, string) {
	s := ioSpec{name: vi.Name, ortName: vi.Name}
	if vi.Kind != onnxpb.KindTensor {
		return s, fmt.Sprintf("is not a tensor (%s); the Open Inference Protocol carries only tensors", vi.Kind)
	}
	s.dt = dtypeByElem(vi.Elem)
	if s.dt == nil {
		return s, fmt.Sprintf("has element type %s, which the Open Inference Protocol cannot carry", vi.Elem)
	}
	s.ranked = vi.HasShape
	if vi.HasShape {
		s.dims = make([]int64, len(vi.Dims))
		s.params = make([]string, len(vi.Dims))
		for i, d := range vi.Dims {
			s.dims[i], s.params[i] = d.Value, d.Param
		}
	}
	return s, ""
}

// describe fills the client-facing interface.
func (m *model) describe(pm *onnxpb.Model) error {
	seen := map[string]bool{}
	for _, vi := range pm.Inputs {
		s, why := specFrom(vi)
		if why != "" {
			return fmt.Errorf("model input %q %s", vi.Name, why)
		}
		if seen[s.name] {
			return fmt.Errorf("model declares input %q twice", s.name)
		}
		seen[s.name] = true
		m.inputs = append(m.inputs, s)
	}
	seenOut := map[string]bool{}
	for _, vi := range pm.Outputs {
		s, why := specFrom(vi)
		if why == "" && seenOut[s.name] {
			why = "is declared twice"
		}
		if why != "" {
			m.unservable = append(m.unservable, fmt.Sprintf("output %q %s", vi.Name, why))
			continue
		}
		seenOut[s.name] = true
		s.isOutput = true
		m.outputs = append(m.outputs, s)
	}
	return nil
}

// adapt decides how each value crosses the binding. onnxruntime_go copies
// session outputs into Go memory itself, and it cannot size that copy for
// FP16/BF16 elements nor create rank-0 tensors; those values are routed
// through a few nodes appended to the graph: a Cast to FP32 (exact for both)
// and, for a scalar or an output of unknown rank, a flattening Reshape plus
// a Shape output to rebuild it. Inputs of those types that are scalars are
// fed as one-element vectors and reshaped back. Graphs that need none of
// this are loaded from the file untouched.
func (m *model) adapt(pm *onnxpb.Model, data []byte) error {
	// Cast's "to" became an integer in opset 6 and Reshape took its shape as
	// an input from opset 5; older graphs (or graphs without the default
	// domain) cannot take the appended nodes.
	if pm.OpsetVersion < 6 {
		kept := m.outputs[:0]
		for _, o := range m.outputs {
			if o.needsAdapter() {
				m.unservable = append(m.unservable, fmt.Sprintf("output %q (%s, shape %s) cannot be served from a model with opset %d", o.name, o.dt.name, shapeString(o.shapeJSON()), pm.OpsetVersion))
				continue
			}
			kept = append(kept, o)
		}
		m.outputs = kept
		for _, in := range m.inputs {
			if in.needsAdapter() {
				return fmt.Errorf("model input %q is a %s scalar, which cannot be fed to a model with opset %d", in.name, in.dt.name, pm.OpsetVersion)
			}
		}
	}
	// The binding cannot run a session without inputs, so a model that has
	// none (a generator of constants) gets an unused placeholder.
	needs := len(m.inputs) == 0
	for i := range m.outputs {
		needs = needs || m.outputs[i].needsAdapter()
	}
	for i := range m.inputs {
		needs = needs || m.inputs[i].needsAdapter()
	}
	if needs {
		if err := m.rewrite(data, pm.ExternalData); err != nil {
			return err
		}
	}
	if len(m.outputs) == 0 {
		if len(m.unservable) > 0 {
			return fmt.Errorf("model has no output the Open Inference Protocol can carry: %s", m.unservable[0])
		}
		return errors.New("model declares no outputs")
	}
	for _, in := range m.inputs {
		m.sessionInputs = append(m.sessionInputs, in.ortName)
	}
	if m.placeholder != "" {
		m.sessionInputs = []string{m.placeholder}
	}
	for _, o := range m.outputs {
		m.sessionOutputs = append(m.sessionOutputs, o.ortName)
		if o.shapeName != "" {
			m.sessionOutputs = append(m.sessionOutputs, o.shapeName)
		}
	}
	m.batchable = m.canBatch()
	return nil
}

func (m *model) rewrite(data []byte, external bool) error {
	used, err := onnxpb.ValueNames(data)
	if err != nil {
		return fmt.Errorf("read model: %w", err)
	}
	for _, in := range m.inputs {
		used[in.name] = true
	}
	fresh := func(base string) string {
		for i := 0; ; i++ {
			n := "ebb." + base
			if i > 0 {
				n += "." + strconv.Itoa(i)
			}
			if !used[n] {
				used[n] = true
				return n
			}
		}
	}
	var extra []byte
	dropIn, dropOut := map[string]bool{}, map[string]bool{}
	if len(m.inputs) == 0 {
		m.placeholder = fresh("placeholder")
		extra = append(extra, onnxpb.Input(onnxpb.ValueInfo{Name: m.placeholder, Kind: onnxpb.KindTensor, Elem: onnxpb.Bool, HasShape: true, Dims: []onnxpb.Dim{{Value: 1}}})...)
	}
	for i := range m.inputs {
		in := &m.inputs[i]
		if !in.needsAdapter() {
			continue
		}
		vec, empty := fresh(in.name+".vector"), fresh(in.name+".scalar_shape")
		dropIn[in.name] = true
		extra = append(extra, onnxpb.Input(onnxpb.ValueInfo{Name: vec, Kind: onnxpb.KindTensor, Elem: in.dt.elem, HasShape: true, Dims: []onnxpb.Dim{{Value: 1}}})...)
		extra = append(extra, onnxpb.Node("Constant", fresh("node"), nil, []string{empty}, onnxpb.Int64TensorAttr("value", []int64{0}, nil))...)
		extra = append(extra, onnxpb.Node("Reshape", fresh("node"), []string{vec, empty}, []string{in.name})...)
		in.ortName, in.asVector = vec, true
	}
	var flatShape string
	for i := range m.outputs {
		o := &m.outputs[i]
		if !o.needsAdapter() {
			continue
		}
		cast := o.dt == dtFP16 || o.dt == dtBF16
		flatten := o.rank() <= 0
		dropOut[o.name] = true
		src, elem := o.name, o.dt.elem
		if cast {
			c := fresh(o.name + ".fp32")
			extra = append(extra, onnxpb.Node("Cast", fresh("node"), []string{src}, []string{c}, onnxpb.IntAttr("to", int64(onnxpb.Float)))...)
			src, elem = c, onnxpb.Float
			o.viaFloat = true
		}
		if flatten {
			if flatShape == "" {
				flatShape = fresh("flat_shape")
				extra = append(extra, onnxpb.Node("Constant", fresh("node"), nil, []string{flatShape}, onnxpb.Int64TensorAttr("value", []int64{1}, []int64{-1}))...)
			}
			flat, shape := fresh(o.name+".flat"), fresh(o.name+".shape")
			extra = append(extra, onnxpb.Node("Reshape", fresh("node"), []string{src, flatShape}, []string{flat})...)
			extra = append(extra, onnxpb.Node("Shape", fresh("node"), []string{o.name}, []string{shape})...)
			extra = append(extra, onnxpb.Output(onnxpb.ValueInfo{Name: flat, Kind: onnxpb.KindTensor, Elem: elem, HasShape: true, Dims: []onnxpb.Dim{{Value: -1}}})...)
			extra = append(extra, onnxpb.Output(onnxpb.ValueInfo{Name: shape, Kind: onnxpb.KindTensor, Elem: onnxpb.Int64, HasShape: true, Dims: []onnxpb.Dim{{Value: -1}}})...)
			o.ortName, o.shapeName = flat, shape
			continue
		}
		dims := make([]onnxpb.Dim, len(o.dims))
		for j := range o.dims {
			dims[j] = onnxpb.Dim{Value: o.dims[j], Param: o.params[j]}
		}
		extra = append(extra, onnxpb.Output(onnxpb.ValueInfo{Name: src, Kind: onnxpb.KindTensor, Elem: elem, HasShape: true, Dims: dims})...)
		o.ortName = src
	}
	b, err := onnxpb.RewriteGraph(data, dropIn, dropOut, extra)
	if err != nil {
		return err
	}
	m.bytes = b
	if external {
		m.externalDir = filepath.Dir(m.path)
	}
	return nil
}

// canBatch reports whether requests can be stacked along the first
// dimension: every input and output has a dynamic first dimension, the
// inputs agree on its name (or have none), and no value is BYTES (whose
// elements have no fixed width to slice by) or a rewritten scalar.
func (m *model) canBatch() bool {
	if len(m.inputs) == 0 {
		return false
	}
	param := m.inputs[0].firstParam()
	for _, in := range m.inputs {
		if in.rank() < 1 || in.dims[0] != -1 || in.dt == dtBytes || in.firstParam() != param {
			return false
		}
	}
	for _, o := range m.outputs {
		if o.rank() < 1 || o.dims[0] != -1 || o.dt == dtBytes || o.shapeName != "" {
			return false
		}
	}
	return true
}

func (s *ioSpec) firstParam() string {
	if len(s.params) == 0 {
		return ""
	}
	return s.params[0]
}
