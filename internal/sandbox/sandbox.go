// Package sandbox confines function processes. A function is untrusted
// code: each of its processes runs under bubblewrap as an unprivileged
// per-function host uid, in its own user, mount, pid, ipc and uts
// namespaces, with the system read-only, its code read-only at /var/task, a
// private size-limited /tmp, no_new_privs and a seccomp filter compiled from
// Docker's default profile. Its network namespace is made by ebb (Netns), not
// by bwrap, so that ebb can listen and dial inside it and, for outbound
// functions, attach pasta to it.
//
// The package builds commands; it does not start or watch processes (the
// process manager does). It is Linux-only and needs root.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Modes.
const (
	ModeAuto = "auto" // sandbox where the host allows it, run unconfined (with a warning) where not
	ModeOn   = "on"   // sandbox or refuse to start
	ModeOff  = "off"  // never sandbox
)

// UIDRange is an inclusive range of host uids (and equal gids) handed out to
// functions. The ids need no /etc/passwd entry.
type UIDRange struct{ First, Last uint32 }

// DefaultUIDs is above any distribution's system and login ranges, and below
// the 65536-wide blocks container tools delegate from /etc/subuid (which
// start at 100000 but are per user; a host running rootless containers should
// pick a range clear of /etc/subuid).
var DefaultUIDs = UIDRange{First: 300000, Last: 365535}

// ParseUIDRange parses "A-B" (inclusive).
func ParseUIDRange(s string) (UIDRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return UIDRange{}, fmt.Errorf("parse uid range %q: want FIRST-LAST", s)
	}
	first, err := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	if err != nil {
		return UIDRange{}, fmt.Errorf("parse uid range %q: %w", s, err)
	}
	last, err := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if err != nil {
		return UIDRange{}, fmt.Errorf("parse uid range %q: %w", s, err)
	}
	r := UIDRange{First: uint32(first), Last: uint32(last)}
	return r, r.validate()
}

func (r UIDRange) validate() error {
	switch {
	case r.First < 1000:
		return fmt.Errorf("uid range %d-%d: must start at 1000 or above (system ids)", r.First, r.Last)
	case r.Last < r.First:
		return fmt.Errorf("uid range %d-%d: last is below first", r.First, r.Last)
	case r.Last >= 1<<32-2:
		// 4294967295 is (uid_t)-1 ("no change") and 4294967294 is the
		// kernel's overflow id.
		return fmt.Errorf("uid range %d-%d: reaches the reserved ids", r.First, r.Last)
	}
	return nil
}

// Contains reports whether id is in r.
func (r UIDRange) Contains(id uint32) bool { return id >= r.First && id <= r.Last }

// String formats r as ParseUIDRange reads it.
func (r UIDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Config configures the sandbox. Zero values stand for the defaults.
type Config struct {
	Mode  string   // ModeAuto (default), ModeOn or ModeOff
	Bwrap string   // bubblewrap; default: exec.LookPath("bwrap")
	Pasta string   // pasta, for outbound networking; default: exec.LookPath("pasta"); none: outbound refused
	UIDs  UIDRange // host uids for functions; default DefaultUIDs
	// PastaArgs are appended to pasta's options; for picking the outbound
	// interface or addresses (-i, -a, -g, -4). They must not forward ports
	// or map the host: the defaults forbid both.
	PastaArgs []string
	// ViewDir is where host paths are made reachable by the function uids
	// (see Reach): a directory ebb owns whose parents everyone may search,
	// such as one under /run or /dev/shm, and no other ebb uses (what is
	// mounted there at start is a dead run's and is unmounted). Default: a
	// new temporary directory.
	ViewDir string
	Logger  *slog.Logger
}

// Validate checks c and fills defaults. A missing bwrap or pasta is not an
// error here: New decides what that means for the mode.
func (c *Config) Validate() error {
	switch c.Mode {
	case "":
		c.Mode = ModeAuto
	case ModeAuto, ModeOn, ModeOff:
	default:
		return fmt.Errorf("sandbox config: Mode %q is not auto, on or off", c.Mode)
	}
	if c.UIDs == (UIDRange{}) {
		c.UIDs = DefaultUIDs
	}
	if err := c.UIDs.validate(); err != nil {
		return fmt.Errorf("sandbox config: %w", err)
	}
	if c.Bwrap == "" {
		c.Bwrap, _ = exec.LookPath("bwrap")
	}
	if c.Pasta == "" {
		c.Pasta, _ = exec.LookPath("pasta")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Sandbox builds sandboxed commands and network namespaces. It is safe for
// concurrent use: after New it is read-only.
type Sandbox struct {
	cfg     Config
	enabled bool
	reason  string          // why not enabled
	seccomp *seccompProgram // compiled once; nil when disabled
	shims   *releaseShims   // spares' release shims (release.go); nil where there are none
	view    *view           // nil when disabled
}

// probeTimeout bounds New's trial run; a healthy one takes ~15 ms.
const probeTimeout = 10 * time.Second

// New probes the host once: ebb must be root, bwrap present, user
// namespaces allowed, the seccomp profile compilable, and a real sandboxed
// /usr/bin/true, as the first uid of the range and inside an ebb-made
// network namespace, must succeed. In ModeAuto a failed probe disables the
// sandbox (Reason says why); in ModeOn it is an error.
func New(cfg Config) (*Sandbox, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sandbox{cfg: cfg}
	if cfg.Mode == ModeOff {
		s.reason = "sandbox mode is off"
		return s, nil
	}
	if err := s.probe(); err != nil {
		if cfg.Mode == ModeOn {
			return nil, fmt.Errorf("sandbox mode on: %w", err)
		}
		s.reason = err.Error()
		s.seccomp = nil
		cfg.Logger.Warn("sandbox unavailable; functions run unconfined", "reason", s.reason)
		return s, nil
	}
	viewDir := cfg.ViewDir
	if viewDir == "" {
		// A private one, for tests and embedders that do not care where.
		viewDir = tempViewDir()
	}
	v, err := newView(viewDir, s.Group())
	if err != nil {
		if cfg.Mode == ModeOn {
			return nil, fmt.Errorf("sandbox mode on: %w", err)
		}
		s.reason = err.Error()
		s.seccomp = nil
		cfg.Logger.Warn("SANDBOX UNAVAILABLE: functions run unconfined, as ebb's own user, and can reach ebb's API and data", "reason", s.reason)
		return s, nil
	}
	s.view = v
	s.enabled = true
	if shimArch() {
		s.shims = &releaseShims{dir: v.dir}
	}
	if cfg.Pasta == "" {
		cfg.Logger.Warn("NO OUTBOUND NETWORK: pasta not found (Debian package passt); functions with network: outbound get loopback only")
	}
	return s, nil
}

func (s *Sandbox) probe() error {
	if os.Geteuid() != 0 {
		return errors.New("ebb is not root (needed to run functions as other uids and to make network namespaces)")
	}
	if s.cfg.Bwrap == "" {
		return errors.New("bwrap not found (install bubblewrap)")
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return errors.New("user namespaces are disabled (user.max_user_namespaces = 0)")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return errors.New("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)")
	}
	prog, err := compileSeccomp()
	if err != nil {
		return err
	}
	s.seccomp = prog
	for _, d := range prog.dropped {
		s.cfg.Logger.Debug("seccomp rule not expressible, left out (denied)", "rule", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	return s.trial(ctx)
}

// trial runs /usr/bin/true sandboxed the way functions run.
func (s *Sandbox) trial(ctx context.Context) error {
	ns, err := s.newNetns(ctx, false)
	if err != nil {
		return fmt.Errorf("trial network namespace: %w", err)
	}
	defer ns.Close()
	code, err := os.MkdirTemp("", "ebb-sandbox-probe-")
	if err != nil {
		return fmt.Errorf("trial code dir: %w", err)
	}
	defer os.RemoveAll(code)
	if err := os.Chmod(code, 0o755); err != nil {
		return fmt.Errorf("trial code dir: %w", err)
	}
	id := s.cfg.UIDs.First
	c, err := s.command(Spec{UID: id, GID: id, Code: code, TmpBytes: 1 << 20, Argv: []string{"/usr/bin/true"}, FirstFD: 3})
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, c.Path, c.Args[1:]...)
	cmd.ExtraFiles = c.ExtraFiles
	cmd.SysProcAttr = c.sysProcAttr()
	var out strings.Builder
	// One writer for both: exec then shares one pipe and one copier.
	lw := &limitedWriter{w: &out, n: 2048}
	cmd.Stdout, cmd.Stderr = lw, lw
	err = runInNetns(ns.f, cmd.Start)
	c.Close()
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("trial bwrap run as uid %d: %w: %s", id, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Enabled reports whether functions are sandboxed.
func (s *Sandbox) Enabled() bool { return s.enabled }

// Reason says why the sandbox is disabled ("" when enabled).
func (s *Sandbox) Reason() string { return s.reason }

// Mode is the effective mode: ModeOn or ModeOff.
func (s *Sandbox) Mode() string {
	if s.enabled {
		return ModeOn
	}
	return ModeOff
}

// UIDs is the configured host id range. Its first id is the sandbox group
// (Group), which every function uid also carries; functions get the others.
func (s *Sandbox) UIDs() UIDRange { return s.cfg.UIDs }

// Outbound says whether network namespaces can be given internet access
// (pasta is installed).
func (s *Sandbox) Outbound() bool { return s.cfg.Pasta != "" }

// Group is the group id every sandboxed process carries besides its own:
// the one allowed to search the view directory.
func (s *Sandbox) Group() uint32 { return s.cfg.UIDs.First }

// Reach returns a path at which bwrap, running as a function uid, finds the
// host path p (a file or directory): p below a directory already reached,
// or a new read-only bind of p in the view. Reach the roots (the bundles
// directory) once rather than each path under them: each new root is a
// mount.
func (s *Sandbox) Reach(p string) (string, error) {
	if s.view == nil {
		return "", fmt.Errorf("reach %s: sandbox disabled: %s", p, s.reason)
	}
	return s.view.reach(p)
}

// Close undoes what the sandbox mounted (the view). Processes started from
// it must be gone first.
func (s *Sandbox) Close() error {
	if s.view == nil {
		return nil
	}
	return s.view.close()
}

// limitedWriter keeps the first n bytes and drops the rest without failing
// the writer (a failing Stderr would kill the child with EPIPE).
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
