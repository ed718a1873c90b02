// Package process starts, limits, watches and stops the OS processes that
// ebb instances run in. Every instance, of any runtime, is one process tree:
// started in its own process group and, where the kernel allows, born inside
// its own cgroup with a memory and pids limit, given a private working
// directory (with the function's code linked in) and a scratch directory,
// and torn down completely, cgroup and directories included, when it ends.
//
// The package is Linux-only: it relies on process groups, cgroups v1 or v2,
// pidfds and the parent-death signal.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ebb-run/ebb"
)

// Defaults for Config.
const (
	DefaultCgroupName   = "ebb"
	DefaultPidsMax      = 1024
	DefaultDrainTimeout = time.Second
)

// maxPids is the kernel's PID_MAX_LIMIT on 64-bit machines; pids.max
// refuses more.
const maxPids = 1 << 22

// spawners is how many OS threads fork instance processes. Each is locked
// for the manager's lifetime (see spawnLoop); more than one lets a burst of
// cold starts overlap their exec.
const spawners = 4

// Config configures a Manager.
type Config struct {
	// Root is the directory under which each instance gets Root/<id>/.
	// Required. Only one manager may use a Root at a time.
	Root string
	// CgroupName names ebb's parent cgroup, created inside the cgroup ebb
	// runs in. Default "ebb". It must be unique among the ebb processes
	// of a host: a manager kills whatever it finds below its parent.
	CgroupName string
	// CgroupMode is "auto" (default: v2 if usable, else v1, else none),
	// "v2", "v1" (NewManager fails if that cannot be set up) or "none"
	// (no memory or pids limits).
	CgroupMode string
	// PidsMax limits the number of tasks of one instance where the pids
	// controller is available. 0 means DefaultPidsMax.
	PidsMax int
	// DrainTimeout bounds how long an instance's output is still read
	// after its process tree was killed. Only a process that escaped both
	// the process group and the cgroup can keep the pipes open that long.
	// 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Logger receives the manager's logs; nil discards them.
	Logger *slog.Logger
}

var (
	idRE         = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	cgroupNameRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$`)
)

func validID(id string) bool { return idRE.MatchString(id) }

// Validate reports the first invalid field of c; zero values stand for
// their defaults.
func (c *Config) Validate() error {
	switch {
	case c.Root == "":
		return errors.New("process config: Root is required")
	case c.CgroupName != "" && !cgroupNameRE.MatchString(c.CgroupName):
		return fmt.Errorf("process config: CgroupName %q must be 1-128 characters of A-Z, a-z, 0-9, '_', '-' and '.', not starting with '.'", c.CgroupName)
	case c.PidsMax < 0 || c.PidsMax > maxPids:
		return fmt.Errorf("process config: PidsMax %d is out of range (0 to %d)", c.PidsMax, maxPids)
	case c.DrainTimeout < 0:
		return fmt.Errorf("process config: DrainTimeout %s is negative", c.DrainTimeout)
	}
	switch c.CgroupMode {
	case "", ModeAuto, ModeV2, ModeV1, ModeNone:
	default:
		return fmt.Errorf("process config: CgroupMode %q is not auto, v2, v1 or none", c.CgroupMode)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.CgroupName == "" {
		c.CgroupName = DefaultCgroupName
	}
	if c.CgroupMode == "" {
		c.CgroupMode = ModeAuto
	}
	if c.PidsMax == 0 {
		c.PidsMax = DefaultPidsMax
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Manager starts instance processes and owns them until they are done.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	root     string
	rootLock *os.File
	cg       *cgroups
	// devNull is handed to every instance as stdin, and as stdout or
	// stderr when nobody reads them; opened once instead of per start.
	devNull *os.File
	// hostNet is ebb's own network namespace, which a spawner thread
	// returns to after starting a process in an instance's (Spec.NetNS);
	// nil when it cannot be opened, and then Spec.NetNS is refused.
	hostNet *os.File

	spawnc    chan *spawnRequest
	spawnStop chan struct{}
	spawnWG   sync.WaitGroup

	// starts counts Start calls between reserving an id and registering
	// the process, so that Close can wait for them.
	starts sync.WaitGroup

	mu sync.Mutex // guards procs and closed
	// procs holds every live process by id; a nil value reserves the id
	// of a Start in progress.
	procs  map[string]*Process
	closed bool
}

// NewManager sets up the parent cgroup (see Config.CgroupMode), cleans up
// what a previous run that was killed left behind (processes still in
// child cgroups of the parent, those cgroups, stale Root/<id> directories),
// and starts the threads that fork instances. If no cgroup can be used in
// auto mode it still works, and logs one warning saying that memory limits
// are not enforced and why.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("resolve root: %w", err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	rootLock, err := lockDir(root)
	if err != nil {
		return nil, fmt.Errorf("lock root %s: %w", root, err)
	}
	cg, whyNone, err := setupCgroups(cfg, cfg.Logger)
	if err != nil {
		rootLock.Close()
		return nil, err
	}
	if cg.mode == ModeNone {
		cfg.Logger.Warn("memory limits are not enforced: "+whyNone, "cgroup_mode", ModeNone)
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		cg.close()
		rootLock.Close()
		return nil, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger,
		root:      root,
		rootLock:  rootLock,
		cg:        cg,
		devNull:   devNull,
		hostNet:   openHostNetns(cfg.Logger),
		spawnc:    make(chan *spawnRequest),
		spawnStop: make(chan struct{}),
		procs:     map[string]*Process{},
	}
	m.removeStaleDirs()
	for range spawners {
		m.spawnWG.Add(1)
		go m.spawnLoop()
	}
	m.log.Info("process manager ready", "root", root, "cgroup_mode", cg.mode, "cgroup", cg.parent)
	return m, nil
}

// removeStaleDirs removes the instance directories of a previous run. It
// runs after the cgroup cleanup, once their processes are gone.
func (m *Manager) removeStaleDirs() {
	entries, err := os.ReadDir(m.root)
	if err != nil {
		m.log.Warn("cannot list root for stale instance directories", "root", m.root, "err", err)
		return
	}
	for _, e := range entries {
		if !isStaleInstanceDir(m.root, e) {
			continue
		}
		dir := filepath.Join(m.root, e.Name())
		if err := removeTree(dir); err != nil {
			m.log.Warn("cannot remove stale instance directory", "dir", dir, "err", err)
			continue
		}
		m.log.Info("removed stale instance directory", "dir", dir)
	}
}

// CgroupMode is the cgroup mode in effect: "v2", "v1" or "none".
func (m *Manager) CgroupMode() string { return m.cg.mode }

// Close refuses new starts, kills every process still running, waits for
// them to be done, stops the spawner threads and removes the parent cgroup
// if it is empty. Callers that want a graceful end Stop their processes
// first.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()

	m.starts.Wait()
	m.mu.Lock()
	live := make([]*Process, 0, len(m.procs))
	for _, p := range m.procs {
		live = append(live, p)
	}
	m.mu.Unlock()
	for _, p := range live {
		p.Kill()
	}
	for _, p := range live {
		<-p.done
	}
	if len(live) > 0 {
		m.log.Info("killed processes still running at close", "count", len(live))
	}

	// Only now may the spawner threads exit: their exit would deliver
	// the parent-death signal to the processes they forked.
	close(m.spawnStop)
	m.spawnWG.Wait()

	err := m.cg.close()
	m.devNull.Close()
	if m.hostNet != nil {
		m.hostNet.Close()
	}
	m.rootLock.Close()
	return err
}

// Spec describes one instance process.
type Spec struct {
	// ID is the unique instance id, [A-Za-z0-9_-]{1,128}; it names the
	// instance's directory and cgroup.
	ID string
	// Path is the executable. A name without a slash is looked up in
	// ebb's PATH; a relative path with a slash is resolved in the work
	// directory, where the code is linked ("./bootstrap").
	Path string
	// Args are argv[1:]; argv[0] is Path.
	Args []string
	// Env is the whole environment: ebb's own is not inherited. TMPDIR,
	// TMP and TEMP (the scratch directory) and HOME (the work directory)
	// are appended unless Env sets them.
	Env []string
	// CodeDir is the function's unpacked bundle. Each of its top-level
	// entries is linked into the work directory. Empty means no code.
	CodeDir string
	// MemoryMiB is the memory limit; 0 means none.
	MemoryMiB int
	// Stdout and Stderr are called once per output line, without the
	// newline; lines longer than MaxLineBytes arrive in pieces. Each is
	// called from one goroutine owned by the Process, in order, and the
	// slice is only valid during the call. They should return quickly:
	// the process blocks while its pipe is full. nil discards the stream.
	Stdout, Stderr func(line []byte)
	// ExtraFiles become file descriptors 3, 4, … of the process. The
	// caller keeps ownership and may close them once Start returned.
	ExtraFiles []*os.File
	// NoDirs says the process brings its own working and scratch
	// directories (a sandbox mounts the code and a private /tmp): no
	// Root/<id> directories are made, the process starts in "/" and Env
	// gets no TMPDIR or HOME.
	NoDirs bool
	// Credential, when set, is the identity the process runs as (a
	// sandboxed function's own uid). nil keeps ebb's.
	Credential *syscall.Credential
	// NetNS, when set, is a network namespace (an open /proc/…/ns/net
	// file) the process is born in: the spawner thread enters it for the
	// fork and leaves it after. The caller keeps ownership.
	NetNS *os.File
}

func (s *Spec) validate() error {
	switch {
	case !validID(s.ID):
		return fmt.Errorf("invalid instance id %q: want 1-128 characters of A-Z, a-z, 0-9, '_' and '-'", s.ID)
	case s.Path == "":
		return errors.New("no executable path")
	case s.MemoryMiB < 0:
		return fmt.Errorf("memory limit %d MiB is negative", s.MemoryMiB)
	case s.MemoryMiB > ebb.MaxMemoryMiB:
		return fmt.Errorf("memory limit %d MiB is more than %d", s.MemoryMiB, ebb.MaxMemoryMiB)
	}
	return nil
}

// Start starts the process described by spec and returns once it runs (its
// exec succeeded). ctx bounds the wait for a free spawner thread; the
// process itself lives until it exits or is stopped, or the manager closes.
func (m *Manager) Start(ctx context.Context, spec Spec) (*Process, error) {
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("start instance: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, ebb.ErrClosed)
	}
	if _, dup := m.procs[spec.ID]; dup {
		m.mu.Unlock()
		return nil, fmt.Errorf("start instance %s: id is in use", spec.ID)
	}
	m.procs[spec.ID] = nil
	m.starts.Add(1)
	m.mu.Unlock()
	defer m.starts.Done()

	p, err := m.start(ctx, &spec)
	m.mu.Lock()
	if err != nil {
		delete(m.procs, spec.ID)
	} else {
		m.procs[spec.ID] = p
	}
	m.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	go p.wait()
	return p, nil
}

// start does Start's work once the id is reserved. On error it leaves
// nothing behind.
func (m *Manager) start(ctx context.Context, spec *Spec) (_ *Process, err error) {
	path := spec.Path
	if !strings.Contains(path, "/") {
		if path, err = exec.LookPath(path); err != nil {
			return nil, err
		}
	}
	codeDir := spec.CodeDir
	if codeDir != "" {
		if codeDir, err = filepath.Abs(codeDir); err != nil {
			return nil, fmt.Errorf("resolve code directory: %w", err)
		}
	}
	p := &Process{
		m:          m,
		id:         spec.ID,
		dir:        filepath.Join(m.root, spec.ID),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}, 2),
	}
	if spec.NoDirs {
		p.dir = ""
	} else {
		p.workDir = filepath.Join(p.dir, workDirName)
		p.scratchDir = filepath.Join(p.dir, scratchDirName)
	}

	// Everything made from here on is undone if the start fails.
	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
		if err == nil {
			return
		}
		for _, f := range []*os.File{p.stdout, p.stderr} {
			if f != nil {
				f.Close()
			}
		}
		if p.cg != nil {
			if rerr := p.cg.remove(); rerr != nil {
				m.log.Warn("cannot remove cgroup of failed start", "id", p.id, "err", rerr)
			}
		}
		if p.dir != "" {
			if rerr := removeTree(p.dir); rerr != nil {
				m.log.Warn("cannot remove directory of failed start", "id", p.id, "err", rerr)
			}
		}
	}()
	if p.dir != "" {
		if err := makeInstanceDirs(p.dir, codeDir); err != nil {
			if errors.Is(err, fs.ErrExist) {
				// A directory whose removal failed before: keep it
				// for a look rather than delete what may still be in
				// use.
				p.dir = ""
			}
			return nil, err
		}
	}
	if m.cg.mode != ModeNone {
		if p.cg, err = m.cg.create(spec.ID, int64(spec.MemoryMiB)<<20); err != nil {
			return nil, err
		}
	}

	files := make([]*os.File, 3, 3+len(spec.ExtraFiles))
	files[0], files[1], files[2] = m.devNull, m.devNull, m.devNull
	if spec.Stdout != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create stdout pipe: %w", err)
		}
		p.stdout, files[1] = r, w
		closers = append(closers, w)
	}
	if spec.Stderr != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create stderr pipe: %w", err)
		}
		p.stderr, files[2] = r, w
		closers = append(closers, w)
	}
	files = append(files, spec.ExtraFiles...)

	dir, env := p.workDir, instanceEnv(spec.Env, p.workDir, p.scratchDir)
	if spec.NoDirs {
		dir, env = "/", spec.Env
	}
	req := &spawnRequest{
		path: path,
		argv: append([]string{spec.Path}, spec.Args...),
		attr: &os.ProcAttr{
			Dir:   dir,
			Env:   env,
			Files: files,
			Sys: &syscall.SysProcAttr{
				// Its own group, so that signals reach its children
				// and not ebb.
				Setpgid: true,
				// If ebb dies the instance must not live on
				// unsupervised; see spawnLoop for the thread. Go
				// sets it after the credentials change, which would
				// otherwise clear it.
				Pdeathsig:  syscall.SIGKILL,
				Credential: spec.Credential,
			},
		},
		cg:    p.cg,
		netns: spec.NetNS,
		reply: make(chan spawnResult, 1),
	}
	if p.cg != nil && m.cg.mode == ModeV2 && !m.cg.noCloneInto.Load() {
		fd, err := p.cg.openDir()
		if err != nil {
			return nil, fmt.Errorf("open cgroup: %w", err)
		}
		closers = append(closers, fd)
		req.attr.Sys.UseCgroupFD = true
		req.attr.Sys.CgroupFD = int(fd.Fd())
	}
	select {
	case m.spawnc <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := <-req.reply
	if res.err != nil {
		return nil, res.err
	}
	p.proc, p.pid = res.proc, res.proc.Pid
	if p.pidfd, err = openPidfd(p.pid); err != nil {
		// Waiting falls back to a blocking waitid; only older kernels
		// (before 5.3) get here.
		m.log.Debug("no pidfd; waiting with a blocked thread", "id", p.id, "err", err)
		p.pidfd = nil
		err = nil
	}
	for i, r := range []struct {
		f  *os.File
		fn func([]byte)
	}{{p.stdout, spec.Stdout}, {p.stderr, spec.Stderr}} {
		if r.f == nil {
			continue
		}
		p.readers++
		p.out[i].f = r.f
		go func() {
			defer func() { p.readerDone <- struct{}{} }()
			defer p.out[i].ended()
			readLines(r.f, r.fn, &p.out[i])
		}()
	}
	return p, nil
}

// instanceEnv is env plus the scratch and home variables it does not set
// (none without directories).
func instanceEnv(env []string, work, scratch string) []string {
	if work == "" {
		return env
	}
	out := make([]string, len(env), len(env)+4)
	copy(out, env)
	set := func(key, value string) {
		for _, kv := range env {
			if strings.HasPrefix(kv, key) && len(kv) > len(key) && kv[len(key)] == '=' {
				return
			}
		}
		out = append(out, key+"="+value)
	}
	set("TMPDIR", scratch)
	set("TMP", scratch)
	set("TEMP", scratch)
	set("HOME", work)
	return out
}

// spawnRequest asks a spawner thread to fork and exec one process.
type spawnRequest struct {
	path  string
	argv  []string
	attr  *os.ProcAttr
	cg    *instanceCgroup // nil without cgroups
	netns *os.File        // the network namespace to be born in; nil: ebb's
	reply chan spawnResult
}

type spawnResult struct {
	proc *os.Process
	err  error
}

// spawnLoop runs a spawner: a goroutine locked to its OS thread for the
// manager's whole life. The parent-death signal fires when the thread that
// forked a process exits, not when ebb does, and the Go runtime ends a
// thread whenever a goroutine exits while locked to it; a process forked
// from an arbitrary thread could therefore be killed by unrelated code.
// Close stops the spawners only after every process is gone.
func (m *Manager) spawnLoop() {
	defer m.spawnWG.Done()
	runtime.LockOSThread()
	// Deliberately never unlocked: the thread exits with this goroutine.
	st := spawnThread{tid: syscall.Gettid(), host: m.hostNet}
	if m.cg.mode == ModeV1 {
		st.setupV1(m)
	}
	for {
		select {
		case req := <-m.spawnc:
			req.reply <- st.spawn(m, req)
		case <-m.spawnStop:
			return
		}
	}
}

// spawnThread is the state of one spawner's OS thread.
type spawnThread struct {
	tid int
	// homeMem and homePids are the v1 cgroups the thread returns to after
	// visiting an instance's; homeMem == "" means it does not visit and
	// processes are moved after they start instead.
	homeMem, homePids string
	// host is ebb's own network namespace (nil if it could not be
	// opened: then no spawn may ask for another); away says the thread
	// is not in it (it entered an instance's and could not leave).
	host *os.File
	away bool
}

// setupV1 finds the thread's own cgroups and checks that it may move
// itself, by moving itself where it already is.
func (st *spawnThread) setupV1(m *Manager) {
	mem, pids, err := m.cg.threadCgroups()
	if err == nil {
		err = st.moveTo(mem, pids)
	}
	if err != nil {
		m.log.Info("spawner thread cannot enter instance cgroups; moving processes after start instead", "err", err)
		return
	}
	st.homeMem, st.homePids = mem, pids
}

func (st *spawnThread) moveTo(mem, pids string) error {
	t := fmt.Sprint(st.tid)
	if err := writeFile(filepath.Join(mem, "tasks"), t); err != nil {
		return err
	}
	if pids != "" {
		return writeFile(filepath.Join(pids, "tasks"), t)
	}
	return nil
}

// goHome moves the thread back to its own cgroups after a visit.
func (st *spawnThread) goHome(m *Manager) {
	if err := st.moveTo(st.homeMem, st.homePids); err != nil {
		// The thread now keeps an instance cgroup busy and would put
		// its next child there; it stops visiting.
		m.log.Error("spawner thread cannot leave instance cgroup", "err", err)
		st.homeMem, st.homePids = "", ""
	}
}

// spawn forks and execs req on this thread, inside req.cg.
func (st *spawnThread) spawn(m *Manager, req *spawnRequest) spawnResult {
	cg := req.cg
	entered := false
	if cg != nil && m.cg.mode == ModeV1 && st.homeMem != "" {
		if err := cg.enterThread(st.tid); err != nil {
			m.log.Warn("cannot enter instance cgroup; moving the process after start", "err", err)
			// It may have entered the memory cgroup but not the
			// pids one.
			st.goHome(m)
		} else {
			entered = true
		}
	}
	if req.netns != nil || st.away {
		target := req.netns
		if target == nil {
			target = st.host
		}
		if err := st.setns(target); err != nil {
			if entered {
				st.goHome(m)
			}
			return spawnResult{err: err}
		}
		defer st.leaveNetns(m)
	}
	proc, err := os.StartProcess(req.path, req.argv, req.attr)
	if err != nil && req.attr.Sys.UseCgroupFD && (errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.E2BIG)) {
		// clone3 or CLONE_INTO_CGROUP is too new for this kernel.
		m.cg.noCloneInto.Store(true)
		m.log.Info("kernel cannot start processes inside a cgroup; moving them after start", "err", err)
		req.attr.Sys.UseCgroupFD = false
		proc, err = os.StartProcess(req.path, req.argv, req.attr)
	}
	var aerr error
	if entered {
		// The limit goes in while the thread still holds its place in
		// the pids cgroup (see limitPidsV1).
		if err == nil {
			aerr = cg.limitPidsV1()
		}
		st.goHome(m)
	}
	if err != nil {
		return spawnResult{err: err}
	}
	if cg != nil {
		if !entered && !req.attr.Sys.UseCgroupFD {
			aerr = cg.attach(proc.Pid)
			if aerr == nil && m.cg.mode == ModeV1 {
				aerr = cg.limitPidsV1()
			}
		}
		if aerr != nil {
			_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
			_ = proc.Kill()
			_, _ = proc.Wait()
			return spawnResult{err: fmt.Errorf("put process in its cgroup: %w", aerr)}
		}
	}
	return spawnResult{proc: proc}
}
