// Command hello-http is the smallest ebb http function: a plain net/http
// server that follows the Cloud Run / Knative contract of serving on $PORT.
// ebb proxies /fn/hello-http/... to it unchanged.
//
//	GET  /      answers "hello"
//	POST /echo  answers with the request body and its Content-Type
//
// Build it as the bundle's server binary (the Makefile does this):
//
//	CGO_ENABLED=0 go build -o examples/hello-http/server ./examples/hello-http
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// maxEchoBytes bounds what /echo reads so a large upload cannot exhaust the
// instance's memory limit.
const maxEchoBytes = 10 << 20

// shutdownGrace is how long in-flight requests get after SIGTERM; ebb sends
// SIGTERM when it scales an instance down and kills it later.
const shutdownGrace = 5 * time.Second

func newHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "hello")
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEchoBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "read request body failed", http.StatusBadRequest)
			return
		}
		ct := r.Header.Get("Content-Type")
		if ct == "" {
			ct = "application/octet-stream"
		}
		w.Header().Set("Content-Type", ct)
		w.Write(body)
	})
	return mux
}

// listenAddr follows the $PORT contract. The host defaults to loopback
// because ebb runs instances on the same machine; HOST overrides it.
func listenAddr() string {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host := os.Getenv("HOST")
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func run(ctx context.Context, log *slog.Logger) error {
	ln, err := net.Listen("tcp", listenAddr())
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           newHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	// The real address matters when PORT=0: whoever started us learns it here.
	log.Info("listening", "addr", ln.Addr().String())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
		<-served
		return fmt.Errorf("shut down: %w", err)
	}
	<-served
	log.Info("stopped")
	return nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("hello-http failed", "err", err)
		os.Exit(1)
	}
}
