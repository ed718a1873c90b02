// Command asyncfn is the aws-lambda-go function of the async tests. It
// counts its executions per request id with a counter the test runs (a
// unix socket the test puts in the function's code directory, which a
// sandboxed function reaches read-only at /var/task: connecting needs no
// write to the filesystem), so that a test can count executions per job
// and the count survives the instance; and it fails or crashes its first
// attempts on request, by that count.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type event struct {
	// Count is the counter's socket, relative to the function's code.
	Count      string `json:"count"`
	SleepMS    int    `json:"sleep_ms"`
	FailUntil  int    `json:"fail_until"`
	CrashUntil int    `json:"crash_until"`
	Fail       string `json:"fail"`
}

// attempt counts this execution of rid and returns its number (1 without
// a counter).
func attempt(sock, rid string) (int, error) {
	if sock == "" {
		return 1, nil
	}
	c, err := net.Dial("unix", filepath.Join(os.Getenv("LAMBDA_TASK_ROOT"), sock))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, rid); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("read count: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(line))
}

func handle(ctx context.Context, ev map[string]any) (map[string]any, error) {
	var e event
	if s, ok := ev["count"].(string); ok {
		e.Count = s
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
	n, err := attempt(e.Count, rid)
	if err != nil {
		return nil, err
	}
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
