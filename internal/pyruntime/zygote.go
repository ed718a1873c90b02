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
	"time"

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
	// does anything else (cgroup.procs of each of its cgroups). Ignored
	// when CgroupFiles is set.
	CgroupProcs []string
	// CgroupFiles are cgroup.procs files the caller opened for writing
	// (OpenCgroupProcs); the child writes "0" to each as its first act.
	// They work where the paths cannot: the kernel checks the write
	// against the opener's credentials, so an unprivileged child without
	// /sys still enters its cgroups. The caller keeps them and may close
	// them once Fork returned.
	CgroupFiles []*os.File
	// Hello, when set, is the child's end of a HelloPair: the child sends
	// its credentials on it right after entering its cgroups, and ReadHello
	// on the other end returns its pid in the caller's pid namespace. The
	// caller keeps it and should close it once Fork returned.
	Hello *os.File
	// Stdout and Stderr become the child's fds 1 and 2; the caller keeps
	// them and may close them once Fork returned.
	Stdout, Stderr *os.File
}

// maxForkFiles is the most descriptors one fork request may carry; the
// zygote reads no more (MAX_FDS in zygote.py).
const maxForkFiles = 64

// OpenCgroupProcs opens the cgroup.procs files at paths for writing, for
// ForkRequest.CgroupFiles. The caller closes them.
func OpenCgroupProcs(paths []string) ([]*os.File, error) {
	files := make([]*os.File, 0, len(paths))
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("open cgroup: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

// HelloPair returns the two ends of a child's hello socket: ours, to pass
// to ReadHello, with SO_PASSCRED set so that the kernel attaches (and
// translates) the sender's credentials; and the child's, for
// ForkRequest.Hello.
func HelloPair() (ours, theirs *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("create hello socket: %w", err)
	}
	if err := syscall.SetsockoptInt(fds[0], syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("create hello socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "hello"), os.NewFile(uintptr(fds[1]), "hello-child"), nil
}

// ReadHello waits, until ctx is done, for the child's hello on ours (from
// HelloPair) and returns the child's pid as the caller's pid namespace
// numbers it. That is the pid to watch, signal and measure the child by when
// the zygote runs in a pid namespace of its own, where the pid Fork returns
// is the namespace's. It does not close f. A child that died before saying
// hello is an error (EOF), once the caller closed its copy of the child's
// end.
func ReadHello(ctx context.Context, f *os.File) (pid int, err error) {
	c, err := net.FileConn(f)
	if err != nil {
		return 0, fmt.Errorf("read hello: %w", err)
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("read hello: not a unix socket")
	}
	// The end of ctx wakes the read by moving its deadline into the past;
	// ctx's own deadline is not copied to the read so that a timeout is
	// always reported as ctx's error.
	stop := context.AfterFunc(ctx, func() { uc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 64)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("read hello: %w", ctx.Err())
		}
		return 0, fmt.Errorf("read hello: %w", err)
	}
	if n == 0 && oobn == 0 {
		return 0, errors.New("read hello: the child closed its end without a word")
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, fmt.Errorf("read hello: %w", err)
	}
	for i := range msgs {
		if msgs[i].Header.Level != syscall.SOL_SOCKET || msgs[i].Header.Type != syscall.SCM_CREDENTIALS {
			continue
		}
		cred, err := syscall.ParseUnixCredentials(&msgs[i])
		if err != nil {
			return 0, fmt.Errorf("read hello: %w", err)
		}
		if cred.Pid <= 0 {
			// 0: the child is not visible from the caller's namespace.
			return 0, fmt.Errorf("read hello: pid %d is not in this pid namespace", cred.Pid)
		}
		return int(cred.Pid), nil
	}
	return 0, errors.New("read hello: no credentials (is SO_PASSCRED set on this end?)")
}

// controlWriteTimeout bounds one write of a fork request to a zygote.
var controlWriteTimeout = 5 * time.Second

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
	fds := []int{int(req.Stdout.Fd()), int(req.Stderr.Fd())}
	msg := map[string]any{"op": "fork", "env": req.Env, "dir": req.Dir}
	if len(req.CgroupFiles) > 0 {
		for _, f := range req.CgroupFiles {
			fds = append(fds, int(f.Fd()))
		}
		msg["cgroup_fds"] = len(req.CgroupFiles)
	} else {
		msg["cgroup"] = req.CgroupProcs
	}
	if req.Hello != nil {
		fds = append(fds, int(req.Hello.Fd()))
		msg["hello"] = true
	}
	if len(fds) > maxForkFiles {
		return 0, fmt.Errorf("fork: %d descriptors; the zygote takes at most %d", len(fds), maxForkFiles)
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
	msg["tag"] = tag
	body, err := json.Marshal(msg)
	if err != nil {
		z.mu.Unlock()
		return 0, fmt.Errorf("fork: %w", err)
	}
	z.pending[tag] = reply
	oob := syscall.UnixRights(fds...)
	// The zygote runs the function's code, so it may stop reading: the
	// write, made under mu, must not wait on it for ever, or every other
	// start of the version would wait behind it.
	deadline := time.Now().Add(controlWriteTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	z.conn.SetWriteDeadline(deadline)
	_, _, err = z.conn.WriteMsgUnix(body, oob, nil)
	if err != nil {
		delete(z.pending, tag)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// A half-written channel cannot be trusted: it is dead for
			// every later fork, and closing it ends the zygote.
			z.err = errors.New("the zygote stopped reading its control channel")
			z.conn.Close()
		}
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
