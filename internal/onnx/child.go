package onnx

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/ebb-run/ebb"
)

// The child protocol: how ebb and an onnx instance's process (ebb
// onnx-serve) talk besides HTTP. The child says where it stands in single
// lines on stderr, which ebb reads anyway for the function's logs, and a
// spare child waits for the claim word on an inherited pipe. Both sides
// import these definitions, so that they cannot drift apart.
const (
	// ReadyLine says the child accepts connections on $PORT: no readiness
	// probe interval is lost on top of a model load of tens of
	// milliseconds.
	ReadyLine = "EBB-READY"
	// SpareLine says a spare child (--spare) has ONNX Runtime up and waits
	// to be claimed.
	SpareLine = "EBB-SPARE"
	// InitErrorPrefix starts the line with which the child says why it
	// could not start: the rest is an ebb.InitError as JSON, in words fit
	// for the caller.
	InitErrorPrefix = "EBB-INIT-ERROR "
	// ClaimFD is the spare child's file descriptor for the claim pipe.
	ClaimFD = 3
	// claimWord, written on the claim pipe, tells a spare to load its model.
	claimWord = "go\n"
)

// ReportReady writes ReadyLine to w (the child's stderr).
func ReportReady(w io.Writer) { fmt.Fprintln(w, ReadyLine) }

// ReportSpare writes SpareLine to w (the child's stderr).
func ReportSpare(w io.Writer) { fmt.Fprintln(w, SpareLine) }

// ReportInitError writes ie as an InitErrorPrefix line to w (the child's
// stderr).
func ReportInitError(w io.Writer, ie ebb.InitError) {
	b, _ := json.Marshal(ie)
	fmt.Fprintf(w, "%s%s\n", InitErrorPrefix, b)
}

// ParseInitError reads an InitErrorPrefix line; ok is false for any other
// line.
func ParseInitError(line []byte) (ie *ebb.InitError, ok bool) {
	rest, found := bytes.CutPrefix(line, []byte(InitErrorPrefix))
	if !found {
		return nil, false
	}
	var e ebb.InitError
	if json.Unmarshal(rest, &e) != nil || e.Type == "" {
		return nil, false
	}
	return &e, true
}

// Claim tells the spare at the other end of w to load its model.
func Claim(w io.Writer) error {
	_, err := io.WriteString(w, claimWord)
	return err
}

// AwaitClaim waits in a spare child for ebb's claim on f, and says false
// when ebb let the spare go instead (f closed) or ctx ended. It takes f
// over: a reader blocked on it is not left behind, f is closed when ctx ends
// first.
func AwaitClaim(ctx context.Context, f *os.File) bool {
	got := make(chan bool, 1)
	go func() {
		line, err := bufio.NewReader(f).ReadString('\n')
		got <- err == nil && line == claimWord
	}()
	select {
	case ok := <-got:
		return ok
	case <-ctx.Done():
		f.Close()
		return false
	}
}
