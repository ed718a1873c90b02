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
	"github.com/ebb-run/ebb/internal/onnx"
)

// spareStartTimeout bounds a background spare's start (process and ONNX
// Runtime start-up).
const spareStartTimeout = time.Minute

// spareManager keeps one onnx instance process started ahead of need, with
// ONNX Runtime up but no model loaded: a cold start claims it and pays only
// for the model's session, not for the process and the library (about 40 of
// the 46 ms of a small model's cold start here). The spare is a real
// instance of the function (its cgroup, memory limit, environment, port),
// so claiming it is one write. It costs the runtime's memory (about 9 MiB
// anonymous, plus library pages shared with the other onnx processes), and
// goes after the keep-alive without a cold start, like a python zygote.
type spareManager struct {
	s         *Starter
	keepAlive time.Duration
	idBase    string
	seq       atomic.Uint64

	mu      sync.Mutex // guards spare, lastUse, closed, off
	spare   *Instance  // started, waiting to be claimed; nil if none
	lastUse time.Time
	closed  bool
	// off is set when a spare failed to start its runtime (no library, say):
	// every later one would too, so cold starts spawn as usual and the
	// failure shows once, in their init error.
	off bool

	kick chan struct{} // asks run to make a spare
	stop chan struct{} // closed by close
	wg   sync.WaitGroup
}

// usesSpare says whether fn's cold starts claim a spare process.
func usesSpare(fn *ebb.Function) bool { return fn.Spec.Runtime == ebb.RuntimeONNX }

func newSpareManager(s *Starter) *spareManager {
	ka := s.cfg.ZygoteKeepAlive
	if ka <= 0 {
		ka = max(DefaultZygoteKeepAliveFactor*s.fn.Spec.IdleTimeout, MinZygoteKeepAlive)
	}
	var b [3]byte
	rand.Read(b[:])
	sm := &spareManager{s: s, keepAlive: ka, idBase: fmt.Sprintf("%s-v%d-p%s-", s.fn.Spec.Name, s.fn.Version, hex.EncodeToString(b[:])),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), lastUse: time.Now()}
	sm.wg.Add(1)
	go sm.run()
	return sm
}

// run owns the spare: it makes one when kicked and lets it go when no cold
// start has wanted one for the keep-alive.
func (sm *spareManager) run() {
	defer sm.wg.Done()
	keep(sm.stop, sm.kick, sm.keepAlive, sm.refill, sm.expire)
}

func (sm *spareManager) kickRefill() {
	select {
	case sm.kick <- struct{}{}:
	default:
	}
}

// refill starts a spare if there is no live one and the node's limit on
// spares allows one more.
func (sm *spareManager) refill(ctx context.Context) {
	sm.mu.Lock()
	skip := sm.closed || sm.off || (sm.spare != nil && !isDone(sm.spare))
	sm.mu.Unlock()
	if skip || !sm.s.cfg.Spares.acquire() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, spareStartTimeout)
	defer cancel()
	inst, err := sm.s.spawn(ctx, sm.idBase+"s"+strconv.FormatUint(sm.seq.Add(1), 10), true)
	if err != nil {
		sm.s.cfg.Spares.release()
		if ctx.Err() == nil {
			if _, ok := errors.AsType[*ebb.InitError](err); ok {
				sm.mu.Lock()
				sm.off = true
				sm.mu.Unlock()
			}
			sm.s.cfg.Logger.Warn("start spare instance; cold starts of this version spawn as usual", "function", sm.s.fn.Spec.Name, "version", sm.s.fn.Version, "err", err)
		}
		return
	}
	sm.mu.Lock()
	if sm.closed {
		sm.mu.Unlock()
		sm.s.cfg.Spares.release()
		inst.Kill()
		<-inst.done
		return
	}
	old := sm.spare
	sm.spare = inst
	sm.mu.Unlock()
	if old != nil {
		sm.s.cfg.Spares.release()
		old.Kill()
	}
}

// expire lets the spare go when no cold start needed one for the keep-alive.
func (sm *spareManager) expire(now time.Time) {
	sm.mu.Lock()
	spare := sm.spare
	if spare == nil || now.Sub(sm.lastUse) < sm.keepAlive {
		sm.mu.Unlock()
		return
	}
	sm.spare = nil
	sm.mu.Unlock()
	sm.s.cfg.Spares.release()
	sm.s.cfg.Logger.Info("spare instance unused; stopping it", "function", sm.s.fn.Spec.Name, "version", sm.s.fn.Version, "keep_alive", sm.keepAlive)
	spare.Kill()
	<-spare.done
}

// take hands out the spare when there is a live one.
func (sm *spareManager) take() *Instance {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	sm.lastUse = time.Now()
	sp := sm.spare
	sm.spare = nil
	if sp == nil {
		return nil
	}
	sm.s.cfg.Spares.release() // it is an instance now, or dead
	if isDone(sp) {
		return nil
	}
	return sp
}

// start starts one instance: it claims the spare if one is ready (it then
// loads the model and listens), else spawns a process as usual. Either way
// a new spare is made for the next cold start.
func (sm *spareManager) start(ctx context.Context, id string) (*Instance, error) {
	defer sm.kickRefill()
	sp := sm.take()
	if sp == nil {
		return sm.s.spawn(ctx, id, false)
	}
	sp.setAlias(id)
	sp.started = time.Now() // init time is what the claim waits for
	sp.cold.Spare = true
	if err := onnx.Claim(sp.claim); err != nil {
		// It died between take and now: start one the usual way.
		sp.Kill()
		<-sp.done
		return sm.s.spawn(ctx, id, false)
	}
	if err := sp.waitReady(ctx); err != nil {
		sp.proc.Kill()
		<-sp.done
		return nil, err
	}
	sp.ready = time.Now()
	return sp, nil
}

// close stops the loop and the spare.
func (sm *spareManager) close() {
	sm.mu.Lock()
	if sm.closed {
		sm.mu.Unlock()
		return
	}
	sm.closed = true
	spare := sm.spare
	sm.spare = nil
	sm.mu.Unlock()
	close(sm.stop)
	sm.wg.Wait()
	if spare != nil {
		sm.s.cfg.Spares.release()
		spare.Kill()
		<-spare.done
	}
}

// DefaultMaxSpares is how many onnx spare processes a node keeps at most
// when Config.Spares is not set.
const DefaultMaxSpares = 8

// SpareLimit caps the spare processes of a node, across its functions:
// each costs the runtime's memory while it waits, so a node with hundreds
// of onnx functions keeps spares only for the few that had cold starts most
// recently, and the others start the usual way. Safe for concurrent use; nil
// allows none.
type SpareLimit struct{ slots chan struct{} }

// NewSpareLimit allows n spares at once.
func NewSpareLimit(n int) *SpareLimit {
	return &SpareLimit{slots: make(chan struct{}, max(n, 0))}
}

func (l *SpareLimit) acquire() bool {
	if l == nil {
		return false
	}
	select {
	case l.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (l *SpareLimit) release() {
	if l != nil {
		<-l.slots
	}
}

// SparesOff says whether spares were turned off for this version after one
// could not start its runtime.
func (s *Starter) SparesOff() bool {
	s.zygMu.Lock()
	sm := s.spareMgr
	s.zygMu.Unlock()
	if sm == nil {
		return false
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return sm.off
}

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
	s.zygMu.Lock()
	sm := s.spareMgr
	s.zygMu.Unlock()
	if sm == nil {
		return nil
	}
	sm.mu.Lock()
	sp := sm.spare
	var st SpareStatus
	if sp != nil {
		// ready changes when a cold start claims the spare, after take.
		st = SpareStatus{Pid: sp.Pid(), Since: sp.ready}
	}
	sm.mu.Unlock()
	if sp == nil || isDone(sp) {
		return nil
	}
	st.RSS, st.PSS = ReadPSS(st.Pid)
	return &st
}

// spares returns the function's spare manager, making it at first use; nil
// when the function does not use one or the starter is closed.
func (s *Starter) spares() *spareManager {
	if !usesSpare(s.fn) {
		return nil
	}
	s.zygMu.Lock()
	defer s.zygMu.Unlock()
	if s.zygClosed {
		return nil
	}
	if s.spareMgr == nil {
		s.spareMgr = newSpareManager(s)
	}
	return s.spareMgr
}
