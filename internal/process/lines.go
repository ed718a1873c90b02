package process

import (
	"bytes"
	"io"
)

// MaxLineBytes is the longest line handed to an output callback; a longer
// line arrives as several pieces of at most this size.
const MaxLineBytes = 64 << 10

// initialLineBuffer is what each output stream starts with; most programs
// write short lines, and an idle instance should not pin 64 KiB per stream.
const initialLineBuffer = 4 << 10

// readHooks let a reader's owner act at its quiet points. before is
// called before each read, when every whole line read so far has been
// delivered; interrupted is asked about a read error and returns true when
// the error was the owner's own interruption (a read deadline set to wake
// the reader), after which reading goes on.
type readHooks interface {
	before()
	interrupted(err error) bool
}

// readLines calls fn once per line read from r, without the newline, until r
// fails or reaches EOF. A final line without a newline is delivered too. The
// slice handed to fn is only valid during the call. hooks may be nil.
func readLines(r io.Reader, fn func(line []byte), hooks readHooks) {
	buf := make([]byte, initialLineBuffer)
	start, end := 0, 0
	// split is set after a line was cut at MaxLineBytes, so that a newline
	// right at the cut ends that line instead of producing an empty one.
	split := false
	for {
		for start < end {
			i := bytes.IndexByte(buf[start:end], '\n')
			if i < 0 {
				break
			}
			if i > 0 || !split {
				fn(buf[start : start+i])
			}
			split = false
			start += i + 1
		}
		if end-start >= MaxLineBytes {
			fn(buf[start : start+MaxLineBytes])
			split = true
			start += MaxLineBytes
			continue
		}
		if start == end {
			start, end = 0, 0
		}
		if end == len(buf) {
			if start > 0 {
				end = copy(buf, buf[start:end])
				start = 0
			} else {
				grown := make([]byte, min(2*len(buf), MaxLineBytes))
				copy(grown, buf[:end])
				buf = grown
			}
		}
		if hooks != nil {
			hooks.before()
		}
		n, err := r.Read(buf[end:])
		end += n
		if err != nil && n == 0 && hooks != nil && hooks.interrupted(err) {
			continue
		}
		if err != nil {
			for start < end {
				// Deliver what was read before the error, line by line,
				// then the unterminated rest.
				i := bytes.IndexByte(buf[start:end], '\n')
				if i < 0 {
					fn(buf[start:end])
					break
				}
				if i > 0 || !split {
					fn(buf[start : start+i])
				}
				split = false
				start += i + 1
			}
			return
		}
	}
}
