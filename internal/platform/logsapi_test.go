package platform

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/logbuf"
)

// logLines decodes a logs API body (newline-delimited JSON).
func logLines(t *testing.T, body string) []logbuf.Line {
	t.Helper()
	var out []logbuf.Line
	for _, s := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if s == "" {
			continue
		}
		var l logbuf.Line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("decode log line %q: %v", s, err)
		}
		out = append(out, l)
	}
	return out
}

// TestLogsAPISinceLimitFollow reads a function's log through GET
// /v1/functions/{name}/logs: since skips lines, limit bounds them, the
// Ebb-Next-Seq header says where to resume even when the body is far
// larger than the HTTP server's pre-header buffer (16 KiB), and follow
// streams lines written after the request.
func TestLogsAPISinceLimitFollow(t *testing.T) {
	needPython(t)
	e := start(t, "")
	app := `
def handler(event, context):
    for i in range(event["n"]):
        print(event["tag"], i, "x" * 200)
    return {"ok": True}
`
	e.deploy(fnDir(t, "name: chatter\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": app}))
	const n = 300 // about 100 KiB of JSON lines, well past 16 KiB
	if code, body, _ := e.invoke("chatter", fmt.Sprintf(`{"n": %d, "tag": "first"}`, n)); code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	// The output reaches the buffer through a pipe: wait for the last line.
	var all []logbuf.Line
	var next string
	waitFor(t, "the handler's last line in the log", 30*time.Second, func() bool {
		code, body, h := e.do("GET", "/v1/functions/chatter/logs", "", nil)
		if code != 200 {
			t.Fatalf("logs = %d %s", code, body)
		}
		all, next = logLines(t, body), h.Get("Ebb-Next-Seq")
		return strings.Contains(body, fmt.Sprintf("first %d x", n-1))
	})
	last := all[len(all)-1].Seq
	if next != strconv.FormatUint(last+1, 10) {
		t.Fatalf("Ebb-Next-Seq = %q after %d lines (last seq %d) of %d bytes; want %d", next, len(all), last, n*200, last+1)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq != all[i-1].Seq+1 {
			t.Fatalf("seq %d follows %d", all[i].Seq, all[i-1].Seq)
		}
	}

	// since and limit: five lines from the middle, and the header points
	// just past them.
	mid := all[len(all)/2].Seq
	code, body, h := e.do("GET", fmt.Sprintf("/v1/functions/chatter/logs?since=%d&limit=5", mid), "", nil)
	got := logLines(t, body)
	if code != 200 || len(got) != 5 || got[0].Seq != mid || got[4].Seq != mid+4 || got[0].Text != all[len(all)/2].Text {
		t.Fatalf("since=%d&limit=5 = %d, %d lines (first %+v); want 5 from seq %d", mid, code, len(got), got[:min(1, len(got))], mid)
	}
	if h.Get("Ebb-Next-Seq") != strconv.FormatUint(mid+5, 10) {
		t.Errorf("since=%d&limit=5: Ebb-Next-Seq = %q, want %d", mid, h.Get("Ebb-Next-Seq"), mid+5)
	}
	// since at the end: nothing, and the header stays there.
	code, body, h = e.do("GET", fmt.Sprintf("/v1/functions/chatter/logs?since=%d", last+1), "", nil)
	if code != 200 || body != "" || h.Get("Ebb-Next-Seq") != strconv.FormatUint(last+1, 10) {
		t.Errorf("since=end = %d %q, Ebb-Next-Seq %q; want 200, empty, %d", code, body, h.Get("Ebb-Next-Seq"), last+1)
	}
	// An unknown function is a 404, not an empty log.
	if code, body, _ := e.do("GET", "/v1/functions/nosuch/logs", "", nil); code != 404 {
		t.Errorf("logs of an unknown function = %d %s, want 404", code, body)
	}

	// follow from the end: the request stays open and yields the lines of
	// an invocation made after it started. The deadline turns a follow that
	// never yields them into a failure rather than a hung test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/v1/functions/chatter/logs?follow=1&since=%d", e.url, last+1), nil)
	req.Header.Set("Authorization", "Bearer "+e.adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Ebb-Next-Seq") != strconv.FormatUint(last+1, 10) {
		t.Fatalf("follow = %d, Ebb-Next-Seq %q; want 200, %d", resp.StatusCode, resp.Header.Get("Ebb-Next-Seq"), last+1)
	}
	if code, body, _ := e.invoke("chatter", `{"n": 3, "tag": "second"}`); code != 200 {
		t.Fatalf("invoke = %d %s", code, body)
	}
	sc := bufio.NewScanner(resp.Body)
	for i := 0; i < 3; i++ {
		if !sc.Scan() {
			t.Fatalf("follow ended after %d lines: %v", i, sc.Err())
		}
		var l logbuf.Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("decode followed line %q: %v", sc.Bytes(), err)
		}
		if want := fmt.Sprintf("second %d x", i); l.Seq != last+1+uint64(i) || !strings.HasPrefix(l.Text, want) {
			t.Errorf("followed line %d = seq %d %q, want seq %d %q…", i, l.Seq, l.Text, last+1+uint64(i), want)
		}
	}
	// The client leaves while the handler waits for a line that never
	// comes: the handler must notice (h1's ClientGone) and end, so that the
	// server shuts down with nothing in flight instead of waiting for it.
	cancel()
	resp.Body.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Errorf("shutdown after the follower left: %v (its handler still waits)", err)
	}
}
