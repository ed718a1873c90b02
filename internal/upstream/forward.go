package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// Forward sends r to the instance and writes its response to w. When the
// instance could not answer, nothing is written and the error is returned for
// the caller to turn into a response; an error wrapping
// ebb.ErrResponseStarted means the response was cut after it had begun.
// The instance must answer by deadline; past it the error wraps
// context.DeadlineExceeded.
func (u *Client) Forward(w http.ResponseWriter, r *http.Request, deadline time.Time) error {
	if r.Header.Get("Upgrade") == "" {
		return u.roundTrip(w, r, deadline)
	}
	// Protocol switches (WebSocket) need the connection hijacking that
	// ReverseProxy implements.
	h := &proxyErr{}
	ctx, cancel := context.WithDeadline(context.WithValue(r.Context(), proxyErrKey{}, h), deadline)
	defer cancel()
	u.proxy.ServeHTTP(w, r.WithContext(ctx))
	if h.err != nil && ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%w: %v", context.DeadlineExceeded, h.err)
	}
	return h.err
}

// bufferPool lends the proxy its copy buffers, so that a proxied upgrade does
// not allocate 32 KiB.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v := b.p.Get(); v != nil {
		return *v.(*[]byte)
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

var buffers = &bufferPool{}

type proxyErrKey struct{}

// proxyErr carries the transport's error out of ReverseProxy's ErrorHandler to
// the caller of Forward, which decides what the failure means (timeout, crash).
type proxyErr struct{ err error }

func newProxy(addr string, dial func(context.Context) (net.Conn, error)) *httputil.ReverseProxy {
	// One transport per instance: its idle connections die with the instance
	// and can never be reused against a later process on the same port.
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = addr
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  tr,
		BufferPool: buffers,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if h, ok := r.Context().Value(proxyErrKey{}).(*proxyErr); ok {
				h.err = err
			}
		},
	}
}
