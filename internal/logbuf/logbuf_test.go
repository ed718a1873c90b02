package logbuf

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestRingKeepsLastLines(t *testing.T) {
	b := New(3)
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
	b := New(10)
	go func() {
		time.Sleep(10 * time.Millisecond)
		b.Line("f", 1, "i", "", "stderr", []byte("hi"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lines, next := b.Wait(ctx, "f", 0, 10)
	if len(lines) != 1 || lines[0].Text != "hi" || next != 1 {
		t.Fatalf("Wait = %v, %d", lines, next)
	}
}
