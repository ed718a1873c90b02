package h1

import (
	"errors"
	"log/slog"
	"time"
)

// Config bounds what a client can hold of the server. The edge assumes
// hostile clients: every read and write has a deadline and the number of
// connections a limit.
type Config struct {
	// ReadTimeout is the longest gap between reads while a request's head
	// or body arrives; a body that stops arriving ends its connection.
	// Default 30s.
	ReadTimeout time.Duration
	// ReadHeaderTimeout bounds a request's whole head. Default 10s.
	ReadHeaderTimeout time.Duration
	// WriteTimeout is the longest a response write may make no progress
	// (a client that stops reading); the write fails, which ends the
	// handler's response (and frees a proxied request's instance slot),
	// and the connection is closed. Default 60s.
	WriteTimeout time.Duration
	// KeepAliveTimeout is how long an idle connection waits for its next
	// request. Default 75s.
	KeepAliveTimeout time.Duration
	// MaxConns is the most connections served at once; one past it is
	// answered 503 and closed at once. Default 10000.
	MaxConns int
	// MaxHeaderBytes bounds a request's head. Default 1 MiB.
	MaxHeaderBytes int
	// LingerTimeout and LingerBytes bound the lingering close of a
	// connection whose request body was refused (a 413 before the body was
	// read): after the answer the server half-closes and discards what the
	// client still sends, for at most this long and this much, so that a
	// client that writes its whole body before reading can read the
	// answer. Defaults 30s and 64 MiB.
	LingerTimeout time.Duration
	LingerBytes   int64
	Logger        *slog.Logger
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.ReadTimeout < 0 || c.ReadHeaderTimeout < 0 || c.WriteTimeout < 0 || c.KeepAliveTimeout < 0 || c.LingerTimeout < 0 {
		return errors.New("h1 config: timeouts must not be negative")
	}
	if c.MaxConns < 0 || c.MaxHeaderBytes < 0 || c.LingerBytes < 0 {
		return errors.New("h1 config: limits must not be negative")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ReadTimeout, 30*time.Second)
	def(&c.ReadHeaderTimeout, 10*time.Second)
	def(&c.WriteTimeout, 60*time.Second)
	def(&c.KeepAliveTimeout, 75*time.Second)
	def(&c.LingerTimeout, 30*time.Second)
	if c.MaxConns == 0 {
		c.MaxConns = 10000
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 1 << 20
	}
	if c.LingerBytes == 0 {
		c.LingerBytes = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
