package pyruntime

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestForkDoesNotWaitOnAStalledZygote: a zygote (it runs the function's
// code) that stops reading its control channel makes a fork fail within the
// write bound, instead of holding the channel's lock, and every other start
// of the version, for ever; later forks fail at once.
func TestForkDoesNotWaitOnAStalledZygote(t *testing.T) {
	old := controlWriteTimeout
	controlWriteTimeout = 200 * time.Millisecond
	t.Cleanup(func() { controlWriteTimeout = old })
	ours, theirs, err := ControlPair()
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close() // held open, never read: a stalled zygote
	z, err := NewZygote(ours, func(int, syscall.WaitStatus) {})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	// Requests fill the socket buffer; one of them must then fail on the
	// deadline rather than block.
	env := map[string]string{"PAD": strings.Repeat("x", 16<<10)}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			_, err := z.Fork(ctx, ForkRequest{Env: env, Dir: "/", Stdout: null, Stderr: null})
			cancel()
			if err != nil && strings.Contains(err.Error(), "send request") {
				done <- err
				return
			}
			if i > 10000 {
				done <- errors.New("10000 requests written to a zygote that never reads")
				return
			}
		}
	}()
	select {
	case err := <-done:
		if !strings.Contains(err.Error(), "send request") {
			t.Fatalf("fork error = %v, want a failed send", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("fork still blocked on a zygote that does not read")
	}
	t0 := time.Now()
	if _, err := z.Fork(context.Background(), ForkRequest{Env: env, Dir: "/", Stdout: null, Stderr: null}); err == nil || time.Since(t0) > 5*time.Second {
		t.Errorf("a later fork = %v after %s, want an error at once", err, time.Since(t0))
	}
}
