package ebb

import "errors"

// Sentinel errors that callers branch on. The HTTP edge maps each to a status.
var (
	ErrNotFound        = errors.New("function not found")                 // 404
	ErrOverloaded      = errors.New("function is at capacity; try again") // 429
	ErrPayloadTooLarge = errors.New("payload too large")                  // 413
	ErrTimeout         = errors.New("invocation timed out")               // 504
	ErrCrashed         = errors.New("instance crashed")                   // 502
	ErrOutOfMemory     = errors.New("instance exceeded its memory limit") // 502
	ErrDraining        = errors.New("function version is draining")       // retried on the new version
	ErrClosed          = errors.New("closed")
	// ErrResponseStarted: a proxied response failed after its status and
	// headers went out; nothing more can be sent to the client.
	ErrResponseStarted = errors.New("response already started")
)

// HandlerError is an error the function's handler returned (Lambda's
// {"errorType","errorMessage"}); it is the function's answer, not a fault of
// ebb or of the instance.
type HandlerError struct {
	Type    string   `json:"errorType"`
	Message string   `json:"errorMessage"`
	Trace   []string `json:"stackTrace,omitempty"`
}

func (e *HandlerError) Error() string { return e.Type + ": " + e.Message }

// InitError is a failure of an instance to start: the runtime reported an init
// error (Runtime.ImportModuleError, Runtime.HandlerNotFound …), or the process
// exited or never became ready.
type InitError struct {
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
}

func (e *InitError) Error() string { return "init: " + e.Type + ": " + e.Message }

// NotFoundError says precisely what is missing (a version, an alias); it
// matches ErrNotFound.
type NotFoundError struct{ Message string }

func (e *NotFoundError) Error() string        { return e.Message }
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }
