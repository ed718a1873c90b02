package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
)

func TestKeepAliveLine(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		ka   api.KeepAliveStatus
		want string
	}{
		{api.KeepAliveStatus{Policy: "fixed:5m", Why: "fixed"}, "fixed:5m, fixed; nothing warm"},
		{api.KeepAliveStatus{Policy: "fixed:5m", Why: "fixed", Warm: true, NextUnload: now.Add(90 * time.Second)}, "fixed:5m, fixed; warm, unload in 1m30s"},
		{api.KeepAliveStatus{Policy: "adaptive (hybrid)", Why: "histogram", NextPrewarm: now.Add(13 * time.Minute), NextUnload: now.Add(18 * time.Minute),
			Prewarms: 3, PrewarmedStarts: 2, UnusedPrewarms: 1, IdleWarmSeconds: 250},
			"adaptive (hybrid), histogram; pre-warm in 13m0s, unload in 18m0s if no call; 3 pre-warms (2 used, 1 unused), 4m10s idle warm"},
	} {
		if got := keepAliveLine(&c.ka, now); got != c.want {
			t.Errorf("keepAliveLine(%+v)\n got %q\nwant %q", c.ka, got, c.want)
		}
	}
}

// A bad --keep-alive stops ebb serve before it starts anything, naming the
// flag.
func TestServeRefusesBadKeepAlive(t *testing.T) {
	for _, v := range []string{"sometimes", "fixed:0s", "hybrid"} {
		err := runServe(t.Context(), []string{"--keep-alive", v, "--data", t.TempDir(), "--listen", "127.0.0.1:0"})
		if err == nil || !strings.HasPrefix(err.Error(), "--keep-alive: ") {
			t.Errorf("serve --keep-alive %s: %v, want an error naming --keep-alive", v, err)
		}
	}
}
