package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDieWithEbb: when ebb dies (SIGKILL, no cleanup), its sandboxes and
// pastas die too. A helper copy of the test binary plays ebb.
func TestDieWithEbb(t *testing.T) {
	requireSandbox(t, false)
	token := fmt.Sprintf("%d.%d", os.Getpid(), time.Now().UnixNano()%1e6)
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperEbb$", "-test.v")
	helper.Env = append(os.Environ(), "EBB_SANDBOX_HELPER="+token)
	helper.Stderr = os.Stderr
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()
	var bwrapPID, pastaPID int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "pids %d %d", &bwrapPID, &pastaPID); err == nil {
			break
		}
	}
	if bwrapPID == 0 {
		t.Fatal("helper did not report its pids")
	}
	// The sandboxed sleep must be running before we kill "ebb".
	// The sleep itself, not just bwrap (whose command line holds the token
	// too): bwrap's inner process sets its parent-death signal only after
	// setup, so a kill during setup can orphan it (see docs/sandbox.md).
	waitFor(t, "sandboxed sleep to start", func() bool { return strings.Contains(procState(procsWith(token)...), "(sleep)") }, nil)
	helper.Process.Kill()
	helper.Wait()
	killed := time.Now()
	waitFor(t, "sandbox and pasta to die", func() bool {
		return len(procsWith(token)) == 0 && !alive(bwrapPID) && (pastaPID == 0 || !alive(pastaPID))
	}, func() string {
		return fmt.Sprintf("sandbox pids %v (%s), bwrap %d alive %v (%s), pasta %d alive %v (%s)",
			procsWith(token), procState(procsWith(token)...), bwrapPID, alive(bwrapPID), procState(bwrapPID),
			pastaPID, alive(pastaPID), procState(pastaPID))
	})
	t.Logf("all gone %v after the kill", time.Since(killed))
}

// TestHelperEbb is TestDieWithEbb's "ebb": it starts a sandboxed sleep
// (and pasta, when installed), reports the pids and waits to be killed.
func TestHelperEbb(t *testing.T) {
	token := os.Getenv("EBB_SANDBOX_HELPER")
	if token == "" {
		t.Skip("helper for TestDieWithEbb")
	}
	s := newSandbox(t, Config{})
	ns, err := s.NewNetns(context.Background(), s.cfg.Pasta != "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Command(Spec{UID: testUID, GID: testUID, Code: "/usr", FirstFD: 3, Argv: []string{"/bin/sleep", token}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := &exec.Cmd{Path: c.Path, Args: c.Args, ExtraFiles: c.ExtraFiles, SysProcAttr: c.sysProcAttr()}
	if err := runInNetns(ns.File(), cmd.Start); err != nil {
		t.Fatal(err)
	}
	c.Close()
	fmt.Printf("pids %d %d\n", cmd.Process.Pid, ns.PastaPID())
	time.Sleep(time.Minute)
}

func waitFor(t *testing.T, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			why := ""
			if state != nil {
				why = state()
			}
			t.Fatalf("timed out waiting for %s: %s", what, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive: exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// procState is the stat line (state, ppid) of each pid, for failures.
func procState[T int | string](pids ...T) string {
	var out []string
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%v/stat", p))
		f := strings.Fields(string(b))
		if len(f) > 3 {
			out = append(out, fmt.Sprintf("%v:%s ppid %s %s", p, f[1], f[3], f[2]))
		}
	}
	return strings.Join(out, "; ")
}

// procsWith lists live pids whose command line contains token.
func procsWith(token string) []string {
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil && strings.Contains(string(b), token) && !strings.Contains(string(b), "EBB_SANDBOX_HELPER") {
			pid := strings.Split(d, "/")[2]
			var n int
			fmt.Sscan(pid, &n)
			if alive(n) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
