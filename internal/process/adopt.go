package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"syscall"
	"time"
	"unsafe"

	"github.com/ebb-run/ebb"
)

// exitStatusWait bounds how long an adopted process's Done waits, after the
// process exited, for its real parent to report the exit status. A parent
// that died meanwhile never will; the status is then unknown.
const exitStatusWait = 2 * time.Second

// AdoptSpec describes an instance whose process is forked by someone else
// (a zygote): the manager prepares its directories, cgroup and output pipes,
// then adopts the pid it is given.
type AdoptSpec struct {
	// ID is the unique instance id, as in Spec.
	ID string
	// CodeDir is linked into the work directory, as in Spec.
	CodeDir string
	// MemoryMiB is the memory limit; 0 means none.
	MemoryMiB int
	// Stdout and Stderr are called per output line, as in Spec.
	Stdout, Stderr func(line []byte)
	// NoDirs says the process has its own directories, as in Spec.
	NoDirs bool
}

// Slot is an instance prepared for a process that ebb does not start: it
// holds the instance's directories, its cgroup and its output pipes until
// Adopt or Abort. Its methods are not safe for concurrent use.
type Slot struct {
	p       *Process
	outW    [2]*os.File // write ends handed to the forking process
	outFn   [2]func([]byte)
	statusc chan exitReport
	settled bool // Adopt or Abort was called
}

type exitReport struct {
	ws    syscall.WaitStatus
	known bool
}

// Prepare makes an instance's directories, cgroup (with its memory and pids
// limits) and output pipes without starting a process. The slot holds the
// id, and keeps Close waiting, until Adopt or Abort.
func (m *Manager) Prepare(ctx context.Context, spec AdoptSpec) (_ *Slot, err error) {
	if !validID(spec.ID) {
		return nil, fmt.Errorf("prepare instance: invalid instance id %q", spec.ID)
	}
	if spec.MemoryMiB < 0 || spec.MemoryMiB > ebb.MaxMemoryMiB {
		return nil, fmt.Errorf("prepare instance %s: memory limit %d MiB is out of range", spec.ID, spec.MemoryMiB)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("prepare instance %s: %w", spec.ID, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("prepare instance %s: %w", spec.ID, ebb.ErrClosed)
	}
	if _, dup := m.procs[spec.ID]; dup {
		m.mu.Unlock()
		return nil, fmt.Errorf("prepare instance %s: id is in use", spec.ID)
	}
	m.procs[spec.ID] = nil
	m.starts.Add(1)
	m.mu.Unlock()

	s := &Slot{statusc: make(chan exitReport, 1), outFn: [2]func([]byte){spec.Stdout, spec.Stderr}}
	p := &Process{m: m, id: spec.ID, dir: filepath.Join(m.root, spec.ID), done: make(chan struct{}), readerDone: make(chan struct{}, 2)}
	if spec.NoDirs {
		p.dir = ""
	} else {
		p.workDir = filepath.Join(p.dir, workDirName)
		p.scratchDir = filepath.Join(p.dir, scratchDirName)
	}
	s.p = p
	defer func() {
		if err != nil {
			s.cleanup()
			err = fmt.Errorf("prepare instance %s: %w", spec.ID, err)
		}
	}()
	codeDir := spec.CodeDir
	if codeDir != "" {
		if codeDir, err = filepath.Abs(codeDir); err != nil {
			return nil, fmt.Errorf("resolve code directory: %w", err)
		}
	}
	if p.dir != "" {
		if err := makeInstanceDirs(p.dir, codeDir); err != nil {
			if errors.Is(err, fs.ErrExist) {
				p.dir = "" // see start: kept for a look, not deleted
			}
			return nil, err
		}
	}
	if m.cg.mode != ModeNone {
		if p.cg, err = m.cg.create(spec.ID, int64(spec.MemoryMiB)<<20); err != nil {
			return nil, err
		}
		// No spawner thread visits this cgroup, so the v1 pids limit
		// can be set before the process enters.
		if err := p.cg.limitPidsV1(); err != nil {
			return nil, err
		}
	}
	for i, fn := range s.outFn {
		if fn == nil {
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create output pipe: %w", err)
		}
		s.outW[i] = w
		if i == 0 {
			p.stdout = r
		} else {
			p.stderr = r
		}
	}
	return s, nil
}

// ID is the instance id.
func (s *Slot) ID() string { return s.p.id }

// WorkDir is the instance's working directory.
func (s *Slot) WorkDir() string { return s.p.workDir }

// ScratchDir is the instance's temporary directory.
func (s *Slot) ScratchDir() string { return s.p.scratchDir }

// Env is env plus TMPDIR, TMP, TEMP and HOME where env does not set them,
// as Start gives a process.
func (s *Slot) Env(env []string) []string { return instanceEnv(env, s.p.workDir, s.p.scratchDir) }

// CgroupProcs are the files a process writes its pid into to enter the
// instance's cgroups (none without cgroups). The forked process must do so
// itself, first thing, so that nothing it allocates escapes the limit.
func (s *Slot) CgroupProcs() []string {
	cg := s.p.cg
	if cg == nil {
		return nil
	}
	out := []string{filepath.Join(cg.dir, "cgroup.procs")}
	if cg.pidsDir != "" {
		out = append(out, filepath.Join(cg.pidsDir, "cgroup.procs"))
	}
	return out
}

// Output returns the write ends of the instance's stdout and stderr, to be
// handed to the process that forks it; a stream nobody reads is /dev/null.
// The slot keeps ownership.
func (s *Slot) Output() (stdout, stderr *os.File) {
	out := [2]*os.File{s.outW[0], s.outW[1]}
	for i := range out {
		if out[i] == nil {
			out[i] = s.p.m.devNull
		}
	}
	return out[0], out[1]
}

// SetExit reports the exit status of the adopted process, which only its
// real parent can learn; known=false says it never will be (the parent is
// gone). Only the first report counts; it may come before or after Adopt.
func (s *Slot) SetExit(ws syscall.WaitStatus, known bool) {
	select {
	case s.statusc <- exitReport{ws: ws, known: known}:
	default:
	}
}

// Adopt makes pid the instance's process: from now on the returned Process
// watches it like one that Start started (Kill, Stop, Done, PeakRSS), except
// that its exit status comes from SetExit. The process must already be in
// its cgroups or be about to enter them itself.
func (s *Slot) Adopt(pid int) (*Process, error) {
	if s.settled {
		return nil, errors.New("adopt: slot already used")
	}
	if pid <= 1 {
		return nil, fmt.Errorf("adopt: invalid pid %d", pid)
	}
	s.settled = true
	p, m := s.p, s.p.m
	p.pid = pid
	// The write ends must be closed here, or the readers would never see
	// EOF once the process exits.
	for i, w := range s.outW {
		if w != nil {
			w.Close()
			s.outW[i] = nil
		}
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("adopt %d: %w", pid, err)
	}
	p.proc = proc
	if p.pidfd, err = openPidfd(pid); err != nil {
		// ESRCH: it already exited (and was reaped). Anything else: an
		// old kernel; the exit is then polled from /proc.
		p.pidfd = nil
	}
	for i, f := range []*os.File{p.stdout, p.stderr} {
		if f == nil {
			continue
		}
		fn := s.outFn[i]
		p.readers++
		p.out[i].f = f
		go func() {
			defer func() { p.readerDone <- struct{}{} }()
			defer p.out[i].ended()
			readLines(f, fn, &p.out[i])
		}()
	}
	m.mu.Lock()
	m.procs[p.id] = p
	m.mu.Unlock()
	m.starts.Done()
	go s.waitAdopted()
	return p, nil
}

// Abort undoes Prepare: it closes the pipes and removes the cgroup (killing
// whatever entered it) and the directories. It does nothing after Adopt.
func (s *Slot) Abort() {
	if s.settled {
		return
	}
	s.settled = true
	s.cleanup()
}

// cleanup releases what Prepare made and the id it reserved.
func (s *Slot) cleanup() {
	p, m := s.p, s.p.m
	for i, w := range s.outW {
		if w != nil {
			w.Close()
			s.outW[i] = nil
		}
	}
	p.closeOutput()
	if p.cg != nil {
		if err := p.cg.remove(); err != nil {
			m.log.Warn("cannot remove cgroup of aborted instance", "id", p.id, "err", err)
		}
	}
	if p.dir != "" {
		if err := removeTree(p.dir); err != nil {
			m.log.Warn("cannot remove directory of aborted instance", "id", p.id, "err", err)
		}
	}
	m.mu.Lock()
	if m.procs[p.id] == nil {
		delete(m.procs, p.id)
	}
	m.mu.Unlock()
	m.starts.Done()
}

// waitAdopted watches an adopted process from Adopt to Done.
func (s *Slot) waitAdopted() {
	p, m := s.p, s.p.m
	if p.pidfd != nil {
		if err := waitPidfdReadable(p.pidfd); err != nil {
			m.log.Warn("cannot poll adopted instance pidfd; polling /proc", "id", p.id, "err", err)
			waitGone(p.pid)
		}
		p.pidfd.Close()
	} else {
		waitGone(p.pid)
	}
	// The real parent reaps it: from now on its pid may be reused, so
	// only the cgroup (or, without one, the group right away) is killed.
	p.mu.Lock()
	if p.cg == nil {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	p.reaped = true
	if p.cg != nil {
		p.cg.kill()
	}
	p.mu.Unlock()

	ws := syscall.WaitStatus(syscall.SIGKILL) // when the parent cannot say
	timer := time.NewTimer(exitStatusWait)
	select {
	case r := <-s.statusc:
		if r.known {
			ws = r.ws
		}
	case <-timer.C:
		m.log.Warn("no exit status for adopted instance; reporting it killed", "id", p.id, "pid", p.pid)
	}
	timer.Stop()

	p.finish(ws, 0)
}

// waitPidfdReadable returns once the pidfd's process has exited. Unlike
// waitExit it does not call waitid, which only works for one's own children.
func waitPidfdReadable(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		var ready bool
		ready, perr = pollIn(int(fd))
		return ready || perr != nil
	})
	if err != nil {
		return err
	}
	return perr
}

// pollIn reports whether fd is readable now.
func pollIn(fd int) (bool, error) {
	type pollFd struct {
		fd      int32
		events  int16
		revents int16
	}
	pfd := pollFd{fd: int32(fd), events: 0x1} // POLLIN
	var ts syscall.Timespec
	for {
		n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		switch errno {
		case 0:
			return n > 0 && pfd.revents != 0, nil
		case syscall.EINTR:
			continue
		default:
			return false, fmt.Errorf("ppoll: %w", errno)
		}
	}
}

// waitGone polls until pid no longer runs (is gone or a zombie): the
// fallback without pidfds.
func waitGone(pid int) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	for {
		b, err := os.ReadFile(path)
		if err != nil || zombie(b) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// zombie reads the state field of /proc/PID/stat, which follows the
// parenthesised command name.
func zombie(stat []byte) bool {
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
		}
	}
	return false
}
