package runtimeapi

import (
	"bytes"
	"io"
	"net/http"
	"runtime"
	"testing"
)

// TestDeclaredLengthIsNotPreallocated: a function (hostile, or buggy) that
// declares a 6 MB response and sends 10 bytes makes ebb hold about what
// arrived, not what was declared.
func TestDeclaredLengthIsNotPreallocated(t *testing.T) {
	pr, pw := io.Pipe()
	r := &http.Request{Body: pr, ContentLength: 6 << 20}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	done := make(chan []byte, 1)
	go func() {
		b, _, _ := readBody(r, 6<<20)
		done <- b
	}()
	// Write returns once readBody has taken the bytes: its buffer exists.
	if _, err := pw.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("reading 10 bytes of a declared 6 MB body allocated %d bytes, want under 1 MiB", grew)
	}
	// The whole body still arrives intact.
	rest := bytes.Repeat([]byte("x"), 6<<20-10)
	go pw.Write(rest)
	got := <-done
	if len(got) != 6<<20 || string(got[:10]) != "0123456789" {
		t.Errorf("read %d bytes, want the whole 6 MB", len(got))
	}
}
