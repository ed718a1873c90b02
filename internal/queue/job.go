package queue

import (
	"encoding/json"
	"time"

	"github.com/ebb-run/ebb"
)

// Status is where a job is in its life.
type Status string

const (
	// StatusQueued: waiting for a worker (first attempt, or after an
	// instance of ebb died while running it).
	StatusQueued Status = "queued"
	// StatusRunning: an attempt is in progress.
	StatusRunning Status = "running"
	// StatusFailed: the last attempt failed and a retry is scheduled at
	// NextAttemptAt. It is not final.
	StatusFailed Status = "failed"
	// StatusSucceeded: final; Result holds the handler's answer.
	StatusSucceeded Status = "succeeded"
	// StatusDead: final; the job ran out of retries or age, or cannot run
	// at all. It sits in the dead-letter store with its Error until it is
	// redriven.
	StatusDead Status = "dead"
)

// Final reports whether no more attempts will be made without a redrive.
func (s Status) Final() bool { return s == StatusSucceeded || s == StatusDead }

// Job is the durable record of one asynchronous invocation. Its ID is also
// the request id the handler sees on every attempt, so that handlers can
// deduplicate the rare second execution that at-least-once delivery allows.
type Job struct {
	ID       string `json:"id"`
	Function string `json:"function"`
	// Version is the version the job was pinned to when it was queued
	// (NAME:alias or NAME:N resolved then); absent, it runs on whatever
	// version the function's route picks.
	Version int    `json:"version,omitempty"`
	Status  Status `json:"status"`
	// Source says what made the job: "invoke", "schedule", "event", or
	// "destination".
	Source string `json:"source,omitempty"`
	// Hops counts the on_success/on_failure deliveries that led to this
	// job; see MaxHops.
	Hops int `json:"hops,omitempty"`
	// Trace is the W3C trace context of the request that queued the job:
	// its run joins the caller's trace.
	Trace ebb.TraceHeaders `json:"trace,omitzero"`
	// Attempts counts executions started. Failures counts the ones that
	// failed; a restart of ebb in the middle of one is not the function's
	// failure and does not use up a retry.
	Attempts      int             `json:"attempts"`
	Failures      int             `json:"failures"`
	EnqueuedAt    time.Time       `json:"enqueued_at"`
	StartedAt     time.Time       `json:"started_at,omitzero"`
	FinishedAt    time.Time       `json:"finished_at,omitzero"`
	NextAttemptAt time.Time       `json:"next_attempt_at,omitzero"`
	Result        json.RawMessage `json:"result,omitempty"`
	// ResultTruncated says the result was larger than the queue keeps.
	ResultTruncated bool      `json:"result_truncated,omitempty"`
	Error           *JobError `json:"error,omitempty"`
	Redrives        int       `json:"redrives,omitempty"`
	// Destination is the delivery of the outcome to on_success/on_failure.
	Destination *Delivery `json:"destination,omitempty"`
}

// JobError is the last error of a job, in Lambda's shape.
type JobError struct {
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
}

// Delivery records sending a finished job to a destination.
type Delivery struct {
	Target    string    `json:"target"`
	Delivered bool      `json:"delivered"`
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error,omitempty"`
	At        time.Time `json:"at,omitzero"`
	// JobID is the job made on a function destination.
	JobID string `json:"job_id,omitempty"`
}

// trigger is what the job's source is as an invocation trigger: a schedule's
// tick, an event, or else an async invoke (a destination is one too).
func (j *Job) trigger() ebb.Trigger {
	switch j.Source {
	case "schedule":
		return ebb.TriggerSchedule
	case "event":
		return ebb.TriggerEvent
	}
	return ebb.TriggerAsync
}
