package process

import (
	"strconv"
	"syscall"

	"github.com/ebb-run/ebb"
)

// ExitError is how an instance process ended when it did not exit with
// status 0. It unwraps to ebb.ErrOutOfMemory when the out-of-memory killer
// killed a process of the instance, so that callers can tell a function that
// outgrew its memory from one that crashed.
type ExitError struct {
	// Code is the exit status, or -1 when the process was killed by a signal.
	Code int
	// Signal is the signal that killed the process, or 0.
	Signal syscall.Signal
	// CoreDumped says the kernel wrote a core dump.
	CoreDumped bool
	// OOM says the cgroup's out-of-memory killer killed a process of the
	// instance (not necessarily the main one).
	OOM bool
}

func (e *ExitError) Error() string {
	var s string
	if e.Signal != 0 {
		s = "killed by signal " + SignalName(e.Signal)
		if e.CoreDumped {
			s += " (core dumped)"
		}
	} else {
		s = "exited with status " + strconv.Itoa(e.Code)
	}
	if e.OOM {
		s += ": " + ebb.ErrOutOfMemory.Error()
	}
	return s
}

// Unwrap makes errors.Is(err, ebb.ErrOutOfMemory) true for an OOM kill.
func (e *ExitError) Unwrap() error {
	if e.OOM {
		return ebb.ErrOutOfMemory
	}
	return nil
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP:    "HUP",
	syscall.SIGINT:    "INT",
	syscall.SIGQUIT:   "QUIT",
	syscall.SIGILL:    "ILL",
	syscall.SIGTRAP:   "TRAP",
	syscall.SIGABRT:   "ABRT",
	syscall.SIGBUS:    "BUS",
	syscall.SIGFPE:    "FPE",
	syscall.SIGKILL:   "KILL",
	syscall.SIGUSR1:   "USR1",
	syscall.SIGSEGV:   "SEGV",
	syscall.SIGUSR2:   "USR2",
	syscall.SIGPIPE:   "PIPE",
	syscall.SIGALRM:   "ALRM",
	syscall.SIGTERM:   "TERM",
	syscall.SIGCHLD:   "CHLD",
	syscall.SIGCONT:   "CONT",
	syscall.SIGSTOP:   "STOP",
	syscall.SIGTSTP:   "TSTP",
	syscall.SIGTTIN:   "TTIN",
	syscall.SIGTTOU:   "TTOU",
	syscall.SIGURG:    "URG",
	syscall.SIGXCPU:   "XCPU",
	syscall.SIGXFSZ:   "XFSZ",
	syscall.SIGVTALRM: "VTALRM",
	syscall.SIGPROF:   "PROF",
	syscall.SIGWINCH:  "WINCH",
	syscall.SIGIO:     "IO",
	syscall.SIGPWR:    "PWR",
	syscall.SIGSYS:    "SYS",
}

// SignalName is the short name of sig as kill -l prints it ("KILL",
// "SEGV"), or "signal N" for one without a name (real-time signals).
func SignalName(sig syscall.Signal) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	return "signal " + strconv.Itoa(int(sig))
}

// exitError turns a wait status into Err's value: nil for exit 0.
func exitError(ws syscall.WaitStatus, oom bool) error {
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case ws.Signaled():
		return &ExitError{Code: -1, Signal: ws.Signal(), CoreDumped: ws.CoreDump(), OOM: oom}
	default:
		return &ExitError{Code: ws.ExitStatus(), OOM: oom}
	}
}
