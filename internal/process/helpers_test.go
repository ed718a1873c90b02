package process

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

const python = "/usr/bin/python3"

// testEnv is the environment given to test processes: Env is not inherited.
var testEnv = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}

var cgroupSeq atomic.Int64

// uniqueCgroupName keeps tests, and test binaries running side by side,
// from cleaning up each other's instances.
func uniqueCgroupName() string {
	return fmt.Sprintf("ebbtest-%d-%d", os.Getpid(), cgroupSeq.Add(1))
}

// newTestManager starts a manager on a fresh Root and closes it at the end
// of the test, failing the test if closing fails.
func newTestManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	if cfg.CgroupName == "" {
		cfg.CgroupName = uniqueCgroupName()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	// Auto mode falls back to none where cgroups cannot be used; where CI
	// says they can, that fallback would only run the no-cgroup path twice.
	if (cfg.CgroupMode == "" || cfg.CgroupMode == ModeAuto) && m.CgroupMode() == ModeNone && ebbtest.Required(ebbtest.RequireCgroups) {
		t.Fatalf("%s=1 but cgroup mode auto fell back to none (see the log above)", ebbtest.RequireCgroups)
	}
	return m
}

// skipNoCgroups skips a test that needs cgroups, or fails it under
// EBB_REQUIRE_CGROUPS=1.
func skipNoCgroups(t testing.TB, why string) {
	t.Helper()
	ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "%s", why)
}

// testWriter sends log output to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// modes are the cgroup modes every behaviour is tested in; auto is whatever
// this machine offers (none where it has no usable cgroups).
var modes = []string{ModeAuto, ModeNone}

func forModes(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}

// lineLog collects the lines a process writes, and lets a test wait for
// the next one.
type lineLog struct {
	mu   sync.Mutex // guards got
	got  []string
	next chan string
}

func newLineLog() *lineLog { return &lineLog{next: make(chan string, 4096)} }

func (l *lineLog) add(b []byte) {
	s := string(b)
	l.mu.Lock()
	l.got = append(l.got, s)
	l.mu.Unlock()
	select {
	case l.next <- s:
	default: // a test that waits line by line never writes this many
	}
}

func (l *lineLog) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

// wait returns the next line, failing the test if none comes in time.
func (l *lineLog) wait(t testing.TB) string {
	t.Helper()
	select {
	case s := <-l.next:
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no output line within 10s; got so far %q", l.lines())
		return ""
	}
}

func start(t testing.TB, m *Manager, spec Spec) *Process {
	t.Helper()
	if spec.ID == "" {
		spec.ID = "i" + strconv.FormatInt(cgroupSeq.Add(1), 10)
	}
	if spec.Env == nil {
		spec.Env = testEnv
	}
	p, err := m.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return p
}

func waitDone(t testing.TB, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		p.Kill()
		t.Fatalf("process %s not done within 20s", p.ID())
	}
}

// alive says whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

// killOnCleanup makes sure a process a test let escape does not outlive it.
func killOnCleanup(t testing.TB, pid int) {
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
}

func TestMain(m *testing.M) {
	if group := os.Getenv(v2ChildEnv); group != "" {
		os.Exit(runV2Child(m, group))
	}
	if os.Getenv("EBB_PROCESS_TEST_HELPER") == "leftover" {
		leftoverHelper()
		return
	}
	os.Exit(m.Run())
}

// leftoverHelper plays an ebb that gets killed with -9: it starts an
// instance whose child outlives the instance's main process, reports that
// child's pid, and waits to be killed.
func leftoverHelper() {
	m, err := NewManager(Config{Root: os.Getenv("EBB_ROOT"), CgroupName: os.Getenv("EBB_CGROUP")})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex // guards out
	p, err := m.Start(context.Background(), Spec{
		ID:   "leftover",
		Path: "/bin/sh",
		Args: []string{"-c", "sleep 1000 & echo $!; wait"},
		Env:  testEnv,
		Stdout: func(line []byte) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(out, "child %s\n", line)
			out.Flush()
		},
	})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	mu.Lock()
	fmt.Fprintf(out, "main %d\n", p.Pid())
	out.Flush()
	mu.Unlock()
	time.Sleep(time.Hour)
}

// runLeftoverHelper runs leftoverHelper in a child process and returns it
// with the pids of the instance's main process and of its child.
func runLeftoverHelper(t *testing.T, root, cgroupName string) (helper *exec.Cmd, mainPid, childPid int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EBB_PROCESS_TEST_HELPER=leftover", "EBB_ROOT="+root, "EBB_CGROUP="+cgroupName)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	br := bufio.NewReader(out)
	for mainPid == 0 || childPid == 0 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read helper output: %v", err)
		}
		what, num, _ := strings.Cut(strings.TrimSpace(line), " ")
		pid, err := strconv.Atoi(num)
		if err != nil {
			t.Fatalf("helper said %q, want main or child and a pid", line)
		}
		killOnCleanup(t, pid)
		switch what {
		case "main":
			mainPid = pid
		case "child":
			childPid = pid
		}
	}
	return cmd, mainPid, childPid
}

func countGoroutines() int { return runtime.NumGoroutine() }
