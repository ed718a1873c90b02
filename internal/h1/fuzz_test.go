package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// seenRequest is what the fuzzed server's handler got.
type seenRequest struct {
	method, uri string
	body        []byte
	bodyErr     bool
	partial     bool // the handler read only the first bytes, if any
}

// FuzzConn feeds arbitrary bytes to a connection. The server must answer or
// close, never panic or hang; and beyond that:
//   - the requests its handler gets are, in order, a prefix of those that
//     net/http's reader (the reference a front proxy uses) finds in the same
//     bytes, with the same method, target and body, also when a handler
//     leaves a body unread: a server that framed requests differently from
//     a proxy in front of it would let a client smuggle one past it;
//   - what it writes is a sequence of well-formed responses (the last may be
//     cut where the client stopped reading), and each 200 carries the body
//     the handler echoed.
func FuzzConn(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"))
	// Request smuggling shapes: both framings, repeated or odd lengths,
	// chunk extensions and sizes, obsolete line folding, bare LF.
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0x2\r\nxy\r\n0\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nTrailer: t\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"))
	// The handler reads two bytes of /a's body (see below): the rest, which
	// looks like a request, must be skipped, not served.
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 36\r\n\r\nxxGET /in-body HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n24\r\nxxGET /in-body HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"))
	var mu sync.Mutex // guards seen
	var seen []seenRequest
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Some requests' bodies are left (partly) unread, as a handler
		// that answers early leaves them: the server must skip the rest
		// and find the next request where net/http does.
		limit, partial := int64(1<<16), false
		if n := len(r.RequestURI) % 3; n != 0 {
			limit, partial = int64(n-1)*2, true
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, limit))
		mu.Lock()
		seen = append(seen, seenRequest{r.Method, r.RequestURI, b, err != nil, partial})
		mu.Unlock()
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
		mu.Lock()
		seen = nil
		mu.Unlock()
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
		out, err := io.ReadAll(client)
		cut := errors.Is(err, os.ErrDeadlineExceeded)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection goroutine did not end for input %q", data)
		}
		mu.Lock()
		got := seen
		mu.Unlock()

		// The handler's requests against net/http's reading of the bytes.
		br := bufio.NewReader(bytes.NewReader(data))
		for i, g := range got {
			ref, err := http.ReadRequest(br)
			if err != nil {
				t.Fatalf("input %q: the handler got request %d (%s %s) where net/http reads none: %v", data, i, g.method, g.uri, err)
			}
			body, berr := io.ReadAll(ref.Body)
			if ref.Method != g.method || ref.RequestURI != g.uri {
				t.Fatalf("input %q: request %d is %s %s to the handler, %s %s to net/http", data, i, g.method, g.uri, ref.Method, ref.RequestURI)
			}
			last := i == len(got)-1
			switch {
			case g.bodyErr:
				// The handler's read failed (a timeout or a broken body):
				// nothing after it is served.
				if !last {
					t.Fatalf("input %q: request %d's body failed, yet request %d was served", data, i, i+1)
				}
			case berr != nil:
				// net/http finds the body broken: the handler may have read
				// its start, and nothing after it may be served.
				if !g.partial || !bytes.HasPrefix(body, g.body) || !last {
					t.Fatalf("input %q: request %d's body is %q to the handler (then %d more requests), broken to net/http (%v) after %q", data, i, g.body, len(got)-1-i, berr, body)
				}
			case g.partial:
				if !bytes.HasPrefix(body, g.body) {
					t.Fatalf("input %q: request %d's body starts %q to the handler, is %q to net/http", data, i, g.body, body)
				}
			default:
				if !bytes.Equal(g.body, body[:min(len(body), 1<<16)]) {
					t.Fatalf("input %q: request %d's body is %q to the handler, %q to net/http", data, i, g.body, body)
				}
			}
		}

		// What the server wrote: responses, each 200 echoing its request.
		rr := bufio.NewReader(bytes.NewReader(out))
		served := 0
		for {
			if _, err := rr.Peek(1); err == io.EOF {
				break
			}
			method := "GET"
			if served < len(got) {
				method = got[served].method
			}
			resp, err := http.ReadResponse(rr, &http.Request{Method: method})
			if err != nil {
				if cut && errors.Is(err, io.ErrUnexpectedEOF) {
					break
				}
				t.Fatalf("input %q: response %d does not parse: %v in %q", data, served, err, out)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				if cut && errors.Is(err, io.ErrUnexpectedEOF) {
					break
				}
				t.Fatalf("input %q: response %d's body: %v in %q", data, served, err, out)
			}
			if resp.StatusCode < 200 {
				continue // 100 Continue before the final response
			}
			if resp.StatusCode == http.StatusOK {
				if served >= len(got) {
					t.Fatalf("input %q: a 200 with no request served for it in %q", data, out)
				}
				if want := got[served].body; method != "HEAD" && !bytes.Equal(body, want) && !got[served].bodyErr {
					t.Fatalf("input %q: response %d has body %q, the handler wrote %q", data, served, body, want)
				}
				served++
			}
		}
	})
}
