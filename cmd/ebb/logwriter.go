package main

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// bufferedWriter batches log lines: one invocation is one JSON log line, and
// at thousands of invocations a second a write(2) per line costs more than
// the proxying. Lines reach the underlying writer within flushEvery, or at
// once when the buffer fills, and on Close. A crash of ebb can lose the last
// flushEvery of log lines, never the metrics or the invocations themselves.
type bufferedWriter struct {
	mu   sync.Mutex // guards w
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

const flushEvery = 100 * time.Millisecond

func newBufferedWriter(w io.Writer) *bufferedWriter {
	b := &bufferedWriter{w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

func (b *bufferedWriter) loop() {
	defer close(b.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.flush()
		case <-b.stop:
			b.flush()
			return
		}
	}
}

func (b *bufferedWriter) flush() {
	b.mu.Lock()
	b.w.Flush()
	b.mu.Unlock()
}

// Close flushes what is left and stops the flusher.
func (b *bufferedWriter) Close() error {
	close(b.stop)
	<-b.done
	return nil
}
