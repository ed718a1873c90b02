package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/route"
)

type noFunctions struct{}

func (noFunctions) PublicURL(string) bool                    { return false }
func (noFunctions) AllowInvoke(string) (bool, time.Duration) { return true, 0 }

// table is the dashboard in a route table that requires keys (and holds
// none), next to one keyed route.
func table(t testing.TB) http.Handler {
	t.Helper()
	keyed := []route.Route{{Pattern: "GET /v1/functions", Perm: auth.PermDescribe, Handler: func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("secret"))
	}}}
	tb, err := route.New(route.Config{Functions: noFunctions{}, Auth: &auth.Authenticator{Keys: &auth.Keyring{}, Now: time.Now}}, keyed, Routes())
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func get(h http.Handler, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestAssetsWithKeysRequired: the page and its assets load without a key
// (a browser navigation sends none) and carry the CSP; the data routes
// still need one; unknown assets are a JSON 404; /ui redirects to /ui/.
func TestAssetsWithKeysRequired(t *testing.T) {
	h := table(t)
	if w := get(h, "GET", "/v1/functions", nil); w.Code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/functions without a key = %d, want 401 (keys are required in this table)", w.Code)
	}
	if w := get(h, "GET", "/ui", nil); w.Code != http.StatusMovedPermanently || w.Header().Get("Location") != "/ui/" {
		t.Errorf("GET /ui = %d Location %q, want 301 to /ui/", w.Code, w.Header().Get("Location"))
	}
	for _, c := range []struct{ path, ctype, has string }{
		{"/ui/", "text/html", `<script src="app.js" defer></script>`},
		{"/ui/index.html", "text/html", `<title>ebb</title>`},
		{"/ui/app.js", "text/javascript", `"use strict"`},
		{"/ui/app.css", "text/css", ":root"},
		{"/ui/vendor/uplot/uPlot.iife.min.js", "text/javascript", "uPlot"},
		{"/ui/vendor/uplot/uPlot.min.css", "text/css", ".uplot"},
		{"/ui/vendor/uplot/LICENSE", "text/plain", "MIT"},
	} {
		w := get(h, "GET", c.path, nil)
		if w.Code != 200 {
			t.Errorf("GET %s without a key = %d, want 200", c.path, w.Code)
			continue
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, c.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", c.path, ct, c.ctype)
		}
		if got := w.Header().Get("Content-Security-Policy"); got != CSP {
			t.Errorf("GET %s: CSP %q, want %q", c.path, got, CSP)
		}
		if w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", c.path)
		}
		if !strings.Contains(w.Body.String(), c.has) {
			t.Errorf("GET %s: body lacks %q", c.path, c.has)
		}
		// Revalidation: the same ETag answers 304.
		if w2 := get(h, "GET", c.path, map[string]string{"If-None-Match": w.Header().Get("ETag")}); w2.Code != http.StatusNotModified {
			t.Errorf("GET %s with its ETag = %d, want 304", c.path, w2.Code)
		}
	}
	if w := get(h, "HEAD", "/ui/app.js", nil); w.Code != 200 || w.Body.Len() != 0 {
		t.Errorf("HEAD /ui/app.js = %d with %d bytes", w.Code, w.Body.Len())
	}
	for _, p := range []string{"/ui/nope.js", "/ui/static/app.js", "/ui/vendor/", "/ui/vendor/uplot"} {
		w := get(h, "GET", p, nil)
		if w.Code != 404 || !strings.Contains(w.Body.String(), `"errorMessage"`) {
			t.Errorf("GET %s = %d %s, want a JSON 404", p, w.Code, w.Body)
		}
	}
	if w := get(h, "POST", "/ui/app.js", nil); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/app.js = %d, want 405", w.Code)
	}
}

// TestCSPAllowsThePage: the policy is strict, so the page must hold nothing
// it would block: no inline script, no event handler or style attribute,
// nothing from another origin.
func TestCSPAllowsThePage(t *testing.T) {
	for _, want := range []string{"script-src 'self'", "connect-src 'self'", "default-src 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(CSP, want) {
			t.Errorf("CSP %q lacks %q", CSP, want)
		}
	}
	if strings.Contains(CSP, "unsafe-") {
		t.Errorf("CSP %q allows unsafe sources", CSP)
	}
	html := string(assets["index.html"].body)
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script(\s[^>]*)?>\s*[^<\s]`),        // inline code
		regexp.MustCompile(`\son[a-z]+\s*=`),                     // event handler attributes
		regexp.MustCompile(`\sstyle\s*=`),                        // style attributes
		regexp.MustCompile(`<style`),                             // style elements
		regexp.MustCompile(`(?i)(src|href)\s*=\s*"(https?:)?//`), // another origin
	} {
		if m := bad.FindString(html); m != "" {
			t.Errorf("index.html has %q, which the CSP blocks", m)
		}
	}
	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(html, -1) {
		if !strings.Contains(tag, ` src="`) {
			t.Errorf("index.html has %s: a script without src is inline, which the CSP blocks", tag)
		}
	}
}

// TestNoMarkupFromData: the script never turns strings into markup; every
// value from ebb (function output included) goes in as text.
func TestNoMarkupFromData(t *testing.T) {
	js := string(assets["app.js"].body)
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc", "javascript:"} {
		if strings.Contains(js, sink) {
			t.Errorf("app.js uses %s", sink)
		}
	}
}

// TestVendoredUPlot: the committed uPlot files are those scripts/fetch-uplot.sh
// copied from the pinned npm package (SHA256SUMS, written by the script
// after checking the package's integrity) and name the version the script
// pins. CI's `scripts/fetch-uplot.sh --check` compares them with the
// package itself.
func TestVendoredUPlot(t *testing.T) {
	sums := string(assets["vendor/uplot/SHA256SUMS"].body)
	want := map[string]bool{"uPlot.iife.min.js": true, "uPlot.min.css": true, "LICENSE": true}
	for _, line := range strings.Split(strings.TrimSpace(sums), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		a, found := assets["vendor/uplot/"+name]
		if !found {
			t.Errorf("SHA256SUMS names %s, which is not embedded", name)
			continue
		}
		got := sha256.Sum256(a.body)
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("vendor/uplot/%s has sha256 %x, SHA256SUMS says %s: run scripts/fetch-uplot.sh", name, got, sum)
		}
		delete(want, name)
	}
	for name := range want {
		t.Errorf("SHA256SUMS does not cover %s", name)
	}
	script, err := os.ReadFile(filepath.Join("..", "scripts", "fetch-uplot.sh"))
	if err != nil {
		t.Fatal(err)
	}
	v := regexp.MustCompile(`(?m)^UPLOT_VERSION=(\S+)$`).FindSubmatch(script)
	i := regexp.MustCompile(`(?m)^UPLOT_INTEGRITY=(\S+)$`).FindSubmatch(script)
	if v == nil || i == nil {
		t.Fatal("scripts/fetch-uplot.sh pins no UPLOT_VERSION and UPLOT_INTEGRITY")
	}
	if got, want := strings.TrimSpace(string(assets["vendor/uplot/VERSION"].body)), "uplot@"+string(v[1])+" "+string(i[1]); got != want {
		t.Errorf("vendor/uplot/VERSION = %q, the script pins %q: run scripts/fetch-uplot.sh", got, want)
	}
	if !bytes.Contains(assets["vendor/uplot/uPlot.iife.min.js"].body, []byte("(v"+string(v[1])+")")) {
		t.Errorf("uPlot.iife.min.js does not carry version %s in its banner", v[1])
	}
}

// FuzzAssetPath: no path under /ui/ fails the server or serves anything but
// an embedded asset, whole, with the CSP.
func FuzzAssetPath(f *testing.F) {
	for _, s := range []string{"", "index.html", "app.js", "../web.go", "vendor/uplot/LICENSE", "vendor/../app.js", "%2e%2e/x", "a//b", ".", "vendor/uplot/", "\x00"} {
		f.Add(s)
	}
	h := table(f)
	bodies := map[string]bool{}
	for _, a := range assets {
		bodies[string(a.body)] = true
	}
	f.Fuzz(func(t *testing.T, p string) {
		r := &http.Request{Method: "GET", URL: &url.URL{Path: "/ui/" + p}, Header: http.Header{}, Host: "localhost"}
		r.RequestURI = r.URL.RequestURI()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK:
			b, _ := io.ReadAll(w.Body)
			if !bodies[string(b)] {
				t.Fatalf("GET /ui/%q = 200 with a body that is no embedded asset (%d bytes)", p, len(b))
			}
			if w.Header().Get("Content-Security-Policy") != CSP {
				t.Fatalf("GET /ui/%q = 200 without the CSP", p)
			}
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusNotFound:
			// /ui, and paths the mux cleans first
		default:
			t.Fatalf("GET /ui/%q = %d", p, w.Code)
		}
	})
}
