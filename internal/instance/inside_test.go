package instance

import (
	"slices"
	"strings"
	"testing"
)

// TestInside: host paths map to where a sandboxed process sees them, by
// whole path components only (a sibling that shares a prefix is not
// inside), and pass through unsandboxed.
func TestInside(t *testing.T) {
	s := &Starter{box: &box{}, codeDir: "/data/bundles/abc",
		cfg: Config{ShimDir: "/data/runtime", ONNXLibrary: "/opt/ort/lib/libonnxruntime.so.1", Executable: "/usr/local/bin/ebb"}}
	for host, want := range map[string]string{
		"/data/bundles/abc":                "/var/task",
		"/data/bundles/abc/app.py":         "/var/task/app.py",
		"/data/bundles/abcdef/app.py":      "/data/bundles/abcdef/app.py",
		"/data/runtime/bootstrap.py":       "/.ebb/runtime/bootstrap.py",
		"/opt/ort/lib/libonnxruntime.so.1": "/.ebb/onnxruntime/libonnxruntime.so.1",
		"/usr/local/bin/ebb":               "/.ebb/ebb",
		"/usr/local/bin/ebb-other":         "/usr/local/bin/ebb-other",
		"/usr/bin/python3":                 "/usr/bin/python3",
		"":                                 "",
	} {
		if got := s.inside(host); got != want {
			t.Errorf("inside(%q) = %q, want %q", host, got, want)
		}
	}
	off := &Starter{codeDir: "/data/bundles/abc"}
	if got := off.inside("/data/bundles/abc/app.py"); got != "/data/bundles/abc/app.py" {
		t.Errorf("unsandboxed inside = %q, want the host path", got)
	}
}

// TestBoxEnv: a sandboxed process's home and scratch are its private /tmp,
// whatever the host's environment said, and nothing else is lost.
func TestBoxEnv(t *testing.T) {
	got := boxEnv([]string{"PATH=/usr/bin", "HOME=/root", "TMPDIR=/data/instances/i1/tmp", "TMP=/x", "TEMP=/y", "GREETING=hi=there"})
	want := []string{"PATH=/usr/bin", "GREETING=hi=there", "TMPDIR=/tmp", "TMP=/tmp", "TEMP=/tmp", "HOME=/tmp"}
	if !slices.Equal(got, want) {
		t.Errorf("boxEnv = %v, want %v", got, want)
	}
	for _, kv := range got {
		if strings.Contains(kv, "/data/") || strings.Contains(kv, "/root") {
			t.Errorf("a host path reached the sandbox: %s", kv)
		}
	}
}
