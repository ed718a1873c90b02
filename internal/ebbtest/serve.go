package ebbtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Serve is a real `ebb serve` process, started by StartServe.
type Serve struct {
	// Addr is where it listens (host:port); URL is http://Addr.
	Addr, URL string
	Pid       int
	// Stdout is its standard output (the admin key, when one is made);
	// Log its JSON log (standard error), line by line.
	Stdout, Log *Buffer
}

// StartServe runs `bin serve ARGS...` (ARGS should listen on a port of its
// choosing, 127.0.0.1:0) until the test ends, and returns once it logged
// the address it serves on. The test fails if it exits first or has not
// served within a minute; at the end it gets SIGTERM, and SIGKILL 30 s
// later.
func StartServe(t testing.TB, bin string, args ...string) *Serve {
	t.Helper()
	ss, err := tryServes(t, bin, args)
	if err != nil {
		t.Fatal(err)
	}
	return ss[0]
}

// TryServe is StartServe that returns an error, rather than failing the
// test, when ebb exits before serving (or does not serve within 60s): for
// a caller that restarts it, as a supervisor would.
func TryServe(t testing.TB, bin string, args ...string) (*Serve, error) {
	t.Helper()
	ss, err := tryServes(t, bin, args)
	if err != nil {
		return nil, err
	}
	return ss[0], nil
}

// StartServes is StartServe for several servers started at once, one per
// argument list: nodes of a cluster that wait for each other before they
// serve. It returns once every one of them serves, in the order given; each
// has two minutes (the time ebb waits for its cluster to form).
func StartServes(t testing.TB, bin string, args ...[]string) []*Serve {
	t.Helper()
	ss, err := tryServes(t, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

func tryServes(t testing.TB, bin string, args ...[]string) ([]*Serve, error) {
	t.Helper()
	bound := 60 * time.Second
	if len(args) > 1 {
		bound = 2 * time.Minute
	}
	var ss []*Serve
	var waits []func() error
	for _, a := range args {
		s, wait := startServe(t, bin, a, bound)
		ss = append(ss, s)
		waits = append(waits, wait)
	}
	var first error
	for _, wait := range waits {
		if err := wait(); err != nil && first == nil {
			first = err
		}
	}
	return ss, first
}

// startServe starts one server; wait returns once it serves, or an error
// if it exits first or has not served within bound.
func startServe(t testing.TB, bin string, args []string, bound time.Duration) (*Serve, func() error) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	s := &Serve{Stdout: &Buffer{}, Log: &Buffer{}}
	cmd.Stdout = s.Stdout
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("ebb serve: stderr pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ebb serve: %v", err)
	}
	s.Pid = cmd.Process.Pid
	exited := make(chan struct{})
	addrc := make(chan string, 1)
	// The reader owns the pipe until the process exits; ebb logs the
	// address it really listens on as a JSON line.
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			s.Log.Write(append(sc.Bytes(), '\n'))
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "ebb serving" && rec.Addr != "" {
				select {
				case addrc <- rec.Addr:
				default:
				}
			}
		}
		io.Copy(io.Discard, pipe)
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("ebb serve did not exit 30s after SIGTERM; killing it")
			cmd.Process.Kill()
			<-exited
		}
	})
	started := time.Now()
	return s, func() error {
		select {
		case s.Addr = <-addrc:
			s.URL = "http://" + s.Addr
			return nil
		case <-exited:
			return fmt.Errorf("ebb serve exited before serving:\n%s", s.Log)
		case <-time.After(time.Until(started.Add(bound))):
			return fmt.Errorf("ebb serve did not log its address within %s:\n%s", bound, s.Log)
		}
	}
}
