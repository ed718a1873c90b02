// Command echo is a Lambda function built with the unmodified aws-lambda-go
// library; the runtimeapi tests run it against a Server.
//
// The event decides what it does: {"error": "msg"} returns an EchoError,
// {"panic": "msg"} panics, {"sleep_ms": n} sleeps first, {"context": true}
// returns what the handler learns from its context, {"big": n} returns a
// string of n bytes, {"barrier": dir, "parties": n} waits until n
// invocations have arrived at dir (each leaves a file there), failing at
// its deadline; anything else is returned unchanged.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// EchoError is returned for {"error": …}; aws-lambda-go reports its type
// name as errorType.
type EchoError struct{ Msg string }

func (e *EchoError) Error() string { return e.Msg }

type command struct {
	Error   string `json:"error"`
	Panic   string `json:"panic"`
	SleepMS int    `json:"sleep_ms"`
	Context bool   `json:"context"`
	Big     int    `json:"big"`
	Barrier string `json:"barrier"`
	Parties int    `json:"parties"`
	ID      string `json:"id"`
}

type contextInfo struct {
	RequestID   string            `json:"request_id"`
	FunctionARN string            `json:"function_arn"`
	DeadlineMS  int64             `json:"deadline_ms"`
	TraceID     string            `json:"trace_id"`
	ClientEnv   map[string]string `json:"client_env"`
	IdentityID  string            `json:"identity_id"`
}

func handle(ctx context.Context, event json.RawMessage) (any, error) {
	var cmd command
	_ = json.Unmarshal(event, &cmd) // not every event is an object
	if cmd.SleepMS > 0 {
		time.Sleep(time.Duration(cmd.SleepMS) * time.Millisecond)
	}
	if cmd.Barrier != "" {
		if err := os.WriteFile(filepath.Join(cmd.Barrier, cmd.ID), nil, 0o644); err != nil {
			return nil, err
		}
		for {
			ents, err := os.ReadDir(cmd.Barrier)
			if err != nil {
				return nil, err
			}
			if len(ents) >= cmd.Parties {
				break
			}
			if ctx.Err() != nil {
				return nil, &EchoError{Msg: fmt.Sprintf("barrier: %d of %d invocations arrived by the deadline", len(ents), cmd.Parties)}
			}
			time.Sleep(time.Millisecond)
		}
	}
	switch {
	case cmd.Error != "":
		return nil, &EchoError{Msg: cmd.Error}
	case cmd.Panic != "":
		panic(cmd.Panic)
	case cmd.Big > 0:
		return strings.Repeat("x", cmd.Big), nil
	case cmd.Context:
		lc, _ := lambdacontext.FromContext(ctx)
		dl, _ := ctx.Deadline()
		trace, _ := ctx.Value("x-amzn-trace-id").(string)
		return contextInfo{
			RequestID:   lc.AwsRequestID,
			FunctionARN: lc.InvokedFunctionArn,
			DeadlineMS:  dl.UnixMilli(),
			TraceID:     trace,
			ClientEnv:   lc.ClientContext.Env,
			IdentityID:  lc.Identity.CognitoIdentityID,
		}, nil
	}
	return event, nil
}

func main() { lambda.Start(handle) }
