package onnx_test

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ebb-run/ebb/internal/onnx"
)

// This is the shape of `ebb onnx-serve`: serve one model on 127.0.0.1:$PORT
// until SIGTERM, then drain HTTP and close the server.
func ExampleNewServer() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	s, err := onnx.NewServer(ctx, onnx.Config{
		ModelPath:    "model.onnx",
		ModelName:    "churn", // the function's name: /v2/models/churn/infer
		LibraryPath:  os.Getenv(onnx.LibraryEnv),
		MaxBatchSize: 32, // from the manifest's batching:, 0 when absent
		MaxDelay:     2 * time.Millisecond,
		Logger:       slog.Default(),
	})
	if errors.Is(err, onnx.ErrLibraryNotFound) {
		log.Fatal(err) // the message says how to install the library
	}
	if err != nil {
		log.Fatal(err)
	}
	t := s.Timings()
	log.Printf("cold start: library %s, model %s, session %s", t.LibraryInit, t.ModelRead, t.SessionCreate)

	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		log.Fatal(err)
	}
	hs := &http.Server{Handler: s}
	go hs.Serve(ln)
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(shutdown)
	s.Close()
}
