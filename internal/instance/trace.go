package instance

import (
	"encoding/hex"

	"go.opentelemetry.io/otel/trace"
)

// traceHeaders writes the trace context sc in the forms a runtime reads:
// X-Ray's (Lambda-Runtime-Trace-Id, which aws-lambda-go and the AWS SDKs
// pick up: Root=1-<first 8 hex of the trace id>-<other 24>;Parent=<span
// id>;Sampled=<0|1>, the mapping of OpenTelemetry's X-Ray propagator) and
// W3C's traceparent and tracestate (what OpenTelemetry SDKs read). sc
// must be valid.
func traceHeaders(sc trace.SpanContext) (xray, traceparent, tracestate string) {
	tid, sid := sc.TraceID(), sc.SpanID()
	var b [len("Root=1-") + 8 + 1 + 24 + len(";Parent=") + 16 + len(";Sampled=1")]byte
	n := copy(b[:], "Root=1-")
	n += hex.Encode(b[n:], tid[:4])
	b[n] = '-'
	n++
	n += hex.Encode(b[n:], tid[4:])
	n += copy(b[n:], ";Parent=")
	n += hex.Encode(b[n:], sid[:])
	n += copy(b[n:], ";Sampled=")
	b[n] = '0'
	if sc.IsSampled() {
		b[n] = '1'
	}
	n++
	var p [2 + 1 + 32 + 1 + 16 + 1 + 2]byte
	m := copy(p[:], "00-")
	m += hex.Encode(p[m:], tid[:])
	p[m] = '-'
	m++
	m += hex.Encode(p[m:], sid[:])
	p[m] = '-'
	m++
	m += hex.Encode(p[m:], []byte{byte(sc.TraceFlags())})
	return string(b[:n]), string(p[:m]), sc.TraceState().String()
}
