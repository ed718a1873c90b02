package runtimeapi

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ebb-run/ebb"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

// echoBin is the aws-lambda-go test function, built once by TestMain.
var echoBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// testdata/echo is its own module (see its go.mod), so it builds from
	// inside its directory.
	dir, err := filepath.Abs(filepath.Join("testdata", "echo"))
	if err == nil {
		echoBin, err = ebbtest.BuildGo(ebbtest.Go{Pkg: ".", Dir: dir})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "build echo function: %v\n", err)
		return 1
	}
	return m.Run()
}

// runtimeProc is a function process attached to a Server.
type runtimeProc struct {
	cmd    *exec.Cmd
	out    *ebbtest.Buffer
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
	p := &runtimeProc{out: &ebbtest.Buffer{}, exited: make(chan struct{})}
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
