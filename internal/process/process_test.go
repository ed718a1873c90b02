package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"minimal", Config{Root: "/tmp/x"}, ""},
		{"full", Config{Root: "/tmp/x", CgroupName: "ebb-2.a_b", CgroupMode: ModeV1, PidsMax: 10, DrainTimeout: time.Second}, ""},
		{"no root", Config{}, "Root is required"},
		{"bad mode", Config{Root: "/r", CgroupMode: "v3"}, `CgroupMode "v3"`},
		{"slash in name", Config{Root: "/r", CgroupName: "a/b"}, "CgroupName"},
		{"dot name", Config{Root: "/r", CgroupName: ".."}, "CgroupName"},
		{"negative pids", Config{Root: "/r", PidsMax: -1}, "PidsMax"},
		{"too many pids", Config{Root: "/r", PidsMax: 1 << 23}, "PidsMax"},
		{"negative drain", Config{Root: "/r", DrainTimeout: -time.Second}, "DrainTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		wantErr  string // "" for nil
		wantCode int
		wantSig  syscall.Signal
	}{
		{"success", "exit 0", "", 0, 0},
		{"status", "exit 3", "exited with status 3", 3, 0},
		{"kill", "kill -KILL $$", "killed by signal KILL", -1, syscall.SIGKILL},
		{"segv", "kill -SEGV $$", "killed by signal SEGV", -1, syscall.SIGSEGV},
		{"term", "kill -TERM $$", "killed by signal TERM", -1, syscall.SIGTERM},
	}
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", tt.script}})
				waitDone(t, p)
				err := p.Err()
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("Err() = %v, want nil", err)
					}
					return
				}
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Err() = %v, want %q", err, tt.wantErr)
				}
				var ee *ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("Err() is %T, want *ExitError", err)
				}
				if ee.Code != tt.wantCode || ee.Signal != tt.wantSig {
					t.Errorf("ExitError code %d signal %v, want %d %v", ee.Code, ee.Signal, tt.wantCode, tt.wantSig)
				}
				if errors.Is(err, ebb.ErrOutOfMemory) || p.OOMKilled() {
					t.Errorf("Err() = %v, OOMKilled %v: want no out-of-memory", err, p.OOMKilled())
				}
			})
		}
	})
}

func TestOutputLines(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		stdout, stderr := newLineLog(), newLineLog()
		// Interleaved streams, an empty line, a line longer than the
		// limit, and a last line without a newline.
		script := `
i=0
while [ $i -lt 500 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done
echo
head -c 70000 /dev/zero | tr '\0' a; echo
printf tail`
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: stdout.add, Stderr: stderr.add})
		waitDone(t, p)
		if err := p.Err(); err != nil {
			t.Fatalf("Err() = %v", err)
		}
		var wantOut, wantErr []string
		for i := range 500 {
			wantOut = append(wantOut, fmt.Sprintf("out %d", i))
			wantErr = append(wantErr, fmt.Sprintf("err %d", i))
		}
		wantOut = append(wantOut, "", strings.Repeat("a", MaxLineBytes), strings.Repeat("a", 70000-MaxLineBytes), "tail")
		if got := stdout.lines(); !slices.Equal(got, wantOut) {
			t.Errorf("stdout: got %d lines, want %d; first difference: %s", len(got), len(wantOut), firstDiff(got, wantOut))
		}
		if got := stderr.lines(); !slices.Equal(got, wantErr) {
			t.Errorf("stderr: got %d lines, want %d; first difference: %s", len(got), len(wantErr), firstDiff(got, wantErr))
		}
	})
}

func firstDiff(got, want []string) string {
	short := func(s string) string {
		if len(s) > 40 {
			return fmt.Sprintf("%q… (%d bytes)", s[:40], len(s))
		}
		return fmt.Sprintf("%q", s)
	}
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			return fmt.Sprintf("line %d missing, want %s", i, short(want[i]))
		case i >= len(want):
			return fmt.Sprintf("extra line %d: %s", i, short(got[i]))
		case got[i] != want[i]:
			return fmt.Sprintf("line %d = %s, want %s", i, short(got[i]), short(want[i]))
		}
	}
	return "none"
}

func TestDirectories(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		code := t.TempDir()
		if err := os.WriteFile(filepath.Join(code, "model.bin"), []byte("weights"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(code, "pkg"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(code, "pkg", "mod.py"), []byte("x = 1"), 0o644); err != nil {
			t.Fatal(err)
		}
		out := newLineLog()
		script := `pwd -P; cat model.bin; echo; cat pkg/mod.py; echo
echo "$TMPDIR|$TMP|$TEMP|$HOME"
echo written > out.txt && cat out.txt
echo scratch > "$TMPDIR/s" && ls "$TMPDIR"
cat <&3 >/dev/null`
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", script}, CodeDir: code, Stdout: out.add, ExtraFiles: []*os.File{r}})
		wantDir := filepath.Join(m.root, p.ID())
		if p.WorkDir() != filepath.Join(wantDir, "task") || p.ScratchDir() != filepath.Join(wantDir, "tmp") {
			t.Errorf("WorkDir, ScratchDir = %s, %s; want %s/{task,tmp}", p.WorkDir(), p.ScratchDir(), wantDir)
		}
		realWork, err := filepath.EvalSymlinks(p.WorkDir())
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			realWork,
			"weights",
			"x = 1",
			p.ScratchDir() + "|" + p.ScratchDir() + "|" + p.ScratchDir() + "|" + p.WorkDir(),
			"written",
			"s",
		}
		for i, w := range want {
			if got := out.wait(t); got != w {
				t.Errorf("line %d = %q, want %q", i, got, w)
			}
		}
		// The process is still running: its files are in its own dir.
		if b, err := os.ReadFile(filepath.Join(p.WorkDir(), "out.txt")); err != nil || string(b) != "written\n" {
			t.Errorf("work dir out.txt = %q, %v; want %q", b, err, "written\n")
		}
		w.Close()
		waitDone(t, p)
		if err := p.Err(); err != nil {
			t.Fatalf("Err() = %v", err)
		}
		if _, err := os.Stat(wantDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("instance directory after Done: Stat error %v, want not exist", err)
		}
		if _, err := os.Stat(filepath.Join(code, "out.txt")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("out.txt landed in the code directory (Stat error %v)", err)
		}
		if b, err := os.ReadFile(filepath.Join(code, "pkg", "mod.py")); err != nil || string(b) != "x = 1" {
			t.Errorf("code directory changed: mod.py = %q, %v", b, err)
		}
	})
}

func TestEnvOverrides(t *testing.T) {
	m := newTestManager(t, Config{CgroupMode: ModeNone})
	out := newLineLog()
	env := append(slices.Clone(testEnv), "TMPDIR=/custom", "GREETING=hi")
	p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", `echo "$TMPDIR $TMP $GREETING"`}, Env: env, Stdout: out.add})
	waitDone(t, p)
	want := "/custom " + p.ScratchDir() + " hi"
	if got := out.lines(); len(got) != 1 || got[0] != want {
		t.Errorf("output %q, want [%q]", got, want)
	}
}

func TestStop(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		grace     time.Duration
		wantErr   string
		wantStopE bool
	}{
		{"exits on TERM", "import time\nprint('ready', flush=True)\ntime.sleep(60)", 10 * time.Second, "killed by signal TERM", false},
		{"ignores TERM", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)", 300 * time.Millisecond, "killed by signal KILL", true},
		{"handles TERM", "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\nprint('ready', flush=True)\ntime.sleep(60)", 10 * time.Second, "exited with status 7", false},
	}
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out := newLineLog()
				p := start(t, m, Spec{Path: python, Args: []string{"-c", tt.script}, Stdout: out.add})
				if got := out.wait(t); got != "ready" {
					t.Fatalf("first line %q, want ready", got)
				}
				ctx, cancel := context.WithTimeout(context.Background(), tt.grace)
				defer cancel()
				began := time.Now()
				err := p.Stop(ctx)
				if (err != nil) != tt.wantStopE {
					t.Errorf("Stop() = %v, want error %v", err, tt.wantStopE)
				}
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Stop() = %v, want it to wrap context.DeadlineExceeded", err)
				}
				if !tt.wantStopE && time.Since(began) > 5*time.Second {
					t.Errorf("Stop took %v for a process that ends on TERM", time.Since(began))
				}
				select {
				case <-p.Done():
				default:
					t.Fatal("Stop returned before Done")
				}
				if got := p.Err(); got == nil || got.Error() != tt.wantErr {
					t.Errorf("Err() = %v, want %q", got, tt.wantErr)
				}
			})
		}
	})
}

func TestKillKillsTree(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		out := newLineLog()
		// A child and a grandchild, both in the process group.
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", `sh -c 'sleep 1000 & echo $!; wait' & wait`}, Stdout: out.add})
		pid, err := strconv.Atoi(out.wait(t))
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, pid)
		if !alive(pid) {
			t.Fatalf("grandchild %d not running before Kill", pid)
		}
		p.Kill()
		p.Kill() // idempotent
		waitDone(t, p)
		if alive(pid) {
			t.Errorf("grandchild %d still running after Done", pid)
		}
		if got := p.Err(); got == nil || got.Error() != "killed by signal KILL" {
			t.Errorf("Err() = %v, want killed by signal KILL", got)
		}
		p.Kill() // after Done: harmless
	})
}

func TestMainExitEndsTree(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		// A long drain timeout: Done must not depend on it here, since
		// the background child is in the group and gets killed.
		m := newTestManager(t, Config{CgroupMode: mode, DrainTimeout: time.Minute})
		out := newLineLog()
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", `sleep 1000 & echo $!`}, Stdout: out.add})
		pid, err := strconv.Atoi(out.wait(t))
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, pid)
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("not done 10s after the main process exited while its child held stdout")
		}
		if err := p.Err(); err != nil {
			t.Errorf("Err() = %v, want nil", err)
		}
		if alive(pid) {
			t.Errorf("background child %d still running after Done", pid)
		}
	})
}

func TestDaemonEscapingGroup(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		// With cgroups the daemon is killed with the rest, so Done must
		// not wait for the drain timeout; without, it is what ends it.
		drain := 300 * time.Millisecond
		if mode != ModeNone {
			drain = time.Minute
		}
		m := newTestManager(t, Config{CgroupMode: mode, DrainTimeout: drain})
		if mode != ModeNone && m.CgroupMode() == ModeNone {
			skipNoCgroups(t, "no cgroups on this machine")
		}
		out := newLineLog()
		// setsid leaves the process group but keeps stdout open; the
		// main process exits once the daemon has reported its pid.
		script := `mkfifo ready; setsid sh -c 'echo $$; echo > ready; exec sleep 1000' & read -r _ < ready`
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: out.add})
		pid, err := strconv.Atoi(out.wait(t))
		if err != nil {
			t.Fatal(err)
		}
		killOnCleanup(t, pid)
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("not done 10s after the main process exited")
		}
		if m.CgroupMode() != ModeNone && alive(pid) {
			t.Errorf("daemon %d escaped its cgroup", pid)
		}
		// Without cgroups the daemon survives; what matters is that
		// Done came (after the drain timeout) and nothing leaks.
	})
}

func TestMemoryLimit(t *testing.T) {
	m := newTestManager(t, Config{})
	if m.CgroupMode() == ModeNone {
		skipNoCgroups(t, "no cgroups on this machine")
	}
	p := start(t, m, Spec{Path: python, Args: []string{"-c", "b = b'x' * (200 << 20)\nprint(len(b))"}, MemoryMiB: 64})
	waitDone(t, p)
	err := p.Err()
	if !errors.Is(err, ebb.ErrOutOfMemory) {
		t.Fatalf("Err() = %v, want it to wrap ebb.ErrOutOfMemory", err)
	}
	if !p.OOMKilled() {
		t.Error("OOMKilled() = false, want true")
	}
	if want := "killed by signal KILL: " + ebb.ErrOutOfMemory.Error(); err.Error() != want {
		t.Errorf("Err() = %q, want %q", err, want)
	}

	// Under the limit the same program is fine.
	p = start(t, m, Spec{Path: python, Args: []string{"-c", "b = b'x' * (20 << 20)"}, MemoryMiB: 64})
	waitDone(t, p)
	if err := p.Err(); err != nil || p.OOMKilled() {
		t.Errorf("20 MiB in 64 MiB: Err() = %v, OOMKilled %v; want nil, false", err, p.OOMKilled())
	}
}

func TestPeakRSS(t *testing.T) {
	const script = `import os
print('start', flush=True)
os.read(3, 1)
b = b'x' * (100 << 20)
print('allocated', flush=True)
os.read(3, 1)
`
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		out := newLineLog()
		p := start(t, m, Spec{Path: python, Args: []string{"-c", script}, Stdout: out.add, ExtraFiles: []*os.File{r}})
		if got := out.wait(t); got != "start" {
			t.Fatalf("line %q, want start", got)
		}
		before := p.PeakRSS()
		if before == 0 {
			t.Error("PeakRSS() = 0 for a running python")
		}
		w.Write([]byte{1})
		if got := out.wait(t); got != "allocated" {
			t.Fatalf("line %q, want allocated", got)
		}
		after := p.PeakRSS()
		if after < before+95<<20 {
			t.Errorf("PeakRSS() after allocating 100 MiB = %d, before %d; want at least 95 MiB more", after, before)
		}
		w.Write([]byte{1})
		waitDone(t, p)
		if err := p.Err(); err != nil {
			t.Fatalf("Err() = %v", err)
		}
		if final := p.PeakRSS(); final < after {
			t.Errorf("PeakRSS() after Done = %d, want at least %d", final, after)
		}
	})
}

func TestCgroupPlacement(t *testing.T) {
	m := newTestManager(t, Config{})
	if m.CgroupMode() == ModeNone {
		skipNoCgroups(t, "no cgroups on this machine")
	}
	out := newLineLog()
	// The child forks at once: it must be born inside, not moved later.
	p := start(t, m, Spec{ID: "placed", Path: "/bin/sh", Args: []string{"-c", "cat /proc/self/cgroup"}, Stdout: out.add})
	waitDone(t, p)
	suffix := "/" + m.cfg.CgroupName + "/placed"
	var inMem, inPids bool
	for _, l := range out.lines() {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for c := range strings.SplitSeq(parts[1], ",") {
			switch {
			case m.CgroupMode() == ModeV2 && parts[0] == "0":
				inMem = strings.HasSuffix(parts[2], suffix)
			case c == "memory":
				inMem = strings.HasSuffix(parts[2], suffix)
			case c == "pids":
				inPids = strings.HasSuffix(parts[2], suffix)
			}
		}
	}
	if !inMem {
		t.Errorf("child's cgroups %q: not in the instance's memory cgroup (…%s)", out.lines(), suffix)
	}
	if m.CgroupMode() == ModeV1 && m.cg.pidsParent != "" && !inPids {
		t.Errorf("child's cgroups %q: not in the instance's pids cgroup", out.lines())
	}
	if _, err := os.Stat(p.cg.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance cgroup after Done: Stat error %v, want not exist", err)
	}
	// The spawner threads went back where they came from (v2 moves no
	// threads; there the process sits beside the parent, in …/<name>.supervisor).
	tasks, _ := filepath.Glob("/proc/self/task/*/cgroup")
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err == nil && bytes.Contains(b, []byte("/"+m.cfg.CgroupName+"/")) {
			t.Errorf("%s still in an instance cgroup: %s", f, b)
		}
	}
}

func TestPidsLimit(t *testing.T) {
	m := newTestManager(t, Config{PidsMax: 8})
	if m.CgroupMode() == ModeNone || (m.CgroupMode() == ModeV1 && m.cg.pidsParent == "") || (m.CgroupMode() == ModeV2 && !m.cg.v2Pids) {
		skipNoCgroups(t, "no pids controller on this machine")
	}
	out := newLineLog()
	script := `import os, time
n = 0
for i in range(20):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    n += 1
print(n, flush=True)
`
	p := start(t, m, Spec{Path: python, Args: []string{"-c", script}, Stdout: out.add})
	waitDone(t, p)
	n, err := strconv.Atoi(out.wait(t))
	if err != nil {
		t.Fatal(err)
	}
	// The python process itself is the eighth.
	if n != 7 {
		t.Errorf("forked %d children with pids.max 8, want 7", n)
	}
}

func TestStartErrors(t *testing.T) {
	m := newTestManager(t, Config{})
	long := newLineLog()
	running := start(t, m, Spec{ID: "taken", Path: "/bin/sh", Args: []string{"-c", "echo up; exec sleep 1000"}, Stdout: long.add})
	long.wait(t)
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"duplicate id", Spec{ID: "taken", Path: "/bin/true"}, "id is in use"},
		{"bad id", Spec{ID: "../x", Path: "/bin/true"}, "invalid instance id"},
		{"empty id", Spec{Path: "/bin/true"}, "invalid instance id"},
		{"no path", Spec{ID: "np"}, "no executable"},
		{"missing executable", Spec{ID: "missing", Path: "/nonexistent/bin"}, "no such file"},
		{"not in PATH", Spec{ID: "nopath", Path: "no-such-command-ebb"}, "not found"},
		{"missing code dir", Spec{ID: "nocode", Path: "/bin/true", CodeDir: "/nonexistent"}, "code directory"},
		{"negative memory", Spec{ID: "neg", Path: "/bin/true", MemoryMiB: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := m.Start(context.Background(), tt.spec)
			if err == nil {
				p.Kill()
				t.Fatalf("Start() succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Start() = %v, want error containing %q", err, tt.wantErr)
			}
			if tt.spec.ID != "taken" && validID(tt.spec.ID) {
				if _, err := os.Stat(filepath.Join(m.root, tt.spec.ID)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("failed start left its directory (Stat error %v)", err)
				}
				if m.CgroupMode() != ModeNone {
					if _, err := os.Stat(filepath.Join(m.cg.parent, tt.spec.ID)); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("failed start left its cgroup (Stat error %v)", err)
					}
				}
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Start(ctx, Spec{ID: "cancelled", Path: "/bin/true"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Start with a cancelled context = %v, want context.Canceled", err)
	}
	// The id is free again once its process is done.
	running.Kill()
	waitDone(t, running)
	p := start(t, m, Spec{ID: "taken", Path: "/bin/true"})
	waitDone(t, p)
}

func TestCloseKillsAndCleansUp(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m, err := NewManager(Config{Root: t.TempDir(), CgroupName: uniqueCgroupName(), CgroupMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		out := newLineLog()
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", "echo up; exec sleep 1000"}, Stdout: out.add})
		out.wait(t)
		if err := m.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		select {
		case <-p.Done():
		default:
			t.Fatal("Close returned before its process was done")
		}
		if got := p.Err(); got == nil || got.Error() != "killed by signal KILL" {
			t.Errorf("Err() = %v, want killed by signal KILL", got)
		}
		if m.CgroupMode() != ModeNone {
			if _, err := os.Stat(m.cg.parent); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("parent cgroup after Close: Stat error %v, want not exist", err)
			}
		}
		if _, err := m.Start(context.Background(), Spec{ID: "late", Path: "/bin/true"}); !errors.Is(err, ebb.ErrClosed) {
			t.Errorf("Start after Close = %v, want ebb.ErrClosed", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
	})
}

func TestManagersAreExclusive(t *testing.T) {
	root := t.TempDir()
	first := newTestManager(t, Config{Root: root})
	if m, err := NewManager(Config{Root: root, CgroupMode: ModeNone, CgroupName: uniqueCgroupName()}); err == nil {
		m.Close()
		t.Error("second NewManager on the same Root succeeded")
	}
	if first.CgroupMode() == ModeNone {
		skipNoCgroups(t, "no cgroups on this machine: only the Root lock was checked")
	}
	// Another Root but the same cgroup: it would kill the first
	// manager's instances as leftovers.
	if m, err := NewManager(Config{Root: t.TempDir(), CgroupName: first.cfg.CgroupName}); err == nil {
		m.Close()
		t.Error("second NewManager with the same CgroupName succeeded")
	} else if !errors.Is(err, errLocked) {
		t.Errorf("second NewManager with the same CgroupName: %v, want errLocked", err)
	}
}

func TestLeftoversCleaned(t *testing.T) {
	probe := newTestManager(t, Config{})
	if probe.CgroupMode() == ModeNone {
		skipNoCgroups(t, "no cgroups on this machine")
	}
	root, name := t.TempDir(), uniqueCgroupName()
	// Something else under Root that is not an instance's must survive.
	keep := filepath.Join(root, "keep")
	if err := os.MkdirAll(filepath.Join(keep, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	helper, mainPid, pid := runLeftoverHelper(t, root, name)
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	// The instance's main process dies with ebb (parent-death signal);
	// its child lives on in the cgroup.
	deadline := time.Now().Add(5 * time.Second)
	for alive(mainPid) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(mainPid) {
		t.Errorf("instance main process %d outlived the killed ebb", mainPid)
	}
	if !alive(pid) {
		t.Fatalf("instance child %d did not outlive the killed ebb; the test proves nothing", pid)
	}
	if _, err := os.Stat(filepath.Join(root, "leftover", "task")); err != nil {
		t.Fatalf("leftover work directory: %v", err)
	}

	m := newTestManager(t, Config{Root: root, CgroupName: name})
	if alive(pid) {
		t.Errorf("leftover process %d still running after NewManager", pid)
	}
	if _, err := os.Stat(filepath.Join(m.cg.parent, "leftover")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover cgroup: Stat error %v, want not exist", err)
	}
	if _, err := os.Stat(filepath.Join(root, "leftover")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover instance directory: Stat error %v, want not exist", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "data")); err != nil {
		t.Errorf("unrelated directory under Root was touched: %v", err)
	}
	// The id is usable again.
	p := start(t, m, Spec{ID: "leftover", Path: "/bin/true"})
	waitDone(t, p)
	if err := p.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
}

// countingHandler counts warnings that say memory limits are off.
type countingHandler struct {
	mu    sync.Mutex // guards warns
	warns []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.mu.Lock()
		h.warns = append(h.warns, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func TestNoneModeWarnsOnce(t *testing.T) {
	h := &countingHandler{}
	m := newTestManager(t, Config{CgroupMode: ModeNone, Logger: slog.New(h)})
	if got := m.CgroupMode(); got != ModeNone {
		t.Fatalf("CgroupMode() = %q, want none", got)
	}
	for range 3 {
		p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", "exit 0"}, MemoryMiB: 64})
		waitDone(t, p)
		if err := p.Err(); err != nil {
			t.Fatalf("Err() = %v", err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.warns) != 1 || !strings.Contains(h.warns[0], "memory limits are not enforced") {
		t.Errorf("warnings %q, want exactly one saying memory limits are not enforced", h.warns)
	}
}

func TestNoGoroutineOrFdLeak(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		// Warm up lazily created runtime state (poller, timers).
		p := start(t, m, Spec{Path: "/bin/true", Stdout: func([]byte) {}})
		waitDone(t, p)
		fds, goroutines := openFds(t), countGoroutines()
		for i := range 10 {
			out := newLineLog()
			p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", "echo hi; echo err >&2; sleep 1000 & exit " + strconv.Itoa(i%2)}, Stdout: out.add, Stderr: out.add})
			waitDone(t, p)
		}
		// Only fds opened since the snapshot count: the test process may
		// have inherited others from its runner (a pipe, say), which
		// anything may close meanwhile.
		if leaked := newFds(t, fds); len(leaked) > 0 {
			t.Errorf("fds opened by 10 processes and left open: %v", leaked)
		}
		// Goroutines that just closed Done may still be returning.
		deadline := time.Now().Add(5 * time.Second)
		for countGoroutines() > goroutines && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := countGoroutines(); got > goroutines {
			t.Errorf("goroutines after 10 processes = %d, want %d", got, goroutines)
		}
	})
}

// openFds returns this process's open fds and what each refers to.
func openFds(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]string{}
	for _, e := range entries {
		// The fd of the directory being read is gone by now: Readlink fails.
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil {
			fds[e.Name()] = target
		}
	}
	return fds
}

// newFds returns the fds open now that were not (or referred to something
// else) in before.
func newFds(t *testing.T, before map[string]string) []string {
	t.Helper()
	var out []string
	for fd, target := range openFds(t) {
		if before[fd] != target {
			out = append(out, fd+" -> "+target)
		}
	}
	sort.Strings(out)
	return out
}

func TestRelativePathInCode(t *testing.T) {
	m := newTestManager(t, Config{CgroupMode: ModeNone})
	code := t.TempDir()
	if err := os.WriteFile(filepath.Join(code, "bootstrap"), []byte("#!/bin/sh\necho \"boot $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := newLineLog()
	p := start(t, m, Spec{Path: "./bootstrap", Args: []string{"arg"}, CodeDir: code, Stdout: out.add})
	waitDone(t, p)
	if err := p.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}
	if got := out.lines(); !slices.Equal(got, []string{"boot arg"}) {
		t.Errorf("output %q, want [\"boot arg\"]", got)
	}
}

// TestSyncOutput: lines a process wrote before SyncOutput is called have
// all been delivered when it returns, however far its readers lag behind
// (here a line callback that takes a millisecond per line).
func TestSyncOutput(t *testing.T) {
	m := newTestManager(t, Config{CgroupMode: "none"})
	var mu sync.Mutex
	var got []string
	slow := func(line []byte) {
		time.Sleep(time.Millisecond)
		mu.Lock()
		got = append(got, string(line))
		mu.Unlock()
	}
	done := filepath.Join(t.TempDir(), "written")
	script := `i=0; while [ $i -lt 300 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; : > ` + done + `; sleep 1000`
	p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: slow, Stderr: slow})
	t.Cleanup(p.Kill)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the script did not write its lines")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.SyncOutput(ctx); err != nil {
		t.Fatalf("SyncOutput: %v", err)
	}
	mu.Lock()
	n := len(got)
	mu.Unlock()
	if n != 600 {
		t.Fatalf("after SyncOutput %d of the 600 lines written before it were delivered", n)
	}
}

// TestSyncOutputFloodIsBounded: a process that never stops writing keeps
// its pipe from ever being empty at a quiet point, so a sync can never
// complete; it must end with its context, and output keeps flowing.
func TestSyncOutputFloodIsBounded(t *testing.T) {
	m := newTestManager(t, Config{CgroupMode: "none"})
	var mu sync.Mutex
	lines := 0
	count := func([]byte) { mu.Lock(); lines++; mu.Unlock() }
	p := start(t, m, Spec{Path: "/bin/sh", Args: []string{"-c", "while :; do echo flood; done"}, Stdout: count})
	t.Cleanup(p.Kill)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := p.SyncOutput(ctx); !errors.Is(err, context.DeadlineExceeded) {
		// Nil is possible only if the pipe was seen empty at a quiet
		// point, which a writer in a tight loop can allow now and then:
		// then the sync was honest, and the bound is not what was tested.
		if err != nil {
			t.Fatalf("SyncOutput under a flood: %v, want the context's end", err)
		}
	}
	mu.Lock()
	before := lines
	mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := lines
		mu.Unlock()
		if n > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("output stopped flowing after a sync")
		}
	}
}
