// Command hello-go is the smallest ebb exec function: an unmodified
// aws-lambda-go program. ebb starts it with AWS_LAMBDA_RUNTIME_API pointing at
// its own Lambda Runtime API, so the same binary runs on AWS Lambda as well.
//
// Build it as the bundle's bootstrap (the Makefile does this):
//
//	CGO_ENABLED=0 go build -tags lambda.norpc -o examples/hello-go/bootstrap ./examples/hello-go
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// request is the event this function accepts: {"name": "..."}.
type request struct {
	Name string `json:"name"`
}

// response is what the function returns; request_id lets a caller match the
// reply to the invocation's log line and metering record.
type response struct {
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

// handle greets the caller. An absent or empty name is not an error: a
// greeting for "world" is the friendlier answer for a demo function.
func handle(ctx context.Context, req request) (response, error) {
	name := req.Name
	if name == "" {
		name = "world"
	}
	var id string
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		id = lc.AwsRequestID
	}
	return response{Message: "hello, " + name, RequestID: id}, nil
}

func main() {
	lambda.Start(handle)
}
