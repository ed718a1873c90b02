package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/pyruntime"
)

// errFallback makes Start spawn a fresh interpreter.
var errFallback = errors.New("zygote unusable")

// pythonLauncher starts a python function's instances by forking them from
// its zygote, a fork-server that has imported the function's module, and
// keeps one forked child spare for the next cold start. When the zygote
// cannot be used (threads at import, a refused fork) instances start as
// fresh interpreters (fresh).
type pythonLauncher struct {
	s         *Starter
	fresh     *execLauncher
	keepAlive time.Duration
	idBase    string
	seq       atomic.Uint64
	spares    *keeper[forkedSpare]
	// hold accounts the zygote and its spare child in the node's warm
	// budget: held from a build's admission until the zygote is gone.
	hold *warmHolder
	// builds counts zygote builds begun (before their admission). A
	// retired zygote's shutdown releases hold only if no build began
	// since it was let go: the hold is then the next zygote's.
	builds atomic.Uint64
	// forkNanos is what the last fork took to be ready (not primed): what
	// a start that forks its own child pays, and so how long it waits for
	// a spare still being made (which includes priming with the
	// manifest's warmup event, however long that runs).
	forkNanos atomic.Int64

	buildMu sync.Mutex // serialises zygote builds, so that a burst builds one

	// mu guards z, forks, fallback, closed. The keeper takes it under its
	// own lock (busy, retire): never call the keeper with it held.
	mu sync.Mutex
	z  *zygote
	// forks counts forks in progress from z (ensure to done): a zygote
	// is not retired under a start that is forking from it, however long
	// its build took.
	forks    int
	fallback string
	closed   bool
	building bool // a build holds room; it must not be evicted

	stop chan struct{}  // closed by close
	wg   sync.WaitGroup // a disabled zygote waiting for its children
}

func newPythonLauncher(s *Starter, fresh *execLauncher) *pythonLauncher {
	ka := s.cfg.ZygoteKeepAlive
	if ka <= 0 {
		ka = DefaultZygoteKeepAliveFactor * s.fn.Spec.IdleTimeout
	}
	if ka <= 0 {
		ka = DefaultZygoteKeepAliveFactor * ebb.DefaultIdleTimeout
	}
	if s.cfg.ZygoteKeepAlive <= 0 {
		ka = max(ka, MinZygoteKeepAlive)
	}
	var b [3]byte
	rand.Read(b[:])
	py := &pythonLauncher{s: s, fresh: fresh, keepAlive: ka, idBase: fmt.Sprintf("%s-v%d-z%s-", s.fn.Spec.Name, s.fn.Version, hex.EncodeToString(b[:])),
		stop: make(chan struct{})}
	// The spare child has no node-wide cap: it costs only the pages that
	// differ from the zygote's. It is kept while instances forked from the
	// zygote run, and the zygote goes with it: those would die with it.
	py.spares = newKeeper(keeperConfig[forkedSpare]{
		keepAlive: ka,
		start:     py.startSpare,
		busy:      py.busy,
		retire:    func(_, evicted bool) func() { return py.retire(evicted) },
		ready:     func() { py.hold.refresh() },
	})
	py.hold = s.cfg.Warm.newHolder(s.fn.Spec.Name, s.fn.Version, KindZygote, py.measure, py.idle, py.spares.evict)
	py.hold.register()
	s.hold = py.hold
	return py
}

func (py *pythonLauncher) nextID(kind string) string {
	return py.idBase + kind + strconv.FormatUint(py.seq.Add(1), 10)
}

func (py *pythonLauncher) prewarm() { py.spares.refill() }

// forkedSpare is an instance forked ahead of need, polling its Runtime API;
// claiming it only renames it.
type forkedSpare struct{ inst *Instance }

func (sp forkedSpare) claim(id string) error {
	sp.inst.setAlias(id)
	// Its start was paid ahead: the request that claims it waited for none.
	now := time.Now()
	sp.inst.started, sp.inst.spawned, sp.inst.ready = now, now, now
	return nil
}

func (sp forkedSpare) kill()                 { sp.inst.Kill() }
func (sp forkedSpare) done() <-chan struct{} { return sp.inst.done }

// startSpare forks a spare child, building the zygote first if needed.
func (py *pythonLauncher) startSpare(ctx context.Context) (forkedSpare, error) {
	ctx, cancel := context.WithTimeout(ctx, zygoteBuildTimeout)
	defer cancel()
	inst, err := py.fork(ctx, py.nextID("s"), true)
	if err != nil {
		if !errors.Is(err, errFallback) && !errors.Is(err, errNoRoom) && ctx.Err() == nil {
			py.s.cfg.Logger.Warn("fork spare instance", "function", py.s.fn.Spec.Name, "version", py.s.fn.Version, "err", err)
		}
		return forkedSpare{}, err
	}
	inst.cold.Spare = true
	return forkedSpare{inst}, nil
}

// measure is the PSS of the zygote and its spare child, without the
// instances it forked (they are in use, not held ahead), and of the
// sandbox's network stack, which it keeps up.
func (py *pythonLauncher) measure() uint64 {
	py.mu.Lock()
	z := py.z
	py.mu.Unlock()
	if z == nil {
		return 0
	}
	spare := 0
	py.spares.peek(func(sp forkedSpare) { spare = sp.inst.Pid() })
	return treePSS(z.proc.Pid(), func(pid int) bool { return pid != spare && z.forked(pid) }) + py.s.netPSS()
}

// idle says the zygote may be evicted: no build in progress, no instance
// forked from it running.
func (py *pythonLauncher) idle() bool {
	py.mu.Lock()
	building := py.building
	py.mu.Unlock()
	return !building && !py.busy(py.spares.live())
}

// busy says whether instances forked from the zygote, other than the spare,
// still run.
func (py *pythonLauncher) busy(spareLive bool) bool {
	py.mu.Lock()
	z, forks := py.z, py.forks
	py.mu.Unlock()
	if z == nil {
		return false
	}
	if forks > 0 {
		return true
	}
	n := z.children()
	if spareLive {
		n--
	}
	return n > 0
}

// retire lets go of the zygote, which nothing used for the keep-alive (or
// which the warm budget evicts: evicted): a later start builds a new one.
// It returns the zygote's shutdown.
func (py *pythonLauncher) retire(evicted bool) func() {
	py.mu.Lock()
	if py.forks > 0 {
		// A start took the zygote after busy looked.
		py.mu.Unlock()
		return nil
	}
	z := py.z
	py.z = nil
	py.mu.Unlock()
	if z == nil {
		return nil
	}
	gen := py.builds.Load()
	return func() {
		if evicted {
			py.s.cfg.Logger.Info("zygote evicted for the warm budget; stopping it", "function", py.s.fn.Spec.Name, "version", py.s.fn.Version)
		} else {
			py.s.cfg.Logger.Info("zygote idle; stopping it", "function", py.s.fn.Spec.Name, "version", py.s.fn.Version, "keep_alive", py.keepAlive)
		}
		z.shutdown()
		py.hold.releaseUnless(func() bool { return py.builds.Load() != gen })
	}
}

// start starts one instance from the zygote: the spare if one is ready,
// else a fresh fork, else (the zygote unusable) a fresh interpreter.
//
// A start with no zygote builds one (the cold path), room in the warm budget
// or not: it may evict idle holders of other functions; when even that
// leaves no room, the instance starts as a fresh interpreter, and the
// function keeps no zygote.
func (py *pythonLauncher) start(ctx context.Context, id string) (*Instance, error) {
	py.hold.used()
	inst, err := py.forkOrTake(ctx, id)
	if errors.Is(err, errFallback) || errors.Is(err, errNoRoom) {
		return py.fresh.start(ctx, id)
	}
	return inst, err
}

func (py *pythonLauncher) forkOrTake(ctx context.Context, id string) (*Instance, error) {
	if py.disabled() {
		return nil, errFallback
	}
	defer py.spares.refillSoon()
	wctx, cancel := context.WithTimeout(ctx, py.spareWait())
	sp, ok := py.spares.take(wctx, id)
	cancel()
	if ok {
		return sp.inst, nil
	}
	return py.fork(ctx, id, false)
}

// spareWait is how long a start waits for a spare being made before it
// forks its own child: as long as that fork is expected to take (the last
// one's fork to ready, 100 ms before the first), so that a slow warmup
// event costs the start at most twice a fork.
func (py *pythonLauncher) spareWait() time.Duration {
	if d := time.Duration(py.forkNanos.Load()); d > 0 {
		return d
	}
	return defaultSpareWait
}

const defaultSpareWait = 100 * time.Millisecond

func (py *pythonLauncher) disabled() bool {
	py.mu.Lock()
	defer py.mu.Unlock()
	return py.fallback != ""
}

// close stops the spare and the zygote. Instances forked from it must be
// stopped first: they die with it.
func (py *pythonLauncher) close() {
	py.mu.Lock()
	if py.closed {
		py.mu.Unlock()
		return
	}
	py.closed = true
	z := py.z
	py.z = nil
	py.mu.Unlock()
	py.spares.close()
	close(py.stop)
	py.wg.Wait()
	py.buildMu.Lock() // a build in flight sees closed and shuts its zygote down
	py.buildMu.Unlock()
	if z != nil {
		z.shutdown()
	}
	py.hold.unregister()
}

// status reports the zygote, if any.
func (py *pythonLauncher) status() *ZygoteStatus {
	py.mu.Lock()
	z, fallback := py.z, py.fallback
	py.mu.Unlock()
	st := &ZygoteStatus{Fallback: fallback}
	if z == nil {
		if fallback == "" {
			return nil
		}
		return st
	}
	// The python process, not a sandbox's bwrap above it: what forked
	// the instances and holds the imports.
	st.Pid, st.BuiltAt, st.Build = z.pid(), z.builtAt, z.build
	if st.Pid != 0 {
		st.RSS, st.PSS = ReadPSS(st.Pid)
	}
	st.Children = z.children()
	st.Spare = py.spares.live()
	return st
}

// pythonPath is the interpreter of the function's instances.
func (s *Starter) pythonPath() string {
	if s.fn.Spec.Python != "" {
		return s.fn.Spec.Python
	}
	return s.cfg.Python
}

// pythonCommand resolves the argv of a fresh python instance: the
// interpreter running ebb's shim, written at first use.
func (s *Starter) pythonCommand() func() ([]string, error) {
	var once sync.Once
	var shim string
	var err error
	return func() ([]string, error) {
		once.Do(func() { shim, err = pyruntime.WriteShim(s.cfg.ShimDir) })
		if err != nil {
			return nil, fmt.Errorf("write python shim: %w", err)
		}
		return pyruntime.Command(s.pythonPath(), s.inside(shim)), nil
	}
}

// Zygote reports the function's zygote; nil when it has none running.
func (s *Starter) Zygote() *ZygoteStatus {
	if s.python == nil {
		return nil
	}
	return s.python.status()
}

// prime runs the manifest's warmup event through a spare's Runtime API, as
// a request would come, and drops the answer: the first call in a freshly
// forked child pays for page faults in the handler's and the shim's code
// and data (the HTTP exchange, JSON) that every later call is spared, and
// priming moves that cost off the request that claims the spare. A handler
// error is logged and the spare kept; a crash fails the spare.
func (s *Starter) prime(ctx context.Context, inst *Instance) error {
	w := s.fn.Spec.Warmup
	if len(w) == 0 {
		return nil
	}
	_, err := inst.Invoke(ctx, warmupRequestID, w, time.Now().Add(s.fn.Spec.Timeout))
	if _, ok := errors.AsType[*ebb.HandlerError](err); ok || err == nil {
		if err != nil {
			s.cfg.Logger.Warn("warmup event failed; the spare is kept", "function", s.fn.Spec.Name, "version", s.fn.Version, "err", err)
		}
		return nil
	}
	return fmt.Errorf("prime spare: %w", err)
}

// warmupEnv is what primes a fresh python interpreter (no zygote) with the
// manifest's warmup event: the shim runs the handler once with it before
// its first poll, and the lines that prints are tagged "warmup". (A forked
// spare is primed through its Runtime API instead: prime.)
func (s *Starter) warmupEnv(inst *Instance) []string {
	w := s.fn.Spec.Warmup
	if len(w) == 0 {
		return nil
	}
	tag := warmupRequestID
	inst.current.Store(&tag)
	return []string{"EBB_WARMUP=" + string(w)}
}

// warmupRequestID tags the log lines of a warmup call.
const warmupRequestID = "warmup"
