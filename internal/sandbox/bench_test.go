package sandbox

import (
	"context"
	"net"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

// samples keeps per-operation times: on a shared machine the median says
// more than the mean go test prints.
type samples []time.Duration

func (s *samples) time(f func()) {
	t0 := time.Now()
	f()
	*s = append(*s, time.Since(t0))
}

func (s samples) report(b *testing.B, unit string) {
	if len(s) == 0 {
		return
	}
	slices.Sort(s)
	b.ReportMetric(float64(s[len(s)/2].Microseconds()), unit)
}

// BenchmarkSpawn measures what the sandbox adds to a process start: spawn
// and wait of /usr/bin/true plain (as the function uid), under bwrap, and
// for a spare (started with Block beforehand) from Release to exit and to
// its first output byte (exec'ed).
func BenchmarkSpawn(b *testing.B) {
	requireSandbox(b, false)
	s := newSandbox(b, Config{})
	ns := newNetns(b, s, false)
	code := codeDir(b, nil)
	spec := Spec{UID: testUID, GID: testUID, Code: code, TmpBytes: 16 << 20, Argv: []string{"/usr/bin/true"}, FirstFD: 3}

	b.Run("plain", func(b *testing.B) {
		var t samples
		for b.Loop() {
			t.time(func() {
				cmd := exec.Command("/usr/bin/true")
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testUID, Gid: testUID, Groups: []uint32{}}}
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
			})
		}
		t.report(b, "p50-µs")
	})
	b.Run("bwrap", func(b *testing.B) {
		var t samples
		for b.Loop() {
			t.time(func() {
				c, err := s.Command(spec)
				if err != nil {
					b.Fatal(err)
				}
				cmd := &exec.Cmd{Path: c.Path, Args: c.Args, ExtraFiles: c.ExtraFiles, SysProcAttr: c.sysProcAttr()}
				err = runInNetns(ns.File(), cmd.Start)
				c.Close()
				if err == nil {
					err = cmd.Wait()
				}
				if err != nil {
					b.Fatal(err)
				}
			})
		}
		t.report(b, "p50-µs")
	})
	// spare-release waits in the release shim where there is one,
	// spare-release-bwrap in bwrap (--block-fd).
	spareRelease := func(b *testing.B, s *Sandbox) {
		spare := spec
		spare.Block = true
		spare.Argv = []string{"/bin/echo", "x"}
		var toExec, toExit samples
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			c, err := s.Command(spare)
			if err != nil {
				b.Fatal(err)
			}
			cmd := &exec.Cmd{Path: c.Path, Args: c.Args, ExtraFiles: c.ExtraFiles, SysProcAttr: c.sysProcAttr()}
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			err = runInNetns(ns.File(), cmd.Start)
			c.Close()
			if err != nil {
				b.Fatal(err)
			}
			// Let bwrap finish its setup and block (~10 ms unloaded).
			time.Sleep(100 * time.Millisecond)
			b.StartTimer()
			t0 := time.Now()
			if err := c.Release(); err != nil {
				b.Fatal(err)
			}
			if _, err := out.Read(make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			toExec = append(toExec, time.Since(t0))
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
			toExit = append(toExit, time.Since(t0))
		}
		toExec.report(b, "p50-µs-to-exec")
		toExit.report(b, "p50-µs-to-exit")
	}
	b.Run("spare-release", func(b *testing.B) { spareRelease(b, s) })
	b.Run("spare-release-bwrap", func(b *testing.B) {
		nb := *s
		nb.shims = nil
		spareRelease(b, &nb)
	})
}

// BenchmarkNetns measures making and closing an instance's namespace, and
// a dial from ebb into it (the cold path of a request to an http function)
// against one on the host.
func BenchmarkNetns(b *testing.B) {
	requireSandbox(b, false)
	s := newSandbox(b, Config{})
	for _, outbound := range []bool{false, true} {
		name := map[bool]string{false: "none", true: "outbound"}[outbound]
		b.Run(name, func(b *testing.B) {
			if outbound && s.cfg.Pasta == "" {
				b.Skip("no pasta")
			}
			var mk, cl samples
			for b.Loop() {
				var ns *Netns
				mk.time(func() {
					var err error
					if ns, err = s.NewNetns(context.Background(), outbound); err != nil {
						b.Fatal(err)
					}
				})
				cl.time(func() { ns.Close() })
			}
			mk.report(b, "p50-µs-new")
			cl.report(b, "p50-µs-close")
		})
	}
	dial := func(b *testing.B, l net.Listener, dial func() (net.Conn, error)) {
		defer l.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		var t samples
		for b.Loop() {
			t.time(func() {
				c, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			})
		}
		t.report(b, "p50-µs")
		l.Close()
		<-done
	}
	b.Run("dial-inside", func(b *testing.B) {
		ns := newNetns(b, s, false)
		l, err := ns.Listen("tcp", "127.0.0.1:9000")
		if err != nil {
			b.Fatal(err)
		}
		dial(b, l, func() (net.Conn, error) { return ns.Dial(context.Background(), "tcp", "127.0.0.1:9000") })
	})
	b.Run("dial-host", func(b *testing.B) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		var d net.Dialer
		dial(b, l, func() (net.Conn, error) { return d.DialContext(context.Background(), "tcp", l.Addr().String()) })
	})
}
