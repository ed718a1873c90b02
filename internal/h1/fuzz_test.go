package h1

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FuzzConn feeds arbitrary bytes to a connection: the server must answer or
// close, never panic or hang.
func FuzzConn(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"))
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		w.Header().Set("X-N", "1")
		w.Write(b)
		if len(b)%2 == 0 {
			w.(http.Flusher).Flush()
		}
	}), Config: Config{ReadHeaderTimeout: 20 * time.Millisecond, KeepAliveTimeout: 20 * time.Millisecond,
		ReadTimeout: 100 * time.Millisecond, LingerTimeout: 100 * time.Millisecond}}
	s.mu.Lock()
	s.init()
	s.mu.Unlock()
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		cn := newConn(s, server)
		s.mu.Lock()
		s.conns[cn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		done := make(chan struct{})
		go func() { cn.serve(); close(done) }()
		go func() {
			client.Write(data)
		}()
		// A request whose body never completes waits for its bytes: the
		// client giving up (closing) must end it.
		client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		io.Copy(io.Discard, client)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection goroutine did not end for input %q", data)
		}
	})
}
