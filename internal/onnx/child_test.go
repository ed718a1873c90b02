package onnx

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/ebb-run/ebb"
)

func TestChildProtocolRoundTrips(t *testing.T) {
	var b bytes.Buffer
	ReportInitError(&b, ebb.InitError{Type: "Runtime.ModelLoadError", Message: "bad model"})
	ie, ok := ParseInitError(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
	if !ok || ie.Type != "Runtime.ModelLoadError" || ie.Message != "bad model" {
		t.Fatalf("ParseInitError = %+v, %v", ie, ok)
	}
	if _, ok := ParseInitError([]byte(ReadyLine)); ok {
		t.Error("ReadyLine parsed as an init error")
	}
	if _, ok := ParseInitError([]byte(InitErrorPrefix + "{}")); ok {
		t.Error("an init error without a type parsed")
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := Claim(w); err != nil {
		t.Fatal(err)
	}
	if !AwaitClaim(context.Background(), r) {
		t.Error("AwaitClaim = false after Claim")
	}
	w.Close()
	r.Close()

	r, w, err = os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // ebb let the spare go
	if AwaitClaim(context.Background(), r) {
		t.Error("AwaitClaim = true on a closed pipe")
	}
}
