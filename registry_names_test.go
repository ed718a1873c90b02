package ebb

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoRegistryHostNames holds the house rule that package registries are
// named by kind ("the npm registry"), never by host name, in code, docs and
// scripts. The host names are spelt here in two halves so that this file
// does not name them either.
func TestNoRegistryHostNames(t *testing.T) {
	var hosts []string
	for _, h := range [][2]string{
		{"npmjs", ".org"}, {"npmjs", ".com"}, {"yarnpkg", ".com"},
		{"proxy.golang", ".org"}, {"sum.golang", ".org"}, {"goproxy", ".io"}, {"goproxy", ".cn"},
		{"pypi", ".org"}, {"pythonhosted", ".org"},
		{"crates", ".io"}, {"rubygems", ".org"}, {"nuget", ".org"}, {"packagist", ".org"},
		{"repo.maven", ".apache.org"}, {"registry-1.docker", ".io"}, {"hub.docker", ".com"},
	} {
		hosts = append(hosts, h[0]+h[1])
	}
	// Build outputs, local state and installed dependencies are not the
	// project's text (see .gitignore).
	skip := map[string]bool{"bin": true, "ebb-data": true, ".cache": true, "artifacts": true, filepath.Join("bench", "out"): true}
	checked := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skip[p] || d.Name() == ".git" || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || d.Name() == "go.sum" || strings.HasSuffix(d.Name(), ".test") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.IndexByte(b, 0) >= 0 {
			return nil // binary: a built example or test data
		}
		checked++
		lower := bytes.ToLower(b)
		for _, h := range hosts {
			if i := bytes.Index(lower, []byte(h)); i >= 0 {
				line := 1 + bytes.Count(b[:i], []byte("\n"))
				t.Errorf("%s:%d names a package registry by its host name (%s); name it by kind, as \"the npm registry\"", p, line, h)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("checked %d files; the walk did not see the repository", checked)
	}
}
