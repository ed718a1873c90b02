package platform

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/ebbtest"
)

// These tests run the real ebb binary (`ebb serve`) on loopback with a
// temporary data dir, and measure it from outside: bytes on disk, RSS.

// serve starts `ebb serve` with extra flags and waits until it is healthy.
func serve(t *testing.T, dataDir string, flags ...string) (*exec.Cmd, string) {
	t.Helper()
	// Info level for the "ebb serving" line that gives the address.
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data", dataDir, "--log-level", "info", "--python", python}, flags...)
	cmd := exec.Command(ebbtest.Ebb(t), args...)
	stderr := &ebbtest.Buffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Wait also waits for the output pipe; a process that ebb started and
	// that outlived it must not hold the test forever.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("ebb serve output:\n%s", tail(stderr.String(), 4000))
		}
	})
	url := "http://" + servingAddr(t, stderr.String, exited)
	waitFor(t, "ebb serve to be healthy", 60*time.Second, func() bool {
		resp, err := http.Get(url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return cmd, url
}

// call makes one request on a connection of its own: an answer given before
// the body was read (413 on Content-Length) may end its connection, and a
// reused one would then be reset under the next request. The connection is
// kept alive, not closed by the request, so that the server drains a small
// unread body instead of closing (and resetting) under a client still
// writing it.
func call(t *testing.T, method, url string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// diskUse is what dir takes on disk (allocated blocks, so sparse files count
// what they really use).
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// zeroBundle streams a tar.gz with ebb.yaml and files of zeros, size bytes
// in all, into w: a large bundle that compresses to little. With several
// files, no one header is over a limit that their sum passes, so unpacking
// writes up to the limit before it is refused.
func zeroBundle(w io.Writer, manifest string, size int64, files int) error {
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "ebb.yaml", Typeflag: tar.TypeReg, Size: int64(len(manifest)), Mode: 0o644}); err != nil {
		return err
	}
	tw.Write([]byte(manifest))
	zero := make([]byte, 1<<20)
	for i := 0; i < files; i++ {
		part := size / int64(files)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("zeros%d.bin", i), Typeflag: tar.TypeReg, Size: part, Mode: 0o644}); err != nil {
			return err
		}
		for left := part; left > 0; left -= int64(len(zero)) {
			if _, err := tw.Write(zero[:min(left, int64(len(zero)))]); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func TestServeRefusedBundlesLeaveNoDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("writes gigabytes")
	}
	data := t.TempDir()
	_, url := serve(t, data, "--max-unpacked", "1536MiB")
	base := diskUse(t, data)
	for _, tc := range []struct {
		name     string
		manifest string
		size     int64
		files    int
		want     int
		says     string
	}{
		{"1.2 GiB bundle with a missing handler", "name: big\nruntime: exec\nhandler: ./missing\n", 1228 << 20, 1, 400, "handler"},
		{"2 GiB gzip bomb in one file", "name: big\nruntime: exec\nhandler: ./zeros0.bin\n", 2 << 30, 1, 413, "unpacked"},
		{"2 GiB gzip bomb in 16 files", "name: big\nruntime: exec\nhandler: ./zeros0.bin\n", 2 << 30, 16, 413, "unpacked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body bytes.Buffer
			if err := zeroBundle(&body, tc.manifest, tc.size, tc.files); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d MiB unpacked in %d KiB of tar.gz", tc.size>>20, body.Len()>>10)
			code, resp := call(t, "PUT", url+"/v1/functions/big", &body)
			if code != tc.want || !strings.Contains(resp, tc.says) || strings.Contains(resp, data) {
				t.Fatalf("deploy = %d %s; want %d naming %q and no server path", code, resp, tc.want, tc.says)
			}
			left := diskUse(t, data) - base
			t.Logf("data dir grew by %.1f MiB", float64(left)/(1<<20))
			if left > 64<<20 {
				t.Errorf("a refused deploy left %d MiB in the data dir", left>>20)
			}
			for _, sub := range []string{"bundles", "tmp"} {
				if got := entries(t, filepath.Join(data, sub)); len(got) != 0 {
					t.Errorf("%s holds %v", sub, got)
				}
			}
		})
	}
}

// vmRSS reads a process's resident set size from /proc.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func TestServeLogFloodBoundedRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a real server with output")
	}
	needPython(t)
	cmd, url := serve(t, t.TempDir())
	dir := fnDir(t, "name: flood\nruntime: python\nhandler: app.handler\ntimeout: 5m\n", map[string]string{"app.py": `
import sys
LINE = "x" * (64 * 1024 - 1)
def handler(event, context):
    for i in range(event.get("n", 1)):
        sys.stdout.write(LINE + "\n")
    sys.stdout.flush()
    return {"printed": event.get("n", 1)}
`})
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	if code, body := call(t, "PUT", url+"/v1/functions/flood", &buf); code != 201 {
		t.Fatalf("deploy = %d %s", code, body)
	}
	// A first small flood starts the instance and fills the buffer; the RSS
	// after it is the base.
	if code, body := call(t, "POST", url+"/v1/functions/flood/invoke", strings.NewReader(`{"n": 200}`)); code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	base := vmRSS(t, cmd.Process.Pid)
	const lines = 6000
	for i := 0; i < 3; i++ {
		if code, body := call(t, "POST", url+"/v1/functions/flood/invoke", strings.NewReader(fmt.Sprintf(`{"n": %d}`, lines/3))); code != 200 {
			t.Fatalf("invoke = %d %s", code, body)
		}
	}
	// The output may still be in the pipe: wait until the log shows the
	// last line (seq counts every line, kept or not).
	waitFor(t, "the flood to reach the log buffer", 120*time.Second, func() bool {
		_, body := call(t, "GET", url+"/v1/functions/flood/logs?since=0", nil)
		return strings.Contains(body, fmt.Sprintf(`"seq":%d,`, 200+lines-1))
	})
	grew := vmRSS(t, cmd.Process.Pid) - base
	t.Logf("ebb RSS %d MiB before %d lines of 64 KiB, grew by %.1f MiB", base>>20, lines, float64(grew)/(1<<20))
	if grew > 128<<20 {
		t.Errorf("RSS grew by %d MiB, want under 128", grew>>20)
	}
	_, body := call(t, "GET", url+"/v1/functions/flood/logs?since=0", nil)
	if !strings.Contains(body, "…[truncated") || len(body) > 16<<20 {
		t.Errorf("logs: %d bytes, truncation marked: %v; want lines cut and at most the buffer", len(body), strings.Contains(body, "…[truncated"))
	}
}

func TestServeBucketFloodRefused(t *testing.T) {
	// Objects stay under 256 KiB: ebb's HTTP server ends a connection whose
	// unread body is larger than that, and a client still writing it would
	// see a reset instead of the answer.
	_, url := serve(t, t.TempDir(), "--max-buckets", "3", "--max-bucket-bytes", "1MiB", "--max-object-bytes", "128KiB")
	obj := strings.Repeat("o", 120<<10)
	for i := 0; i < 3; i++ {
		if code, body := call(t, "PUT", fmt.Sprintf("%s/v1/buckets/b%d-x/k", url, i), strings.NewReader("small")); code != 200 {
			t.Fatalf("bucket %d: %d %s", i, code, body)
		}
	}
	code, body := call(t, "PUT", url+"/v1/buckets/one-too-many/k", strings.NewReader("small"))
	if code != 507 || !strings.Contains(body, "--max-buckets") {
		t.Fatalf("fourth bucket = %d %s, want 507 naming --max-buckets", code, body)
	}
	big := strings.Repeat("o", 200<<10)
	code, body = call(t, "PUT", url+"/v1/buckets/b0-x/big", strings.NewReader(big))
	if code != 413 || !strings.Contains(body, "--max-object-bytes") {
		t.Fatalf("200 KiB object = %d %s, want 413 naming --max-object-bytes", code, body)
	}
	// (A body without Content-Length is cut at the limit as it is read; h1
	// then closes the connection under a client still writing, which sees a
	// reset rather than the 413, so that path is not asserted here.)
	full := false
	for i := 0; i < 20 && !full; i++ {
		code, body = call(t, "PUT", fmt.Sprintf("%s/v1/buckets/b1-x/k%d", url, i), strings.NewReader(obj))
		switch code {
		case 200:
		case 507:
			full = true
			if !strings.Contains(body, "--max-bucket-bytes") {
				t.Errorf("full bucket answer %s does not name --max-bucket-bytes", body)
			}
		default:
			t.Fatalf("object %d = %d %s", i, code, body)
		}
	}
	if !full {
		t.Fatal("twenty 120 KiB objects fit in a 1 MiB bucket")
	}
	// Other buckets still take objects, and what was stored reads back.
	if code, body := call(t, "PUT", url+"/v1/buckets/b2-x/k2", strings.NewReader(obj)); code != 200 {
		t.Errorf("another bucket = %d %s", code, body)
	}
	if code, body := call(t, "GET", url+"/v1/buckets/b1-x/k0", nil); code != 200 || body != obj {
		t.Errorf("read back = %d, %d bytes", code, len(body))
	}
}
