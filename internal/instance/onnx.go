package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/onnx"
)

// spareStartTimeout bounds a background spare's start (process and ONNX
// Runtime start-up).
const spareStartTimeout = time.Minute

// onnxLauncher starts an onnx function's instances: ebb onnx-serve, which
// serves the model over HTTP like an http function and says when it
// listens. It keeps one process started ahead of need, with ONNX Runtime up
// but no model loaded: a cold start claims it and pays only for the model's
// session, not for the process and the library (about 40 of the 46 ms of a
// small model's cold start here). The spare is a real instance of the
// function (its cgroup, memory limit, environment, port), so claiming it is
// one write. It costs the runtime's memory (about 9 MiB anonymous, plus
// library pages shared with the other onnx processes), counts against the
// node's warm budget (Config.Warm), and goes after the keep-alive without a cold start,
// like a python zygote. Without a spare, a cold start spawns a process.
type onnxLauncher struct {
	s      *Starter
	argv   []string
	idBase string
	seq    atomic.Uint64
	spares *keeper[*onnxSpare]
}

// spareKeepAlive is how long a spare process (onnx, a sandbox set up ahead)
// stays unused: Config.ZygoteKeepAlive, else DefaultZygoteKeepAliveFactor
// times the function's idle_timeout, at least MinZygoteKeepAlive.
func spareKeepAlive(s *Starter) time.Duration {
	if ka := s.cfg.ZygoteKeepAlive; ka > 0 {
		return ka
	}
	return max(DefaultZygoteKeepAliveFactor*s.fn.Spec.IdleTimeout, MinZygoteKeepAlive)
}

// onnxCommand is the argv of an onnx instance.
func (s *Starter) onnxCommand() ([]string, error) {
	spec := &s.fn.Spec
	if s.cfg.Executable == "" {
		return nil, errors.New("resolve command: onnx needs the ebb executable path")
	}
	argv := []string{s.inside(s.cfg.Executable), "onnx-serve", "--model", s.inside(filepath.Join(s.codeDir, spec.Handler)), "--name", spec.Name}
	if s.cfg.ONNXLibrary != "" {
		argv = append(argv, "--onnxruntime-lib", s.inside(s.cfg.ONNXLibrary))
	}
	if b := spec.Batching; b != nil {
		argv = append(argv, "--max-batch-size", strconv.Itoa(b.MaxBatchSize), "--max-delay", b.MaxDelay.String())
	}
	return argv, nil
}

func newONNXLauncher(s *Starter, argv []string) *onnxLauncher {
	ka := spareKeepAlive(s)
	var b [3]byte
	rand.Read(b[:])
	l := &onnxLauncher{s: s, argv: argv, idBase: fmt.Sprintf("%s-v%d-p%s-", s.fn.Spec.Name, s.fn.Version, hex.EncodeToString(b[:]))}
	l.spares = newKeeper(keeperConfig[*onnxSpare]{
		keepAlive: ka,
		start:     l.startSpare,
		retire: func(had, evicted bool) func() {
			switch {
			case had && evicted:
				s.cfg.Logger.Info("spare instance evicted for the warm budget; stopping it", "function", s.fn.Spec.Name, "version", s.fn.Version)
			case had:
				s.cfg.Logger.Info("spare instance unused; stopping it", "function", s.fn.Spec.Name, "version", s.fn.Version, "keep_alive", ka)
			}
			return nil
		},
	})
	l.spares.cfg.hold = s.cfg.Warm.newHolder(s.fn.Spec.Name, s.fn.Version, KindONNXSpare, func() uint64 { return sparePSS(l.spares, s) }, nil, l.spares.evict)
	l.spares.cfg.hold.register()
	s.hold = l.spares.cfg.hold
	return l
}

// sparePSS is the PSS of k's spare process and its children, and of s's
// sandbox network stack, which it keeps up.
func sparePSS[T interface {
	ahead
	pid() int
}](k *keeper[T], s *Starter) uint64 {
	pid := 0
	k.peek(func(sp T) { pid = sp.pid() })
	if pid == 0 {
		return 0
	}
	return treePSS(pid, nil) + s.netPSS()
}

// netPSS is the PSS of the version's sandbox network stack (pasta), 0
// without one.
func (s *Starter) netPSS() uint64 {
	if s.box == nil {
		return 0
	}
	return s.box.pastaPSS()
}

func (l *onnxLauncher) prewarm() { l.spares.refill() }
func (l *onnxLauncher) close()   { l.spares.close() }

// start starts one instance: it claims the spare if one is ready (it then
// loads the model and listens), else spawns a process as usual. Either way
// a new spare is made for the next cold start.
func (l *onnxLauncher) start(ctx context.Context, id string) (*Instance, error) {
	defer l.spares.refillSoon()
	sp, ok := l.spares.take(ctx, id)
	if !ok {
		return l.spawn(ctx, id)
	}
	if err := sp.inst.waitListening(ctx, sp.ready, 0); err != nil {
		sp.inst.abort()
		return nil, err
	}
	sp.inst.ready = time.Now()
	return sp.inst, nil
}

// spawn starts a process for one instance and waits until it listens.
func (l *onnxLauncher) spawn(ctx context.Context, id string) (*Instance, error) {
	var ready chan struct{}
	inst, _, err := spawnHTTP(ctx, l.s, id, l.argv, func(inst *Instance) ([]*os.File, error) {
		ready = announce(inst, nil)
		return nil, nil
	}, false)
	if err != nil {
		return nil, err
	}
	if err := inst.waitListening(ctx, ready, 0); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	return inst, nil
}

// startSpare starts a spare process and waits until its runtime is up. A
// spare that cannot start its runtime (no library, say) turns spares off:
// every later one would fail too, so cold starts spawn as usual and the
// failure shows once, in their init error.
func (l *onnxLauncher) startSpare(ctx context.Context) (*onnxSpare, error) {
	ctx, cancel := context.WithTimeout(ctx, spareStartTimeout)
	defer cancel()
	sp, err := l.spawnSpare(ctx, l.idBase+"s"+strconv.FormatUint(l.seq.Add(1), 10))
	if err != nil && ctx.Err() == nil {
		if _, ok := errors.AsType[*ebb.InitError](err); ok {
			l.spares.disable()
		}
		l.s.cfg.Logger.Warn("start spare instance; cold starts of this version spawn as usual", "function", l.s.fn.Spec.Name, "version", l.s.fn.Version, "err", err)
	}
	return sp, err
}

func (l *onnxLauncher) spawnSpare(ctx context.Context, id string) (*onnxSpare, error) {
	sp := &onnxSpare{}
	var waiting chan struct{}
	var readEnd *os.File
	argv := append(l.argv[:len(l.argv):len(l.argv)], "--spare")
	inst, _, err := spawnHTTP(ctx, l.s, id, argv, func(inst *Instance) ([]*os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create claim pipe: %w", err)
		}
		sp.claimPipe, readEnd = w, r
		inst.onExit(func(error) { w.Close() })
		waiting = make(chan struct{})
		sp.ready = announce(inst, waiting)
		return []*os.File{r}, nil // onnx.ClaimFD in the child
	}, false)
	if readEnd != nil {
		readEnd.Close() // the child has its copy, or never will
	}
	if err != nil {
		return nil, err
	}
	sp.inst = inst
	select {
	case <-waiting:
		inst.ready = time.Now() // as a spare; a claim sets it again
		return sp, nil
	case <-inst.done:
		return nil, inst.exitedEarly()
	case <-ctx.Done():
		inst.abort()
		return nil, ctx.Err()
	}
}

// announce has inst's stderr hook close the channel it returns when the
// process prints onnx.ReadyLine, and waiting (when not nil) when it prints
// onnx.SpareLine.
func announce(inst *Instance, waiting chan struct{}) chan struct{} {
	ready := make(chan struct{})
	var readyOnce, waitingOnce sync.Once
	inst.stderrHook = func(line []byte) bool {
		switch string(line) {
		case onnx.ReadyLine:
			readyOnce.Do(func() { close(ready) })
			return true
		case onnx.SpareLine:
			if waiting == nil {
				return false
			}
			waitingOnce.Do(func() { close(waiting) })
			return true
		}
		return false
	}
	return ready
}

// onnxSpare is an onnx process with ONNX Runtime up, waiting on its claim
// pipe for the word to load the model. An unused spare is killed; the pipe
// is closed when the process is gone.
type onnxSpare struct {
	inst      *Instance
	claimPipe *os.File
	ready     chan struct{} // closed when the claimed process listens
}

func (sp *onnxSpare) pid() int { return sp.inst.Pid() }

func (sp *onnxSpare) claim(id string) error {
	sp.inst.setAlias(id)
	sp.inst.started = time.Now() // init time is what the claim waits for
	// Its process runs already: what the claim waits for is all init.
	sp.inst.spawned = sp.inst.started
	sp.inst.cold.Spare = true
	return onnx.Claim(sp.claimPipe)
}

func (sp *onnxSpare) kill()                 { sp.inst.Kill() }
func (sp *onnxSpare) done() <-chan struct{} { return sp.inst.done }

// SparesOff says whether spares were turned off for this version after one
// could not start its runtime.
func (s *Starter) SparesOff() bool { return s.onnx != nil && s.onnx.spares.disabled() }

// SpareReady says whether an onnx spare process waits to be claimed.
func (s *Starter) SpareReady() bool { return s.Spare() != nil }

// SpareStatus describes a waiting spare process.
type SpareStatus struct {
	Pid   int
	Since time.Time // when it was ready
	RSS   uint64    // bytes, from /proc/PID/smaps_rollup
	PSS   uint64    // RSS with shared pages (the library, ebb's binary) divided among their users
}

// Spare reports the onnx spare process waiting to be claimed; nil if none.
func (s *Starter) Spare() *SpareStatus {
	if s.onnx == nil {
		return nil
	}
	var sp *onnxSpare
	var st SpareStatus
	s.onnx.spares.peek(func(p *onnxSpare) {
		// ready changes when a cold start claims the spare, after take.
		sp, st = p, SpareStatus{Pid: p.inst.FunctionPid(), Since: p.inst.ready}
	})
	if sp == nil || isClosed(sp.done()) {
		return nil
	}
	st.RSS, st.PSS = ReadPSS(st.Pid)
	return &st
}
