package logbuf

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRingKeepsLastLines(t *testing.T) {
	b := mustNew(t, Config{MaxLines: 3})
	for i := 0; i < 5; i++ {
		b.Line("f", 1, "i1", fmt.Sprint("r", i), "stdout", []byte(fmt.Sprint("line", i)))
	}
	lines, next := b.Since("f", 0, 0)
	if len(lines) != 3 || lines[0].Text != "line2" || lines[2].Text != "line4" || next != 5 {
		t.Fatalf("got %v next=%d, want line2..line4 next=5", lines, next)
	}
	if lines[1].RequestID != "r3" || lines[1].Seq != 3 {
		t.Errorf("line = %+v, want request r3 seq 3", lines[1])
	}
	lines, next = b.Since("f", 4, 0)
	if len(lines) != 1 || next != 5 {
		t.Errorf("since 4: got %d lines next=%d", len(lines), next)
	}
	if lines, _ := b.Since("g", 0, 0); len(lines) != 0 {
		t.Errorf("unknown function has lines")
	}
}

func TestWaitWakesOnNewLine(t *testing.T) {
	b := mustNew(t, Config{MaxLines: 10})
	type result struct {
		lines []Line
		next  uint64
	}
	got := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		lines, next := b.Wait(ctx, "f", 0, 10)
		got <- result{lines, next}
	}()
	// The line is added only once Wait has found nothing and parked, so
	// that it is the wake-up that returns it.
	for deadline := time.Now().Add(10 * time.Second); !parkedIn("(*Buffer).Wait"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Wait never parked")
		}
	}
	b.Line("f", 1, "i", "", "stderr", []byte("hi"))
	if r := <-got; len(r.lines) != 1 || r.lines[0].Text != "hi" || r.next != 1 {
		t.Fatalf("Wait = %v, %d", r.lines, r.next)
	}
}

func mustNew(t *testing.T, cfg Config) *Buffer {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBytesBound(t *testing.T) {
	b := mustNew(t, Config{MaxBytes: 1 << 20, MaxLineBytes: 64 << 10})
	line := bytes.Repeat([]byte("x"), 60<<10)
	for i := 0; i < 6000; i++ {
		b.Line("f", 1, "i", "r", "stdout", line)
	}
	lines, next := b.Since("f", 0, 0)
	var total int64
	for i := range lines {
		total += cost(&lines[i])
	}
	if total > 1<<20 || len(lines) < 10 || next != 6000 || lines[len(lines)-1].Seq != 5999 {
		t.Fatalf("kept %d lines of %d bytes, next %d; want at most 1 MiB ending at seq 5999", len(lines), total, next)
	}
	r := b.fns["f"]
	if cap(r.lines) > 4*len(lines)+128 {
		t.Errorf("ring array grew to %d slots for %d lines", cap(r.lines), len(lines))
	}
}

func TestLongLineTruncatedAndMarked(t *testing.T) {
	b := mustNew(t, Config{MaxLineBytes: 10})
	b.Line("f", 1, "i", "", "stdout", []byte("ééééééééééééé")) // 26 bytes
	lines, _ := b.Since("f", 0, 0)
	if len(lines) != 1 || !strings.HasPrefix(lines[0].Text, "ééééé …[truncated 16 bytes]") || !utf8.ValidString(lines[0].Text) {
		t.Fatalf("got %q", lines[0].Text)
	}
}

func TestConfigRefusesLineLargerThanBuffer(t *testing.T) {
	if _, err := New(Config{MaxBytes: 100, MaxLineBytes: 1000}); err == nil {
		t.Fatal("New accepted a buffer smaller than one line")
	}
}

// parkedIn says whether some goroutine is blocked in a select or channel
// receive inside function fn (as runtime.Stack names it).
func parkedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		if (strings.Contains(head, "[select") || strings.Contains(head, "[chan receive")) && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

// TestNextMarksWhatComesAfter: Since from Next gives only the lines written
// after it, whether the function had lines before or none at all.
func TestNextMarksWhatComesAfter(t *testing.T) {
	b := mustNew(t, Config{MaxLines: 3})
	mark := b.Next("f")
	b.Line("f", 1, "i1", "r0", "stdout", []byte("first"))
	if lines, _ := b.Since("f", mark, 0); len(lines) != 1 || lines[0].Text != "first" {
		t.Fatalf("from a mark taken before any line: %v", lines)
	}
	for i := 0; i < 5; i++ {
		b.Line("f", 1, "i1", "r", "stdout", []byte(fmt.Sprint("old", i)))
	}
	mark = b.Next("f")
	b.Line("f", 1, "i1", "r9", "stdout", []byte("new"))
	if lines, _ := b.Since("f", mark, 0); len(lines) != 1 || lines[0].Text != "new" {
		t.Errorf("from a mark: %v, want only the new line", lines)
	}
}
