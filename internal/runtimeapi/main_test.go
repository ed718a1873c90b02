package runtimeapi

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

// echoBin is the aws-lambda-go test function, built once by TestMain.
var echoBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "runtimeapi-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	echoBin = filepath.Join(dir, "echo")
	// testdata/echo is its own module (see its go.mod), so it builds from
	// inside its directory.
	cmd := exec.Command("go", "build", "-o", echoBin, ".")
	cmd.Dir = filepath.Join("testdata", "echo")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build echo function: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// syncBuffer collects a process's output while it runs.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runtimeProc is a function process attached to a Server.
type runtimeProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{} // closed once the process has been waited for
}

// startServer starts a Server for a test and closes it at the end.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.FunctionName == "" {
		cfg.FunctionName = "echo"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// startEcho runs the echo function against s, as ebb's instance manager
// would: when the process exits, s fails with ebb.ErrCrashed.
func startEcho(t testing.TB, s *Server, env ...string) *runtimeProc {
	t.Helper()
	p := &runtimeProc{out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(echoBin)
	p.cmd.Env = append([]string{
		"AWS_LAMBDA_RUNTIME_API=" + s.Addr(),
		"PATH=" + os.Getenv("PATH"),
	}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start echo: %v", err)
	}
	go func() {
		defer close(p.exited)
		_ = p.cmd.Wait()
		s.Fail(ebb.ErrCrashed)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("echo output:\n%s", p.out.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v\n%s", err, p.out.String())
	}
	return p
}
