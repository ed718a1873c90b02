package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReachPrivateDirs runs a function whose code and an extra file sit
// under directories only root may search (as ebb's data dir under a 0700
// home does): bwrap, running as the function's uid, finds them through the
// view, while the view itself stays closed to other users.
func TestReachPrivateDirs(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	t.Cleanup(func() { s.Close() })
	private := t.TempDir() // 0700, and so is its parent
	code := filepath.Join(private, "bundles", "abc")
	if err := os.MkdirAll(code, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(code, "handler.txt"), []byte("code\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(private, "lib.so")
	if err := os.WriteFile(extra, []byte("lib\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bundles, err := s.Reach(filepath.Join(private, "bundles"))
	if err != nil {
		t.Fatalf("Reach bundles: %v", err)
	}
	codeView, err := s.Reach(code) // below a reached root: no new mount
	if err != nil || codeView != filepath.Join(bundles, "abc") {
		t.Fatalf("Reach code: %q, %v; want it under %q", codeView, err, bundles)
	}
	extraView, err := s.Reach(extra)
	if err != nil {
		t.Fatalf("Reach file: %v", err)
	}
	out, err := run(t, s, newNetns(t, s, false), Spec{Code: codeView, ReadOnly: []Bind{{Src: extraView, Dst: "/opt/lib.so"}},
		Argv: []string{"/bin/sh", "-c", "cat /var/task/handler.txt /opt/lib.so; echo x > /opt/lib.so || echo ro"}})
	if err != nil {
		t.Fatalf("sandboxed run: %v: %s", err, out)
	}
	if !strings.Contains(out, "code\nlib\n") || !strings.Contains(out, "ro") {
		t.Fatalf("output %q: want the code, the file, and the file read-only", out)
	}
	fi, err := os.Stat(filepath.Dir(bundles))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("view dir mode %v: others must have no access", fi.Mode().Perm())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), filepath.Dir(bundles)+"/") {
		t.Errorf("mounts left under the view after Close")
	}
	if _, err := os.Stat(filepath.Dir(bundles)); !os.IsNotExist(err) {
		t.Errorf("view directory left after Close: %v", err)
	}
}
