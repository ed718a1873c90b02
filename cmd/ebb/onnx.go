package main

import (
	"context"
	"errors"
)

func runONNXServe(ctx context.Context, args []string) error {
	return errors.New("onnx-serve: not wired yet")
}
