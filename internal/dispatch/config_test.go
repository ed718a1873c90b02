package dispatch

import (
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"defaults", Config{Function: "fn"}, false},
		{"no function", Config{}, true},
		{"negative version", Config{Function: "fn", Version: -1}, true},
		{"negative concurrency", Config{Function: "fn", Concurrency: -1}, true},
		{"negative min", Config{Function: "fn", MinInstances: -1}, true},
		{"negative max", Config{Function: "fn", MaxInstances: -1}, true},
		{"min above max", Config{Function: "fn", MinInstances: 3, MaxInstances: 2}, true},
		{"min equals max", Config{Function: "fn", MinInstances: 2, MaxInstances: 2}, false},
		{"negative queue", Config{Function: "fn", MaxQueue: -1}, true},
		{"negative queue timeout", Config{Function: "fn", QueueTimeout: -time.Second}, true},
		{"negative idle timeout", Config{Function: "fn", IdleTimeout: -time.Second}, true},
		{"negative start timeout", Config{Function: "fn", StartTimeout: -time.Second}, true},
		{"negative stop timeout", Config{Function: "fn", StopTimeout: -time.Second}, true},
		{"negative tick", Config{Function: "fn", TickInterval: -time.Second}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want Config // only the defaulted fields are compared
	}{
		{"zero", Config{Function: "fn"}, Config{
			Concurrency: ebb.DefaultConcurrency, MaxInstances: ebb.DefaultMaxInstances, QueueTimeout: ebb.DefaultQueueTimeout,
			IdleTimeout: ebb.DefaultIdleTimeout, StartTimeout: 30 * time.Second, StopTimeout: 5 * time.Second, TickInterval: time.Second,
		}},
		{"max follows a large min", Config{Function: "fn", MinInstances: 20}, Config{MaxInstances: 20}},
		{"tick is a quarter of a short idle timeout", Config{Function: "fn", IdleTimeout: 2 * time.Second}, Config{TickInterval: 500 * time.Millisecond}},
		{"tick at least 10ms", Config{Function: "fn", IdleTimeout: 8 * time.Millisecond}, Config{TickInterval: 10 * time.Millisecond}},
		{"set fields kept", Config{Function: "fn", Concurrency: 4, MaxInstances: 3, TickInterval: time.Minute}, Config{Concurrency: 4, MaxInstances: 3, TickInterval: time.Minute}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cfg
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if c.Now == nil {
				t.Errorf("Now not defaulted")
			}
			check := func(field string, got, want any, set bool) {
				if set && got != want {
					t.Errorf("%s = %v, want %v", field, got, want)
				}
			}
			w := tc.want
			check("Concurrency", c.Concurrency, w.Concurrency, w.Concurrency != 0)
			check("MaxInstances", c.MaxInstances, w.MaxInstances, w.MaxInstances != 0)
			check("QueueTimeout", c.QueueTimeout, w.QueueTimeout, w.QueueTimeout != 0)
			check("IdleTimeout", c.IdleTimeout, w.IdleTimeout, w.IdleTimeout != 0)
			check("StartTimeout", c.StartTimeout, w.StartTimeout, w.StartTimeout != 0)
			check("StopTimeout", c.StopTimeout, w.StopTimeout, w.StopTimeout != 0)
			check("TickInterval", c.TickInterval, w.TickInterval, w.TickInterval != 0)
		})
	}
}
