package platform

import (
	"io"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/ebb-run/ebb"
)

// lineBufs recycles the buffers of fast invocation lines.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeInvocationLine writes the log line of a warm, successful invocation
// straight to w, in the same JSON shape as the slog line that every other
// invocation gets. It exists because slog's JSON handler costs several
// microseconds a line (reflection-free but general: float formatting through
// interfaces, attribute slices), which on the warm path of a proxied request
// is more than ebb's own work; here it is a few hundred nanoseconds.
func writeInvocationLine(w io.Writer, now time.Time, inv *ebb.Invocation) {
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = now.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"invocation","function":"`...)
	b = append(b, inv.Function...) // names, ids: [a-z0-9-] only, nothing to escape
	b = append(b, `","version":`...)
	b = strconv.AppendInt(b, int64(inv.Version), 10)
	b = append(b, `,"request_id":"`...)
	b = appendJSONSafe(b, inv.RequestID)
	b = append(b, `","cold_start":`...)
	b = strconv.AppendBool(b, inv.ColdStart)
	b = append(b, `,"init_ms":`...)
	b = appendMS(b, inv.Init)
	b = append(b, `,"queued_ms":`...)
	b = appendMS(b, inv.Queued)
	b = append(b, `,"duration_ms":`...)
	b = appendMS(b, inv.Duration)
	b = append(b, `,"billed_ms":`...)
	b = strconv.AppendInt(b, inv.BilledMS(), 10)
	b = append(b, `,"memory_mib":`...)
	b = strconv.AppendInt(b, int64(inv.MemoryMiB), 10)
	b = append(b, `,"peak_rss_mib":`...)
	b = appendJSONFloat(b, float64(inv.PeakRSS)/(1<<20))
	b = append(b, `,"gb_seconds":`...)
	b = appendJSONFloat(b, inv.GBSeconds())
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(inv.Status), 10)
	b = append(b, `,"instance":"`...)
	b = appendJSONSafe(b, inv.InstanceID)
	b = append(b, "\"}\n"...)
	w.Write(b)
	*bp = b
	lineBufs.Put(bp)
}

// appendMS appends d in milliseconds with microsecond precision.
func appendMS(b []byte, d time.Duration) []byte {
	return appendJSONFloat(b, float64(d.Microseconds())/1000)
}

// appendJSONFloat appends f as encoding/json (and so slog) writes a
// float64: the shortest form, in exponent notation below 1e-6 and from
// 1e21, with a two-digit exponent trimmed ("1e-07" is written "1e-7").
func appendJSONFloat(b []byte, f float64) []byte {
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		b = strconv.AppendFloat(b, f, 'e', -1, 64)
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
		return b
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

// appendJSONSafe appends s, dropping what would need escaping: request ids
// are client-visible UUIDs or job ids, never free text.
func appendJSONSafe(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c != '"' && c != '\\' && c < 0x7f {
			b = append(b, c)
		}
	}
	return b
}
