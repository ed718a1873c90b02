package onnx

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// session is one ONNX Runtime session of a model. ONNX Runtime allows
// concurrent Run calls on a session, so one session serves every request of
// the instance; the batcher and unbatched requests share it.
type session struct {
	m   *model
	ort *ort.DynamicAdvancedSession
	// runOpts is shared by every Run so that Close can terminate all of
	// them at once.
	runOpts *ort.RunOptions
	// slots bounds concurrent Runs (Config.MaxConcurrentRuns): more than
	// the CPUs can hold only contend, and unfairly, while waiting here is
	// first come, first served.
	slots chan struct{}
}

// sessionOptions are the knobs NewServer turns into ort.SessionOptions.
type sessionOptions struct {
	threads  int
	level    GraphOptimization
	spinning bool
	runs     int // concurrent Runs; 0 means 1
}

func newSession(m *model, so sessionOptions) (*session, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("create session options: %w", err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(so.threads); err != nil {
		return nil, fmt.Errorf("set intra-op threads: %w", err)
	}
	// Operators run one after another; parallelism comes from inside each
	// operator (intra-op) and from concurrent requests.
	if err := opts.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("set inter-op threads: %w", err)
	}
	if err := opts.SetExecutionMode(ort.ExecutionModeSequential); err != nil {
		return nil, fmt.Errorf("set execution mode: %w", err)
	}
	if err := opts.SetGraphOptimizationLevel(so.level.ort()); err != nil {
		return nil, fmt.Errorf("set graph optimization level: %w", err)
	}
	spin := "0"
	if so.spinning {
		spin = "1"
	}
	if err := opts.AddSessionConfigEntry("session.intra_op.allow_spinning", spin); err != nil {
		return nil, fmt.Errorf("set spinning: %w", err)
	}
	if m.externalDir != "" {
		if err := opts.AddSessionConfigEntry("session.model_external_initializers_file_folder_path", m.externalDir); err != nil {
			return nil, fmt.Errorf("set external data folder: %w", err)
		}
	}
	var s *ort.DynamicAdvancedSession
	if m.bytes != nil {
		s, err = ort.NewDynamicAdvancedSessionWithONNXData(m.bytes, m.sessionInputs, m.sessionOutputs, opts)
		// ONNX Runtime has its own copy now.
		m.bytes = nil
	} else {
		s, err = ort.NewDynamicAdvancedSession(m.path, m.sessionInputs, m.sessionOutputs, opts)
	}
	if err != nil {
		// The message names the model file; the server's paths stay out.
		msg := strings.ReplaceAll(cleanORTError(err), m.path, filepath.Base(m.path))
		return nil, fmt.Errorf("create session: %s", msg)
	}
	ro, err := ort.NewRunOptions()
	if err != nil {
		s.Destroy()
		return nil, fmt.Errorf("create run options: %w", err)
	}
	return &session{m: m, ort: s, runOpts: ro, slots: make(chan struct{}, max(1, so.runs))}, nil
}

// terminate makes every Run in progress, and every later one, fail quickly.
func (s *session) terminate() {
	s.runOpts.Terminate()
}

func (s *session) destroy() {
	s.runOpts.Destroy()
	s.ort.Destroy()
}

// errInput marks run errors caused by the request's values rather than by
// the server (a scalar the binding cannot build, for instance).
type errInput struct{ msg string }

func (e *errInput) Error() string { return e.msg }

// dummy backs zero-element tensors: the binding refuses an empty buffer.
var dummy = make([]byte, 8)

// runStats says how a request's model run went; the server reports it in
// the Server-Timing header.
type runStats struct {
	queued time.Duration // waiting for a run slot, or for a batch to fill and run
	run    time.Duration // the model run that answered the request
	rows   int64         // rows in that run, when it went through the batcher; else 0
}

// run runs the model on inputs (in model input order) and returns every
// servable output in model order. It waits for a free slot until ctx ends.
// st, if not nil, receives how the run went.
func (s *session) run(ctx context.Context, inputs []*tensor, st *runStats) ([]tensor, error) {
	arrived := time.Now()
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.slots }()
	start := time.Now()
	outs, err := s.runHeld(inputs)
	if st != nil {
		*st = runStats{queued: start.Sub(arrived), run: time.Since(start)}
	}
	return outs, err
}

// runHeld is run for a caller that holds a slot.
func (s *session) runHeld(inputs []*tensor) ([]tensor, error) {
	vals := make([]ort.Value, len(inputs))
	defer func() {
		for _, v := range vals {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, t := range inputs {
		v, err := newValue(&s.m.inputs[i], t)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	if s.m.placeholder != "" {
		v, err := ort.NewTensor(ort.Shape{1}, []bool{false})
		if err != nil {
			return nil, fmt.Errorf("create placeholder input: %w", err)
		}
		vals = append(vals, v)
	}
	outs := make([]ort.Value, len(s.m.sessionOutputs))
	defer func() {
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	if err := s.ort.RunWithOptions(vals, outs, s.runOpts); err != nil {
		return nil, fmt.Errorf("run model: %s", cleanORTError(err))
	}
	res := make([]tensor, len(s.m.outputs))
	j := 0
	for i := range s.m.outputs {
		spec := &s.m.outputs[i]
		v := outs[j]
		j++
		var shapeVal ort.Value
		if spec.shapeName != "" {
			shapeVal = outs[j]
			j++
		}
		t, err := fromValue(spec, v, shapeVal)
		if err != nil {
			return nil, fmt.Errorf("read output %q: %w", spec.name, err)
		}
		res[i] = t
	}
	return res, nil
}

// newValue wraps a request tensor for the session. Fixed-width data is
// shared, not copied; it must stay untouched until the value is destroyed.
func newValue(spec *ioSpec, t *tensor) (ort.Value, error) {
	shape := ort.Shape(t.shape)
	if spec.asVector {
		shape = ort.Shape{1}
	}
	if t.dt == dtBytes {
		if len(shape) == 0 {
			return nil, &errInput{fmt.Sprintf("input %q: scalar BYTES inputs are not supported for this model", spec.name)}
		}
		st, err := ort.NewStringTensor(shape)
		if err != nil {
			return nil, fmt.Errorf("create input %q: %w", spec.name, err)
		}
		strs := make([]string, len(t.strs))
		for i, b := range t.strs {
			strs[i] = string(b)
		}
		if err := st.SetContents(strs); err != nil {
			st.Destroy()
			return nil, fmt.Errorf("fill input %q: %w", spec.name, err)
		}
		return st, nil
	}
	if len(shape) == 0 {
		return newScalar(spec, t)
	}
	data := t.data
	if len(data) == 0 {
		data = dummy
	}
	v, err := ort.NewCustomDataTensor(shape, data, ort.TensorElementDataType(t.dt.elem))
	if err != nil {
		return nil, fmt.Errorf("create input %q: %w", spec.name, err)
	}
	return v, nil
}

// newScalar builds a rank-0 tensor; the binding has rank-0 support only
// through its typed Scalar.
func newScalar(spec *ioSpec, t *tensor) (ort.Value, error) {
	b := t.data
	var (
		v   ort.Value
		err error
	)
	switch t.dt {
	case dtBool:
		v, err = ort.NewScalar(b[0] != 0)
	case dtUint8:
		v, err = ort.NewScalar(b[0])
	case dtInt8:
		v, err = ort.NewScalar(int8(b[0]))
	case dtUint16:
		v, err = ort.NewScalar(binary.LittleEndian.Uint16(b))
	case dtInt16:
		v, err = ort.NewScalar(int16(binary.LittleEndian.Uint16(b)))
	case dtUint32:
		v, err = ort.NewScalar(binary.LittleEndian.Uint32(b))
	case dtInt32:
		v, err = ort.NewScalar(int32(binary.LittleEndian.Uint32(b)))
	case dtUint64:
		v, err = ort.NewScalar(binary.LittleEndian.Uint64(b))
	case dtInt64:
		v, err = ort.NewScalar(int64(binary.LittleEndian.Uint64(b)))
	case dtFP32:
		v, err = ort.NewScalar(math.Float32frombits(binary.LittleEndian.Uint32(b)))
	case dtFP64:
		v, err = ort.NewScalar(math.Float64frombits(binary.LittleEndian.Uint64(b)))
	default:
		return nil, &errInput{fmt.Sprintf("input %q: scalar %s inputs are not supported for this model", spec.name, t.dt.name)}
	}
	if err != nil {
		return nil, fmt.Errorf("create input %q: %w", spec.name, err)
	}
	return v, nil
}

// fromValue turns a session output into a response tensor. Fixed-width data
// is the Go copy the binding already made, viewed as bytes.
func fromValue(spec *ioSpec, v, shapeVal ort.Value) (tensor, error) {
	if v == nil {
		return tensor{}, errors.New("session returned no value")
	}
	t := tensor{name: spec.name, dt: spec.dt, shape: []int64(v.GetShape())}
	if shapeVal != nil {
		st, ok := shapeVal.(*ort.Tensor[int64])
		if !ok {
			return tensor{}, fmt.Errorf("shape output has type %T", shapeVal)
		}
		t.shape = append([]int64(nil), st.GetData()...)
	}
	if spec.dt == dtBytes {
		st, ok := v.(*ort.StringTensor)
		if !ok {
			return tensor{}, fmt.Errorf("want a string tensor, got %T", v)
		}
		strs, err := st.GetContents()
		if err != nil {
			return tensor{}, err
		}
		t.strs = make([][]byte, len(strs))
		for i, s := range strs {
			t.strs[i] = []byte(s)
		}
		return t, checkCount(&t, int64(len(strs)))
	}
	var raw []byte
	switch x := v.(type) {
	case *ort.Tensor[float32]:
		if spec.viaFloat {
			raw = narrowFloats(x.GetData(), spec.dt)
		} else {
			raw = asBytes(x.GetData())
		}
	case *ort.Tensor[float64]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[bool]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[uint8]:
		raw = x.GetData()
	case *ort.Tensor[int8]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[uint16]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[int16]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[uint32]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[int32]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[uint64]:
		raw = asBytes(x.GetData())
	case *ort.Tensor[int64]:
		raw = asBytes(x.GetData())
	default:
		return tensor{}, fmt.Errorf("unexpected value type %T", v)
	}
	want := spec.dt.elem
	if spec.viaFloat {
		want = dtFP32.elem
	}
	if got := int32(v.DataType()); got != int32(want) {
		return tensor{}, fmt.Errorf("session produced element type %d, the model declares %s", got, spec.dt.name)
	}
	t.data = raw
	return t, checkCount(&t, int64(len(raw)/spec.dt.size))
}

func checkCount(t *tensor, got int64) error {
	n, err := numElements(t.shape)
	if err != nil {
		return err
	}
	if n != got {
		return fmt.Errorf("shape %v but %d elements", t.shape, got)
	}
	return nil
}

// asBytes views a slice of fixed-width numbers (or bools, one byte each) as
// its little-endian bytes.
func asBytes[T any](d []T) []byte {
	if len(d) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), len(d)*int(unsafe.Sizeof(zero)))
}

// narrowFloats converts FP32 values that came from FP16/BF16 (through the
// Cast appended by adapt) back to their 2-byte encoding; exact by
// construction.
func narrowFloats(f []float32, dt *dtype) []byte {
	out := make([]byte, 2*len(f))
	for i, v := range f {
		var h uint16
		if dt == dtBF16 {
			h, _ = toBF16(float64(v))
		} else {
			h, _ = toHalf(float64(v))
		}
		binary.LittleEndian.PutUint16(out[2*i:], h)
	}
	return out
}

var ortPathRE = regexp.MustCompile(`(?:/[\w.+-]+)+\.(?:cc|cpp|h|hpp|c)(?::\d+)?`)

// cleanORTError keeps ONNX Runtime's message but drops what must not reach a
// client: source paths, and everything after the first line (stack traces).
// Only the binding's own prefix is removed.
func cleanORTError(err error) string {
	msg := err.Error()
	for _, p := range []string{"Error running network: ", "Error creating C session: ", "Error creating C session from file: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	msg = ortPathRE.ReplaceAllString(msg, "")
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > 1024 {
		msg = msg[:1024] + "…"
	}
	if msg == "" {
		msg = "onnx runtime error"
	}
	return msg
}
