// Package instance turns a deployed function version into running instances:
// it starts the process its runtime needs, waits until the process is ready
// for requests, and hands out an Instance that can be invoked (exec, python:
// through the Lambda Runtime API) or proxied to (http, onnx: over HTTP on a
// loopback port). Admission and scaling are not its business; the dispatcher
// decides when to call Start and Stop.
//
// Each runtime has its own launcher, chosen once by NewStarter: exec.go,
// http.go, python.go (forked from a zygote, zygote.go, else a fresh
// interpreter) and onnx.go (a spare process claimed, else spawned). What a
// runtime starts ahead of need (a zygote's spare child, an onnx spare
// process) is kept by one keeper (keeper.go), whatever it is.
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/onnx"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/pyruntime"
	"github.com/ebb-run/ebb/internal/runtimeapi"
	"github.com/ebb-run/ebb/internal/sandbox"
	"github.com/ebb-run/ebb/internal/upstream"
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
	// Warm is the node's budget for warm capacity, shared by every
	// starter: python zygotes with their spare child, onnx spare
	// processes, spare sandboxes. Validate makes one of MinWarmMemory when
	// it is nil, so starters should share a validated Config.
	Warm *WarmBudget
	// Sandbox, when set and enabled, confines every process of every
	// function (see box); nil or disabled runs them as ebb's own.
	Sandbox *sandbox.Sandbox
	// UIDFor gives a function (by name) the host uid its sandboxed
	// processes run as; required with an enabled Sandbox.
	UIDFor func(name string) (uint32, error)
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
	if c.Warm == nil {
		c.Warm = NewWarmBudget(WarmConfig{Bytes: MinWarmMemory})
	}
	if c.Sandbox != nil && c.Sandbox.Enabled() && c.UIDFor == nil {
		return errors.New("instance config: UIDFor is required with a sandbox")
	}
	return nil
}

// Starter starts instances of one function version, through the launcher
// of its runtime, chosen once by NewStarter.
type Starter struct {
	cfg     Config
	fn      *ebb.Function
	codeDir string
	env     []string // environment shared by every instance of fn
	launch  launcher
	// box confines the version's processes; nil without a sandbox.
	box *box

	// python and onnx are launch when the runtime keeps something ahead of
	// need (a zygote, a spare process), for the status they report; nil
	// otherwise.
	python *pythonLauncher
	onnx   *onnxLauncher
	// hold is what the version holds of the warm budget; nil when its
	// runtime keeps nothing ahead.
	hold *warmHolder
}

// launcher starts the instances of one runtime. There is one type per
// runtime: exec, http, python (forked from a zygote, else fresh) and onnx (a
// spare process claimed, else spawned).
type launcher interface {
	// start starts one instance and returns once it is ready for requests.
	start(ctx context.Context, id string) (*Instance, error)
	// prewarm makes what the runtime keeps ahead of need, in the
	// background.
	prewarm()
	// close stops what prewarm and start kept, and waits for it.
	close()
}

// NewStarter prepares to start instances of fn whose bundle is unpacked at codeDir.
func NewStarter(cfg Config, fn *ebb.Function, codeDir string) (*Starter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Starter{cfg: cfg, fn: fn, codeDir: codeDir}
	spec := &fn.Spec
	if cfg.Sandbox != nil && cfg.Sandbox.Enabled() {
		b, err := newBox(&cfg, fn, codeDir)
		if err != nil {
			return nil, err
		}
		s.box = b
	}
	ver := strconv.Itoa(fn.Version)
	env := []string{
		"PATH=" + envOr("PATH", "/usr/local/bin:/usr/bin:/bin"),
		"LANG=C.UTF-8",
		"TZ=:UTC",
		"EBB_FUNCTION_NAME=" + spec.Name,
		"EBB_FUNCTION_VERSION=" + ver,
		"EBB_MEMORY_MIB=" + strconv.Itoa(spec.MemoryMiB),
	}
	// The one choice by runtime: its environment and its launcher.
	var err error
	switch spec.Runtime {
	case ebb.RuntimeExec:
		env = append(env, lambdaEnv(spec, s.inside(codeDir), ver)...)
		var argv []string
		if argv, err = s.handlerCommand(); err == nil {
			l := &execLauncher{s: s, command: func() ([]string, error) { return argv, nil }}
			if s.box != nil {
				l.spares = boxSpares(s, l.begin)
			}
			s.launch = l
		}
	case ebb.RuntimePython:
		env = append(env, lambdaEnv(spec, s.inside(codeDir), ver)...)
		fresh := &execLauncher{s: s, command: s.pythonCommand(), warm: true}
		if spec.Zygote != nil && !*spec.Zygote {
			s.launch = fresh
		} else {
			s.python = newPythonLauncher(s, fresh)
			s.launch = s.python
		}
	case ebb.RuntimeHTTP:
		env = append(env, serviceEnv(spec, ver)...)
		var argv []string
		if argv, err = s.handlerCommand(); err == nil {
			l := &httpLauncher{s: s, argv: argv}
			if s.box != nil {
				l.spares = boxSpares(s, func(ctx context.Context, id string, block bool) (*Instance, func() error, error) {
					return spawnHTTP(ctx, s, id, argv, nil, block)
				})
			}
			s.launch = l
		}
	case ebb.RuntimeONNX:
		env = append(env, serviceEnv(spec, ver)...)
		var argv []string
		if argv, err = s.onnxCommand(); err == nil {
			s.onnx = newONNXLauncher(s, argv)
			s.launch = s.onnx
		}
	default:
		return nil, fmt.Errorf("new starter: unknown runtime %q", spec.Runtime)
	}
	if err != nil {
		if s.box != nil {
			s.box.close()
		}
		return nil, err
	}
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	s.env = env
	return s, nil
}

// lambdaEnv is the environment of a function that polls the Runtime API, as
// Lambda sets it.
func lambdaEnv(spec *ebb.Spec, codeDir, ver string) []string {
	env := []string{
		"_HANDLER=" + spec.Handler,
		"LAMBDA_TASK_ROOT=" + codeDir,
		"LAMBDA_RUNTIME_DIR=" + codeDir,
		"AWS_LAMBDA_FUNCTION_NAME=" + spec.Name,
		"AWS_LAMBDA_FUNCTION_VERSION=" + ver,
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=" + strconv.Itoa(spec.MemoryMiB),
		"AWS_LAMBDA_LOG_GROUP_NAME=/ebb/" + spec.Name,
		"AWS_REGION=local",
		"AWS_DEFAULT_REGION=local",
		"AWS_EXECUTION_ENV=ebb_" + string(spec.Runtime),
	}
	if spec.Concurrency > 1 {
		env = append(env, "AWS_LAMBDA_MAX_CONCURRENCY="+strconv.Itoa(spec.Concurrency))
	}
	return env
}

// serviceEnv is the environment of a function that serves HTTP, as Cloud Run
// (Knative) sets it.
func serviceEnv(spec *ebb.Spec, ver string) []string {
	return []string{"K_SERVICE=" + spec.Name, "K_REVISION=" + spec.Name + "-" + ver}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// handlerCommand resolves the argv of an exec or http instance: the
// handler's words, the first one an executable.
func (s *Starter) handlerCommand() ([]string, error) {
	argv := strings.Fields(s.fn.Spec.Handler)
	if len(argv) == 0 {
		return nil, &ebb.InitError{Type: "Runtime.InvalidEntrypoint", Message: "handler is empty"}
	}
	path, err := ResolveCommand(s.codeDir, argv[0])
	if err != nil {
		return nil, err
	}
	argv[0] = s.inside(path)
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
	return s.launch.start(ctx, id)
}

// Prewarm builds a python function's zygote and its spare instance, or an
// onnx function's spare process, in the background, so that even the first
// request finds them ready, when the node's warm budget (Config.Warm) has
// room for them. It does nothing for other functions.
func (s *Starter) Prewarm() { s.launch.prewarm() }

// Warm reports what the version holds of the node's warm budget; nil when
// it holds nothing.
func (s *Starter) Warm() *WarmStatus {
	if s.hold == nil {
		return nil
	}
	if st := s.hold.status(); st != nil {
		if m := s.hold.measure(); m > 0 {
			st.Bytes = m
		}
		return st
	}
	return nil
}

// Close stops the zygote and the spare instance, if any. The instances the
// starter started must be stopped first: forked ones die with the zygote.
func (s *Starter) Close() {
	s.launch.close()
	if s.box != nil {
		s.box.close()
	}
}

// newInstance is an instance of s's function about to start as id.
func (s *Starter) newInstance(id string) *Instance {
	return &Instance{id: id, fn: s.fn, sink: s.cfg.Logs, log: s.cfg.Logger, done: make(chan struct{}), started: time.Now()}
}

// spawn starts argv as inst's process with env and watches it; the
// launcher has set up inst's channel (Runtime API, port) and hooks.
func (s *Starter) spawn(ctx context.Context, inst *Instance, argv, env []string, extra []*os.File) error {
	_, err := s.spawnBlocked(ctx, inst, argv, env, extra, false)
	return err
}

// spawnBlocked is spawn, with block: the process is made, confined and
// watched, but waits until release before it runs argv (in the sandbox
// only; release is nil without one or without block).
func (s *Starter) spawnBlocked(ctx context.Context, inst *Instance, argv, env []string, extra []*os.File, block bool) (release func() error, err error) {
	proc, release, err := s.startProcess(ctx, process.Spec{
		ID:         inst.id,
		Path:       argv[0],
		Args:       argv[1:],
		Env:        env,
		CodeDir:    s.codeDir,
		MemoryMiB:  s.fn.Spec.MemoryMiB,
		Stdout:     inst.lineFunc("stdout"),
		Stderr:     inst.lineFunc("stderr"),
		ExtraFiles: extra,
	}, block, true)
	if err != nil {
		inst.runExitHooks(err)
		return nil, fmt.Errorf("start process: %w", err)
	}
	inst.proc = proc
	inst.boxed = s.box != nil
	if !block {
		inst.spawned = time.Now() // a blocked spare's is its claim's
	}
	go inst.watch()
	return release, nil
}

// startProcess starts one process of the version, in its sandbox when it
// has one (as its pid namespace's init with init).
func (s *Starter) startProcess(ctx context.Context, ps process.Spec, block, init bool) (*process.Process, func() error, error) {
	if s.box == nil {
		p, err := s.cfg.Processes.Start(ctx, ps)
		return p, nil, err
	}
	release, closeFiles, done, err := s.box.wrap(ctx, &ps, block, init)
	if err != nil {
		return nil, nil, err
	}
	p, err := s.cfg.Processes.Start(ctx, ps)
	closeFiles()
	if err != nil {
		done()
		if release != nil {
			release() // nobody waits on it; closes ebb's end
		}
		return nil, nil, err
	}
	// It uses the namespace until it is gone; this waiter ends with it
	// (the process manager kills every process at its close).
	go func() {
		<-p.Done()
		done()
	}()
	return p, release, nil
}

// instanceEnv is s's environment for one instance, with room for what its
// launcher adds.
func (s *Starter) instanceEnv(extra ...string) []string {
	env := make([]string, len(s.env), len(s.env)+len(extra))
	copy(env, s.env)
	return append(env, extra...)
}

// Instance is one running process of a function version. Its launcher
// sets how ebb talks to it, rt or up, and the hooks of its runtime; the
// rest is the same for every runtime.
type Instance struct {
	id      string
	fn      *ebb.Function
	proc    *process.Process
	rt      *runtimeapi.Server // the Runtime API it polls (exec, python); nil otherwise
	up      *upstream.Client   // its HTTP server (http, onnx); nil otherwise
	sink    LogSink
	log     *slog.Logger
	started time.Time
	// spawned is when the process was there to run the function's own
	// start (made, confined and exec'd; forked; or a spare released), so
	// that a cold start splits into process start and init; set before
	// Start returns, zero if unknown.
	spawned time.Time
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
	// onnx.InitErrorPrefix line (runtimes ebb ships, such as onnx-serve).
	initErr atomic.Pointer[ebb.InitError]
	// stderrHook, set by the launcher before the process starts, reads
	// the lines of a runtime that ebb ships for what it says to ebb (ready,
	// spare); true means the line was for ebb and is not logged.
	stderrHook func(line []byte) bool
	// exitHooks free what the launcher set up for the process (its
	// Runtime API server, its port, a claim pipe); watch runs them once it
	// is gone, or spawn when it never started.
	exitHooks []func(err error)
	exitErr   error // set by watch before done is closed
	// boxed says proc is bwrap, whose child (its pid namespace's init)
	// runs the function (FunctionPid); false for a forked instance, whose
	// proc is the function's process itself. Set before Start returns.
	boxed bool
}

// onExit adds a hook that frees something of the instance once its process
// is gone; call it before the process starts.
func (i *Instance) onExit(f func(err error)) { i.exitHooks = append(i.exitHooks, f) }

func (i *Instance) runExitHooks(err error) {
	for _, f := range i.exitHooks {
		f(err)
	}
}

// ID returns the instance id.
func (i *Instance) ID() string {
	if a := i.alias.Load(); a != nil {
		return *a
	}
	return i.id
}

func (i *Instance) setAlias(id string) { i.alias.Store(&id) }

// Pid returns the id of the process ebb started (or adopted): under a
// sandbox, bwrap's.
func (i *Instance) Pid() int { return i.proc.Pid() }

// FunctionPid returns the host pid of the process running the function's
// own code: Pid without a sandbox and for a forked instance; under a
// sandbox, the process bwrap runs (bwrap's child, pid 1 in its namespace).
// This is the pid `ebb status` shows. 0 once it is gone.
func (i *Instance) FunctionPid() int { return functionPid(i.proc.Pid(), i.boxed, true) }

// InitDuration is how long the instance took from start to ready.
func (i *Instance) InitDuration() time.Duration { return i.ready.Sub(i.started) }

// StartTimes are when the instance's start began, when its process was there
// to run the function's start (spawned; zero if unknown) and when it was
// ready. The process start is started→spawned, the function's init
// spawned→ready. A spare handed out ready has all three at its claim.
func (i *Instance) StartTimes() (started, spawned, ready time.Time) {
	return i.started, i.spawned, i.ready
}

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

// watch owns the process's exit: it runs the launcher's exit hooks with the
// reason (failing whatever is pending on the Runtime API), then closes done.
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
	i.runExitHooks(err)
	close(i.done)
}

// abort kills an instance that did not become ready and waits until it is
// gone.
func (i *Instance) abort() {
	i.proc.Kill()
	<-i.done
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

func (i *Instance) lineFunc(stream string) func([]byte) {
	return func(line []byte) {
		if stream == "stderr" {
			if i.stderrHook != nil && i.stderrHook(line) {
				return
			}
			if i.initErr.Load() == nil {
				if ie, ok := onnx.ParseInitError(line); ok {
					i.initErr.Store(ie)
				}
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
// The span in ctx, if any, is the handler's trace context: its runtime gets
// it as Lambda-Runtime-Trace-Id (X-Ray's form) and traceparent/tracestate.
// Errors: *ebb.HandlerError (the handler failed), ebb.ErrCrashed or
// ebb.ErrOutOfMemory (the instance died), ctx's error.
func (i *Instance) Invoke(ctx context.Context, requestID string, payload []byte, deadline time.Time) ([]byte, error) {
	if i.rt == nil {
		return nil, fmt.Errorf("invoke: %s functions take HTTP requests", i.fn.Spec.Runtime)
	}
	rid := &requestID
	i.begin(rid)
	defer i.end(rid)
	req := runtimeapi.Request{ID: requestID, Payload: payload, Deadline: deadline}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		req.TraceID, req.TraceParent, req.TraceState = traceHeaders(sc)
	}
	out, err := i.rt.Invoke(ctx, req)
	if ebb.LogSync(ctx) && i.proc != nil {
		// The handler wrote its lines before it answered: take them all
		// in while the request is still current, bounded so that a
		// process holding its pipe full cannot hold the answer.
		sctx, cancel := context.WithTimeout(ctx, logSyncTimeout)
		i.proc.SyncOutput(sctx)
		cancel()
	}
	return out, err
}

// logSyncTimeout bounds how long an invocation's answer waits for its log
// lines (WithLogSync).
const logSyncTimeout = 2 * time.Second

// IsHTTP reports whether the instance takes HTTP requests rather than events.
func (i *Instance) IsHTTP() bool { return i.up != nil }

// ColdStart says how the instance was started.
func (i *Instance) ColdStart() ColdStart { return i.cold }
