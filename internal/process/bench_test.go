package process

import (
	"context"
	"os"
	"strconv"
	"testing"
)

// BenchmarkStart measures Start to Done for /bin/true: the process part of
// a cold start. "exec" is the floor, a bare fork, exec and wait. The
// others run with Root on the test's temporary directory ("disk") and,
// where it exists, on tmpfs ("shm"): creating and removing an instance's
// directories is a large share on a slow disk.
func BenchmarkStart(b *testing.B) {
	b.Run("exec", func(b *testing.B) {
		devNull, err := os.Open(os.DevNull)
		if err != nil {
			b.Fatal(err)
		}
		defer devNull.Close()
		for b.Loop() {
			p, err := os.StartProcess("/bin/true", []string{"/bin/true"}, &os.ProcAttr{Files: []*os.File{devNull, devNull, devNull}})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Wait(); err != nil {
				b.Fatal(err)
			}
		}
	})
	roots := []struct{ name, parent string }{{"disk", ""}}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		roots = append(roots, struct{ name, parent string }{"shm", "/dev/shm"})
	}
	for _, root := range roots {
		for _, mode := range []string{ModeAuto, ModeNone} {
			b.Run(mode+"/"+root.name, func(b *testing.B) {
				dir := b.TempDir()
				if root.parent != "" {
					var err error
					if dir, err = os.MkdirTemp(root.parent, "ebb-bench-"); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { os.RemoveAll(dir) })
				}
				m := newTestManager(b, Config{Root: dir, CgroupMode: mode})
				code := b.TempDir()
				if err := os.WriteFile(code+"/main.py", nil, 0o644); err != nil {
					b.Fatal(err)
				}
				i := 0
				for b.Loop() {
					i++
					p, err := m.Start(context.Background(), Spec{
						ID:        "b" + strconv.Itoa(i),
						Path:      "/bin/true",
						Env:       testEnv,
						CodeDir:   code,
						MemoryMiB: 128,
						Stdout:    func([]byte) {},
					})
					if err != nil {
						b.Fatal(err)
					}
					<-p.Done()
					if err := p.Err(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
