package platform

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// entries lists a data-dir subdirectory.
func entries(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

func TestRefusedDeployLeavesNothing(t *testing.T) {
	e := start(t, "")
	cases := map[string]string{
		"missing exec handler": "name: a\nruntime: exec\nhandler: ./missing\n",
		"onnx outside":         "name: a\nruntime: onnx\nhandler: ../../../../etc/hostname\n",
		"onnx link to a dir":   "name: a\nruntime: onnx\nhandler: m.onnx\n",
		"onnx dir":             "name: a\nruntime: onnx\nhandler: sub\n",
	}
	for name, manifest := range cases {
		t.Run(name, func(t *testing.T) {
			dir := fnDir(t, manifest, map[string]string{"sub/x": "y", "big.bin": strings.Repeat("z", 1<<20)})
			os.Symlink("sub", filepath.Join(dir, "m.onnx"))
			code, body := deployRaw(t, e, "a", dir)
			if code != 400 || !strings.Contains(body, "handler") || strings.Contains(body, e.dataDir) {
				t.Fatalf("deploy = %d %s, want 400 naming the handler and no server path", code, body)
			}
			for _, sub := range []string{"bundles", "tmp"} {
				if left := entries(t, filepath.Join(e.dataDir, sub)); len(left) != 0 {
					t.Errorf("%s holds %v after a refused deploy", sub, left)
				}
			}
		})
	}
}

func TestOverLimitBundleIs413(t *testing.T) {
	e := start(t, "", func(c *Config) { c.MaxUnpackedBytes = 1 << 20 })
	dir := fnDir(t, "name: a\nruntime: exec\nhandler: ./run\n", map[string]string{"run": "#!/bin/sh\n", "big.bin": strings.Repeat("z", 2<<20)})
	code, body := deployRaw(t, e, "a", dir)
	if code != 413 || !strings.Contains(body, "unpacked") {
		t.Fatalf("deploy = %d %s, want 413 naming the unpacked limit", code, body)
	}
	for _, sub := range []string{"bundles", "tmp"} {
		if left := entries(t, filepath.Join(e.dataDir, sub)); len(left) != 0 {
			t.Errorf("%s holds %v after a refused deploy", sub, left)
		}
	}
}

func TestLeftoversRemovedAtStart(t *testing.T) {
	data := t.TempDir()
	for _, p := range []string{"tmp/upload-1.tar.gz", "tmp/stage-1/code/x", "bundles/.abc.tmp-1/x", "models/.incoming-1"} {
		os.MkdirAll(filepath.Join(data, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(data, p), []byte("half"), 0o644)
	}
	e := start(t, data)
	for _, sub := range []string{"bundles", "tmp", "models"} {
		if left := entries(t, filepath.Join(e.dataDir, sub)); len(left) != 0 {
			t.Errorf("%s holds %v after start", sub, left)
		}
	}
}

func TestUnusedBundlesCollected(t *testing.T) {
	e := start(t, "", func(c *Config) { c.GCGrace = time.Nanosecond })
	dir := goFn(t, "gc", "")
	e.deploy(dir)
	os.WriteFile(filepath.Join(dir, "extra"), []byte("v2"), 0o644)
	e.deploy(dir)
	stored := func() int {
		bs, err := e.p.store.ListBundles(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(bs)
	}
	bundles := filepath.Join(e.dataDir, "bundles")
	// Version 1 lost its traffic but is kept (for rollback and aliases):
	// once it has drained, a collection leaves its bundle alone.
	waitFor(t, "version 1 to drain", 30*time.Second, func() bool {
		st, err := e.c.Status(context.Background(), "gc")
		return err == nil && len(st.Draining) == 0
	})
	e.p.collect(context.Background())
	if n, s := len(entries(t, bundles)), stored(); n != 2 || s != 2 {
		t.Fatalf("after a collection %d bundle dirs and %d stored bundles are left, want both versions' (2)", n, s)
	}
	if code, body, _ := e.do("DELETE", "/v1/functions/gc/versions/1", "", nil); code != 204 {
		t.Fatalf("remove version 1 = %d %s", code, body)
	}
	waitFor(t, "the removed version's bundle to be collected", 30*time.Second, func() bool {
		return len(entries(t, bundles)) == 1 && stored() == 1
	})
	if code, _, _ := e.do("DELETE", "/v1/functions/gc", "", nil); code != 204 {
		t.Fatalf("delete = %d", code)
	}
	waitFor(t, "the removed function's bundle to be collected", 30*time.Second, func() bool {
		return len(entries(t, bundles)) == 0 && stored() == 0
	})
}

func TestDestinationLoopRefused(t *testing.T) {
	e := start(t, "")
	e.deploy(goFn(t, "la", "async: {on_success: lb}\n"))
	e.deploy(goFn(t, "lc", "async: {on_failure: https://hooks.example/x}\n"))
	code, body := deployRaw(t, e, "lb", goFn(t, "lb", "async: {on_failure: lc, on_success: la}\n"))
	if code != 400 || !strings.Contains(body, "async.on_success") || !strings.Contains(body, "lb → la → lb") {
		t.Fatalf("deploy of a loop = %d %s, want 400 naming async.on_success and the loop", code, body)
	}
	// Without the loop it deploys.
	if code, body := deployRaw(t, e, "lb", goFn(t, "lb", "async: {on_failure: lc}\n")); code != 201 {
		t.Fatalf("deploy = %d %s", code, body)
	}
}

func TestUnusedModelsCollected(t *testing.T) {
	data := t.TempDir()
	models := filepath.Join(data, "models")
	os.MkdirAll(models, 0o755)
	// One model no bundle links to, and one that a bundle dir still links to
	// (the bundle itself is unreferenced, so both go in the end).
	orphan := filepath.Join(models, strings.Repeat("a", 64)+".onnx")
	os.WriteFile(orphan, []byte("model"), 0o644)
	kept := filepath.Join(models, strings.Repeat("b", 64)+".onnx")
	os.WriteFile(kept, []byte("model 2"), 0o644)
	bundleDir := filepath.Join(data, "bundles", strings.Repeat("c", 64))
	os.MkdirAll(bundleDir, 0o755)
	if err := os.Link(kept, filepath.Join(bundleDir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	e := start(t, data)
	waitFor(t, "unused models and bundles to be collected", 30*time.Second, func() bool {
		return len(entries(t, models)) == 0 && len(entries(t, filepath.Join(e.dataDir, "bundles"))) == 0
	})
}
