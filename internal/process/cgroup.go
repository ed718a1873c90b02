package process

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Cgroup modes, for Config.CgroupMode and Manager.CgroupMode.
const (
	ModeAuto = "auto"
	ModeV2   = "v2"
	ModeV1   = "v1"
	ModeNone = "none"
)

// cgroupRemoveTimeout bounds how long removing one cgroup keeps killing
// what is left in it and retrying; a task stuck in uninterruptible sleep
// (a dead NFS server) must not hold up an instance's Done forever.
const cgroupRemoveTimeout = 5 * time.Second

// v2Controller is the controller setupV2 needs and enables for instances:
// memory, whose limit is the point of a cgroup. Only TestCgroupV2's child
// changes it, on a kernel whose memory controller is bound to cgroup v1, to
// one the v2 hierarchy has (hugetlb), so that the rest of the v2 path runs
// on a real v2 hierarchy there.
var v2Controller = "memory"

// errLocked says another manager holds a directory this one needs to own.
var errLocked = errors.New("in use by another ebb process manager")

// cgroups is what NewManager found and made: the parent cgroup under which
// every instance gets its own, and what the kernel offers there.
type cgroups struct {
	mode string
	log  *slog.Logger

	// parent is the v2 parent cgroup, or the v1 memory parent.
	parent string
	// pidsParent is the v1 pids parent; "" when the pids controller is not
	// mounted or is used by another manager.
	pidsParent string
	// pidsMax is written to every instance's pids.max where pids are limited.
	pidsMax int

	v2Pids      bool // v2: the pids controller is enabled for instances
	hasKill     bool // v2: cgroup.kill exists (Linux 5.14)
	hasSwap     bool // v2 memory.swap.max, v1 memory.memsw.limit_in_bytes
	hasOOMGroup bool // v2: memory.oom.group exists

	// memMount and pidsMount are the v1 hierarchies, kept so that spawner
	// threads can find their own cgroups in them.
	memMount, pidsMount mount

	// noCloneInto is set once clone3(CLONE_INTO_CGROUP) turned out to be
	// unsupported (Linux < 5.7); processes are then moved after they start.
	noCloneInto atomic.Bool

	// locks are the open, flock'ed parent directories; closing releases them.
	locks []*os.File

	// mkdir makes an instance's cgroup directory; nil means os.Mkdir.
	// Tests of the limit-writing logic replace it, since a plain
	// directory does not grow control files the way cgroupfs does.
	mkdir func(dir string) error
}

func (c *cgroups) makeDir(dir string) error {
	if c.mkdir != nil {
		return c.mkdir(dir)
	}
	return os.Mkdir(dir, 0o755)
}

// setupCgroups prepares the parent cgroup for mode. In auto mode a failure
// is no error: it returns mode none and why cgroups could not be used.
func setupCgroups(cfg Config, log *slog.Logger) (c *cgroups, whyNone string, err error) {
	if cfg.CgroupMode == ModeNone {
		return &cgroups{mode: ModeNone, log: log}, "cgroups are disabled by configuration (cgroup mode none)", nil
	}
	mounts, self, err := readCgroupState()
	if err != nil {
		if cfg.CgroupMode != ModeAuto {
			return nil, "", err
		}
		return &cgroups{mode: ModeNone, log: log}, err.Error(), nil
	}
	switch cfg.CgroupMode {
	case ModeV2:
		c, err = setupV2(cfg, log, mounts, self)
		if err != nil {
			return nil, "", fmt.Errorf("set up cgroup v2: %w", err)
		}
		return c, "", nil
	case ModeV1:
		c, err = setupV1(cfg, log, mounts, self)
		if err != nil {
			return nil, "", fmt.Errorf("set up cgroup v1: %w", err)
		}
		return c, "", nil
	}
	c, err2 := setupV2(cfg, log, mounts, self)
	if err2 == nil {
		return c, "", nil
	}
	c, err1 := setupV1(cfg, log, mounts, self)
	if err1 == nil {
		return c, "", nil
	}
	if errors.Is(err2, errLocked) || errors.Is(err1, errLocked) {
		// Falling back to no cgroups would let two managers share (and
		// clean) the same Root; that is a configuration error.
		return nil, "", fmt.Errorf("set up cgroups: v2: %w; v1: %w", err2, err1)
	}
	return &cgroups{mode: ModeNone, log: log}, fmt.Sprintf("cgroup v2: %v; cgroup v1: %v", err2, err1), nil
}

func readCgroupState() ([]mount, procCgroups, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, procCgroups{}, fmt.Errorf("read mounts: %w", err)
	}
	mounts, err := parseMountinfo(f)
	f.Close()
	if err != nil {
		return nil, procCgroups{}, err
	}
	f, err = os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, procCgroups{}, fmt.Errorf("read own cgroup: %w", err)
	}
	self, err := parseProcCgroup(f)
	f.Close()
	return mounts, self, err
}

// setupV2 makes <own cgroup>/<CgroupName> on the unified hierarchy with the
// memory (and pids) controller enabled for its children.
func setupV2(cfg Config, log *slog.Logger, mounts []mount, self procCgroups) (*cgroups, error) {
	mnt, ok := findV2Mount(mounts)
	if !ok {
		return nil, errors.New("no cgroup2 file system is mounted")
	}
	if !self.hasUnified {
		return nil, errors.New("this process has no cgroup v2 membership")
	}
	own := self.unified
	// A process already in this name's supervisor leaf was moved there by
	// an earlier manager of the same name: a restarted ebb whose shell the
	// first one moved along, or a second manager in one process. Its base
	// is the cgroup above, where that manager's parent cgroup (and what a
	// killed predecessor left in it) is.
	if filepath.Base(own) == cfg.CgroupName+".supervisor" {
		own = filepath.Dir(own)
	}
	base := cgroupDir(mnt, own)
	avail, err := readWords(filepath.Join(base, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("read controllers: %w", err)
	}
	if !contains(avail, v2Controller) {
		return nil, fmt.Errorf("the %s controller is not available in %s", v2Controller, base)
	}
	if err := enableController(base, v2Controller); err != nil {
		if !isBusy(err) {
			return nil, err
		}
		// A non-root cgroup that has processes cannot hand controllers
		// to children ("no internal processes"). ebb's own cgroup is
		// normally delegated to it (systemd Delegate=yes, a container),
		// so its processes move to a leaf beside the parent, as systemd
		// asks delegated services to do.
		if err := evacuate(log, base, filepath.Join(base, cfg.CgroupName+".supervisor")); err != nil {
			return nil, err
		}
		if err := enableController(base, v2Controller); err != nil {
			return nil, err
		}
	}
	if contains(avail, "pids") {
		if err := enableController(base, "pids"); err != nil {
			log.Info("process pids are not limited", "reason", err)
		}
	}
	parent := filepath.Join(base, cfg.CgroupName)
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create parent cgroup: %w", err)
	}
	lock, err := lockDir(parent)
	if err != nil {
		return nil, fmt.Errorf("lock parent cgroup %s: %w", parent, err)
	}
	c := &cgroups{mode: ModeV2, log: log, parent: parent, pidsMax: cfg.PidsMax, locks: []*os.File{lock}}
	if err := enableController(parent, v2Controller); err != nil {
		c.close()
		return nil, err
	}
	if ctrls, _ := readWords(filepath.Join(parent, "cgroup.controllers")); contains(ctrls, "pids") {
		c.v2Pids = enableController(parent, "pids") == nil
	}
	c.hasKill = fileExists(filepath.Join(parent, "cgroup.kill"))
	c.hasSwap = fileExists(filepath.Join(parent, "memory.swap.max"))
	c.hasOOMGroup = fileExists(filepath.Join(parent, "memory.oom.group"))
	c.cleanLeftovers(parent)
	return c, nil
}

// enableController adds ctrl to dir's cgroup.subtree_control unless it is
// there already.
func enableController(dir, ctrl string) error {
	path := filepath.Join(dir, "cgroup.subtree_control")
	on, err := readWords(path)
	if err != nil {
		return fmt.Errorf("read subtree controllers: %w", err)
	}
	if contains(on, ctrl) {
		return nil
	}
	return writeFile(path, "+"+ctrl)
}

// evacuate moves every process of cgroup from into the leaf cgroup to.
func evacuate(log *slog.Logger, from, to string) error {
	if err := os.Mkdir(to, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create supervisor cgroup: %w", err)
	}
	moved := 0
	// Processes may fork while they are moved; a few passes catch those.
	for range 5 {
		pids, err := readPids(filepath.Join(from, "cgroup.procs"))
		if err != nil {
			return fmt.Errorf("list processes of %s: %w", from, err)
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			// A process that exited meanwhile (ESRCH) is no obstacle.
			if err := writeFile(filepath.Join(to, "cgroup.procs"), strconv.Itoa(pid)); err == nil {
				moved++
			}
		}
	}
	log.Info("moved processes out of ebb's cgroup so that it can delegate controllers", "from", from, "to", to, "processes", moved)
	return nil
}

// setupV1 makes <own cgroup>/<CgroupName> in the v1 memory hierarchy and,
// when it is mounted, in the pids hierarchy.
func setupV1(cfg Config, log *slog.Logger, mounts []mount, self procCgroups) (*cgroups, error) {
	mm, ok := findV1Mount(mounts, "memory")
	if !ok {
		return nil, errors.New("the memory controller is not mounted")
	}
	parent := filepath.Join(cgroupDir(mm, self.v1["memory"]), cfg.CgroupName)
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create parent cgroup: %w", err)
	}
	if !fileExists(filepath.Join(parent, "memory.limit_in_bytes")) {
		return nil, fmt.Errorf("%s has no memory.limit_in_bytes", parent)
	}
	lock, err := lockDir(parent)
	if err != nil {
		return nil, fmt.Errorf("lock parent cgroup %s: %w", parent, err)
	}
	c := &cgroups{mode: ModeV1, log: log, parent: parent, pidsMax: cfg.PidsMax, memMount: mm, locks: []*os.File{lock}}
	c.hasSwap = fileExists(filepath.Join(parent, "memory.memsw.limit_in_bytes"))
	c.cleanLeftovers(parent)

	pm, ok := findV1Mount(mounts, "pids")
	if !ok {
		log.Info("process pids are not limited: the pids controller is not mounted")
		return c, nil
	}
	pidsParent := filepath.Join(cgroupDir(pm, self.v1["pids"]), cfg.CgroupName)
	if err := os.Mkdir(pidsParent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		log.Info("process pids are not limited", "reason", err)
		return c, nil
	}
	plock, err := lockDir(pidsParent)
	if err != nil {
		log.Info("process pids are not limited", "reason", fmt.Errorf("lock %s: %w", pidsParent, err))
		return c, nil
	}
	c.locks = append(c.locks, plock)
	c.pidsParent, c.pidsMount = pidsParent, pm
	c.cleanLeftovers(pidsParent)
	return c, nil
}

// lockDir takes an exclusive flock on dir, so that two managers never clean
// up after each other's live instances.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("flock: %w", err)
	}
	return f, nil
}

// cleanLeftovers kills every process in the child cgroups of parent and
// removes them: what a previous run that was killed left behind. The caller
// holds parent's lock, so nothing there belongs to a live manager.
func (c *cgroups) cleanLeftovers(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		c.log.Warn("cannot list leftover cgroups", "dir", parent, "err", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if err := removeCgroup(dir, c.hasKill, cgroupRemoveTimeout); err != nil {
			c.log.Warn("cannot remove leftover cgroup", "dir", dir, "err", err)
			continue
		}
		c.log.Info("removed leftover cgroup of a previous run", "dir", dir)
	}
}

// close removes the parent cgroups if they are empty and releases them.
func (c *cgroups) close() error {
	var errs []error
	for _, dir := range []string{c.parent, c.pidsParent} {
		if dir == "" {
			continue
		}
		if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
			if isBusy(err) {
				c.log.Warn("parent cgroup is not empty; leaving it", "dir", dir)
				continue
			}
			errs = append(errs, fmt.Errorf("remove parent cgroup %s: %w", dir, err))
		}
	}
	for _, f := range c.locks {
		f.Close()
	}
	c.locks = nil
	return errors.Join(errs...)
}

// removeCgroup kills what is in dir and below, and removes them, retrying
// while the kernel still counts exiting tasks (EBUSY).
func removeCgroup(dir string, hasKill bool, timeout time.Duration) error {
	// The common case: the tree was killed and has exited already.
	err := syscall.Rmdir(dir)
	if err == nil || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if !isBusy(err) {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(timeout)
	backoff := 100 * time.Microsecond
	for {
		// An instance running as root may have made cgroups of its own.
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				_ = removeCgroup(filepath.Join(dir, e.Name()), hasKill, time.Until(deadline))
			}
		}
		killCgroup(dir, hasKill)
		err = syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// killCgroup sends SIGKILL to every process in dir: at once through
// cgroup.kill where the kernel has it, else one by one. A process forked
// during the loop is caught by the caller's next round.
func killCgroup(dir string, hasKill bool) {
	if hasKill && writeFile(filepath.Join(dir, "cgroup.kill"), "1") == nil {
		return
	}
	pids, _ := readPids(filepath.Join(dir, "cgroup.procs"))
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// instanceCgroup is one instance's cgroup (v2), or its memory and pids
// cgroups (v1).
type instanceCgroup struct {
	c       *cgroups
	dir     string // v2: the cgroup; v1: the memory cgroup
	pidsDir string // v1: the pids cgroup; "" without one
}

// create makes the cgroup for instance id with its limits. For v1, pids.max
// starts one above the limit, room for the spawner thread that visits to
// fork the process; limitPidsV1 lowers it before the thread leaves.
func (c *cgroups) create(id string, memBytes int64) (_ *instanceCgroup, err error) {
	ic := &instanceCgroup{c: c, dir: filepath.Join(c.parent, id)}
	if err := c.makeDir(ic.dir); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	defer func() {
		if err != nil {
			ic.remove()
		}
	}()
	switch c.mode {
	case ModeV2:
		if memBytes > 0 {
			if err := writeFile(filepath.Join(ic.dir, "memory.max"), strconv.FormatInt(memBytes, 10)); err != nil {
				return nil, err
			}
			// Without this an instance over its limit would swap
			// instead of being stopped, and run at disk speed.
			if c.hasSwap {
				if err := writeFile(filepath.Join(ic.dir, "memory.swap.max"), "0"); err != nil {
					return nil, err
				}
			}
		}
		// An instance whose helper process the OOM killer picked is
		// broken anyway; kill all of it so that it is replaced whole.
		if c.hasOOMGroup {
			if err := writeFile(filepath.Join(ic.dir, "memory.oom.group"), "1"); err != nil {
				return nil, err
			}
		}
		if c.v2Pids {
			if err := writeFile(filepath.Join(ic.dir, "pids.max"), strconv.Itoa(c.pidsMax)); err != nil {
				return nil, err
			}
		}
	case ModeV1:
		if memBytes > 0 {
			v := strconv.FormatInt(memBytes, 10)
			if err := writeFile(filepath.Join(ic.dir, "memory.limit_in_bytes"), v); err != nil {
				return nil, err
			}
			// memsw is memory+swap; equal to the limit means no swap.
			if c.hasSwap {
				if err := writeFile(filepath.Join(ic.dir, "memory.memsw.limit_in_bytes"), v); err != nil {
					return nil, err
				}
			}
		}
		if c.pidsParent != "" {
			ic.pidsDir = filepath.Join(c.pidsParent, filepath.Base(ic.dir))
			if err := c.makeDir(ic.pidsDir); err != nil {
				ic.pidsDir = ""
				return nil, fmt.Errorf("create pids cgroup: %w", err)
			}
			if err := writeFile(filepath.Join(ic.pidsDir, "pids.max"), strconv.Itoa(c.pidsMax+1)); err != nil {
				return nil, err
			}
		}
	}
	return ic, nil
}

// openDir opens the v2 cgroup for clone3(CLONE_INTO_CGROUP).
func (ic *instanceCgroup) openDir() (*os.File, error) {
	return os.OpenFile(ic.dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
}

// enterThread moves OS thread tid into the instance's v1 cgroups, so that
// a process it forks is born inside them: v1 has no clone-into-cgroup, and
// moving the pid after the start would let a fast child escape.
func (ic *instanceCgroup) enterThread(tid int) error {
	t := strconv.Itoa(tid)
	if err := writeFile(filepath.Join(ic.dir, "tasks"), t); err != nil {
		return err
	}
	if ic.pidsDir != "" {
		return writeFile(filepath.Join(ic.pidsDir, "tasks"), t)
	}
	return nil
}

// attach moves a started process into the instance's cgroups; the fallback
// where it could not be started inside them.
func (ic *instanceCgroup) attach(pid int) error {
	p := strconv.Itoa(pid)
	if ic.c.mode == ModeV1 {
		// The process may have allocated before it was moved; its
		// charges must follow it to be limited.
		_ = writeFile(filepath.Join(ic.dir, "memory.move_charge_at_immigrate"), "1")
	}
	if err := writeFile(filepath.Join(ic.dir, "cgroup.procs"), p); err != nil {
		return err
	}
	if ic.pidsDir != "" {
		return writeFile(filepath.Join(ic.pidsDir, "cgroup.procs"), p)
	}
	return nil
}

// limitPidsV1 sets pids.max to the limit once the process is in. With the
// spawner thread still inside, the process can then have one task fewer
// than the limit, and exactly the limit once the thread has left; lowering
// it only after the thread left would let a fast process fork without
// bound meanwhile.
func (ic *instanceCgroup) limitPidsV1() error {
	if ic.pidsDir == "" {
		return nil
	}
	return writeFile(filepath.Join(ic.pidsDir, "pids.max"), strconv.Itoa(ic.c.pidsMax))
}

// kill sends SIGKILL to every process in the instance's cgroups.
func (ic *instanceCgroup) kill() {
	killCgroup(ic.dir, ic.c.hasKill)
	if ic.pidsDir != "" {
		killCgroup(ic.pidsDir, false)
	}
}

// oomKilled says whether the OOM killer killed a process in the cgroup.
// Kernels before 4.13 have no v1 oom_kill counter; there a hit limit plus a
// SIGKILL of the main process is taken as the sign.
func (ic *instanceCgroup) oomKilled(mainKilled bool) bool {
	if ic.c.mode == ModeV2 {
		n, ok, err := readKeyed(filepath.Join(ic.dir, "memory.events"), "oom_kill")
		return err == nil && ok && n > 0
	}
	n, ok, err := readKeyed(filepath.Join(ic.dir, "memory.oom_control"), "oom_kill")
	if err == nil && ok {
		return n > 0
	}
	if !mainKilled {
		return false
	}
	fails, err := readUint(filepath.Join(ic.dir, "memory.failcnt"))
	return err == nil && fails > 0
}

// peak is the cgroup's peak memory use in bytes, if the kernel records it
// (v2 memory.peak needs Linux 5.19).
func (ic *instanceCgroup) peak() (uint64, bool) {
	name := "memory.max_usage_in_bytes"
	if ic.c.mode == ModeV2 {
		name = "memory.peak"
	}
	v, err := readUint(filepath.Join(ic.dir, name))
	return v, err == nil
}

// remove kills what is left and removes the cgroups.
func (ic *instanceCgroup) remove() error {
	err := removeCgroup(ic.dir, ic.c.hasKill, cgroupRemoveTimeout)
	if ic.pidsDir != "" {
		err = errors.Join(err, removeCgroup(ic.pidsDir, false, cgroupRemoveTimeout))
	}
	return err
}

// threadCgroups returns the v1 memory and pids cgroup directories of the
// calling OS thread, where a spawner thread returns after each fork.
func (c *cgroups) threadCgroups() (mem, pids string, err error) {
	f, err := os.Open("/proc/thread-self/cgroup")
	if err != nil {
		return "", "", err
	}
	pc, err := parseProcCgroup(f)
	f.Close()
	if err != nil {
		return "", "", err
	}
	p, ok := pc.v1["memory"]
	if !ok {
		return "", "", errors.New("thread has no memory cgroup")
	}
	mem = cgroupDir(c.memMount, p)
	if c.pidsParent != "" {
		p, ok := pc.v1["pids"]
		if !ok {
			return "", "", errors.New("thread has no pids cgroup")
		}
		pids = cgroupDir(c.pidsMount, p)
	}
	if strings.HasPrefix(mem, c.parent+"/") || (pids != "" && strings.HasPrefix(pids, c.pidsParent+"/")) {
		return "", "", errors.New("thread is inside an instance cgroup")
	}
	return mem, pids, nil
}
