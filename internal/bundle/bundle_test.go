package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// tarBytes is tarGz without a test, for fuzz seeds.
func tarBytes(hdrs ...*tar.Header) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			panic(err)
		}
		if h.Size > 0 && h.Size < 1<<20 {
			tw.Write(bytes.Repeat([]byte("a"), int(h.Size)))
		}
	}
	tw.Flush()
	gz.Close()
	return buf.Bytes()
}

func link(name, target string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}
}

func dir(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }

// escapes are bundles that try to reach outside their directory.
var escapes = map[string][]*tar.Header{
	// Each link is harmless lexically; followed, e1 is root's parent.
	"chain up": {dir("a/"), link("a/up", ".."), link("e1", "a/up/..")},
	"chain deeper": {dir("a/"), dir("a/b/"), link("a/b/up", "../.."), link("a/x", "b/up/.."),
		link("e2", "a/x/etc/passwd")},
	"chain through two links": {dir("d/"), link("d/self", "."), link("d/up", "self/.."), link("e3", "d/up/..")},
	"chain to absolute":       {link("a", "b"), link("b", "/etc")},
	"loop":                    {link("a", "b"), link("b", "a")},
	"self loop":               {link("a", "a")},
	"dotdot":                  {{Name: "../evil", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}},
	"absolute":                {{Name: "/tmp/evil", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}},
	"hard link":               {{Name: "x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}, {Name: "h", Typeflag: tar.TypeLink, Linkname: "x"}},
	"hard link out":           {{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}},
	"char device":             {{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
	"block device":            {{Name: "sda", Typeflag: tar.TypeBlock, Devmajor: 8}},
	"fifo":                    {{Name: "p", Typeflag: tar.TypeFifo}},
	"huge size":               {{Name: "big", Typeflag: tar.TypeReg, Size: 1 << 40, Mode: 0o644}},
	"huge sparse":             {{Name: "big", Typeflag: tar.TypeGNUSparse, Size: 1 << 40, Mode: 0o644}},
}

func TestUnpackRefusesSymlinkChains(t *testing.T) {
	for name, hdrs := range escapes {
		t.Run(name, func(t *testing.T) {
			parent := t.TempDir()
			err := Unpack(bytes.NewReader(tarBytes(hdrs...)), filepath.Join(parent, "out"), Limits{MaxBytes: 1 << 20})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Unpack error = %v, want ErrInvalid", err)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 0 {
				t.Errorf("left %d entries behind", len(entries))
			}
		})
	}
}

func TestUnpackKeepsLinksInside(t *testing.T) {
	// Links that climb and come back down stay allowed.
	data := tarBytes(dir("a/"), dir("a/b/"), &tar.Header{Name: "a/b/f", Typeflag: tar.TypeReg, Size: 3, Mode: 0o644},
		link("a/up", ".."), link("f", "a/up/a/b/f"), link("dangling", "nowhere/x"), link("d", "a/b"))
	dst := filepath.Join(t.TempDir(), "out")
	if err := Unpack(bytes.NewReader(data), dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dst, "f"))
	if err != nil || string(got) != "aaa" {
		t.Fatalf("read through links = %q, %v", got, err)
	}
	if p, err := Resolve(dst, "d/f"); err != nil || filepath.Base(p) != "f" {
		t.Errorf("Resolve(d/f) = %q, %v", p, err)
	}
	for _, name := range []string{"../../etc/hostname", "/etc/hostname", "a/up/.."} {
		if _, err := Resolve(dst, name); err == nil {
			t.Errorf("Resolve(%q) succeeded, want an error", name)
		}
	}
}

// checkConfined fails t if anything but dst was written in parent, or dst
// breaks lim, or a link in it leads out.
func checkConfined(t *testing.T, parent, dst string, lim Limits) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if filepath.Join(parent, e.Name()) != dst {
			t.Fatalf("wrote %s beside the destination", e.Name())
		}
	}
	if len(entries) == 0 {
		return
	}
	var bytes int64
	files := 0
	err := filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dst {
			return nil
		}
		files++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			bytes += fi.Size()
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
				t.Errorf("%s has %d links: a hard link", p, st.Nlink)
			}
		case fi.Mode()&os.ModeSymlink != 0:
			rel, _ := filepath.Rel(dst, p)
			if out, loop := leadsOut(dst, rel); out || loop {
				t.Errorf("link %s leads out (%v) or loops (%v)", rel, out, loop)
			}
		case fi.IsDir():
		default:
			t.Errorf("%s has mode %s", p, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if bytes > lim.MaxBytes || files > lim.MaxFiles {
		t.Errorf("unpacked %d bytes in %d files, over %+v", bytes, files, lim)
	}
}

// FuzzUnpack unpacks arbitrary bytes into a directory three levels down a
// fresh tree. Whether it succeeds or not, nothing may appear in that tree
// but the destination, no path the archive names absolutely may appear, and
// a refusal leaves nothing; on success the tree holds only directories,
// regular files (one link each) within the limits, and symlinks that, when
// followed the way the kernel does (leadsOut, written apart from
// staysInside), stay inside.
func FuzzUnpack(f *testing.F) {
	f.Add([]byte{})
	for _, hdrs := range escapes {
		f.Add(tarBytes(hdrs...))
	}
	f.Add(tarBytes(dir("a/"), link("a/up", ".."), &tar.Header{Name: "a/up/x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Add(tarBytes(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Size: 1000, Mode: 0o644},
		&tar.Header{Name: "b", Typeflag: tar.TypeReg, Size: 1000, Mode: 0o644}))
	f.Add(tarBytes(&tar.Header{Name: "../../../fuzz-escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Add(tarBytes(dir("a/"), link("a/l", "../../../../.."), &tar.Header{Name: "a/l/x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Add(tarBytes(link("up", ".."), link("up2", "up/..")))
	f.Add(tarBytes(&tar.Header{Name: "/tmp/ebb-fuzz-absolute", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Add(tarBytes(&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../outside"}))
	f.Add(tarBytes(&tar.Header{Name: "x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}, &tar.Header{Name: "x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		parent := filepath.Join(root, "l1", "l2", "l3")
		if err := os.MkdirAll(parent, 0o755); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(parent, "out")
		abs := absoluteNames(data)
		existed := map[string]bool{}
		for _, p := range abs {
			if _, err := os.Lstat(p); err == nil {
				existed[p] = true
			}
		}
		lim := Limits{MaxBytes: 1500, MaxFiles: 100}
		err := Unpack(bytes.NewReader(data), dst, lim)
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			switch p {
			case root, filepath.Join(root, "l1"), filepath.Join(root, "l1", "l2"), parent:
				return nil
			case dst:
				return filepath.SkipDir
			}
			t.Fatalf("wrote %s outside the destination", p)
			return nil
		})
		for _, p := range abs {
			if _, err := os.Lstat(p); err == nil && !existed[p] {
				os.RemoveAll(p)
				t.Fatalf("wrote the absolute path %s", p)
			}
		}
		if err != nil {
			if _, serr := os.Lstat(dst); serr == nil {
				t.Fatalf("refused (%v) but left the destination", err)
			}
			return
		}
		checkConfined(t, parent, dst, lim)
	})
}

// absoluteNames returns the absolute names and link targets in a bundle's
// tar headers, as far as they can be read.
func absoluteNames(data []byte) []string {
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil
	}
	var out []string
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return out
		}
		for _, n := range []string{hdr.Name, hdr.Linkname} {
			if filepath.IsAbs(n) && filepath.Clean(n) != "/" {
				out = append(out, filepath.Clean(n))
			}
		}
	}
}

// leadsOut follows rel (relative to root) one component at a time as the
// kernel does, following every symlink, and says whether the walk climbs
// above root or jumps to an absolute path, or loops. A component that does
// not exist ends the following; the rest is taken lexically.
func leadsOut(root, rel string) (out, loop bool) {
	todo := strings.Split(filepath.ToSlash(rel), "/")
	var at []string // components below root
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(at) == 0 {
				return true, false
			}
			at = at[:len(at)-1]
			continue
		}
		p := filepath.Join(append([]string{root}, append(at, c)...)...)
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			at = append(at, c)
			continue
		}
		if hops++; hops > 40 {
			return false, true
		}
		target, err := os.Readlink(p)
		if err != nil {
			return true, false
		}
		if filepath.IsAbs(target) {
			return true, false
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return false, false
}
