// Package web is ebb's dashboard: static HTML, CSS and JavaScript embedded in
// the binary and served at /ui. The page reads everything it shows from the
// management API with the operator's key; the assets themselves hold no data.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/ebb-run/ebb/internal/route"
)

//go:embed static
var static embed.FS

// CSP is the Content-Security-Policy of every asset: scripts and styles
// only from ebb itself (no inline code, no CDN), API calls only to ebb, no
// framing. Function output shown on the page (logs, results) is inserted as
// text, and this policy is the second line of defence if that ever slips.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is one embedded file, read once.
type asset struct {
	body []byte
	etag string
}

// assets maps a path under /ui/ ("index.html", "vendor/uplot/uPlot.min.css")
// to its file.
var assets = func() map[string]asset {
	out := map[string]asset{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "static/")] = asset{body: b, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		panic("web: read embedded assets: " + err.Error()) // the binary itself is broken
	}
	return out
}()

// Routes are the dashboard's entries in the route table.
//
// They need no key, even when keys are required: a browser navigating to
// /ui cannot send a bearer header, and the assets are the same for everyone
// and carry no data. Every call the page makes for data goes to the API
// routes, which check the key (describe, logs and jobs: the read role) as
// they do for any client.
func Routes() []route.Route {
	return []route.Route{
		{Pattern: "GET /ui", Handler: redirect},
		{Pattern: "GET /ui/{path...}", Handler: serve},
	}
}

func redirect(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
}

// serve answers one asset; an empty path is the page itself.
func serve(w http.ResponseWriter, r *http.Request) {
	p := r.PathValue("path")
	if p == "" {
		p = "index.html"
	}
	a, ok := assets[path.Clean(p)]
	if !ok || path.Clean(p) != p {
		route.Write(w, route.Native, &route.Error{Status: http.StatusNotFound, Type: "NotFound",
			Message: "no dashboard asset " + r.URL.Path})
		return
	}
	h := w.Header()
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	// Revalidated on every load (a 304 when unchanged): an upgraded ebb
	// must not run with the old page's script.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	http.ServeContent(w, r, p, time.Time{}, bytes.NewReader(a.body))
}
