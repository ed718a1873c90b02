// Package ebbtest holds what ebb's tests share: a store on a temporary data
// dir, a buffer that a process may write to while the test reads it, and Go
// fixtures (test functions, the ebb binary) built once per test process.
// Only tests import it.
package ebbtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/store"
)

// Store opens a store (embedded NATS) on a fresh temporary data dir, with
// cfg's other fields, and closes it when the test ends.
func Store(t testing.TB, cfg store.Config) *store.Store {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Buffer is a bytes.Buffer that one goroutine (a process's output copier)
// may write while another reads it.
type Buffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len returns how many bytes were written so far.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// WaitFor polls b until it contains s or d passes, and says whether it did.
// Output reaches a Buffer through a pipe and a copying goroutine, so it may
// lag behind what the process has already answered.
func (b *Buffer) WaitFor(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if strings.Contains(b.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Go describes one Go program to build.
type Go struct {
	// Pkg is what to build: a directory relative to Dir ("./cmd/ebb").
	Pkg string
	// Dir is where go build runs; default the root of ebb's module. A
	// fixture that is its own module builds from its own directory.
	Dir string
	// Env is added to the environment, e.g. CGO_ENABLED=0 for a static
	// binary that runs in a function's sandbox.
	Env []string
	// Flags go to go build, e.g. -tags lambda.norpc.
	Flags []string
}

var (
	buildMu sync.Mutex // guards builds and binDir
	builds  = map[string]*build{}
	binDir  string
)

type build struct {
	once sync.Once
	path string
	err  error
}

// BuildGo builds g once per test process (later calls return the same
// binary) and returns the binary's path. It is for TestMain, which has no
// testing.TB; tests call GoBinary.
func BuildGo(g Go) (string, error) {
	if g.Dir == "" {
		root, err := ModuleRoot()
		if err != nil {
			return "", err
		}
		g.Dir = root
	}
	key := strings.Join([]string{g.Dir, g.Pkg, strings.Join(g.Env, " "), strings.Join(g.Flags, " ")}, "\x00")
	buildMu.Lock()
	if binDir == "" {
		dir, err := os.MkdirTemp("", "ebbtest-bin-")
		if err != nil {
			buildMu.Unlock()
			return "", fmt.Errorf("make build dir: %w", err)
		}
		binDir = dir
	}
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	dir := binDir
	buildMu.Unlock()
	b.once.Do(func() {
		sum := sha256.Sum256([]byte(key))
		b.path = filepath.Join(dir, filepath.Base(filepath.Clean(filepath.Join(g.Dir, g.Pkg)))+"-"+hex.EncodeToString(sum[:4]))
		args := append(append([]string{"build", "-o", b.path}, g.Flags...), g.Pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = g.Dir
		cmd.Env = append(os.Environ(), g.Env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", g.Pkg, err, out)
		}
	})
	return b.path, b.err
}

// GoBinary builds g once per test process and returns the binary's path,
// failing t if it does not build.
func GoBinary(t testing.TB, g Go) string {
	t.Helper()
	p, err := BuildGo(g)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Ebb returns the ebb binary (./cmd/ebb), built once per test process.
func Ebb(t testing.TB) string {
	t.Helper()
	return GoBinary(t, Go{Pkg: "./cmd/ebb"})
}

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// ModuleRoot returns the directory of ebb's go.mod.
func ModuleRoot() (string, error) {
	rootOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			rootErr = fmt.Errorf("find module root: %w", err)
			return
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			rootErr = fmt.Errorf("find module root: not inside a module")
			return
		}
		root = filepath.Dir(gomod)
	})
	return root, rootErr
}
