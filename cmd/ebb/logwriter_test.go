package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestBufferedWriterFlushesOnTimeAndClose(t *testing.T) {
	var out lockedBuf
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
