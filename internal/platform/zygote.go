package platform

import (
	"log/slog"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/instance"
)

// zygoteStatus reports d's python fork-server, nil when it has none.
func zygoteStatus(d *deployment) *api.ZygoteStatus {
	zs := d.starter.Zygote()
	if zs == nil {
		return nil
	}
	return &api.ZygoteStatus{PID: zs.Pid, BuiltAt: zs.BuiltAt, BuildMS: ms(zs.Build), RSS: zs.RSS, PSS: zs.PSS,
		Children: zs.Children, Spare: zs.Spare, Fallback: zs.Fallback}
}

// coldStartAttrs break a cold start down for the invocation log: whether
// the instance was forked from a zygote or handed out as a spare (python),
// or claimed as a spare process (onnx), how long building the zygote took
// when this start had to, and fork-to-ready.
func coldStartAttrs(lease *dispatch.Lease[*instance.Instance]) []slog.Attr {
	if lease == nil || !lease.Cold {
		return nil
	}
	cs := lease.Instance.ColdStart()
	if !cs.Zygote {
		if cs.Spare { // an onnx process started ahead, claimed
			return []slog.Attr{slog.Bool("spare", true)}
		}
		return nil
	}
	attrs := []slog.Attr{slog.Bool("zygote", true), slog.Bool("spare", cs.Spare), slog.Float64("fork_to_ready_ms", ms(cs.ForkToReady))}
	if cs.ZygoteBuild > 0 {
		attrs = append(attrs, slog.Float64("zygote_build_ms", ms(cs.ZygoteBuild)))
	}
	return attrs
}
