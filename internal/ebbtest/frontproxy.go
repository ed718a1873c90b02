package ebbtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/h1"
)

// ServeH1 serves h with ebb's own HTTP server (internal/h1) on a loopback
// port until the test ends, and returns the address.
func ServeH1(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h1.Server{Handler: h}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// FrontProxy sends `method first` and then `GET next` on one connection to
// addr, and reads the bytes back the way a front proxy reads them (net/http's
// client reader: Transfer-Encoding wins over Content-Length). The first
// answer must be exactly one well-formed response with a status of 200-599;
// with cutOK it may be cut short (its upstream's was), and then nothing may
// follow. Otherwise next's answer must come after it, 200 with body REAL,
// and nothing after that: whatever produced the first response wrote no
// byte outside it.
func FrontProxy(t testing.TB, addr, method, first, next string, cutOK bool) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, method+" "+first+" HTTP/1.1\r\nHost: localhost\r\n\r\nGET "+next+" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the answers: %v (got %q)", err, out)
	}
	head, _, ok := bytes.Cut(out, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no response head in %q", out)
	}
	if lower := strings.ToLower(string(head)); strings.Contains(lower, "\r\ncontent-length:") && strings.Contains(lower, "\r\ntransfer-encoding:") {
		t.Fatalf("response with both Content-Length and Transfer-Encoding: %q", head)
	}
	br := bufio.NewReader(bytes.NewReader(out))
	r1, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("first response: %v in %q", err, out)
	}
	if r1.StatusCode < 200 || r1.StatusCode > 599 {
		t.Fatalf("first response status %d", r1.StatusCode)
	}
	b1, err := io.ReadAll(r1.Body)
	if err != nil {
		if cutOK && errors.Is(err, io.ErrUnexpectedEOF) {
			return r1, b1
		}
		t.Fatalf("first response body: %v in %q", err, out)
	}
	r2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second response: %v; all bytes: %q", err, out)
	}
	b2, err := io.ReadAll(r2.Body)
	if err != nil || r2.StatusCode != 200 || string(b2) != "REAL" {
		t.Fatalf("second response %d %q %v, want 200 REAL; all bytes: %q", r2.StatusCode, b2, err, out)
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Fatalf("bytes after the responses: %q", rest)
	}
	return r1, b1
}
