// Package pyruntime ships ebb's Python runtime: a small program, embedded in
// the ebb binary, that speaks the AWS Lambda Runtime API and calls a user's
// handler(event, context). With it a python function is just an exec
// instance whose command is Command(python, WriteShim(dir)).
//
// The shim uses only Python's standard library (Python >= 3.9), so that it
// runs next to any user environment without installing anything. Its
// load_handler() and serve(api_addr) functions are kept apart so that a
// fork-server can import user code once and fork children that serve.
package pyruntime

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// Shim is the bootstrap program's source.
//
//go:embed bootstrap.py
var Shim []byte

// ShimName is the file name WriteShim gives the shim.
const ShimName = "bootstrap.py"

// DefaultPython is the interpreter used when a function names none.
const DefaultPython = "/usr/bin/python3"

// WriteShim writes the shim into dir, creating dir if needed, and returns its
// path. A file that already holds the same content is left alone, so that
// instances starting at once neither rewrite nor see a half-written file.
func WriteShim(dir string) (string, error) {
	path := filepath.Join(dir, ShimName)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, Shim) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write python shim: %w", err)
	}
	// Written aside and renamed into place: a reader sees the old file or
	// the new one, never a prefix.
	tmp, err := os.CreateTemp(dir, ".bootstrap-*.py")
	if err != nil {
		return "", fmt.Errorf("write python shim: %w", err)
	}
	_, werr := tmp.Write(Shim)
	cerr := tmp.Close()
	if err := firstErr(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write python shim: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write python shim: %w", err)
	}
	return path, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Command returns the argv of an instance: [python, "-u", shimPath]. An empty
// python means DefaultPython. -u keeps print() output unbuffered, so that a
// function's log lines appear as they are written and survive a crash.
func Command(python, shimPath string) []string {
	if python == "" {
		python = DefaultPython
	}
	return []string{python, "-u", shimPath}
}
