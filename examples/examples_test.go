// Package examples holds no code of its own: its tests check that every
// example under examples/ is a deployable ebb function (manifest, handler,
// build outputs ignored) and run the Python example's handler for real.
package examples

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/manifest"
)

// exampleDirs lists every directory under examples/ that has an ebb.yaml; the
// Makefile deploys exactly these.
func exampleDirs(t *testing.T) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join("*", "ebb.yaml"))
	if err != nil {
		t.Fatalf("glob manifests: %v", err)
	}
	var dirs []string
	for _, m := range matches {
		dirs = append(dirs, filepath.Dir(m))
	}
	if len(dirs) < 3 {
		t.Fatalf("found %d examples with an ebb.yaml (%v), want at least 3", len(dirs), dirs)
	}
	return dirs
}

// readManifest parses dir/ebb.yaml with the platform's own parser, so an
// example that ebb would refuse fails here first.
func readManifest(t *testing.T, dir string) *ebb.Spec {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, manifest.FileName))
	if err != nil {
		t.Fatalf("read manifest: %v", err)
	}
	spec, err := manifest.Parse(raw)
	if err != nil {
		t.Fatalf("parse %s/%s: %v", dir, manifest.FileName, err)
	}
	return spec
}

func TestManifests(t *testing.T) {
	for _, dir := range exampleDirs(t) {
		t.Run(dir, func(t *testing.T) {
			spec := readManifest(t, dir)
			if spec.Name != dir {
				t.Errorf("name: got %q, want the directory name %q", spec.Name, dir)
			}
			if spec.MinInstances != 0 {
				t.Errorf("min_instances: got %d, want 0 (examples scale to zero; benchmarks override it)", spec.MinInstances)
			}
			switch spec.Runtime {
			case ebb.RuntimeExec, ebb.RuntimeHTTP:
				checkBuiltBinary(t, dir, spec.Handler)
			case ebb.RuntimePython:
				module, _, _ := strings.Cut(spec.Handler, ".")
				if _, err := os.Stat(filepath.Join(dir, module+".py")); err != nil {
					t.Errorf("handler module: %v", err)
				}
			case ebb.RuntimeONNX:
				if _, err := os.Stat(filepath.Join(dir, spec.Handler)); err != nil {
					t.Errorf("model file: %v", err)
				}
			default:
				t.Errorf("runtime: got %q, want exec, http, python or onnx", spec.Runtime)
			}

			readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
			if err != nil {
				t.Errorf("README: %v", err)
			} else if !bytes.Contains(readme, []byte(spec.Name)) {
				t.Errorf("README.md does not mention the function name %q", spec.Name)
			}
		})
	}
}

// checkBuiltBinary checks that an exec/http handler is a binary in the bundle
// root, built from the example's own Go sources, and ignored by git so a
// stale local build is never committed.
func checkBuiltBinary(t *testing.T, dir, handler string) {
	t.Helper()
	bin, ok := strings.CutPrefix(handler, "./")
	if !ok || bin == "" || strings.ContainsAny(bin, "/ ") {
		t.Fatalf("handler %q: want ./NAME, a binary in the bundle root", handler)
	}
	if _, err := os.Stat(filepath.Join(dir, "main.go")); err != nil {
		t.Errorf("sources for %s: %v", bin, err)
	}
	ignore, err := os.ReadFile(filepath.Join(dir, ".gitignore"))
	if err != nil {
		t.Fatalf("read .gitignore: %v", err)
	}
	ignored := false
	for _, line := range strings.Split(string(ignore), "\n") {
		if l := strings.TrimSpace(line); l == bin || l == "/"+bin {
			ignored = true
		}
	}
	if !ignored {
		t.Errorf(".gitignore does not ignore the built binary %q", bin)
	}
}

// debianPython is the interpreter ebb's python runtime targets; the first
// python3 on PATH on developer machines may be a different one.
const debianPython = "/usr/bin/python3"

// pythonDriver imports the example the way a Lambda-style runtime does and
// calls the handler with a context that has aws_request_id, printing one JSON
// result per line.
const pythonDriver = `
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
mod = importlib.import_module(sys.argv[2])
fn = getattr(mod, sys.argv[3])
class Context:
    def __init__(self, rid):
        self.aws_request_id = rid
for i, line in enumerate(sys.stdin):
    print(json.dumps(fn(json.loads(line), Context("req-%d" % i))), flush=True)
`

func TestHelloPythonHandler(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("no %s: %v", debianPython, err)
	}
	m := readManifest(t, "hello-python")
	module, fn, _ := strings.Cut(m.Handler, ".")

	events := []struct {
		name        string
		event       string
		wantMessage string
	}{
		{"named", `{"name": "ada"}`, "hello, ada"},
		{"empty object", `{}`, "hello, world"},
		{"empty name", `{"name": ""}`, "hello, world"},
		{"name not a string", `{"name": 7}`, "hello, world"},
		{"event not an object", `[1, 2]`, "hello, world"},
		{"null event", `null`, "hello, world"},
	}
	var stdin strings.Builder
	for _, e := range events {
		stdin.WriteString(e.event + "\n")
	}

	cmd := exec.Command(debianPython, "-c", pythonDriver, "hello-python", module, fn)
	cmd.Stdin = strings.NewReader(stdin.String())
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run handler: %v\nstderr:\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(events) {
		t.Fatalf("results: got %d lines, want %d:\n%s", len(lines), len(events), out)
	}
	var firstPID int
	for i, e := range events {
		var got struct {
			Message             string `json:"message"`
			RequestID           string `json:"request_id"`
			InstanceInvocations int    `json:"instance_invocations"`
			PID                 int    `json:"pid"`
		}
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
			t.Fatalf("%s: decode %q: %v", e.name, lines[i], err)
		}
		if got.Message != e.wantMessage {
			t.Errorf("%s: message: got %q, want %q", e.name, got.Message, e.wantMessage)
		}
		if want := fmt.Sprintf("req-%d", i); got.RequestID != want {
			t.Errorf("%s: request_id: got %q, want %q", e.name, got.RequestID, want)
		}
		// Module state survives between invocations of one instance: this is
		// what the example exists to show.
		if got.InstanceInvocations != i+1 {
			t.Errorf("%s: instance_invocations: got %d, want %d", e.name, got.InstanceInvocations, i+1)
		}
		if i == 0 {
			firstPID = got.PID
		} else if got.PID != firstPID {
			t.Errorf("%s: pid: got %d, want %d (same instance)", e.name, got.PID, firstPID)
		}
	}
	if _, err := os.Stat(filepath.Join("hello-python", "__pycache__")); err == nil {
		t.Errorf("the test left hello-python/__pycache__ behind; it would be deployed in the bundle")
	}
}
