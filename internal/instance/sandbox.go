package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/sandbox"
)

// Where a sandboxed process finds what ebb gives it besides its code
// (sandbox.TaskDir): ebb's Python shim, ebb's own binary (onnx-serve) and
// the ONNX Runtime library's directory, all read-only.
const (
	boxShimDir = "/.ebb/runtime"
	boxExe     = "/.ebb/ebb"
	boxORTDir  = "/.ebb/onnxruntime"
)

// box confines the processes of one function version: each runs under
// bubblewrap as the function's own uid, in the version's network namespace
// (made at first need, with pasta for network: outbound), where ebb listens
// for its Runtime API and dials its port. nil when the sandbox is off.
type box struct {
	sb       *sandbox.Sandbox
	uid      uint32
	code     string         // the bundle, as bwrap (the function's uid) reaches it
	binds    []sandbox.Bind // the shim dir, ebb's binary, ONNX Runtime
	tmpBytes int64
	outbound bool
	hostname string
	log      *slog.Logger

	// nsMu serialises making ns, which can take seconds (pasta), so that
	// mu, which status and port hooks take, is never held across it.
	nsMu sync.Mutex
	mu   sync.Mutex // guards ns, stale, users, closed, ports
	ns   *sandbox.Netns
	// users counts what needs each namespace: processes started in it,
	// Runtime API listeners, reserved ports. The last one gone closes it,
	// and its pasta (tens of MiB): a version with nothing running holds
	// no network stack (use).
	users map[*sandbox.Netns]int
	// stale are namespaces whose pasta died: new instances get a new
	// namespace, while the instances still in these keep them (closed
	// with the box).
	stale  []*sandbox.Netns
	closed bool
	// ports are the ports handed to live http instances inside ns, for
	// the same reason as the host's (reservePort), with their use of it.
	ports map[int]func()
}

// newBox prepares the confinement of fn, whose bundle is at codeDir.
func newBox(cfg *Config, fn *ebb.Function, codeDir string) (*box, error) {
	sb := cfg.Sandbox
	uid, err := cfg.UIDFor(fn.Spec.Name)
	if err != nil {
		return nil, fmt.Errorf("sandbox function: %w", err)
	}
	code, err := sb.Reach(codeDir)
	if err != nil {
		return nil, fmt.Errorf("sandbox function: %w", err)
	}
	b := &box{sb: sb, uid: uid, code: code, tmpBytes: int64(fn.Spec.MemoryMiB) << 20,
		// Without pasta (sandbox.New warned once), outbound functions get
		// loopback only rather than not starting at all.
		outbound: fn.Spec.Network != ebb.NetworkNone && sb.Outbound(), hostname: fn.Spec.Name, ports: map[int]func(){}, users: map[*sandbox.Netns]int{}, log: cfg.Logger}
	for _, m := range []struct{ src, dst string }{
		{cfg.ShimDir, boxShimDir}, {cfg.Executable, boxExe}, {ortDir(cfg.ONNXLibrary), boxORTDir},
	} {
		if m.src == "" || (m.dst != boxShimDir && fn.Spec.Runtime != ebb.RuntimeONNX) {
			continue
		}
		if m.dst == boxShimDir {
			// Written at first use; it must exist to be bound.
			if err := os.MkdirAll(m.src, 0o755); err != nil {
				return nil, fmt.Errorf("sandbox function: %w", err)
			}
		} else if _, err := os.Stat(m.src); err != nil {
			// Missing (no ONNX Runtime): the instance says so itself,
			// as an init error, as it does unsandboxed.
			continue
		}
		p, err := sb.Reach(m.src)
		if err != nil {
			return nil, fmt.Errorf("sandbox function: %w", err)
		}
		b.binds = append(b.binds, sandbox.Bind{Src: p, Dst: m.dst})
	}
	return b, nil
}

func ortDir(lib string) string {
	if lib == "" {
		return ""
	}
	return filepath.Dir(lib)
}

// netns is the version's network namespace, made at first need.
func (b *box) netns(ctx context.Context) (*sandbox.Netns, error) {
	if ns, err := b.current(); ns != nil || err != nil {
		return ns, err
	}
	b.nsMu.Lock()
	defer b.nsMu.Unlock()
	if ns, err := b.current(); ns != nil || err != nil {
		return ns, err
	}
	ns, err := b.sb.NewNetns(ctx, b.outbound)
	if err != nil {
		return nil, fmt.Errorf("make network namespace: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		ns.Close()
		return nil, fmt.Errorf("make network namespace: %w", ebb.ErrClosed)
	}
	b.ns = ns
	return ns, nil
}

// current is the namespace if made, nil if not yet; an error once closed.
func (b *box) current() (*sandbox.Netns, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("make network namespace: %w", ebb.ErrClosed)
	}
	if b.ns != nil && b.outbound {
		select {
		case <-b.ns.PastaDone():
			// pasta died (killed, or crashed on the function's traffic):
			// that namespace has no way out any more. The next instance
			// gets a new namespace, with a new pasta.
			b.stale = append(b.stale, b.ns)
			b.ns = nil
			if b.log != nil {
				b.log.Warn("the sandbox's network helper (pasta) exited; new instances get a new network namespace", "function", b.hostname)
			}
		default:
		}
	}
	return b.ns, nil
}

// use is the namespace, made if needed, counted as used until done is
// called (once is enough; more calls do nothing).
func (b *box) use(ctx context.Context) (ns *sandbox.Netns, done func(), err error) {
	for {
		ns, err := b.netns(ctx)
		if err != nil {
			return nil, nil, err
		}
		b.mu.Lock()
		if b.ns != ns {
			// Its last user went between netns and here: closed.
			b.mu.Unlock()
			continue
		}
		b.users[ns]++
		b.mu.Unlock()
		var once sync.Once
		return ns, func() { once.Do(func() { b.unuse(ns) }) }, nil
	}
}

// unuse ends one use of ns, closing it after the last.
func (b *box) unuse(ns *sandbox.Netns) {
	b.mu.Lock()
	b.users[ns]--
	last := b.users[ns] <= 0
	if last {
		delete(b.users, ns)
		if b.ns == ns {
			b.ns = nil
		}
		b.stale = slices.DeleteFunc(b.stale, func(o *sandbox.Netns) bool { return o == ns })
	}
	b.mu.Unlock()
	if last {
		ns.Close()
	}
}

// listen opens a listener for a Runtime API inside the namespace; closing
// it ends its use of the namespace.
func (b *box) listen(ctx context.Context) (net.Listener, error) {
	ns, done, err := b.use(ctx)
	if err != nil {
		return nil, err
	}
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		done()
		return nil, err
	}
	return &usedListener{Listener: ln, done: done}, nil
}

// usedListener ends its use of the namespace when closed.
type usedListener struct {
	net.Listener
	done func()
}

func (l *usedListener) Close() error {
	err := l.Listener.Close()
	l.done()
	return err
}

// pastaPSS is the PSS of the namespace's pasta, 0 without one: what a
// version holding warm capacity keeps up besides its processes.
func (b *box) pastaPSS() uint64 {
	b.mu.Lock()
	ns := b.ns
	b.mu.Unlock()
	if ns == nil || ns.PastaPID() == 0 {
		return 0
	}
	_, pss := ReadPSS(ns.PastaPID())
	return pss
}

// reservePort picks a free port inside the namespace for an http instance.
//
// The port uses the namespace until releasePort.
func (b *box) reservePort(ctx context.Context) (int, func(ctx context.Context) (net.Conn, error), error) {
	ns, done, err := b.use(ctx)
	if err != nil {
		return 0, nil, err
	}
	for range 100 {
		l, err := ns.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			done()
			return 0, nil, fmt.Errorf("find free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		b.mu.Lock()
		free := b.ports[port] == nil
		if free {
			b.ports[port] = done
		}
		b.mu.Unlock()
		if free {
			addr := "127.0.0.1:" + strconv.Itoa(port)
			return port, func(ctx context.Context) (net.Conn, error) { return ns.Dial(ctx, "tcp", addr) }, nil
		}
	}
	done()
	return 0, nil, errors.New("find free port: every port offered is taken by an instance")
}

func (b *box) releasePort(port int) {
	b.mu.Lock()
	done := b.ports[port]
	delete(b.ports, port)
	b.mu.Unlock()
	if done != nil {
		done()
	}
}

// wrap turns a process spec into its sandboxed form: bwrap running argv as
// the function's uid, born in the version's namespace, with its own
// directories. With block, the process waits, set up, until release.
//
// Every process is its namespace's init but a python zygote, which forks
// instances into its namespace (and reaps them itself): an orphan of one
// of those must not be reported to ebb as an instance's exit.
//
// The process uses the namespace until it is gone: the caller calls done
// then, or at once when it did not start.
func (b *box) wrap(ctx context.Context, ps *process.Spec, block, init bool) (release func() error, closeFn, done func(), err error) {
	ns, done, err := b.use(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	argv := append([]string{ps.Path}, ps.Args...)
	c, err := b.sb.Command(sandbox.Spec{UID: b.uid, GID: b.uid, Code: b.code, ReadOnly: b.binds, TmpBytes: b.tmpBytes,
		Argv: argv, Hostname: b.hostname, Block: block, Init: init, FirstFD: 3 + len(ps.ExtraFiles)})
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	ps.Path, ps.Args = c.Path, c.Args[1:]
	ps.ExtraFiles = append(ps.ExtraFiles[:len(ps.ExtraFiles):len(ps.ExtraFiles)], c.ExtraFiles...)
	ps.Credential = c.Credential
	ps.NetNS = ns.File()
	ps.NoDirs = true
	ps.Env = boxEnv(ps.Env)
	return c.Release, c.Close, done, nil
}

// boxEnv points a sandboxed process's home and scratch at its private /tmp.
func boxEnv(env []string) []string {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "TMPDIR", "TMP", "TEMP", "HOME":
			continue
		}
		out = append(out, kv)
	}
	return append(out, "TMPDIR="+sandbox.TmpDir, "TMP="+sandbox.TmpDir, "TEMP="+sandbox.TmpDir, "HOME="+sandbox.TmpDir)
}

// close ends the version's namespace (and its pasta); its processes must be
// gone.
func (b *box) close() {
	b.mu.Lock()
	all := append(b.stale, b.ns)
	b.ns, b.stale, b.closed = nil, nil, true
	b.mu.Unlock()
	for _, ns := range all {
		if ns != nil {
			ns.Close()
		}
	}
}

// inside maps a host path to where the function's processes see it: the
// bundle at /var/task, the shim, ebb's binary and ONNX Runtime under /.ebb.
// Paths elsewhere (the system's /usr) are the same inside. Without a
// sandbox every path is the host's.
func (s *Starter) inside(p string) string {
	if s.box == nil || p == "" {
		return p
	}
	for _, m := range []struct{ host, in string }{
		{s.codeDir, sandbox.TaskDir}, {s.cfg.ShimDir, boxShimDir}, {ortDir(s.cfg.ONNXLibrary), boxORTDir},
	} {
		if m.host == "" {
			continue
		}
		if p == m.host {
			return m.in
		}
		if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(m.host, "/")+"/"); ok {
			return m.in + "/" + rel
		}
	}
	if p == s.cfg.Executable {
		return boxExe
	}
	return p
}

// SandboxStatus says how a function version's processes are confined.
type SandboxStatus struct {
	UID      uint32 // the host uid they run as
	Network  string // outbound or none
	PastaPID int    // the user-space network stack, 0 if none runs
}

// Sandbox reports the version's confinement; nil when it runs unconfined.
func (s *Starter) Sandbox() *SandboxStatus {
	b := s.box
	if b == nil {
		return nil
	}
	st := &SandboxStatus{UID: b.uid, Network: ebb.NetworkNone}
	if b.outbound {
		st.Network = ebb.NetworkOutbound
	}
	b.mu.Lock()
	if b.ns != nil {
		st.PastaPID = b.ns.PastaPID()
	}
	b.mu.Unlock()
	return st
}

// boxedSpare is an exec or http instance whose sandbox was set up ahead of
// need: bwrap has made its namespaces and mounts as the function's uid,
// entered its cgroup, and waits to exec the function; its Runtime API
// listens (exec) or its port is reserved (http). Claiming it releases it,
// so a cold start pays for the function's own start only, as without a
// sandbox. It costs bwrap's few hundred KiB while it waits.
type boxedSpare struct {
	inst    *Instance
	release func() error
}

func (sp boxedSpare) pid() int { return sp.inst.Pid() }

func (sp boxedSpare) claim(id string) error {
	sp.inst.setAlias(id)
	sp.inst.started = time.Now() // init is what the claim waits for
	sp.inst.cold.Spare = true
	err := sp.release()
	sp.inst.spawned = time.Now()
	return err
}

func (sp boxedSpare) kill()                 { sp.inst.Kill() }
func (sp boxedSpare) done() <-chan struct{} { return sp.inst.done }

// boxSpares is the keeper of a sandboxed exec or http version's spare;
// begin starts an instance blocked before exec. Spares count against the
// node's warm budget (Config.Warm), like onnx spares.
func boxSpares(s *Starter, begin func(ctx context.Context, id string, block bool) (*Instance, func() error, error)) *keeper[boxedSpare] {
	var seq atomic.Uint64
	var b [3]byte
	rand.Read(b[:])
	idBase := fmt.Sprintf("%s-v%d-b%s-", s.fn.Spec.Name, s.fn.Version, hex.EncodeToString(b[:]))
	k := newKeeper(keeperConfig[boxedSpare]{
		keepAlive: spareKeepAlive(s),
		start: func(ctx context.Context) (boxedSpare, error) {
			ctx, cancel := context.WithTimeout(ctx, spareStartTimeout)
			defer cancel()
			inst, release, err := begin(ctx, idBase+strconv.FormatUint(seq.Add(1), 10), true)
			if err != nil {
				if ctx.Err() == nil {
					s.cfg.Logger.Warn("set up spare sandbox; cold starts of this version set up their own", "function", s.fn.Spec.Name, "version", s.fn.Version, "err", err)
				}
				return boxedSpare{}, err
			}
			return boxedSpare{inst: inst, release: release}, nil
		},
	})
	k.cfg.hold = s.cfg.Warm.newHolder(s.fn.Spec.Name, s.fn.Version, KindBoxSpare, func() uint64 { return sparePSS(k, s) }, nil, k.evict)
	k.cfg.hold.register()
	s.hold = k.cfg.hold
	return k
}

// claimOrBegin claims the spare sandbox as instance id when spares keeps one
// (refilling it soon after), else begins a new instance; either way the
// instance's process has been released and the caller waits for it.
func claimOrBegin(ctx context.Context, spares *keeper[boxedSpare], id string, begin func() (*Instance, error)) (*Instance, error) {
	if spares != nil {
		defer spares.refillSoon()
		if sp, ok := spares.take(ctx, id); ok {
			return sp.inst, nil
		}
	}
	return begin()
}

// spawnReleasable is Starter.spawnBlocked, with the block pipe closed once
// the process is gone if nobody released it (an unused spare, killed).
func spawnReleasable(ctx context.Context, s *Starter, inst *Instance, argv, env []string, extra []*os.File, block bool) (func() error, error) {
	var rel atomic.Pointer[func() error]
	if block {
		inst.onExit(func(error) {
			if r := rel.Load(); r != nil {
				(*r)()
			}
		})
	}
	release, err := s.spawnBlocked(ctx, inst, argv, env, extra, block)
	if err != nil {
		return nil, err
	}
	if release != nil {
		rel.Store(&release)
	}
	return release, nil
}

// functionPid is the host pid of the function's process in the tree ebb
// started as pid. Without a sandbox (boxed false) that is pid. Under one,
// pid is bwrap outside the namespaces, and its one child is the pid
// namespace's init: the function itself when it runs as init, else
// bwrap's reaper, whose first child (the lowest pid in the namespace; any
// others are orphans it adopted later) runs the function. 0 when gone.
func functionPid(pid int, boxed, init bool) int {
	if !boxed {
		return pid
	}
	p := firstChild(pid)
	if !init && p != 0 {
		p = firstChild(p)
	}
	return p
}

// firstChild is pid's child with the lowest pid in its own pid namespace
// (the one it forked first, under bwrap); 0 if it has none.
func firstChild(pid int) int {
	best, bestNS := 0, 0
	for _, c := range childPids(pid) {
		if ns := innerPid(c); ns > 0 && (best == 0 || ns < bestNS) {
			best, bestNS = c, ns
		}
	}
	return best
}

// innerPid is pid's pid in its innermost pid namespace (the last NSpid
// field of /proc/PID/status); 0 when it is gone.
func innerPid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.Atoi(f[len(f)-1])
				return n
			}
		}
	}
	return 0
}
