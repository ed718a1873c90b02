package main

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

func TestBufferedWriterFlushesOnTimeAndClose(t *testing.T) {
	var out ebbtest.Buffer
	w := newBufferedWriter(&out)
	w.Write([]byte("one\n"))
	if out.String() != "" {
		t.Errorf("line written at once; want it batched")
	}
	deadline := time.Now().Add(5 * flushEvery)
	for out.String() != "one\n" {
		if time.Now().After(deadline) {
			t.Fatalf("line not flushed within %s: %q", 5*flushEvery, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Lines written concurrently stay whole.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Write([]byte(strings.Repeat(string(rune('a'+i%26)), 100) + "\n"))
		}()
	}
	wg.Wait()
	w.Write([]byte("last\n"))
	w.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 52 || lines[51] != "last" {
		t.Fatalf("got %d lines, last %q; want 52 ending with last (Close flushes)", len(lines), lines[len(lines)-1])
	}
	for _, l := range lines[1:51] {
		if len(l) != 100 || strings.Count(l, l[:1]) != 100 {
			t.Errorf("torn line %q", l)
		}
	}
}
