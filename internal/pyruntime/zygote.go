package pyruntime

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/ebb-run/ebb"
)

// ZygoteProgram is the fork-server's source; it imports the shim as a module
// and so must be written next to it (WriteZygote).
//
//go:embed zygote.py
var ZygoteProgram []byte

// ZygoteName is the file name WriteZygote gives the fork-server.
const ZygoteName = "zygote.py"

// ZygoteCtrlFD is the descriptor number the zygote expects its control
// socket on: the first of exec's ExtraFiles.
const ZygoteCtrlFD = 3

// ZygoteThreadEnv limits the thread pools of numeric libraries to one
// thread. A zygote must be single-threaded when it forks; these variables
// must be set before the libraries are imported, so they go in its
// environment.
var ZygoteThreadEnv = []string{
	"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1", "VECLIB_MAXIMUM_THREADS=1",
	"NUMEXPR_NUM_THREADS=1", "BLIS_NUM_THREADS=1", "GOTO_NUM_THREADS=1",
}

// WriteZygote writes the shim and the fork-server into dir and returns the
// fork-server's path.
func WriteZygote(dir string) (string, error) {
	if _, err := WriteShim(dir); err != nil {
		return "", err
	}
	return writeFileAtomic(dir, ZygoteName, ZygoteProgram)
}

// ZygoteCommand returns the argv of a zygote: [python, "-u", zygotePath].
func ZygoteCommand(python, zygotePath string) []string {
	return Command(python, zygotePath)
}

// ErrRefused says the zygote would not fork; the error's text says why
// (typically a thread alive in it). Callers start a fresh interpreter.
var ErrRefused = errors.New("zygote refused to fork")

// ControlPair returns the two ends of a zygote's control channel: ours, and
// the one to pass to the zygote as fd 3 (and close once it started).
func ControlPair() (ours, theirs *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("create zygote control socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "zygote-ctrl"), os.NewFile(uintptr(fds[1]), "zygote-ctrl-child"), nil
}

// ForkRequest is one child to fork.
type ForkRequest struct {
	// Env is the child's whole environment.
	Env map[string]string
	// Dir is the child's working directory.
	Dir string
	// CgroupProcs are the files the child writes its pid into before it
	// does anything else (cgroup.procs of each of its cgroups).
	CgroupProcs []string
	// Stdout and Stderr become the child's fds 1 and 2; the caller keeps
	// them and may close them once Fork returned.
	Stdout, Stderr *os.File
}

// Zygote is ebb's end of one zygote's control channel.
type Zygote struct {
	conn   *net.UnixConn
	onExit func(pid int, status syscall.WaitStatus)
	ready  chan struct{} // closed when the zygote said ready or failed
	dead   chan struct{} // closed when the channel is gone

	mu sync.Mutex // guards pending, tag, initErr, readyInfo, err and writes to conn
	// pending holds the reply channel of each fork request in flight.
	pending   map[uint64]chan forkReply
	tag       uint64
	initErr   error
	readyInfo ReadyInfo
	err       error // why the channel is dead
}

// ReadyInfo is what a zygote reports once it has imported everything.
type ReadyInfo struct {
	Pid    int     `json:"pid"`
	InitMS float64 `json:"init_ms"`
	// Threads is non-empty when the zygote already has more than one
	// thread after its imports, and so will refuse to fork.
	Threads string `json:"threads"`
}

type forkReply struct {
	pid int
	err error
}

type message struct {
	Op      string `json:"op"`
	Tag     uint64 `json:"tag"`
	Pid     int    `json:"pid"`
	Status  uint32 `json:"status"`
	Reason  string `json:"reason"`
	Type    string `json:"type"`
	Message string `json:"message"`
	ReadyInfo
}

// NewZygote takes over ours (from ControlPair) and starts reading it;
// onExit is called, from the reader goroutine, for each child the zygote
// reaps. The reader ends when the channel closes (Close, or the zygote
// exiting).
func NewZygote(ours *os.File, onExit func(pid int, status syscall.WaitStatus)) (*Zygote, error) {
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("open zygote control socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("open zygote control socket: not a unix socket")
	}
	z := &Zygote{conn: uc, onExit: onExit, ready: make(chan struct{}), dead: make(chan struct{}), pending: map[uint64]chan forkReply{}}
	go z.read()
	return z, nil
}

// WaitReady waits until the zygote has imported the preload modules and the
// handler's module. A failure there is an *ebb.InitError; a zygote that
// died without saying why is ebb.ErrCrashed.
func (z *Zygote) WaitReady(ctx context.Context) (ReadyInfo, error) {
	select {
	case <-z.ready:
	case <-ctx.Done():
		return ReadyInfo{}, fmt.Errorf("wait for zygote: %w", ctx.Err())
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.initErr != nil {
		return ReadyInfo{}, z.initErr
	}
	return z.readyInfo, nil
}

// Dead is closed once the control channel is gone: the zygote exited or
// Close was called.
func (z *Zygote) Dead() <-chan struct{} { return z.dead }

// Fork asks the zygote for one child and returns its pid. ErrRefused (with
// the zygote's reason) means the zygote cannot fork safely.
func (z *Zygote) Fork(ctx context.Context, req ForkRequest) (int, error) {
	if req.Stdout == nil || req.Stderr == nil {
		return 0, errors.New("fork: stdout and stderr are required")
	}
	reply := make(chan forkReply, 1)
	z.mu.Lock()
	if z.err != nil {
		err := z.err
		z.mu.Unlock()
		return 0, fmt.Errorf("fork: %w", err)
	}
	z.tag++
	tag := z.tag
	body, err := json.Marshal(map[string]any{"op": "fork", "tag": tag, "env": req.Env, "dir": req.Dir, "cgroup": req.CgroupProcs})
	if err != nil {
		z.mu.Unlock()
		return 0, fmt.Errorf("fork: %w", err)
	}
	z.pending[tag] = reply
	oob := syscall.UnixRights(int(req.Stdout.Fd()), int(req.Stderr.Fd()))
	_, _, err = z.conn.WriteMsgUnix(body, oob, nil)
	if err != nil {
		delete(z.pending, tag)
		z.mu.Unlock()
		return 0, fmt.Errorf("fork: send request: %w", err)
	}
	z.mu.Unlock()
	select {
	case r := <-reply:
		return r.pid, r.err
	case <-ctx.Done():
		// A child may still be forked; its exit is reported like any
		// other and its output pipes are the caller's to close.
		z.mu.Lock()
		delete(z.pending, tag)
		z.mu.Unlock()
		return 0, fmt.Errorf("fork: %w", ctx.Err())
	}
}

// Close closes the control channel; the zygote exits when it reads EOF.
func (z *Zygote) Close() error {
	err := z.conn.Close()
	<-z.dead
	return err
}

func (z *Zygote) read() {
	buf := make([]byte, 1<<20)
	var err error
	for {
		var n int
		n, _, _, _, err = z.conn.ReadMsgUnix(buf, nil)
		if err == nil && n == 0 {
			err = errors.New("zygote closed its control channel")
		}
		if err != nil {
			break
		}
		var m message
		if jerr := json.Unmarshal(buf[:n], &m); jerr != nil {
			continue // a zygote does not send garbage; if it does, it is ignored
		}
		z.handle(&m)
	}
	z.mu.Lock()
	if z.err == nil {
		z.err = fmt.Errorf("%w: zygote is gone: %v", ebb.ErrCrashed, err)
	}
	select {
	case <-z.ready:
	default:
		if z.initErr == nil {
			z.initErr = fmt.Errorf("%w: zygote exited before it was ready", ebb.ErrCrashed)
		}
		close(z.ready)
	}
	for tag, ch := range z.pending {
		ch <- forkReply{err: z.err}
		delete(z.pending, tag)
	}
	z.mu.Unlock()
	close(z.dead)
}

func (z *Zygote) handle(m *message) {
	switch m.Op {
	case "ready", "init_error":
		z.mu.Lock()
		select {
		case <-z.ready:
		default:
			if m.Op == "ready" {
				z.readyInfo = ReadyInfo{Pid: m.Pid, InitMS: m.InitMS, Threads: m.Threads}
			} else {
				z.initErr = &ebb.InitError{Type: m.Type, Message: m.Message}
			}
			close(z.ready)
		}
		z.mu.Unlock()
	case "forked", "refused":
		z.mu.Lock()
		ch := z.pending[m.Tag]
		delete(z.pending, m.Tag)
		z.mu.Unlock()
		if ch == nil {
			return
		}
		if m.Op == "forked" {
			ch <- forkReply{pid: m.Pid}
		} else {
			ch <- forkReply{err: fmt.Errorf("%w: %s", ErrRefused, m.Reason)}
		}
	case "exit":
		if z.onExit != nil {
			z.onExit(m.Pid, syscall.WaitStatus(m.Status))
		}
	}
}

func writeFileAtomic(dir, name string, content []byte) (string, error) {
	path := filepath.Join(dir, name)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(content) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	_, werr := tmp.Write(content)
	cerr := tmp.Close()
	if err := firstErr(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return path, nil
}
