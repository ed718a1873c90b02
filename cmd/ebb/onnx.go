package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/onnx"
)

// runONNXServe is the process behind an onnx function's instance: it serves
// one model with the Open Inference Protocol on 127.0.0.1:$PORT until
// SIGTERM. ebb starts it; users do not.
func runONNXServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("onnx-serve", flag.ContinueOnError)
	model := fs.String("model", "", "model file")
	name := fs.String("name", "", "model name in /v2/models/{name}")
	lib := fs.String("onnxruntime-lib", os.Getenv(onnx.LibraryEnv), "ONNX Runtime shared library")
	maxBatch := fs.Int("max-batch-size", 0, "dynamic batching: largest batch (0 or 1: off)")
	maxDelay := fs.Duration("max-delay", 0, "dynamic batching: longest wait for a batch to fill")
	spare := fs.Bool("spare", false, "start ONNX Runtime, then wait for ebb's word on fd 3 before loading the model")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The model lives in ONNX Runtime's memory, so the Go heap is a few
		// MiB of request buffers: at the default it would be collected
		// every few dozen large requests, on the cores the model runs on.
		debug.SetGCPercent(400)
	}
	port := os.Getenv("PORT")
	if *model == "" || *name == "" || port == "" {
		return errors.New("onnx-serve: --model, --name and $PORT are required (ebb starts this command itself)")
	}
	var spawned time.Time
	if ns, err := strconv.ParseInt(os.Getenv("EBB_SPAWN_NS"), 10, 64); err == nil {
		spawned = time.Unix(0, ns)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	var err error
	if *spare {
		// A spare pays for process start and ONNX Runtime's own start-up
		// (tens of milliseconds, most of it registering operator schemas)
		// before any request needs it; a cold start then only loads the
		// model. A spare whose fd 3 closes (ebb gone) exits.
		if err = onnx.InitLibrary(*lib); err == nil {
			onnx.ReportSpare(os.Stderr)
			if !onnx.AwaitClaim(ctx, os.NewFile(onnx.ClaimFD, "claim")) {
				return nil
			}
		}
	}
	var s *onnx.Server
	if err == nil {
		s, err = onnx.NewServer(ctx, onnx.Config{ModelPath: *model, ModelName: *name, LibraryPath: *lib,
			MaxBatchSize: *maxBatch, MaxDelay: *maxDelay, SpawnedAt: spawned, Spare: *spare, Logger: log})
	}
	if err != nil {
		// Tell ebb why, in words fit for the caller: no server paths.
		ie := ebb.InitError{Type: "Runtime.ModelLoadError", Message: strings.ReplaceAll(err.Error(), *model, filepath.Base(*model))}
		if errors.Is(err, onnx.ErrLibraryNotFound) {
			ie = ebb.InitError{Type: "Runtime.ONNXRuntimeMissing", Message: "the ONNX Runtime library is not installed on the server"}
		}
		onnx.ReportInitError(os.Stderr, ie)
		return err
	}
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	onnx.ReportReady(os.Stderr)
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
