package runtimeapi

import (
	"net"
	"testing"
)

// A Listener given in Config is the one the server serves on (the sandbox
// makes it inside the function's network namespace).
func TestServesOnAGivenListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, Config{Listener: ln})
	if s.Addr() != ln.Addr().String() {
		t.Fatalf("Addr = %s, want the given listener's %s", s.Addr(), ln.Addr())
	}
	startEcho(t, s)
	got, err := s.Invoke(invokeCtx(t), Request{ID: "req-1", Payload: []byte(`{"a":1}`)})
	if err != nil || string(got) != `{"a":1}` {
		t.Fatalf("Invoke = %q, %v", got, err)
	}
}

// New closes a given Listener when it fails: the caller handed it over.
func TestNewClosesTheListenerItRejects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Listener: ln}); err == nil {
		t.Fatal("New without a function name succeeded")
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("listener still open after New failed")
	}
}
