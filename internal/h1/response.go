package h1

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ebb-run/ebb/internal/respguard"
)

// bufferBeforeHeader is how much of a body is held back before the header is
// written: a response that fits gets an exact Content-Length, one that does
// not is sent chunked.
const bufferBeforeHeader = 16 << 10

// response is the http.ResponseWriter of one request.
type response struct {
	conn   *conn
	bw     *bufio.Writer
	br     *bufio.Reader
	req    *http.Request
	header http.Header

	status        int   // 0 until WriteHeader
	wroteHeader   bool  // status line and header are in bw
	chunked       bool  // body framing: chunked
	noBody        bool  // HEAD, 1xx, 204, 304: the body is not sent
	contentLength int64 // declared, or -1
	written       int64 // body bytes accepted
	buf           []byte
	closeAfter    bool
	hijacked      bool

	body   requestBody     // the request's body, as the handler reads it
	expect *expectContinue // set when the client asked for 100-continue

	gone     chan struct{} // closed when the client is seen to go (ClientGone); nil until asked
	goneDone chan struct{} // closed when ClientGone's watcher has stopped; nil if none runs
}

// ClientGone returns a channel closed if the client closes its connection
// while the handler runs. The server does not watch for that on every
// request (it would cost a read goroutine each); a long-lived handler (a
// followed log, a stream) asks, once its request body is read. The channel
// never closes for a handler that has not read its whole body, or when the
// client has already sent its next request.
func (w *response) ClientGone() <-chan struct{} {
	if w.gone != nil {
		return w.gone
	}
	w.gone = make(chan struct{})
	if w.body.pending() || w.br.Buffered() > 0 || w.hijacked {
		return w.gone
	}
	// The watcher reads with no deadline: a stream may run for hours.
	cio := &w.conn.io
	cio.readGap, cio.readCap = 0, time.Time{}
	cio.setRead(time.Time{})
	w.goneDone = make(chan struct{})
	go func() {
		defer close(w.goneDone)
		if _, err := w.br.Peek(1); err != nil && !isTimeout(err) {
			close(w.gone)
		}
	}()
	return w.gone
}

// stopWatching ends ClientGone's watcher before the connection reads again.
func (w *response) stopWatching() {
	if w.goneDone == nil {
		return
	}
	w.conn.io.setRead(aLongTimeAgo)
	<-w.goneDone
	w.goneDone = nil
}

// aLongTimeAgo is a read deadline that wakes a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader || w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: sent at once, the final status comes later.
		w.bw.WriteString(statusLine(code))
		w.header.Write(w.bw)
		w.bw.WriteString("\r\n")
		w.bw.Flush()
		return
	}
	w.status = code
	w.contentLength = -1
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
}

func (w *response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.noBody {
		if w.req.Method == http.MethodHead && !w.wroteHeader && len(w.buf)+len(p) <= bufferBeforeHeader {
			w.buf = append(w.buf, p...) // for its length only
		}
		return len(p), nil
	}
	if !w.wroteHeader {
		if len(w.buf)+len(p) <= bufferBeforeHeader {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.writeHeader(false)
	}
	return w.writeBody(p)
}

func (w *response) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

func (w *response) writeBody(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.chunked {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		n, err := w.bw.Write(p)
		if err != nil {
			return n, err
		}
		_, err = w.bw.WriteString("\r\n")
		return n, err
	}
	return w.bw.Write(p)
}

// writeHeader commits the status and header. final says the handler is done,
// so a buffered body's length is its whole length.
func (w *response) writeHeader(final bool) {
	h := w.header
	// The framing is the server's: a handler's Transfer-Encoding would
	// contradict the Content-Length or chunking chosen here.
	delete(h, "Transfer-Encoding")
	if c, ok := h["Connection"]; ok && hasToken(c, "close") {
		w.closeAfter = true
	}
	if list, ok := h["Trailer"]; ok {
		if names := trailerNames(list); names != nil {
			h["Trailer"] = names
		} else {
			delete(h, "Trailer")
		}
	}
	if w.status == http.StatusSwitchingProtocols {
		// Without a hijack there is no protocol to switch to: the
		// connection carries nothing after this answer.
		w.closeAfter = true
	}
	if final && w.body.pending() && (w.body.large() || w.expect != nil && !w.expect.sent) {
		// The handler refused (left) a body that will not be read to
		// keep the connection: say so, the connection lingers and closes.
		w.closeAfter = true
	}
	if w.noBody {
		if w.req.Method == http.MethodHead && final && w.contentLength < 0 && len(w.buf) > 0 {
			h["Content-Length"] = []string{strconv.Itoa(len(w.buf))}
		}
		if w.status == http.StatusNoContent || w.status == http.StatusNotModified {
			delete(h, "Content-Length")
			delete(h, "Transfer-Encoding")
		}
	} else if w.contentLength < 0 && w.status != http.StatusSwitchingProtocols {
		switch {
		case final:
			h["Content-Length"] = []string{strconv.Itoa(len(w.buf))}
		case w.req.ProtoAtLeast(1, 1):
			w.chunked = true
			h["Transfer-Encoding"] = chunkedTE
		default:
			w.closeAfter = true // HTTP/1.0: the body ends with the connection
		}
	}
	if _, ok := h["Content-Type"]; !ok && len(w.buf) > 0 && !w.noBody && h.Get("Content-Encoding") == "" {
		h["Content-Type"] = []string{http.DetectContentType(w.buf)}
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = httpDate()
	}
	if w.closeAfter || w.req.Close || w.conn.s.isClosing() {
		w.closeAfter = true
		h["Connection"] = closeValue
	}
	// Trailer values are sent after the body, not here.
	var trailers []string
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			trailers = append(trailers, k)
		}
	}
	w.bw.WriteString(statusLine(w.status))
	if len(trailers) == 0 {
		h.Write(w.bw)
	} else {
		skip := map[string]bool{}
		for _, k := range trailers {
			skip[k] = true
		}
		h.WriteSubset(w.bw, skip)
	}
	w.bw.WriteString("\r\n")
	w.wroteHeader = true
	if len(w.buf) > 0 && !w.noBody {
		w.writeBody(w.buf)
	}
	w.buf = nil
}

var (
	chunkedTE  = []string{"chunked"}
	closeValue = []string{"close"}
)

func (w *response) Flush() {
	if w.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHeader {
		w.writeHeader(false)
	}
	w.bw.Flush()
}

// FlushError is http.ResponseController's flush.
func (w *response) FlushError() error {
	w.Flush()
	return w.connErr()
}

func (w *response) connErr() error {
	if w.bw.Buffered() > 0 {
		return w.bw.Flush()
	}
	return nil
}

// finish completes the response after the handler returned.
func (w *response) finish() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHeader {
		w.writeHeader(true)
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		w.writeTrailers()
		w.bw.WriteString("\r\n")
	}
	if w.contentLength >= 0 && w.written < w.contentLength && !w.noBody {
		// The handler promised more than it wrote: the connection cannot
		// carry another response.
		w.closeAfter = true
	}
	return w.bw.Flush()
}

// writeTrailers writes the declared and TrailerPrefix trailers. A field
// that is not a valid trailer (a bad name, a control character in a value,
// or one that frames or routes the message) is left out and logged: none
// can end the message early or write past it.
func (w *response) writeTrailers() {
	t := http.Header{}
	for _, list := range w.header["Trailer"] {
		for _, k := range strings.Split(list, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if vs := w.header[k]; len(vs) > 0 {
				t[k] = vs
			}
		}
	}
	for k, vs := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			t[name] = vs
		}
	}
	for _, d := range respguard.Trailer(t) {
		w.conn.s.Logger.Warn("dropped a response trailer", "field", d.Name, "reason", d.Reason, "path", w.req.URL.Path)
	}
	for k, vs := range t {
		for _, v := range vs {
			w.bw.WriteString(k + ": " + v + "\r\n")
		}
	}
}

// trailerNames keeps, of a Trailer field, the names that may be trailers.
func trailerNames(list []string) []string {
	var keep []string
	for _, v := range list {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); respguard.TrailerName(k) {
				keep = append(keep, http.CanonicalHeaderKey(k))
			}
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return []string{strings.Join(keep, ", ")}
}

// hasToken says whether a comma-separated field holds token (any case).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			if asciiEqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// Hijack hands the connection to the handler (protocol upgrades).
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wroteHeader {
		return nil, nil, errors.New("h1: hijack after the response header was written")
	}
	w.stopWatching()
	w.hijacked = true
	w.conn.io.unlimited()
	return w.conn.c, bufio.NewReadWriter(w.br, w.bw), nil
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// dateCache holds the Date header value, formatted once a second.
var dateCache struct {
	mu  sync.Mutex // guards sec and val
	sec int64
	val []string
}

func httpDate() []string {
	now := time.Now()
	dateCache.mu.Lock()
	defer dateCache.mu.Unlock()
	if s := now.Unix(); s != dateCache.sec {
		dateCache.sec, dateCache.val = s, []string{now.UTC().Format(http.TimeFormat)}
	}
	return dateCache.val
}
