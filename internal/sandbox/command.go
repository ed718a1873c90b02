package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Bind is a host path (file or directory) bound read-only at Dst inside.
type Bind struct{ Src, Dst string }

// Spec describes one sandboxed process.
type Spec struct {
	UID, GID uint32   // host ids the process runs as; both in the configured range
	Code     string   // host directory bound read-only at /var/task, the working directory
	ReadOnly []Bind   // extra read-only binds: shim dirs, the ebb executable, library dirs
	TmpBytes int64    // size of the private tmpfs at /tmp; 0: no size option (the kernel's default, half of RAM)
	Argv     []string // the command as seen inside
	Hostname string   // default "ebb"; the host's name is not shown
	Block    bool     // the process waits (fully set up) until Command.Release
	// Init makes the process its pid namespace's init (pid 1, as in Docker
	// without --init) instead of a child of bwrap's reaper: one fork less
	// on a cold start's path (~1.4 ms here). It then reaps its own orphans,
	// and ignores signals it has no handler for from inside its namespace.
	Init bool
	// FirstFD is the fd number bwrap's own fds start at in the child: 3 +
	// len(the caller's ExtraFiles). The caller's fds pass through bwrap
	// unchanged and keep their numbers inside.
	FirstFD int
}

// Command is a bwrap invocation for exec.Cmd: Path and Args as in exec.Cmd
// (Args[0] is bwrap), ExtraFiles appended after the caller's, and
// SysProcAttr.Credential set to Credential.
type Command struct {
	Path       string
	Args       []string
	ExtraFiles []*os.File // seccomp program at FirstFD, block fd at FirstFD+1 (Block only)
	Credential *syscall.Credential
	// Release lets a Block process run (one byte on the block pipe), then
	// closes ebb's end. Nil without Block. Only the first call acts. To
	// discard an unreleased process, kill it first: closing the pipe's
	// write end (which Release does, and which ebb exiting does) also lets
	// it run.
	Release func() error
	// Close closes ebb's copies of the child's fds; call it once the
	// process has started (or failed to). It leaves the block pipe's write
	// end to Release.
	Close func()
}

func (c *Command) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: c.Credential}
}

// Where things appear inside.
const (
	TaskDir = "/var/task"
	TmpDir  = "/tmp"
)

// Command builds the bwrap command for spec. The caller starts it with
// SysProcAttr.Credential = Credential from a thread that entered the
// function's network namespace (EnterNetns): bwrap does not make one.
func (s *Sandbox) Command(spec Spec) (*Command, error) {
	if !s.enabled {
		return nil, fmt.Errorf("build sandbox command: sandbox disabled: %s", s.reason)
	}
	return s.command(spec)
}

func (s *Sandbox) command(spec Spec) (*Command, error) {
	switch {
	case !s.cfg.UIDs.Contains(spec.UID) || !s.cfg.UIDs.Contains(spec.GID):
		return nil, fmt.Errorf("build sandbox command: uid %d / gid %d outside %s", spec.UID, spec.GID, s.cfg.UIDs)
	case !filepath.IsAbs(spec.Code):
		return nil, fmt.Errorf("build sandbox command: code dir %q is not absolute", spec.Code)
	case len(spec.Argv) == 0:
		return nil, errors.New("build sandbox command: empty argv")
	case spec.FirstFD < 3:
		return nil, fmt.Errorf("build sandbox command: FirstFD %d is below 3", spec.FirstFD)
	case spec.TmpBytes < 0:
		return nil, fmt.Errorf("build sandbox command: TmpBytes %d is negative", spec.TmpBytes)
	}
	for _, b := range spec.ReadOnly {
		if !filepath.IsAbs(b.Src) || !filepath.IsAbs(b.Dst) || filepath.Clean(b.Dst) == "/" {
			return nil, fmt.Errorf("build sandbox command: bind %q -> %q: paths must be absolute, not /", b.Src, b.Dst)
		}
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = "ebb"
	}
	uid, gid := strconv.FormatUint(uint64(spec.UID), 10), strconv.FormatUint(uint64(spec.GID), 10)
	args := []string{
		s.cfg.Bwrap,
		// No --unshare-net: the process inherits the network namespace of
		// the thread that forks bwrap (ebb's, per instance).
		"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		// --die-with-parent: the sandbox dies with the ebb thread that
		// forked it (see the package notes on Pdeathsig).
		"--die-with-parent",
		// --new-session: no controlling terminal to push input into
		// (TIOCSTI).
		"--new-session",
		"--uid", uid, "--gid", gid,
		"--hostname", hostname,
		"--ro-bind", "/usr", "/usr",
	}
	for _, d := range []string{"/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
			continue // not on this host
		case fi.Mode()&os.ModeSymlink != 0:
			// Merged /usr: recreate the link rather than bind, so the
			// layout inside is the host's.
			target, err := os.Readlink(d)
			if err != nil {
				return nil, fmt.Errorf("build sandbox command: read link %s: %w", d, err)
			}
			args = append(args, "--symlink", target, d)
		case fi.IsDir():
			args = append(args, "--ro-bind", d, d)
		}
	}
	// /etc whole and read-only: libraries find their configuration there
	// (Debian's numpy finds BLAS through /etc/alternatives). Secrets in it
	// are protected by file modes only (/etc/shadow is 0640 root:shadow).
	args = append(args, "--ro-bind", "/etc", "/etc",
		"--ro-bind", spec.Code, TaskDir)
	for _, b := range spec.ReadOnly {
		args = append(args, "--ro-bind", b.Src, filepath.Clean(b.Dst))
	}
	if spec.TmpBytes > 0 {
		args = append(args, "--size", strconv.FormatInt(spec.TmpBytes, 10))
	}
	args = append(args, "--tmpfs", TmpDir,
		"--proc", "/proc", "--dev", "/dev",
		"--chdir", TaskDir,
		"--seccomp", strconv.Itoa(spec.FirstFD))
	if spec.Init {
		args = append(args, "--as-pid-1")
	}

	prog, err := s.seccompFile()
	if err != nil {
		return nil, err
	}
	c := &Command{
		Path:       s.cfg.Bwrap,
		ExtraFiles: []*os.File{prog},
		// Groups empty (not nil): setgroups(0) drops root's supplementary
		// groups.
		Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: []uint32{s.Group()}},
	}
	var blockR *os.File
	if spec.Block {
		r, w, err := os.Pipe()
		if err != nil {
			prog.Close()
			return nil, fmt.Errorf("build sandbox command: block pipe: %w", err)
		}
		blockR = r
		c.ExtraFiles = append(c.ExtraFiles, r)
		blockFD := spec.FirstFD + 1
		if shim := s.releaseShim(blockFD, spec.Argv[0]); shim != "" {
			// bwrap execs the shim, which waits with the filter loaded
			// (release.go); the block fd passes through bwrap to it.
			args = append(args, "--ro-bind", shim, ShimPath)
			spec.Argv = append([]string{ShimPath}, spec.Argv...)
		} else {
			args = append(args, "--block-fd", strconv.Itoa(blockFD))
		}
		var once sync.Once
		var relErr error
		c.Release = func() error {
			once.Do(func() {
				_, relErr = w.Write([]byte{0})
				if err := w.Close(); relErr == nil {
					relErr = err
				}
				if relErr != nil {
					relErr = fmt.Errorf("release sandbox: %w", relErr)
				}
			})
			return relErr
		}
	}
	// The root itself (bwrap's tmpfs, holding the mount points above)
	// read-only, after the last mount: as on Lambda, /tmp is the one place
	// a function writes. Otherwise it could leave files at / for the next
	// instance of a shared sandbox (a zygote's children) or grow the root
	// past /tmp's size.
	args = append(args, "--remount-ro", "/", "--")
	c.Args = append(args, spec.Argv...)
	var closeOnce sync.Once
	c.Close = func() {
		closeOnce.Do(func() {
			prog.Close()
			if blockR != nil {
				blockR.Close()
			}
		})
	}
	return c, nil
}

// seccompFile returns a fresh fd holding the compiled filter at offset 0.
// Fresh per command: bwrap reads its fd to EOF, so a shared offset would
// hand the second process an empty program.
func (s *Sandbox) seccompFile() (*os.File, error) {
	fd, err := unix.MemfdCreate("ebb-seccomp", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("create seccomp memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ebb-seccomp")
	if _, err := f.Write(s.seccomp.raw); err != nil {
		f.Close()
		return nil, fmt.Errorf("write seccomp memfd: %w", err)
	}
	// Sealed: nothing (bwrap runs as the function's uid) can change the
	// program between here and its load.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal seccomp memfd: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("rewind seccomp memfd: %w", err)
	}
	return f, nil
}

// releaseShim is the host path of the release shim for a spare whose block
// pipe is fd and whose command is argv0, or "" to wait in bwrap instead: no
// shim for this machine, or a command named without a path (bwrap's execvp
// searches PATH; the shim execs the path it is given).
func (s *Sandbox) releaseShim(fd int, argv0 string) string {
	if s.shims == nil || !strings.Contains(argv0, "/") {
		return ""
	}
	p, err := s.shims.path(fd)
	if err != nil {
		s.cfg.Logger.Warn("spares wait in bwrap", "err", err)
		return ""
	}
	return p
}
