package instance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/pyruntime"
)

// DefaultZygoteKeepAliveFactor times a function's idle_timeout is how long
// an unused zygote stays when Config.ZygoteKeepAlive is zero: longer than
// an instance, since rebuilding it costs every import again.
const DefaultZygoteKeepAliveFactor = 3

// MinZygoteKeepAlive is the least default keep-alive: with a short
// idle_timeout (instances stopped after 100 ms) the zygote, which costs all
// the imports to rebuild, would otherwise go almost as fast.
const MinZygoteKeepAlive = time.Minute

// zygoteBuildTimeout bounds a zygote's imports when the start that needs it
// has no deadline of its own (a background refill).
const zygoteBuildTimeout = 5 * time.Minute

// ColdStart breaks down how an instance came to be, for the invocation log.
type ColdStart struct {
	// Zygote says the instance was forked from a zygote.
	Zygote bool
	// Spare says it was forked ahead of time and only handed out.
	Spare bool
	// ZygoteBuild is how long building the zygote took, when this start
	// had to build it (0 when it was warm).
	ZygoteBuild time.Duration
	// ForkToReady is from asking for the fork to the child polling for
	// its first event.
	ForkToReady time.Duration
}

// ZygoteStatus describes a function version's zygote.
type ZygoteStatus struct {
	Pid      int
	BuiltAt  time.Time
	Build    time.Duration // imports and module scope
	RSS, PSS uint64        // bytes, from /proc/PID/smaps_rollup
	Children int           // live forked instances, the spare included
	Spare    bool
	// Fallback says why instances are fresh interpreters instead ("" when
	// the zygote is used).
	Fallback string
}

// zygote is one running fork-server.
type zygote struct {
	proc    *process.Process
	boxed   bool // proc is bwrap; python runs under its init (pid)
	client  *pyruntime.Zygote
	builtAt time.Time
	build   time.Duration

	mu sync.Mutex // guards slots, pids, early
	// slots are the adopted children by pid, for their exit reports.
	slots map[int]*process.Slot
	// pids are the adopted children's pids in ebb's namespace, by their
	// pid in the zygote's, for the warm budget's measure.
	pids map[int]int
	// early holds exits reported before the child was registered.
	early map[int]syscall.WaitStatus
}

// ensure returns a live zygote, building one if needed; built is how long
// that took, 0 when it was warm. It counts a fork in progress (forks): the
// caller calls forkDone when it has adopted its child or failed.
//
// A build needs room in the node's warm budget (errNoRoom without): ahead
// of need (demand false) it may only evict holders in less demand, for a
// request's own start (demand) any idle one.
func (py *pythonLauncher) ensure(ctx context.Context, demand bool) (z *zygote, built time.Duration, err error) {
	if z, err := py.current(); z != nil || err != nil {
		return z, 0, err
	}
	py.buildMu.Lock()
	defer py.buildMu.Unlock()
	if z, err := py.current(); z != nil || err != nil {
		return z, 0, err
	}
	py.builds.Add(1) // before admission: see retire
	if err := py.hold.admit(demand); err != nil {
		return nil, 0, err
	}
	py.mu.Lock()
	py.building = true
	py.mu.Unlock()
	t0 := time.Now()
	z, err = py.build(ctx)
	py.mu.Lock()
	py.building = false
	if err == nil && py.closed {
		err = fmt.Errorf("start zygote: %w", ebb.ErrClosed)
		py.mu.Unlock()
		z.shutdown()
		py.mu.Lock()
	}
	if err != nil {
		py.mu.Unlock()
		py.hold.release()
		return nil, 0, err
	}
	py.z = z
	py.forks++
	py.mu.Unlock()
	if demand {
		py.hold.refresh() // a spare, later, refreshes it again
	}
	return z, time.Since(t0), nil
}

func (py *pythonLauncher) forkDone() {
	py.mu.Lock()
	py.forks--
	py.mu.Unlock()
}

// current is the live zygote, nil if none; errFallback once disabled.
func (py *pythonLauncher) current() (*zygote, error) {
	py.mu.Lock()
	defer py.mu.Unlock()
	switch {
	case py.closed:
		return nil, fmt.Errorf("start zygote: %w", ebb.ErrClosed)
	case py.fallback != "":
		return nil, errFallback
	}
	if py.z != nil {
		select {
		case <-py.z.client.Dead():
			py.s.cfg.Logger.Warn("zygote died; rebuilding it", "function", py.s.fn.Spec.Name, "version", py.s.fn.Version, "err", py.z.proc.Err())
			py.z = nil
			py.hold.release()
		default:
			py.forks++
			return py.z, nil
		}
	}
	return nil, nil
}

// disable makes every later start a fresh interpreter, logging why once.
func (py *pythonLauncher) disable(reason string) {
	py.mu.Lock()
	first := py.fallback == ""
	if first {
		py.fallback = reason
	}
	z := py.z
	py.z = nil
	py.mu.Unlock()
	if !first {
		return
	}
	py.s.cfg.Logger.Warn("python zygote disabled; instances start as fresh interpreters", "function", py.s.fn.Spec.Name,
		"version", py.s.fn.Version, "reason", reason)
	py.spares.disable()
	if z == nil {
		py.hold.release()
	} else {
		// Children it forked already keep running until they stop;
		// closing the channel only ends the zygote when it reads EOF,
		// which kills them (parent-death signal), so wait for them
		// in the background.
		py.wg.Add(1)
		go func() {
			defer py.wg.Done()
			z.waitChildren(py.stop)
			z.shutdown()
			py.hold.release()
		}()
	}
}

// build starts a zygote process and waits for its imports.
func (py *pythonLauncher) build(ctx context.Context) (*zygote, error) {
	s := py.s
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, zygoteBuildTimeout)
		defer cancel()
	}
	path, err := pyruntime.WriteZygote(s.cfg.ShimDir)
	if err != nil {
		return nil, fmt.Errorf("write python zygote: %w", err)
	}
	ours, theirs, err := pyruntime.ControlPair()
	if err != nil {
		return nil, err
	}
	z := &zygote{slots: map[int]*process.Slot{}, pids: map[int]int{}, early: map[int]syscall.WaitStatus{}, boxed: s.box != nil}
	client, err := pyruntime.NewZygote(ours, z.onExit)
	if err != nil {
		theirs.Close()
		return nil, err
	}
	z.client = client
	env := make([]string, 0, len(s.env)+len(pyruntime.ZygoteThreadEnv)+1)
	env = append(env, s.env...)
	for _, kv := range pyruntime.ZygoteThreadEnv {
		if k, _, _ := strings.Cut(kv, "="); !hasEnv(env, k) {
			env = append(env, kv)
		}
	}
	env = append(env, "EBB_PRELOAD="+strings.Join(s.fn.Spec.Preload, ","))
	id := py.nextID("ygote")
	argv := pyruntime.ZygoteCommand(s.pythonPath(), s.inside(path))
	t0 := time.Now()
	proc, _, err := s.startProcess(ctx, process.Spec{
		ID: id, Path: argv[0], Args: argv[1:], Env: env, CodeDir: s.codeDir, MemoryMiB: s.fn.Spec.MemoryMiB,
		Stdout: py.zygoteLines(id, "stdout"), Stderr: py.zygoteLines(id, "stderr"),
		ExtraFiles: []*os.File{theirs},
	}, false, false)
	theirs.Close()
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("start zygote: %w", err)
	}
	z.proc = proc
	info, err := client.WaitReady(ctx)
	if err != nil {
		proc.Kill()
		client.Close()
		<-proc.Done()
		var ie *ebb.InitError
		switch {
		case errors.As(err, &ie):
			return nil, ie
		case ctx.Err() != nil:
			return nil, &ebb.InitError{Type: "Runtime.InitTimeout", Message: "the function's module did not finish importing in time"}
		case proc.OOMKilled():
			return nil, &ebb.InitError{Type: "Runtime.OutOfMemory", Message: fmt.Sprintf("the function ran out of memory (%d MiB) during init", s.fn.Spec.MemoryMiB)}
		}
		return nil, &ebb.InitError{Type: "Runtime.ExitError", Message: fmt.Sprintf("the python zygote exited during init (%v); see the function's logs", proc.Err())}
	}
	z.build = time.Since(t0)
	z.builtAt = t0
	if info.Threads != "" {
		// Forking would only be refused; say why now and spawn fresh.
		proc.Kill()
		client.Close()
		<-proc.Done()
		py.disable(info.Threads)
		return nil, errFallback
	}
	s.cfg.Logger.Info("python zygote ready", "function", s.fn.Spec.Name, "version", s.fn.Version, "pid", proc.Pid(),
		"build_ms", float64(z.build.Microseconds())/1000, "imports_ms", info.InitMS)
	return z, nil
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

func (py *pythonLauncher) zygoteLines(id, stream string) func([]byte) {
	sink := py.s.cfg.Logs
	if sink == nil {
		return nil
	}
	fn := py.s.fn
	return func(line []byte) { sink.Line(fn.Spec.Name, fn.Version, id, "", stream, line) }
}

// fork starts one instance as a child of the zygote, building the zygote
// first if needed. A spare (forked ahead of need) is primed with the
// manifest's warmup event before it is handed out (prime).
func (py *pythonLauncher) fork(ctx context.Context, id string, spare bool) (*Instance, error) {
	s := py.s
	begun := time.Now()
	z, built, err := py.ensure(ctx, !spare)
	if err != nil {
		return nil, err
	}
	defer py.forkDone()
	inst := s.newInstance(id)
	inst.started = begun // a zygote built for this start is part of its process start
	inst.cold = ColdStart{Zygote: true, ZygoteBuild: built}
	if err := attachRuntimeAPI(ctx, s, inst); err != nil {
		return nil, err
	}
	slot, err := s.cfg.Processes.Prepare(ctx, process.AdoptSpec{ID: id, CodeDir: s.codeDir, MemoryMiB: s.fn.Spec.MemoryMiB,
		Stdout: inst.lineFunc("stdout"), Stderr: inst.lineFunc("stderr"), NoDirs: s.box != nil})
	if err != nil {
		inst.runExitHooks(err)
		return nil, fmt.Errorf("start instance: %w", err)
	}
	extra := []string{"AWS_LAMBDA_RUNTIME_API=" + inst.rt.Addr(), "AWS_LAMBDA_LOG_STREAM_NAME=" + id}
	envList, dir := slot.Env(s.instanceEnv(extra...)), slot.WorkDir()
	if s.box != nil {
		envList, dir = boxEnv(envList), s.inside(s.codeDir)
	}
	env := make(map[string]string, len(envList))
	for _, kv := range envList {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	fail := func(err error) (*Instance, error) {
		slot.Abort()
		inst.runExitHooks(err)
		return nil, fmt.Errorf("start instance: %w", err)
	}
	// The child enters its cgroups through files ebb opens (a sandboxed
	// one sees none), and says hello so that ebb learns its pid in ebb's
	// own pid namespace (the zygote only knows it in the sandbox's).
	cgroups, err := pyruntime.OpenCgroupProcs(slot.CgroupProcs())
	if err != nil {
		return fail(err)
	}
	hello, theirs, err := pyruntime.HelloPair()
	if err != nil {
		closeAll(cgroups)
		return fail(err)
	}
	defer hello.Close()
	stdout, stderr := slot.Output()
	forkAt := time.Now()
	nsPid, err := z.client.Fork(ctx, pyruntime.ForkRequest{Env: env, Dir: dir, CgroupFiles: cgroups, Hello: theirs, Stdout: stdout, Stderr: stderr})
	closeAll(cgroups)
	theirs.Close() // else a child that died never reads as EOF
	if err != nil {
		slot.Abort()
		inst.runExitHooks(err)
		if errors.Is(err, pyruntime.ErrRefused) {
			py.disable(strings.TrimPrefix(err.Error(), pyruntime.ErrRefused.Error()+": "))
			return nil, errFallback
		}
		return nil, fmt.Errorf("start instance: %w", err)
	}
	pid, err := pyruntime.ReadHello(ctx, hello)
	if err == nil {
		err = s.checkForked(pid, nsPid)
	}
	if err != nil {
		// The zygote reaps it (Abort kills its cgroup); its exit report
		// finds no slot. Never signal the pid itself: the zygote runs the
		// function's code and chose it.
		return fail(err)
	}
	proc, err := z.adopt(slot, nsPid, pid)
	if err != nil {
		inst.runExitHooks(err)
		return nil, fmt.Errorf("start instance: %w", err)
	}
	inst.proc = proc
	inst.spawned = time.Now()
	go inst.watch()
	if err := inst.waitRuntimeAPI(ctx); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	inst.cold.ForkToReady = inst.ready.Sub(forkAt)
	py.forkNanos.Store(int64(inst.cold.ForkToReady))
	if spare {
		if err := s.prime(ctx, inst); err != nil {
			inst.abort()
			return nil, err
		}
	}
	return inst, nil
}

// checkForked makes sure that pid, which a hello claimed, is the child the
// zygote said it forked (nsPid, its pid in the zygote's namespace) before
// ebb, as root, adopts it: the zygote runs the function's own code, and a
// hello from a process that has since exited could name a pid the host has
// given to something else. The child's innermost pid must be nsPid and,
// sandboxed, it must run as the function's uid in a namespace of its own.
func (s *Starter) checkForked(pid, nsPid int) error {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return fmt.Errorf("check forked instance %d: %w", pid, err)
	}
	var nspids []string
	var uid string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			nspids = strings.Fields(v)
		} else if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				uid = f[0]
			}
		}
	}
	switch {
	case len(nspids) == 0 || nspids[len(nspids)-1] != strconv.Itoa(nsPid):
		return fmt.Errorf("check forked instance %d: its namespace pid is not %d, the one the zygote forked", pid, nsPid)
	case s.box != nil && (len(nspids) < 2 || uid != strconv.FormatUint(uint64(s.box.uid), 10)):
		return fmt.Errorf("check forked instance %d: not the function's sandboxed process", pid)
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// adopt registers the child (by its pid in the zygote's namespace, which
// the zygote's exit reports use) and hands it (by its pid in ebb's) to the
// process manager.
func (z *zygote) adopt(slot *process.Slot, nsPid, pid int) (*process.Process, error) {
	z.mu.Lock()
	if ws, ok := z.early[nsPid]; ok {
		delete(z.early, nsPid)
		slot.SetExit(ws, true)
	} else {
		z.slots[nsPid] = slot
		z.pids[nsPid] = pid
	}
	z.mu.Unlock()
	select {
	case <-z.client.Dead():
		slot.SetExit(0, false)
	default:
	}
	p, err := slot.Adopt(pid)
	if err != nil {
		z.mu.Lock()
		delete(z.slots, nsPid)
		delete(z.pids, nsPid)
		z.mu.Unlock()
		slot.Abort()
	}
	return p, err
}

// pid is the host pid of the python process, whose children the instances
// are: proc's own without a sandbox, under one the process bwrap's init
// runs (pid 2 in the namespace). 0 once it is gone.
func (z *zygote) pid() int { return functionPid(z.proc.Pid(), z.boxed, false) }

// maxEarlyExits bounds the exit reports kept for children not yet adopted:
// the zygote runs the function's code and could report any number of pids.
// A real child's report comes within its fork's round trip, so a few
// suffice; one dropped only leaves that child's exit status unknown.
const maxEarlyExits = 256

// onExit routes the zygote's exit reports; it runs on the client's reader.
func (z *zygote) onExit(pid int, ws syscall.WaitStatus) {
	z.mu.Lock()
	slot := z.slots[pid]
	delete(z.slots, pid)
	delete(z.pids, pid)
	if slot == nil && len(z.early) < maxEarlyExits {
		z.early[pid] = ws
	}
	z.mu.Unlock()
	if slot != nil {
		slot.SetExit(ws, true)
	}
}

// forked says whether pid (in ebb's namespace) is a child z forked.
func (z *zygote) forked(pid int) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, p := range z.pids {
		if p == pid {
			return true
		}
	}
	return false
}

func (z *zygote) children() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return len(z.slots)
}

// waitChildren returns when no forked child is left, or stop is closed.
func (z *zygote) waitChildren(stop <-chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for z.children() > 0 {
		select {
		case <-stop:
			return
		case <-z.client.Dead():
			return
		case <-t.C:
		}
	}
}

// shutdown ends the zygote: closing its channel makes it exit, and its
// children with it.
func (z *zygote) shutdown() {
	z.client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	z.proc.Stop(ctx)
	// The children's exits can no longer be reported.
	z.mu.Lock()
	slots := z.slots
	z.slots = map[int]*process.Slot{}
	z.pids = map[int]int{}
	z.mu.Unlock()
	for _, s := range slots {
		s.SetExit(0, false)
	}
}

// ReadPSS returns the resident and proportional set sizes of pid in bytes,
// from /proc/PID/smaps_rollup (0, 0 when unreadable). PSS divides each
// shared page among the processes that map it, so the PSS of a zygote and
// its children adds up to what they really use.
func ReadPSS(pid int) (rss, pss uint64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		var dst *uint64
		switch {
		case bytes.HasPrefix(line, []byte("Rss:")):
			dst = &rss
		case bytes.HasPrefix(line, []byte("Pss:")):
			dst = &pss
		default:
			continue
		}
		f := strings.Fields(string(line))
		if len(f) >= 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				*dst = v << 10
			}
		}
	}
	return rss, pss
}
