package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// bufferPool lends the proxy its copy buffers, so that a warm proxied request
// does not allocate 32 KiB.
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
// the caller of Proxy, which decides what the failure means (timeout, crash).
type proxyErr struct{ err error }

func newProxy(addr string) *httputil.ReverseProxy {
	// One transport per instance: its idle connections die with the instance
	// and can never be reused against a later process on the same port.
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
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

// Proxy forwards r to the instance and writes its response to w. When the
// instance could not answer, nothing is written and the error is returned for
// the caller to turn into a response; an error wrapping
// ebb.ErrResponseStarted means the response was cut after it had begun.
// The instance must answer by deadline; past it the error wraps
// context.DeadlineExceeded.
func (i *Instance) Proxy(w http.ResponseWriter, r *http.Request, deadline time.Time) error {
	if i.proxy == nil {
		return errors.New("proxy: function does not serve HTTP")
	}
	rid := r.Header.Get("Ebb-Request-Id")
	i.begin(&rid)
	defer i.end(&rid)
	if r.Header.Get("Upgrade") != "" {
		// Protocol switches (WebSocket) need the connection hijacking that
		// ReverseProxy implements.
		h := &proxyErr{}
		ctx, cancel := context.WithDeadline(context.WithValue(r.Context(), proxyErrKey{}, h), deadline)
		defer cancel()
		i.proxy.ServeHTTP(w, r.WithContext(ctx))
		if h.err != nil && ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("%w: %v", context.DeadlineExceeded, h.err)
		}
		return h.err
	}
	return i.up.roundTrip(w, r, deadline)
}

func (i *Instance) closeIdle() {
	if i.proxy != nil {
		i.proxy.Transport.(*http.Transport).CloseIdleConnections()
		i.up.close()
	}
}
