package process

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ebb-run/ebb"
)

func TestExitError(t *testing.T) {
	tests := []struct {
		name    string
		ws      syscall.WaitStatus
		oom     bool
		want    string // "" for a nil error
		wantOOM bool
	}{
		{"success", 0, false, "", false},
		{"success with an OOM-killed helper", 0, true, "", false},
		{"status", 3 << 8, false, "exited with status 3", false},
		{"status 255", 255 << 8, false, "exited with status 255", false},
		{"signal", syscall.WaitStatus(syscall.SIGKILL), false, "killed by signal KILL", false},
		{"core", syscall.WaitStatus(syscall.SIGSEGV) | 0x80, false, "killed by signal SEGV (core dumped)", false},
		{"oom", syscall.WaitStatus(syscall.SIGKILL), true, "killed by signal KILL: " + ebb.ErrOutOfMemory.Error(), true},
		{"oom then exit 1", 1 << 8, true, "exited with status 1: " + ebb.ErrOutOfMemory.Error(), true},
		{"realtime signal", syscall.WaitStatus(40), false, "killed by signal signal 40", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := exitError(tt.ws, tt.oom)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("exitError = %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("exitError = %v, want %q", err, tt.want)
			}
			if got := errors.Is(err, ebb.ErrOutOfMemory); got != tt.wantOOM {
				t.Errorf("errors.Is(err, ErrOutOfMemory) = %v, want %v", got, tt.wantOOM)
			}
		})
	}
}

func TestSignalName(t *testing.T) {
	tests := []struct {
		sig  syscall.Signal
		want string
	}{
		{syscall.SIGTERM, "TERM"},
		{syscall.SIGKILL, "KILL"},
		{syscall.SIGXCPU, "XCPU"},
		{syscall.Signal(34), "signal 34"},
	}
	for _, tt := range tests {
		if got := SignalName(tt.sig); got != tt.want {
			t.Errorf("SignalName(%d) = %q, want %q", tt.sig, got, tt.want)
		}
	}
}
