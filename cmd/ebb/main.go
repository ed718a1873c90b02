// Command ebb is the ebb serverless platform: `ebb serve` runs it, the other
// subcommands talk to a running server over its HTTP API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `ebb: serverless inference on your own machines

Usage:
  ebb serve [--listen ADDR] [--data DIR]     run the platform
  ebb deploy [DIR] [--canary P | --no-traffic] deploy the function in DIR (default .) as a new version
  ebb invoke NAME [-d JSON | -f FILE]         invoke a function, print its result
  ebb ls                                      list functions
  ebb status NAME                             show a function's version, instances and counters
  ebb status --nodes                          the cluster's nodes: address, capacity, load
  ebb warm                                    the node's budget for warm capacity (--warm-memory) and what holds it
  ebb logs NAME [-f]                          show a function's output
  ebb rm NAME [--version N]                   remove a function, or one of its versions
  ebb versions NAME                           list a function's versions, routes and aliases
  ebb promote NAME | rollback NAME            all traffic to the newest version | back to the one before
  ebb route NAME 3=90 4=10                    explicit traffic shares (percent, summing to 100)
  ebb alias set NAME ALIAS V [--weight V=P]   aliases (NAME:ALIAS): set, ls NAME, rm NAME ALIAS
  ebb shadow NAME --version N [--percent P]   mirror requests to a version and compare its answers; report NAME, stop NAME
  ebb jobs ls NAME | get ID | redrive NAME    async jobs: list, inspect, re-queue dead letters
  ebb keys create --role R [--functions G]    API keys: create, ls, revoke ID, rotate ID
  ebb audit [--since 24h]                     the audit log of control-plane actions
  ebb usage NAME [--since 24h]                invocations, errors, cold starts, billed time, latency and idle warm memory
  ebb cost [NAME] [--since 30d] [--what-if …] price the traffic as Lambda, Cloud Run, a dedicated instance and this node
  ebb sim --trace FILE --policy hybrid        replay invocation traces through keep-alive policies
  ebb monitor NAME [--since 1h]               input and prediction distributions, drift (PSI) against a baseline

Client commands find the server with --url or EBB_URL (default http://127.0.0.1:8080)
and authenticate with --key or EBB_API_KEY.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "serve":
		err = runServe(ctx, args)
	case "deploy":
		err = runDeploy(ctx, args)
	case "invoke":
		err = runInvoke(ctx, args)
	case "ls", "list":
		err = runList(ctx, args)
	case "status":
		err = runStatus(ctx, args)
	case "warm":
		err = runWarm(ctx, args)
	case "logs":
		err = runLogs(ctx, args)
	case "rm", "remove":
		err = runRemove(ctx, args)
	case "versions":
		err = runVersions(ctx, args)
	case "promote", "rollback", "route":
		err = runTraffic(ctx, cmd, args)
	case "alias", "aliases":
		err = runAlias(ctx, args)
	case "shadow":
		err = runShadow(ctx, args)
	case "jobs":
		err = runJobs(ctx, args)
	case "keys":
		err = runKeys(ctx, args)
	case "audit":
		err = runAudit(ctx, args)
	case "usage":
		err = runUsage(ctx, args)
	case "cost":
		err = runCost(ctx, args)
	case "sim":
		err = runSim(ctx, args)
	case "monitor":
		err = runMonitor(ctx, args)
	case "onnx-serve":
		err = runONNXServe(ctx, args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "ebb: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ebb:", err)
		if e, ok := err.(exitCode); ok {
			os.Exit(int(e))
		}
		os.Exit(1)
	}
}

// exitCode is an error that only sets the exit status (the message was printed).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
