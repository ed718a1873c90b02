package instance

import (
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestTraceHeaders(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ts, _ := trace.ParseTraceState("a=1,b=2")
	for _, tc := range []struct {
		flags             trace.TraceFlags
		state             trace.TraceState
		xray, parent, tst string
	}{
		{trace.FlagsSampled, ts, "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1",
			"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a=1,b=2"},
		{0, trace.TraceState{}, "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=0",
			"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", ""},
	} {
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: tc.flags, TraceState: tc.state, Remote: true})
		xray, parent, state := traceHeaders(sc)
		if xray != tc.xray || parent != tc.parent || state != tc.tst {
			t.Errorf("traceHeaders(flags %v) = %q, %q, %q; want %q, %q, %q", tc.flags, xray, parent, state, tc.xray, tc.parent, tc.tst)
		}
	}
}
