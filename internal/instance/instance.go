// Package instance turns a deployed function version into running instances:
// it starts the process its runtime needs, waits until the process is ready
// for requests, and hands out an Instance that can be invoked (exec, python:
// through the Lambda Runtime API) or proxied to (http, onnx: over HTTP on a
// loopback port). Admission and scaling are not its business; the dispatcher
// decides when to call Start and Stop.
package instance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/pyruntime"
	"github.com/ebb-run/ebb/internal/runtimeapi"
)

// LogSink receives every line an instance writes, tagged with the request it
// was serving when that is known (one request in flight), else "".
type LogSink interface {
	Line(fn string, version int, instanceID, requestID, stream string, line []byte)
}

// Config is shared by every function's starter.
type Config struct {
	Processes *process.Manager // required
	// ShimDir is where the Python shim is written (once).
	ShimDir string
	// Python is the default interpreter for python functions.
	Python string
	// Executable is the ebb binary itself, which serves onnx models in a child
	// process (ebb onnx-serve).
	Executable string
	// ONNXLibrary is passed to onnx instances as the ONNX Runtime library.
	ONNXLibrary string
	Logs        LogSink
	Logger      *slog.Logger
	// ZygoteKeepAlive is how long an unused python zygote, or onnx spare
	// process, stays; 0 means DefaultZygoteKeepAliveFactor times the
	// function's idle_timeout (at least MinZygoteKeepAlive).
	ZygoteKeepAlive time.Duration
	// Spares caps the onnx spare processes of every starter sharing it;
	// Validate makes one of DefaultMaxSpares when it is nil, so starters
	// should share a validated Config.
	Spares *SpareLimit
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Processes == nil {
		return errors.New("instance config: Processes is required")
	}
	if c.Python == "" {
		c.Python = pyruntime.DefaultPython
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Spares == nil {
		c.Spares = NewSpareLimit(DefaultMaxSpares)
	}
	return nil
}

// Starter starts instances of one function version.
type Starter struct {
	cfg     Config
	fn      *ebb.Function
	codeDir string
	env     []string // environment shared by every instance of fn
	argv    []string // command, resolved
	kind    kind

	shimOnce sync.Once
	shimPath string
	shimErr  error

	zygMu sync.Mutex // guards zyg, spareMgr and zygClosed
	// zyg forks python instances; made at the first start or Prewarm.
	zyg *zygoteManager
	// spareMgr keeps an onnx spare process; made likewise.
	spareMgr  *spareManager
	zygClosed bool
}

type kind int

const (
	kindRuntimeAPI kind = iota // exec, python
	kindHTTP                   // http, onnx
)

// NewStarter prepares to start instances of fn whose bundle is unpacked at codeDir.
func NewStarter(cfg Config, fn *ebb.Function, codeDir string) (*Starter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Starter{cfg: cfg, fn: fn, codeDir: codeDir}
	spec := &fn.Spec
	ver := strconv.Itoa(fn.Version)
	env := []string{
		"PATH=" + envOr("PATH", "/usr/local/bin:/usr/bin:/bin"),
		"LANG=C.UTF-8",
		"TZ=:UTC",
		"EBB_FUNCTION_NAME=" + spec.Name,
		"EBB_FUNCTION_VERSION=" + ver,
		"EBB_MEMORY_MIB=" + strconv.Itoa(spec.MemoryMiB),
	}
	switch spec.Runtime {
	case ebb.RuntimeExec, ebb.RuntimePython:
		s.kind = kindRuntimeAPI
		env = append(env,
			"_HANDLER="+spec.Handler,
			"LAMBDA_TASK_ROOT="+codeDir,
			"LAMBDA_RUNTIME_DIR="+codeDir,
			"AWS_LAMBDA_FUNCTION_NAME="+spec.Name,
			"AWS_LAMBDA_FUNCTION_VERSION="+ver,
			"AWS_LAMBDA_FUNCTION_MEMORY_SIZE="+strconv.Itoa(spec.MemoryMiB),
			"AWS_LAMBDA_LOG_GROUP_NAME=/ebb/"+spec.Name,
			"AWS_REGION=local",
			"AWS_DEFAULT_REGION=local",
			"AWS_EXECUTION_ENV=ebb_"+string(spec.Runtime),
		)
		if spec.Concurrency > 1 {
			env = append(env, "AWS_LAMBDA_MAX_CONCURRENCY="+strconv.Itoa(spec.Concurrency))
		}
	case ebb.RuntimeHTTP, ebb.RuntimeONNX:
		s.kind = kindHTTP
		env = append(env, "K_SERVICE="+spec.Name, "K_REVISION="+spec.Name+"-"+ver)
	default:
		return nil, fmt.Errorf("new starter: unknown runtime %q", spec.Runtime)
	}
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	s.env = env
	argv, err := s.command()
	if err != nil {
		return nil, err
	}
	s.argv = argv
	return s, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// command resolves the argv an instance runs.
func (s *Starter) command() ([]string, error) {
	spec := &s.fn.Spec
	switch spec.Runtime {
	case ebb.RuntimePython:
		return nil, nil // resolved at first start, when the shim is written
	case ebb.RuntimeONNX:
		if s.cfg.Executable == "" {
			return nil, errors.New("resolve command: onnx needs the ebb executable path")
		}
		argv := []string{s.cfg.Executable, "onnx-serve", "--model", filepath.Join(s.codeDir, spec.Handler), "--name", spec.Name}
		if s.cfg.ONNXLibrary != "" {
			argv = append(argv, "--onnxruntime-lib", s.cfg.ONNXLibrary)
		}
		if b := spec.Batching; b != nil {
			argv = append(argv, "--max-batch-size", strconv.Itoa(b.MaxBatchSize), "--max-delay", b.MaxDelay.String())
		}
		return argv, nil
	}
	argv := strings.Fields(spec.Handler)
	if len(argv) == 0 {
		return nil, &ebb.InitError{Type: "Runtime.InvalidEntrypoint", Message: "handler is empty"}
	}
	path, err := ResolveCommand(s.codeDir, argv[0])
	if err != nil {
		return nil, err
	}
	argv[0] = path
	return argv, nil
}

// ResolveCommand finds the executable named by a handler's first word: a path
// relative to the function's directory, or a program on PATH.
func ResolveCommand(codeDir, name string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(codeDir, p)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", &ebb.InitError{Type: "Runtime.InvalidEntrypoint", Message: fmt.Sprintf("handler %q is not an executable file in the function", name)}
		}
		return p, nil
	}
	if p := filepath.Join(codeDir, name); isExecutable(p) {
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", &ebb.InitError{Type: "Runtime.InvalidEntrypoint", Message: fmt.Sprintf("handler %q is neither in the function nor on PATH", name)}
	}
	return p, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Start starts one instance and returns once it is ready for requests. An
// *ebb.InitError says the function itself failed to start.
func (s *Starter) Start(ctx context.Context, id string) (*Instance, error) {
	if zm := s.zygote(); zm != nil {
		inst, err := zm.start(ctx, id)
		if !errors.Is(err, errFallback) {
			return inst, err
		}
	}
	if sm := s.spares(); sm != nil {
		return sm.start(ctx, id)
	}
	return s.spawn(ctx, id, false)
}

// spawn starts a process for one instance and waits until it is ready; with
// asSpare (onnx) until it has started its runtime and waits to be claimed.
func (s *Starter) spawn(ctx context.Context, id string, asSpare bool) (*Instance, error) {
	argv := s.argv
	if s.fn.Spec.Runtime == ebb.RuntimePython {
		s.shimOnce.Do(func() { s.shimPath, s.shimErr = pyruntime.WriteShim(s.cfg.ShimDir) })
		if s.shimErr != nil {
			return nil, fmt.Errorf("write python shim: %w", s.shimErr)
		}
		argv = pyruntime.Command(s.python(), s.shimPath)
	}
	inst := &Instance{id: id, fn: s.fn, sink: s.cfg.Logs, log: s.cfg.Logger, done: make(chan struct{}), started: time.Now()}
	var extra []*os.File
	if s.fn.Spec.Runtime == ebb.RuntimeONNX {
		// onnx-serve says when it listens: no probe interval is lost on
		// top of a model load of tens of milliseconds.
		inst.readyLine = make(chan struct{})
		if asSpare {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("create claim pipe: %w", err)
			}
			defer r.Close() // the child has its copy
			inst.claim, inst.spareLine = w, make(chan struct{})
			extra = append(extra, r)
			argv = append(argv[:len(argv):len(argv)], "--spare")
		}
	}
	env := make([]string, len(s.env), len(s.env)+4)
	copy(env, s.env)
	switch s.kind {
	case kindRuntimeAPI:
		rt, err := runtimeapi.New(runtimeapi.Config{
			FunctionName:    s.fn.Spec.Name,
			FunctionVersion: strconv.Itoa(s.fn.Version),
			Logger:          s.cfg.Logger,
		})
		if err != nil {
			return nil, fmt.Errorf("start runtime api: %w", err)
		}
		inst.rt = rt
		env = append(env, "AWS_LAMBDA_RUNTIME_API="+rt.Addr(), "AWS_LAMBDA_LOG_STREAM_NAME="+id)
	case kindHTTP:
		port, err := reservePort()
		if err != nil {
			return nil, err
		}
		inst.port = port
		inst.addr = "127.0.0.1:" + strconv.Itoa(port)
		env = append(env, "PORT="+strconv.Itoa(port), "HOST=127.0.0.1", "EBB_SPAWN_NS="+strconv.FormatInt(time.Now().UnixNano(), 10))
		inst.proxy = newProxy(inst.addr)
		inst.up = &upstream{addr: inst.addr, log: inst.log}
	}
	proc, err := s.cfg.Processes.Start(ctx, process.Spec{
		ID:         id,
		Path:       argv[0],
		Args:       argv[1:],
		Env:        env,
		CodeDir:    s.codeDir,
		MemoryMiB:  s.fn.Spec.MemoryMiB,
		Stdout:     inst.lineFunc("stdout"),
		Stderr:     inst.lineFunc("stderr"),
		ExtraFiles: extra,
	})
	if err != nil {
		if inst.rt != nil {
			inst.rt.Close()
		}
		if inst.claim != nil {
			inst.claim.Close()
		}
		releasePort(inst.port)
		return nil, fmt.Errorf("start process: %w", err)
	}
	inst.proc = proc
	go inst.watch()
	if asSpare {
		select {
		case <-inst.spareLine:
			inst.ready = time.Now() // as a spare; a claim sets it again
			return inst, nil
		case <-inst.done:
			return nil, inst.exitedEarly()
		case <-ctx.Done():
			inst.proc.Kill()
			<-inst.done
			return nil, ctx.Err()
		}
	}
	if err := inst.waitReady(ctx); err != nil {
		inst.proc.Kill()
		<-inst.done
		return nil, err
	}
	inst.ready = time.Now()
	return inst, nil
}

// ports are the loopback ports handed to live http instances. The kernel
// only says a port is free when asked; between that and the child's bind,
// another start could be handed the same port, and its readiness probe would
// then reach the other instance's server and send it the wrong function's
// requests.
var ports = struct {
	mu   sync.Mutex // guards used
	used map[int]bool
}{used: map[int]bool{}}

func reservePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ports.mu.Lock()
		if !ports.used[port] {
			ports.used[port] = true
			ports.mu.Unlock()
			return port, nil
		}
		ports.mu.Unlock()
	}
	return 0, errors.New("find free port: every port offered is taken by an instance")
}

func releasePort(port int) {
	if port == 0 {
		return
	}
	ports.mu.Lock()
	delete(ports.used, port)
	ports.mu.Unlock()
}

// Instance is one running process of a function version.
type Instance struct {
	id      string
	fn      *ebb.Function
	proc    *process.Process
	rt      *runtimeapi.Server     // exec, python
	addr    string                 // http, onnx
	port    int                    // reserved for addr until the process is gone
	proxy   *httputil.ReverseProxy // for protocol upgrades
	up      *upstream              // for everything else
	sink    LogSink
	log     *slog.Logger
	started time.Time
	ready   time.Time
	done    chan struct{} // closed by watch once the process is gone

	// alias is the id a spare was handed out under; ID returns it.
	alias atomic.Pointer[string]
	// cold says how the instance started (zygote, spare); set before
	// Start returns, read-only after.
	cold ColdStart

	// inflight and current tag log lines with the request being served when
	// exactly one is in flight.
	inflight atomic.Int32
	current  atomic.Pointer[string]
	stopping atomic.Bool
	// initErr is an init error the process reported on stderr as an
	// InitErrorPrefix line (runtimes ebb ships, such as onnx-serve).
	initErr atomic.Pointer[ebb.InitError]
	// readyLine, for runtimes ebb ships, is closed when the process prints
	// ReadyLine on stderr; nil for user processes, whose output is not
	// trusted to say so.
	readyLine chan struct{}
	readyOnce sync.Once
	// spareLine is closed when an onnx spare prints SpareLine: its runtime
	// is up and it waits on claim for the word to load its model. An unused
	// spare is killed; claim is closed when the process is gone.
	spareLine chan struct{}
	spareOnce sync.Once
	claim     *os.File
	exitErr   error // set by watch before done is closed
}

// ID returns the instance id.
func (i *Instance) ID() string {
	if a := i.alias.Load(); a != nil {
		return *a
	}
	return i.id
}

func (i *Instance) setAlias(id string) { i.alias.Store(&id) }

// Pid returns the process id.
func (i *Instance) Pid() int { return i.proc.Pid() }

// InitDuration is how long the instance took from start to ready.
func (i *Instance) InitDuration() time.Duration { return i.ready.Sub(i.started) }

// Done is closed when the instance's process has exited and been cleaned up.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Err says why the instance exited; valid after Done.
func (i *Instance) Err() error { return i.exitErr }

// PeakRSS is the peak memory of the instance so far, in bytes.
func (i *Instance) PeakRSS() uint64 { return i.proc.PeakRSS() }

// Kill stops the instance at once (after a timeout: the handler cannot be
// trusted to stop by itself).
func (i *Instance) Kill() {
	i.stopping.Store(true)
	i.proc.Kill()
}

// Stop asks the process to stop, killing it when ctx ends.
func (i *Instance) Stop(ctx context.Context) error {
	i.stopping.Store(true)
	err := i.proc.Stop(ctx)
	<-i.done
	return err
}

// watch owns the process's exit: it fails whatever is pending on the Runtime
// API with the reason, then closes done.
func (i *Instance) watch() {
	<-i.proc.Done()
	err := i.proc.Err()
	switch {
	case i.proc.OOMKilled() || errors.Is(err, ebb.ErrOutOfMemory):
		err = fmt.Errorf("%w (%d MiB)", ebb.ErrOutOfMemory, i.fn.Spec.MemoryMiB)
	case err == nil:
		err = fmt.Errorf("%w: process exited", ebb.ErrCrashed)
	default:
		err = fmt.Errorf("%w: %v", ebb.ErrCrashed, err)
	}
	i.exitErr = err
	if i.rt != nil {
		i.rt.Fail(err)
		i.rt.Close()
	}
	i.closeIdle()
	releasePort(i.port)
	if i.claim != nil {
		i.claim.Close()
	}
	close(i.done)
}

func (i *Instance) waitReady(ctx context.Context) error {
	if i.rt != nil {
		err := i.rt.WaitReady(ctx)
		if err == nil {
			return nil
		}
		var ie *ebb.InitError
		if errors.As(err, &ie) {
			return ie
		}
		if ctx.Err() != nil {
			return &ebb.InitError{Type: "Runtime.InitTimeout", Message: "the instance did not become ready in time"}
		}
		return i.exitedEarly()
	}
	// http: ready once the port accepts connections. Poll fast at first: a
	// small Go server is up in a few milliseconds.
	delay := 200 * time.Microsecond
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", i.addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-i.readyLine: // nil unless the runtime announces itself
			return nil
		case <-i.done:
			return i.exitedEarly()
		case <-ctx.Done():
			return &ebb.InitError{Type: "Runtime.InitTimeout", Message: "the instance did not listen on $PORT in time"}
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Millisecond)
	}
}

func (i *Instance) exitedEarly() error {
	<-i.done
	if errors.Is(i.exitErr, ebb.ErrOutOfMemory) {
		return &ebb.InitError{Type: "Runtime.OutOfMemory", Message: fmt.Sprintf("the instance ran out of memory (%d MiB) during init", i.fn.Spec.MemoryMiB)}
	}
	if ie := i.initErr.Load(); ie != nil {
		return ie
	}
	msg := strings.TrimPrefix(i.exitErr.Error(), ebb.ErrCrashed.Error()+": ")
	return &ebb.InitError{Type: "Runtime.ExitError", Message: "the instance exited before it was ready (" + msg + "); see its logs"}
}

// InitErrorPrefix starts a stderr line with which a runtime that ships with
// ebb reports why it could not start: the rest is an ebb.InitError as JSON.
const InitErrorPrefix = "EBB-INIT-ERROR "

// ReadyLine is the stderr line with which a runtime that ships with ebb
// (onnx-serve) says that it accepts connections on $PORT.
const ReadyLine = "EBB-READY"

// SpareLine is the stderr line with which onnx-serve --spare says that ONNX
// Runtime is up and it waits to be claimed.
const SpareLine = "EBB-SPARE"

func (i *Instance) lineFunc(stream string) func([]byte) {
	return func(line []byte) {
		if i.readyLine != nil && stream == "stderr" && string(line) == ReadyLine {
			i.readyOnce.Do(func() { close(i.readyLine) })
			return
		}
		if i.spareLine != nil && stream == "stderr" && string(line) == SpareLine {
			i.spareOnce.Do(func() { close(i.spareLine) })
			return
		}
		if stream == "stderr" && bytes.HasPrefix(line, []byte(InitErrorPrefix)) && i.initErr.Load() == nil {
			var ie ebb.InitError
			if json.Unmarshal(line[len(InitErrorPrefix):], &ie) == nil && ie.Type != "" {
				i.initErr.Store(&ie)
			}
		}
		if i.sink == nil {
			return
		}
		// The pipe is read after the handler wrote, possibly after its
		// response: so the last request stays current until the next one
		// begins. With several in flight, a line's owner is unknown.
		var rid string
		if i.inflight.Load() <= 1 {
			if p := i.current.Load(); p != nil {
				rid = *p
			}
		}
		i.sink.Line(i.fn.Spec.Name, i.fn.Version, i.ID(), rid, stream, line)
	}
}

// begin and end bracket a request for log tagging.
func (i *Instance) begin(rid *string) {
	i.current.Store(rid)
	i.inflight.Add(1)
}

func (i *Instance) end(rid *string) {
	i.inflight.Add(-1)
}

// Invoke runs one event through the function's handler (exec and python).
// Errors: *ebb.HandlerError (the handler failed), ebb.ErrCrashed or
// ebb.ErrOutOfMemory (the instance died), ctx's error.
func (i *Instance) Invoke(ctx context.Context, requestID string, payload []byte, deadline time.Time) ([]byte, error) {
	if i.rt == nil {
		return nil, fmt.Errorf("invoke: %s functions take HTTP requests", i.fn.Spec.Runtime)
	}
	rid := &requestID
	i.begin(rid)
	defer i.end(rid)
	return i.rt.Invoke(ctx, runtimeapi.Request{ID: requestID, Payload: payload, Deadline: deadline})
}

// IsHTTP reports whether the instance takes HTTP requests rather than events.
func (i *Instance) IsHTTP() bool { return i.proxy != nil }
