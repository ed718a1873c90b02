// Command asyncfn is the aws-lambda-go function of the async tests. It
// records every execution (one line with its request id appended to a file),
// so that a test can count executions per job, and it fails or crashes its
// first attempts on request, keeping the attempt count in a file per request
// id so that the count survives the instance.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type event struct {
	Log        string `json:"log"`
	State      string `json:"state"`
	SleepMS    int    `json:"sleep_ms"`
	FailUntil  int    `json:"fail_until"`
	CrashUntil int    `json:"crash_until"`
	Fail       string `json:"fail"`
}

func attempt(state, rid string) int {
	if state == "" {
		return 1
	}
	p := filepath.Join(state, rid)
	b, _ := os.ReadFile(p)
	n, _ := strconv.Atoi(string(b))
	n++
	os.WriteFile(p, []byte(strconv.Itoa(n)), 0o644)
	return n
}

func handle(ctx context.Context, ev map[string]any) (map[string]any, error) {
	var e event
	if s, ok := ev["log"].(string); ok {
		e.Log = s
	}
	if s, ok := ev["state"].(string); ok {
		e.State = s
	}
	if f, ok := ev["sleep_ms"].(float64); ok {
		e.SleepMS = int(f)
	}
	if f, ok := ev["fail_until"].(float64); ok {
		e.FailUntil = int(f)
	}
	if f, ok := ev["crash_until"].(float64); ok {
		e.CrashUntil = int(f)
	}
	if s, ok := ev["fail"].(string); ok {
		e.Fail = s
	}
	lc, _ := lambdacontext.FromContext(ctx)
	rid := lc.AwsRequestID
	if e.Log != "" {
		f, err := os.OpenFile(e.Log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		fmt.Fprintln(f, rid)
		f.Close()
	}
	n := attempt(e.State, rid)
	if e.SleepMS > 0 {
		time.Sleep(time.Duration(e.SleepMS) * time.Millisecond)
	}
	if n <= e.CrashUntil {
		os.Exit(3)
	}
	if n <= e.FailUntil {
		return nil, fmt.Errorf("attempt %d fails", n)
	}
	if e.Fail != "" {
		return nil, errors.New(e.Fail)
	}
	return map[string]any{"request_id": rid, "attempt": n, "event": ev}, nil
}

func main() { lambda.Start(handle) }
