package sandbox

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writeShim writes the release shim for block fd fd and returns its path.
func writeShim(t *testing.T, fd int) string {
	t.Helper()
	if !shimArch() {
		t.Skip("no release shim for this architecture")
	}
	r := &releaseShims{dir: t.TempDir()}
	p, err := r.path(fd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The shim is a well-formed static executable: one loadable segment,
// read and execute only, holding its entry point.
func TestReleaseShimIsAnELF(t *testing.T) {
	f, err := elf.Open(writeShim(t, 5))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC || f.Machine != elf.EM_X86_64 || len(f.Progs) != 1 {
		t.Fatalf("type %v machine %v programs %d; want one static x86-64 executable segment", f.Type, f.Machine, len(f.Progs))
	}
	p := f.Progs[0]
	if p.Type != elf.PT_LOAD || p.Flags != elf.PF_R|elf.PF_X || f.Entry < p.Vaddr || f.Entry >= p.Vaddr+p.Filesz {
		t.Fatalf("segment %+v entry %#x; want a read+execute load segment holding the entry", p.ProgHeader, f.Entry)
	}
	if _, err := releaseShim(-1); err == nil {
		t.Error("a shim for fd -1 was built")
	}
}

// Run on the host (what it does is the same inside): released, it execs
// its arguments with the environment; the pipe closed unreleased, it exits
// 1 without running anything; a command that cannot be run, 127.
func TestReleaseShim(t *testing.T) {
	shim := writeShim(t, 3)
	run := func(release bool, argv ...string) (string, int) {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		cmd := exec.Command(shim, argv...)
		cmd.Env = []string{"GREETING=from-env", "PATH=/usr/bin:/bin"}
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.ExtraFiles = []*os.File{r}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if release {
			w.Write([]byte{0})
		}
		w.Close()
		err = cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), code
	}
	if out, code := run(true, "/bin/sh", "-c", `echo "$0 $1 $GREETING"; if [ -e /proc/self/fd/3 ]; then echo block-fd-open; fi`, "a", "b c"); out != "a b c from-env\n" || code != 0 {
		t.Errorf("released: %q, exit %d; want its arguments and environment, fd 3 closed, exit 0", out, code)
	}
	if out, code := run(false, "/bin/echo", "ran"); out != "" || code != 1 {
		t.Errorf("closed unreleased: %q, exit %d; want nothing run, exit 1", out, code)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if out, code := run(true, missing); out != "" || code != 127 {
		t.Errorf("released onto a missing command: %q, exit %d; want exit 127", out, code)
	}
}

// A command named without a path waits in bwrap (whose execvp searches
// PATH): the shim execs only the path it is given.
func TestReleaseShimNeedsAPath(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	if s.shims == nil {
		t.Skip("no release shim for this architecture")
	}
	for argv0, shim := range map[string]bool{"/bin/sh": true, "./server": true, "sh": false} {
		c, err := s.Command(Spec{UID: testUID, GID: testUID, Code: codeDir(t, nil), Argv: []string{argv0}, FirstFD: 3, Block: true})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		c.Release()
		args := strings.Join(c.Args, " ")
		if strings.Contains(args, ShimPath) != shim || strings.Contains(args, "--block-fd") == shim {
			t.Errorf("%s: %q; want shim %v", argv0, args, shim)
		}
	}
}
