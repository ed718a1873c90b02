package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Process is one running instance process tree.
type Process struct {
	m                   *Manager
	id                  string
	pid                 int
	proc                *os.Process
	dir                 string // Root/<id>
	workDir, scratchDir string
	cg                  *instanceCgroup // nil without cgroups
	// pidfd is polled to learn of the exit without parking a thread per
	// process; nil on kernels without pidfd_open.
	pidfd *os.File
	// stdout and stderr are the read ends of the output pipes; nil for a
	// discarded stream.
	stdout, stderr *os.File
	readers        int           // output reader goroutines started
	readerDone     chan struct{} // each reader sends once when it returns
	out            [2]output     // stdout's and stderr's readers, for SyncOutput
	done           chan struct{}

	mu sync.Mutex // guards reaped
	// reaped is set just before the main process is reaped: from then on
	// its pid, and so its process group id, may belong to someone else.
	reaped bool

	// lastPeak is the latest peak memory reading, for PeakRSS to fall back
	// on while the cgroup is being removed.
	lastPeak atomic.Uint64
	// peakAt is when lastPeak was read (unix ns): PeakRSS reads the kernel at
	// most every peakEvery, so that a busy instance does not pay two
	// syscalls per request for it.
	peakAt atomic.Int64
	// oomSeen caches a positive OOMKilled reading.
	oomSeen atomic.Bool

	// Set by wait before done is closed, read-only after.
	err       error
	oom       bool
	finalPeak uint64
}

// ID is the instance id from the Spec.
func (p *Process) ID() string { return p.id }

// Pid is the process id of the main process.
func (p *Process) Pid() int { return p.pid }

// WorkDir is the process's working directory, Root/<id>/task.
func (p *Process) WorkDir() string { return p.workDir }

// ScratchDir is the process's temporary directory, Root/<id>/tmp.
func (p *Process) ScratchDir() string { return p.scratchDir }

// Done is closed after the process exited, its output was delivered, the
// rest of its tree was killed, and its cgroup and directories were removed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended, once Done is closed (nil before): nil for
// exit status 0, else an *ExitError, which wraps ebb.ErrOutOfMemory when
// the cgroup's OOM killer killed a process of the instance.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// OOMKilled says whether the out-of-memory killer killed a process of the
// instance's cgroup (always false without cgroups).
func (p *Process) OOMKilled() bool {
	select {
	case <-p.done:
		return p.oom
	default:
	}
	if p.oomSeen.Load() {
		return true
	}
	if p.cg != nil && p.cg.oomKilled(false) {
		p.oomSeen.Store(true)
		return true
	}
	return false
}

// PeakRSS is the instance's peak memory use in bytes: the cgroup's peak
// where the kernel records it (v1 memory.max_usage_in_bytes, which counts
// page cache too; v2 memory.peak), else the main process's VmHWM. Cheap
// enough to call after every invocation: the kernel is read at most every
// peakEvery; in between the last reading (a lower bound) is returned.
func (p *Process) PeakRSS() uint64 {
	select {
	case <-p.done:
		return p.finalPeak
	default:
	}
	now := time.Now().UnixNano()
	if at := p.peakAt.Load(); at != 0 && now-at < int64(peakEvery) {
		return p.lastPeak.Load()
	}
	p.peakAt.Store(now)
	if p.cg != nil {
		if v, ok := p.cg.peak(); ok {
			p.lastPeak.Store(v)
			return v
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/status"); err == nil {
			if v, ok := parseVmHWM(b); ok {
				p.lastPeak.Store(v)
				return v
			}
		}
	}
	return p.lastPeak.Load()
}

// peakEvery bounds how often PeakRSS reads the kernel.
const peakEvery = 25 * time.Millisecond

// Kill sends SIGKILL to the process group and to every process in the
// instance's cgroup. It does not wait; Done says when all is gone. Calling
// it again, or after the process ended, is harmless.
func (p *Process) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked()
}

// killLocked kills the tree; see Kill.
func (p *Process) killLocked() {
	if !p.reaped {
		// The group id is the main pid, which cannot be reused before
		// the main process is reaped.
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		_ = p.proc.Signal(syscall.SIGKILL)
	}
	if p.cg != nil {
		p.cg.kill()
	}
}

// Stop asks the process group to terminate with SIGTERM, waits for the
// process to be done until ctx is done, then kills it and waits for Done.
// It returns nil if the process ended within ctx, else ctx's error.
func (p *Process) Stop(ctx context.Context) error {
	p.mu.Lock()
	if !p.reaped {
		// The group normally includes the main process; if it left
		// the group, it is told directly.
		if err := syscall.Kill(-p.pid, syscall.SIGTERM); errors.Is(err, syscall.ESRCH) {
			_ = p.proc.Signal(syscall.SIGTERM)
		}
	}
	p.mu.Unlock()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	p.Kill()
	<-p.done
	return fmt.Errorf("stop instance %s: killed after %w", p.id, ctx.Err())
}

// wait is the goroutine that watches the process from start to Done.
func (p *Process) wait() {
	m := p.m
	err := p.waitExit()
	if err != nil && p.pidfd != nil {
		m.log.Warn("cannot poll instance pidfd; waiting with a blocked thread", "id", p.id, "err", err)
		err = waitid(pPid, p.pid)
	}
	if err != nil {
		m.log.Error("cannot wait for instance exit; reaping it directly", "id", p.id, "pid", p.pid, "err", err)
	}

	// The main process is a zombie now, so its group id is still safe
	// to signal. What it leaves behind (daemons, a forgotten helper)
	// goes with it: an instance is one process tree.
	p.mu.Lock()
	if err == nil {
		p.killLocked()
	}
	p.reaped = true
	p.mu.Unlock()

	var ws syscall.WaitStatus
	var maxRSS uint64
	state, err := p.proc.Wait()
	if err != nil {
		m.log.Error("cannot reap instance process", "id", p.id, "pid", p.pid, "err", err)
		ws = syscall.WaitStatus(syscall.SIGKILL) // reported as killed: the truth is unknown
	} else {
		ws, _ = state.Sys().(syscall.WaitStatus)
		if ru, ok := state.SysUsage().(*syscall.Rusage); ok && ru.Maxrss > 0 {
			maxRSS = uint64(ru.Maxrss) << 10
		}
	}
	if p.pidfd != nil {
		p.pidfd.Close()
	}

	p.finish(ws, maxRSS)
}

// finish tears down an exited process, started or adopted: it waits for its
// output, reads whether it ran out of memory and its peak (at least
// peakFloor), removes its cgroup and directory, records why it exited and
// closes done.
func (p *Process) finish(ws syscall.WaitStatus, peakFloor uint64) {
	m := p.m
	p.drain()
	oom := false
	peak := max(p.lastPeak.Load(), peakFloor)
	if p.cg != nil {
		oom = p.oomSeen.Load() || p.cg.oomKilled(ws.Signaled() && ws.Signal() == syscall.SIGKILL)
		if v, ok := p.cg.peak(); ok {
			peak = max(peak, v)
		}
		if err := p.cg.remove(); err != nil {
			m.log.Warn("cannot remove instance cgroup", "id", p.id, "err", err)
		}
	}
	if err := removeTree(p.dir); err != nil {
		m.log.Warn("cannot remove instance directory", "id", p.id, "err", err)
	}
	p.oom = oom
	p.finalPeak = peak
	p.err = exitError(ws, oom)
	m.forget(p)
	close(p.done)
}

// drain waits for the output readers to reach EOF. The tree is dead, so
// that normally takes no longer than reading what is buffered; a process
// that escaped the group and cgroup may hold a pipe open, though, so after
// DrainTimeout the pipes are closed under the readers.
func (p *Process) drain() {
	pending := p.readers
	if pending > 0 {
		timer := time.NewTimer(p.m.cfg.DrainTimeout)
		timeout := timer.C
		for pending > 0 {
			select {
			case <-p.readerDone:
				pending--
			case <-timeout:
				timeout = nil
				p.m.log.Warn("instance output still open after its process tree was killed; closing it", "id", p.id)
				p.closeOutput()
			}
		}
		timer.Stop()
	}
	p.closeOutput()
}

func (p *Process) closeOutput() {
	for _, f := range []*os.File{p.stdout, p.stderr} {
		if f != nil {
			// Close unblocks a pending Read; a second Close only
			// reports ErrClosed.
			_ = f.Close()
		}
	}
}

// forget drops p from the live processes, freeing its id.
func (m *Manager) forget(p *Process) {
	m.mu.Lock()
	if m.procs[p.id] == p {
		delete(m.procs, p.id)
	}
	m.mu.Unlock()
}

// Linux constants the syscall package lacks.
const (
	sysPidfdOpen = 434 // the same on every architecture
	pPid         = 1   // waitid idtype P_PID
	pPidfd       = 3   // waitid idtype P_PIDFD
	wNowait      = 0x1000000
)

// openPidfd returns a non-blocking pidfd for pid, ready for the poller.
func openPidfd(pid int) (*os.File, error) {
	fd, _, errno := syscall.Syscall(sysPidfdOpen, uintptr(pid), 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("pidfd_open: %w", errno)
	}
	syscall.CloseOnExec(int(fd))
	if err := syscall.SetNonblock(int(fd), true); err != nil {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("set pidfd non-blocking: %w", err)
	}
	return os.NewFile(fd, "pidfd"), nil
}

// waitExit returns once the main process has exited, without reaping it
// (WNOWAIT): until it is reaped, its pid and group id stay reserved and can
// safely be signalled.
func (p *Process) waitExit() error {
	if p.pidfd == nil {
		return waitid(pPid, p.pid)
	}
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		// A pidfd turns readable when its process exits; until then
		// WNOHANG finds nothing and the poller waits.
		var exited bool
		exited, werr = waitidNohang(pPidfd, int(fd))
		return exited || werr != nil
	})
	if err != nil {
		return err
	}
	return werr
}

// siginfo is large enough for the kernel's siginfo_t (128 bytes), of which
// only si_signo, the first int, is looked at.
type siginfo [128]byte

// waitidNohang reports whether the process is waitable now.
func waitidNohang(idtype, id int) (bool, error) {
	var info siginfo
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, uintptr(idtype), uintptr(id), uintptr(unsafe.Pointer(&info)),
			syscall.WEXITED|wNowait|syscall.WNOHANG, 0, 0)
		switch errno {
		case 0:
			// With WNOHANG and nothing to report, Linux leaves
			// si_signo zero; an exited child reports SIGCHLD.
			return *(*int32)(unsafe.Pointer(&info[0])) != 0, nil
		case syscall.EINTR:
			continue
		default:
			return false, fmt.Errorf("waitid: %w", errno)
		}
	}
}

// waitid blocks until the process has exited, without reaping it.
func waitid(idtype, id int) error {
	var info siginfo
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, uintptr(idtype), uintptr(id), uintptr(unsafe.Pointer(&info)),
			syscall.WEXITED|wNowait, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		default:
			return fmt.Errorf("waitid: %w", errno)
		}
	}
}
