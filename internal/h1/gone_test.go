package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClientGone: a handler that asks learns when its client closes the
// connection; one whose client stays keeps the connection for the next
// request (the watcher stops before the server reads again).
func TestClientGone(t *testing.T) {
	seen := make(chan string, 4)
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gone := w.(interface{ ClientGone() <-chan struct{} }).ClientGone()
		w.Write([]byte("streaming\n"))
		w.(http.Flusher).Flush()
		switch r.URL.Path {
		case "/wait":
			select {
			case <-gone:
				seen <- "gone"
			case <-time.After(30 * time.Second):
				seen <- "never noticed"
			}
		case "/short":
			select {
			case <-gone:
				seen <- "gone while the client stayed"
			default:
				seen <- "here"
			}
		}
	}))
	// A client that reads the first chunk and hangs up.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	if _, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := <-seen; got != "gone" {
		t.Fatalf("after the client closed: %s", got)
	}
	// A client that stays: two requests on one connection, both served.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
	br = bufio.NewReader(c)
	for i := range 2 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "streaming") {
			t.Fatalf("response %d body %q", i, body)
		}
		if got := <-seen; got != "here" {
			t.Fatalf("request %d: %s", i, got)
		}
		if i == 0 {
			io.WriteString(c, "GET /short HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		}
	}
}
