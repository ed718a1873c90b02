package api

import "time"

// KeepAliveStatus is how a function's current version is kept warm
// (docs/keepalive.md).
type KeepAliveStatus struct {
	// Policy is "fixed:D", or "adaptive (hybrid…)" with the policy it runs.
	Policy string `json:"policy"`
	// Why names the branch of the policy that made the last decision:
	// fixed, fallback, histogram, range, forecast, or none (no call yet).
	Why string `json:"why"`
	// Warm says whether the policy keeps the version warm now.
	Warm bool `json:"warm"`
	// NextPrewarm is the pre-warm ahead of the predicted next call;
	// NextUnload when what is warm goes. Zero: none.
	NextPrewarm time.Time `json:"next_prewarm,omitzero"`
	NextUnload  time.Time `json:"next_unload,omitzero"`
	// Counts since the version's pool was made (adaptive only): pre-warms
	// asked for, calls that found one in place, pre-warms unloaded with no
	// call, and the time the policy kept the version warm with no call.
	Prewarms        uint64  `json:"prewarms"`
	PrewarmedStarts uint64  `json:"prewarmed_starts"`
	UnusedPrewarms  uint64  `json:"unused_prewarms"`
	IdleWarmSeconds float64 `json:"idle_warm_seconds"`
}
