package runtimeapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
)

// Defaults applied by Config.Validate.
const (
	DefaultRegion           = "local"
	DefaultAccountID        = "000000000000"
	DefaultFunctionVersion  = "$LATEST"
	DefaultMaxResponseBytes = 6 << 20 // Lambda's synchronous response limit
)

// Config configures one Server, that is one instance of a function.
type Config struct {
	// FunctionName is the function's name; it ends up in the ARN the handler sees.
	FunctionName string
	// FunctionVersion is the deployed version, e.g. "3"; default "$LATEST".
	FunctionVersion string
	// Region is used in the function ARN; default "local".
	Region string
	// AccountID is used in the function ARN; default "000000000000".
	AccountID string
	// MaxResponseBytes bounds a /response or /error body; default 6 MiB.
	// Larger bodies are answered 413 and the invocation fails with a
	// *ebb.HandlerError of type Function.ResponseSizeTooLarge.
	MaxResponseBytes int64
	// Logger receives diagnostics about misbehaving runtimes; nil discards them.
	Logger *slog.Logger
	// Listener, when set, is where the server accepts the runtime's
	// connections, instead of a new one on 127.0.0.1:0: a sandboxed
	// instance reaches ebb only inside its own network namespace, where its
	// listener is made. The server owns it from New on and closes it.
	Listener net.Listener
}

// Validate fills the zero fields of c with defaults and reports the first
// field that cannot be used.
func (c *Config) Validate() error {
	if c.FunctionVersion == "" {
		c.FunctionVersion = DefaultFunctionVersion
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.AccountID == "" {
		c.AccountID = DefaultAccountID
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.FunctionName == "":
		return errors.New("function name is required")
	case !arnSafe(c.FunctionName):
		return fmt.Errorf("function name %q must not contain ':', '/' or whitespace", c.FunctionName)
	case !arnSafe(c.FunctionVersion):
		return fmt.Errorf("function version %q must not contain ':', '/' or whitespace", c.FunctionVersion)
	case !arnSafe(c.Region):
		return fmt.Errorf("region %q must not contain ':', '/' or whitespace", c.Region)
	case !arnSafe(c.AccountID):
		return fmt.Errorf("account id %q must not contain ':', '/' or whitespace", c.AccountID)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("max response bytes %d must not be negative", c.MaxResponseBytes)
	}
	return nil
}

// arnSafe reports whether s can be one field of an ARN that is also sent as an
// HTTP header value: the runtime splits the ARN on ':' to find the qualifier.
func arnSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b <= ' ' || b >= 0x7f || b == ':' || b == '/' {
			return false
		}
	}
	return true
}
