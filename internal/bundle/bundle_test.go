package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPackUnpackRoundTrip(t *testing.T) {
	src := writeTree(t, map[string]string{"ebb.yaml": "name: a\n", "app.py": "x = 1\n", "lib/util.py": "y = 2\n", ".git/HEAD": "ref"})
	if err := os.Chmod(filepath.Join(src, "app.py"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("lib/util.py", filepath.Join(src, "link.py")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	d1, err := Pack(src, &buf)
	if err != nil {
		t.Fatal(err)
	}
	// Packing is deterministic: the digest does not depend on mtimes.
	if err := os.Chtimes(filepath.Join(src, "app.py"), time.Unix(1, 0), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	var buf2 bytes.Buffer
	d2, err := Pack(src, &buf2)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("digest changed with mtime: %s vs %s", d1, d2)
	}
	got, err := ReadFile(bytes.NewReader(buf.Bytes()), "ebb.yaml", 1024)
	if err != nil || string(got) != "name: a\n" {
		t.Errorf("ReadFile = %q, %v", got, err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	if err := Unpack(bytes.NewReader(buf.Bytes()), dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"app.py": "x = 1\n", "lib/util.py": "y = 2\n", "link.py": "y = 2\n"} {
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(dst, "app.py")); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("app.py lost its exec bit: %v %v", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dst, ".git")); !os.IsNotExist(err) {
		t.Errorf(".git was packed")
	}
}

func tarGz(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write(bytes.Repeat([]byte("a"), int(h.Size)))
		}
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func TestUnpackRefusesHostileBundles(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		lim  Limits
	}{
		{"not gzip", []byte("hello"), Limits{}},
		{"dotdot", tarGz(t, &tar.Header{Name: "../evil", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}), Limits{}},
		{"absolute", tarGz(t, &tar.Header{Name: "/etc/evil", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}), Limits{}},
		{"symlink out", tarGz(t, &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../etc/passwd"}), Limits{}},
		{"symlink abs", tarGz(t, &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}), Limits{}},
		{"hardlink", tarGz(t, &tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "x"}), Limits{}},
		{"too big", tarGz(t, &tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 100, Mode: 0o644}), Limits{MaxBytes: 10}},
		{"too many", tarGz(t, &tar.Header{Name: "a", Typeflag: tar.TypeDir}, &tar.Header{Name: "b", Typeflag: tar.TypeDir}), Limits{MaxFiles: 1}},
		{"link through link", tarGz(t,
			&tar.Header{Name: "l1", Typeflag: tar.TypeSymlink, Linkname: "."},
			&tar.Header{Name: "l1/l2", Typeflag: tar.TypeSymlink, Linkname: "../x"}), Limits{}},
		{"write through symlink", tarGz(t,
			&tar.Header{Name: "d", Typeflag: tar.TypeSymlink, Linkname: "."},
			&tar.Header{Name: "d", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}), Limits{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "out")
			err := Unpack(bytes.NewReader(tt.data), dst, tt.lim)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Unpack error = %v, want ErrInvalid", err)
			}
			entries, _ := os.ReadDir(parent)
			if len(entries) != 0 {
				t.Errorf("left %d entries behind in %s", len(entries), parent)
			}
		})
	}
}

func FuzzUnpack(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := filepath.Join(t.TempDir(), "out")
		_ = Unpack(bytes.NewReader(data), dst, Limits{MaxBytes: 1 << 20, MaxFiles: 100})
	})
}
