package cluster

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/nats-io/nats.go"
)

// BenchmarkForwardHop compares the two ways the cluster issue allows for
// handing a request to another node: a direct HTTP hop on a kept-alive
// connection (what forward.go does) and NATS request/reply across a
// 3-server cluster, the requester on one server and the responder on
// another (as two ebb nodes on different servers would be). Both carry
// the same 1 KiB body and a 1 KiB answer; the responder answers at once.
// Run: go test ./internal/cluster -run '^$' -bench ForwardHop -benchtime 2000x
func BenchmarkForwardHop(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	b.Run("http", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write(body)
		}))
		defer srv.Close()
		c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
		defer c.CloseIdleConnections()
		for b.Loop() {
			resp, err := c.Post(srv.URL+"/fn/x", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, resp.Body); n != int64(len(body)) {
				b.Fatalf("answer of %d bytes", n)
			}
			resp.Body.Close()
		}
	})
	b.Run("nats-request-reply", func(b *testing.B) {
		bin, err := ebbtest.NATSBinary()
		if err != nil {
			b.Skip(err)
		}
		srvs := ebbtest.NATSCluster(b, bin, 3)
		resp, err := nats.Connect(srvs[1].URL)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Close()
		sub, err := resp.Subscribe("ebb.hop.x", func(m *nats.Msg) { m.Respond(body) })
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
		resp.Flush()
		req, err := nats.Connect(srvs[0].URL)
		if err != nil {
			b.Fatal(err)
		}
		defer req.Close()
		// The subscription's interest reaches the other server through
		// the route; until then a request finds no responder.
		for deadline := time.Now().Add(10 * time.Second); ; {
			if _, err := req.Request("ebb.hop.x", body, time.Second); err == nil {
				break
			} else if time.Now().After(deadline) || !strings.Contains(err.Error(), "no responders") {
				b.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for b.Loop() {
			m, err := req.Request("ebb.hop.x", body, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if len(m.Data) != len(body) {
				b.Fatalf("answer of %d bytes", len(m.Data))
			}
		}
	})
}
