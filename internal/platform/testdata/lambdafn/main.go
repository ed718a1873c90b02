// Command lambdafn is an aws-lambda-go function whose behaviour the event
// chooses, so that one binary can exercise every path of the platform.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type event struct {
	Name    string `json:"name"`
	SleepMS int    `json:"sleep_ms"`
	Crash   bool   `json:"crash"`
	AllocMB int    `json:"alloc_mb"`
	Error   string `json:"error"`
	Print   string `json:"print"`
	Env     string `json:"env"`
	// Hold names a file, relative to the function's code (or absolute):
	// the handler waits until it exists (or its deadline passes), so that a
	// test decides when a request ends.
	Hold string `json:"hold"`
}

type reply struct {
	Message     string `json:"message"`
	RequestID   string `json:"request_id"`
	ARN         string `json:"arn"`
	DeadlineMS  int64  `json:"deadline_ms"`
	Env         string `json:"env,omitempty"`
	Pid         int    `json:"pid"`
	Cwd         string `json:"cwd"`
	Tmp         string `json:"tmp"`
	FunctionEnv string `json:"function_env"`
}

var hog [][]byte

func handle(ctx context.Context, ev event) (*reply, error) {
	lc, _ := lambdacontext.FromContext(ctx)
	if ev.Print != "" {
		fmt.Println(ev.Print)
	}
	if ev.SleepMS > 0 {
		time.Sleep(time.Duration(ev.SleepMS) * time.Millisecond)
	}
	if ev.Hold != "" {
		if !filepath.IsAbs(ev.Hold) {
			ev.Hold = filepath.Join(os.Getenv("LAMBDA_TASK_ROOT"), ev.Hold)
		}
		for {
			if _, err := os.Stat(ev.Hold); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("held until the deadline: %s never appeared", ev.Hold)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	if ev.Crash {
		os.Exit(3)
	}
	for i := 0; i < ev.AllocMB; i++ {
		b := make([]byte, 1<<20)
		for j := range b {
			b[j] = byte(j)
		}
		hog = append(hog, b)
	}
	if ev.Error != "" {
		return nil, errors.New(ev.Error)
	}
	name := ev.Name
	if name == "" {
		name = "world"
	}
	dl, _ := ctx.Deadline()
	cwd, _ := os.Getwd()
	r := &reply{Message: "hello, " + name, RequestID: lc.AwsRequestID, ARN: lc.InvokedFunctionArn,
		DeadlineMS: dl.UnixMilli(), Pid: os.Getpid(), Cwd: cwd, Tmp: os.Getenv("TMPDIR"),
		FunctionEnv: strings.Join([]string{os.Getenv("AWS_LAMBDA_FUNCTION_NAME"), os.Getenv("AWS_LAMBDA_FUNCTION_VERSION"),
			os.Getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), os.Getenv("_HANDLER")}, ",")}
	if ev.Env != "" {
		r.Env = os.Getenv(ev.Env)
	}
	return r, nil
}

func main() { lambda.Start(handle) }
