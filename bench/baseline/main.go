// Command baseline measures what ebb's cold starts are compared against, on
// the same machine and in the same run as ebb itself (absolute times differ
// about 2× between machines; ratios measured side by side do not):
//
//	baseline rie    -rie PATH -bootstrap examples/hello-go/bootstrap -n 20
//	baseline http   -server examples/hello-http/server -path /echo -n 20
//	baseline python -dir FNDIR -handler app.handler -payload '{...}' -n 20
//	baseline pss    -root EBBPID -comm ebb-bench-busy -want 8
//
// rie: AWS's Lambda Runtime Interface Emulator, freshly started each round;
// its first invoke (which starts the bootstrap) is timed. http: the server
// binary spawned each round, timed until its first answer. python: a fresh
// interpreter importing the handler's module and calling it once. pss: the
// summed PSS of the processes below ROOT that named themselves COMM.
//
// Every round is checked (a 200 with the expected body, an exit status of
// 0); any failure aborts the run with a non-zero status. The last line is a
// RESULT line in the format of bench/coldstart, for bench/sandbox.sh.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ebb-run/ebb/bench/internal/latency"
)

// common holds the flags every timing subcommand shares.
type common struct {
	rounds  int
	payload string
	timeout time.Duration
	logPath string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.IntVar(&c.rounds, "n", 20, "rounds")
	// The same event bench/coldstart sends by default, so both sides do the
	// same work.
	fs.StringVar(&c.payload, "payload", `{"name":"bench"}`, "JSON event (rie, python) or request body (http)")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Second, "limit for one round")
	fs.StringVar(&c.logPath, "log", "", "append the spawned processes' output here (default: discard)")
}

func (c *common) validate() error {
	switch {
	case c.rounds < 1:
		return fmt.Errorf("validate -n: %d, want at least 1", c.rounds)
	case !json.Valid([]byte(c.payload)):
		return fmt.Errorf("validate -payload: %q is not JSON", c.payload)
	case c.timeout <= 0:
		return fmt.Errorf("validate -timeout: %s, want a positive duration", c.timeout)
	}
	return nil
}

func (c *common) output() (io.Writer, func(), error) {
	if c.logPath == "" {
		return io.Discard, func() {}, nil
	}
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open -log: %w", err)
	}
	return f, func() { f.Close() }, nil
}

// spawned is a child process in its own process group, so that killing it
// also kills what it started (RIE starts the bootstrap).
type spawned struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func spawn(cmd *exec.Cmd) (*spawned, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	s := &spawned{cmd: cmd, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *spawned) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// kill ends the whole process group and waits for the leader, so that the
// next round does not compete with this one's teardown.
func (s *spawned) kill() {
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// freePort asks the kernel for a loopback port nobody listens on.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// dialUntil connects to addr, retrying every `every` until it accepts, the
// process exits or the deadline passes. Polling this often is what makes
// the measured start-up time the server's, not the poll interval's.
func dialUntil(ctx context.Context, addr string, every time.Duration, s *spawned) (net.Conn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn, nil
		}
		if s.exited() {
			return nil, fmt.Errorf("connect %s: process exited first: %v", addr, s.err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect %s: %w", addr, ctx.Err())
		}
		time.Sleep(every)
	}
}

// post sends one POST on conn and reads the whole answer.
func post(conn net.Conn, host, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+host+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := req.Write(conn); err != nil {
		return 0, nil, fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("read response body: %w", err)
	}
	return resp.StatusCode, got, nil
}

// rieRound starts RIE, waits until its port accepts, and times the first
// invoke over that already-open connection: ebb's cold rounds also arrive on
// an open keep-alive connection, so neither side pays a TCP handshake.
func rieRound(ctx context.Context, rie, bootstrap string, c *common, out io.Writer) (time.Duration, error) {
	addr, err := freePort()
	if err != nil {
		return 0, err
	}
	// RIE's Runtime API defaults to a fixed port (9001); a free one lets
	// two runs on one machine coexist.
	apiAddr, err := freePort()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(rie, "--runtime-interface-emulator-address", addr, "--runtime-api-address", apiAddr,
		"--log-level", "error", bootstrap)
	cmd.Dir = filepath.Dir(bootstrap)
	cmd.Stdout, cmd.Stderr = out, out
	s, err := spawn(cmd)
	if err != nil {
		return 0, err
	}
	defer s.kill()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := dialUntil(ctx, addr, time.Millisecond, s)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(c.timeout))
	start := time.Now()
	code, body, err := post(conn, addr, "/2015-03-31/functions/function/invocations", []byte(c.payload))
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("invoke: %w", err)
	}
	// RIE answers 200 even when the function failed; hello-go's answer
	// always has a message, an error does not.
	if code != http.StatusOK || !bytes.Contains(body, []byte(`"message"`)) {
		return 0, fmt.Errorf("invoke: status %d, body %s", code, snippet(body))
	}
	return elapsed, nil
}

// httpRound spawns the server with PORT set and times from spawn to the
// first complete answer, retrying on every failed connect or early reset.
func httpRound(ctx context.Context, server, path string, c *common, out io.Writer) (time.Duration, error) {
	addr, err := freePort()
	if err != nil {
		return 0, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(server)
	cmd.Dir = filepath.Dir(server)
	cmd.Env = append(os.Environ(), "PORT="+port, "HOST=127.0.0.1")
	cmd.Stdout, cmd.Stderr = out, out
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	s, err := spawn(cmd)
	if err != nil {
		return 0, err
	}
	defer s.kill()
	for {
		conn, err := dialUntil(ctx, addr, 100*time.Microsecond, s)
		if err != nil {
			return 0, err
		}
		conn.SetDeadline(time.Now().Add(c.timeout))
		code, body, err := post(conn, addr, path, []byte(c.payload))
		conn.Close()
		elapsed := time.Since(start)
		switch {
		case err != nil && ctx.Err() == nil:
			continue // accepted before it could serve; ask again
		case err != nil:
			return 0, err
		case code != http.StatusOK || !bytes.Equal(body, []byte(c.payload)):
			return 0, fmt.Errorf("POST %s: status %d, body %s, want 200 echoing the payload", path, code, snippet(body))
		}
		return elapsed, nil
	}
}

// pythonProgram imports the function's module in a fresh interpreter and
// calls its handler once, printing the result as JSON.
const pythonProgram = `import json, sys
sys.path.insert(0, sys.argv[1])
mod, fn = sys.argv[2].rsplit(".", 1)
import importlib
h = getattr(importlib.import_module(mod), fn)
print(json.dumps(h(json.loads(sys.argv[3]), None)))
`

// pythonRound times one fresh interpreter from spawn to exit.
func pythonRound(ctx context.Context, python, dir, handler string, c *common, out io.Writer) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, python, "-c", pythonProgram, dir, handler, c.payload)
	cmd.Dir = dir
	// ebb runs python instances with one BLAS thread each; the baseline
	// gets the same, so it is not slowed by starting thread pools.
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1")
	cmd.Stdout, cmd.Stderr = &stdout, out
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", python, err)
	}
	if !json.Valid(bytes.TrimSpace(stdout.Bytes())) {
		return 0, fmt.Errorf("run %s: handler printed %s, want JSON", python, snippet(stdout.Bytes()))
	}
	return elapsed, nil
}

// rounds runs one timed round n times and prints the summary and RESULT line.
func rounds(ctx context.Context, mode string, c *common, out io.Writer, round func() (time.Duration, error)) error {
	lat := make([]time.Duration, 0, c.rounds)
	for i := range c.rounds {
		d, err := round()
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		lat = append(lat, d)
		fmt.Fprintf(out, "round %2d: %8.2f ms\n", i+1, latency.MS(d))
	}
	slices.Sort(lat)
	fmt.Fprintf(out, "%s: %d rounds   p50 %.2f ms   p95 %.2f ms   min %.2f ms   max %.2f ms   mean %.2f ms\n",
		mode, len(lat), latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 95)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)))
	fmt.Fprintf(out, "RESULT mode=%s rounds=%d p50_ms=%.3f p95_ms=%.3f min_ms=%.3f max_ms=%.3f mean_ms=%.3f\n",
		mode, len(lat), latency.MS(latency.Percentile(lat, 50)), latency.MS(latency.Percentile(lat, 95)), latency.MS(latency.Percentile(lat, 0)), latency.MS(latency.Percentile(lat, 100)), latency.MS(latency.Mean(lat)))
	return nil
}

// descendants returns the processes below root, read from /proc.
func descendants(root int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// The command name may hold spaces and parentheses; the fields
		// after the last ')' are "state ppid ...".
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	slices.Sort(out)
	return out, nil
}

// readPSS returns a process's proportional set size in bytes.
func readPSS(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, fmt.Errorf("read pss of %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kib, err := strconv.ParseUint(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("read pss of %d: %w", pid, err)
				}
				return kib << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("read pss of %d: no Pss line", pid)
}

func comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// pss waits until exactly want processes below root are named name (more
// may be there for a moment: a removed function's instance exiting), then
// prints their PSS. Matching on a name the function's handler gives itself
// finds the busy instances whatever the process tree and pid namespaces
// look like (zygote children, sandbox init processes, a spare that has not
// run the handler and so keeps its name).
func pss(ctx context.Context, root int, name string, want int, wait time.Duration, out io.Writer) error {
	deadline := time.Now().Add(wait)
	var found []int
	for {
		all, err := descendants(root)
		if err != nil {
			return err
		}
		found = found[:0]
		for _, p := range all {
			if comm(p) == name {
				found = append(found, p)
			}
		}
		if len(found) == want {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("find instances: %d of %d processes below %d named %q after %s", len(found), want, root, name, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var sum uint64
	for _, p := range found {
		v, err := readPSS(p)
		if err != nil {
			return err
		}
		sum += v
		fmt.Fprintf(out, "pid %d: pss %.1f MiB\n", p, float64(v)/(1<<20))
	}
	fmt.Fprintf(out, "RESULT mode=pss n=%d pss_kib=%d pss_mib=%.1f\n", len(found), sum>>10, float64(sum)/(1<<20))
	return nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: baseline rie|http|python|pss [flags]; baseline CMD -h for the flags")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sub := os.Args[1]
	fs := flag.NewFlagSet("baseline "+sub, flag.ExitOnError)
	var c common
	var err error
	switch sub {
	case "rie":
		rie := fs.String("rie", "aws-lambda-rie", "the aws-lambda-rie binary")
		bootstrap := fs.String("bootstrap", "", "the Lambda function's bootstrap (required)")
		c.register(fs)
		fs.Parse(os.Args[2:])
		err = run(ctx, &c, "rie", *bootstrap, func(out io.Writer) func() (time.Duration, error) {
			return func() (time.Duration, error) { return rieRound(ctx, *rie, *bootstrap, &c, out) }
		})
	case "http":
		server := fs.String("server", "", "the http server binary, serving on $PORT (required)")
		path := fs.String("path", "/echo", "path POSTed to; the answer must echo the payload")
		c.register(fs)
		fs.Parse(os.Args[2:])
		err = run(ctx, &c, "http", *server, func(out io.Writer) func() (time.Duration, error) {
			return func() (time.Duration, error) { return httpRound(ctx, *server, *path, &c, out) }
		})
	case "python":
		python := fs.String("python", "/usr/bin/python3", "interpreter")
		dir := fs.String("dir", "", "the function's directory (required)")
		handler := fs.String("handler", "app.handler", "module.function")
		c.register(fs)
		fs.Parse(os.Args[2:])
		err = run(ctx, &c, "python", *dir, func(out io.Writer) func() (time.Duration, error) {
			return func() (time.Duration, error) { return pythonRound(ctx, *python, *dir, *handler, &c, out) }
		})
	case "pss":
		root := fs.Int("root", 0, "pid whose descendants are searched (required)")
		name := fs.String("comm", "ebb-bench-busy", "process name (/proc/PID/comm) the instances gave themselves")
		want := fs.Int("want", 1, "how many such processes to wait for")
		wait := fs.Duration("wait", 30*time.Second, "how long to wait for them")
		fs.Parse(os.Args[2:])
		if *root <= 0 || *want < 1 {
			err = errors.New("validate flags: -root and -want must be positive")
			break
		}
		err = pss(ctx, *root, *name, *want, *wait, os.Stdout)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "baseline %s: %v\n", sub, err)
		os.Exit(1)
	}
}

// run validates the shared flags and the subject (a path that must exist)
// and runs the rounds, the spawned processes' output going to -log.
func run(ctx context.Context, c *common, mode, subject string, round func(io.Writer) func() (time.Duration, error)) error {
	if err := c.validate(); err != nil {
		return err
	}
	if subject == "" {
		return errors.New("validate flags: the binary or directory to measure is required")
	}
	if _, err := os.Stat(subject); err != nil {
		return fmt.Errorf("validate flags: %w", err)
	}
	if !filepath.IsAbs(subject) {
		return fmt.Errorf("validate flags: %s is not an absolute path (processes run in its directory)", subject)
	}
	out, closeOut, err := c.output()
	if err != nil {
		return err
	}
	defer closeOut()
	fmt.Printf("%s baseline: %d rounds of %s\n", mode, c.rounds, subject)
	return rounds(ctx, mode, c, os.Stdout, round(out))
}
