package process

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// TestAdopt plays the zygote: the test starts the process itself, hands
// the pid to a prepared slot, and reports the exit status it reaps.
func TestAdopt(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		out := newLineLog()
		slot, err := m.Prepare(context.Background(), AdoptSpec{ID: "adopted", MemoryMiB: 64, Stdout: out.add})
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		if mode != ModeNone && len(slot.CgroupProcs()) == 0 {
			t.Fatalf("CgroupProcs empty in mode %s", mode)
		}
		stdout, stderr := slot.Output()
		cmd := exec.Command("/bin/sh", "-c", "echo hello; exec sleep 30")
		cmd.Stdout, cmd.Stderr, cmd.Dir = stdout, stderr, slot.WorkDir()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			slot.Abort()
			t.Fatal(err)
		}
		killOnCleanup(t, cmd.Process.Pid)
		for _, f := range slot.CgroupProcs() {
			if err := os.WriteFile(f, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				t.Fatalf("enter cgroup: %v", err)
			}
		}
		p, err := slot.Adopt(cmd.Process.Pid)
		if err != nil {
			t.Fatalf("Adopt: %v", err)
		}
		if got := out.wait(t); got != "hello" {
			t.Errorf("output line = %q, want hello", got)
		}
		go func() {
			cmd.Wait()
			slot.SetExit(cmd.ProcessState.Sys().(syscall.WaitStatus), true)
		}()
		p.Kill()
		waitDone(t, p)
		var ee *ExitError
		if !errors.As(p.Err(), &ee) || ee.Signal != syscall.SIGKILL {
			t.Errorf("Err = %v, want killed by SIGKILL", p.Err())
		}
		if _, err := os.Stat(slot.WorkDir()); !os.IsNotExist(err) {
			t.Errorf("work dir still there after Done: %v", err)
		}
		for _, f := range slot.CgroupProcs() {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				t.Errorf("cgroup %s still there after Done", f)
			}
		}
	})
}

func TestPrepareAbort(t *testing.T) {
	m := newTestManager(t, Config{CgroupMode: ModeAuto})
	for range 2 { // the id is free again after Abort
		slot, err := m.Prepare(context.Background(), AdoptSpec{ID: "aborted", Stdout: func([]byte) {}})
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		if _, err := m.Prepare(context.Background(), AdoptSpec{ID: "aborted"}); err == nil {
			t.Errorf("second Prepare of a held id succeeded")
		}
		slot.Abort()
		if _, err := os.Stat(slot.WorkDir()); !os.IsNotExist(err) {
			t.Errorf("work dir still there after Abort: %v", err)
		}
		if _, err := slot.Adopt(os.Getpid()); err == nil {
			t.Errorf("Adopt after Abort succeeded")
		}
	}
}
