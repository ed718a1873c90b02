package onnx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/ebb-run/ebb/internal/onnx/conformance"
	"github.com/ebb-run/ebb/internal/onnx/onnxpb"
)

// TestSmallFloatRoundTrip: every FP16 and BF16 value converts to float32
// and back to itself.
func TestSmallFloatRoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		v := uint16(h)
		if f := halfToFloat32(v); !math.IsNaN(float64(f)) {
			if got, ok := toHalf(float64(f)); got != v || !ok {
				t.Fatalf("FP16 %#04x -> %v -> %#04x (ok %v)", v, f, got, ok)
			}
		}
		if f := bf16ToFloat32(v); !math.IsNaN(float64(f)) {
			if got, ok := toBF16(float64(f)); got != v || !ok {
				t.Fatalf("BF16 %#04x -> %v -> %#04x (ok %v)", v, f, got, ok)
			}
		}
	}
}

// TestSmallFloatNearest: conversion picks the nearest representable value,
// ties to even, checked against the neighbours of the result.
func TestSmallFloatNearest(t *testing.T) {
	type format struct {
		name   string
		to     func(float64) (uint16, bool)
		from   func(uint16) float32
		maxAbs float64
	}
	for _, f := range []format{
		{"FP16", toHalf, halfToFloat32, 65504},
		{"BF16", toBF16, bf16ToFloat32, float64(bf16ToFloat32(0x7f7f))},
	} {
		rng := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < 200000; i++ {
			// Log-uniform magnitudes cover subnormals through the maximum.
			x := math.Exp2(rng.Float64()*float64(math.Log2(f.maxAbs)+40) - 40)
			if x > f.maxAbs {
				continue
			}
			if rng.IntN(2) == 0 {
				x = -x
			}
			if i%7 == 0 {
				// Exactly halfway between two neighbours.
				h, _ := f.to(x)
				x = (float64(f.from(h)) + float64(f.from(h+1))) / 2
				if math.IsInf(x, 0) || math.IsNaN(x) || math.Abs(x) > f.maxAbs {
					continue
				}
			}
			h, ok := f.to(x)
			if !ok {
				t.Fatalf("%s(%v): not ok", f.name, x)
			}
			got := float64(f.from(h))
			for _, n := range []uint16{h - 1, h + 1} {
				nv := float64(f.from(n))
				if math.IsNaN(nv) || math.IsInf(nv, 0) || math.Signbit(nv) != math.Signbit(got) {
					continue
				}
				d, dn := math.Abs(x-got), math.Abs(x-nv)
				if dn < d || (dn == d && h&1 == 1) {
					t.Fatalf("%s(%v) = %#04x (%v), but %#04x (%v) is nearer or the even tie", f.name, x, h, got, n, nv)
				}
			}
		}
	}
	if _, ok := toHalf(65520); ok {
		t.Error("65520 fits FP16, want overflow (it rounds to infinity)")
	}
	if h, ok := toHalf(65519.99); !ok || h != 0x7bff {
		t.Errorf("toHalf(65519.99) = %#04x, %v; want 0x7bff", h, ok)
	}
}

func TestParseCPUMax(t *testing.T) {
	for _, tc := range []struct {
		in    string
		cores float64
		ok    bool
	}{
		{"max 100000", 0, false},
		{"150000 100000\n", 1.5, true},
		{"50000 100000", 0.5, true},
		{"-1 100000", 0, false},
		{"garbage", 0, false},
		{"", 0, false},
	} {
		cores, ok := parseCPUMax(tc.in)
		if cores != tc.cores || ok != tc.ok {
			t.Errorf("parseCPUMax(%q) = %v, %v; want %v, %v", tc.in, cores, ok, tc.cores, tc.ok)
		}
	}
}

func TestDefaultThreads(t *testing.T) {
	dir := t.TempDir()
	saved := cgroupCPUFiles
	t.Cleanup(func() { cgroupCPUFiles = saved })
	cgroupCPUFiles.v2 = filepath.Join(dir, "cpu.max")
	cgroupCPUFiles.v1Quota = filepath.Join(dir, "quota")
	cgroupCPUFiles.v1Period = filepath.Join(dir, "period")

	if got := defaultThreads(); got != runtime.NumCPU() {
		t.Errorf("no cgroup files: %d threads, want NumCPU %d", got, runtime.NumCPU())
	}
	os.WriteFile(cgroupCPUFiles.v1Quota, []byte("50000\n"), 0o644)
	os.WriteFile(cgroupCPUFiles.v1Period, []byte("100000\n"), 0o644)
	if got := defaultThreads(); got != 1 {
		t.Errorf("v1 quota of half a CPU: %d threads, want 1", got)
	}
	os.WriteFile(cgroupCPUFiles.v2, []byte("max 100000\n"), 0o644)
	if got := defaultThreads(); got != runtime.NumCPU() {
		t.Errorf("v2 without quota: %d threads, want %d", got, runtime.NumCPU())
	}
	os.WriteFile(cgroupCPUFiles.v2, []byte("100000 100000\n"), 0o644)
	if got := defaultThreads(); got != 1 {
		t.Errorf("v2 quota of one CPU: %d threads, want 1", got)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := func() Config { return Config{ModelPath: "m.onnx", ModelName: "m"} }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no model", func(c *Config) { c.ModelPath = "" }, "ModelPath is required"},
		{"no name", func(c *Config) { c.ModelName = "" }, "ModelName is required"},
		{"name with slash", func(c *Config) { c.ModelName = "a/b" }, "cannot appear in a URL path"},
		{"negative threads", func(c *Config) { c.IntraOpThreads = -1 }, "IntraOpThreads -1 is out of range"},
		{"batch too big", func(c *Config) { c.MaxBatchSize = 5000 }, "MaxBatchSize 5000 is out of range"},
		{"delay too long", func(c *Config) { c.MaxDelay = 2 * time.Second }, "MaxDelay 2s is out of range"},
		{"negative delay", func(c *Config) { c.MaxDelay = -1 }, "MaxDelay -1ns is out of range"},
		{"negative body", func(c *Config) { c.MaxBodyBytes = -1 }, "MaxBodyBytes must not be negative"},
		{"bad optimization", func(c *Config) { c.GraphOptimization = "max" }, `GraphOptimization "max" is not one of`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.want)
			}
			if tc.want == "" {
				if c.IntraOpThreads < 1 || c.MaxBodyBytes != DefaultMaxBodyBytes || c.GraphOptimization != OptimizeAll || c.Logger == nil {
					t.Errorf("defaults not applied: %+v", c)
				}
			}
		})
	}
}

func TestDefaultLibraryPath(t *testing.T) {
	t.Run("env points at a missing file", func(t *testing.T) {
		t.Setenv(LibraryEnv, "/nonexistent/libonnxruntime.so.1")
		_, err := DefaultLibraryPath()
		if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "scripts/fetch-onnxruntime.sh") {
			t.Errorf("err = %v; want ErrLibraryNotFound naming the fetch script", err)
		}
	})
	t.Run("env", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lib.so")
		os.WriteFile(p, nil, 0o644)
		t.Setenv(LibraryEnv, p)
		if got, err := DefaultLibraryPath(); got != p || err != nil {
			t.Errorf("got %q, %v; want %q", got, err, p)
		}
	})
	t.Run("working directory", func(t *testing.T) {
		t.Setenv(LibraryEnv, "")
		dir := t.TempDir()
		p := filepath.Join(dir, defaultLibraryRel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, nil, 0o644)
		t.Chdir(dir)
		got, err := DefaultLibraryPath()
		if err != nil || !sameFile(got, p) {
			t.Errorf("got %q, %v; want %q", got, err, p)
		}
	})
	t.Run("nowhere", func(t *testing.T) {
		t.Setenv(LibraryEnv, "")
		t.Chdir(t.TempDir())
		_, err := DefaultLibraryPath()
		if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "scripts/fetch-onnxruntime.sh") || !strings.Contains(err.Error(), LibraryEnv) {
			t.Errorf("err = %v; want ErrLibraryNotFound with how to get the library", err)
		}
	})
}

func TestInitLibraryTwice(t *testing.T) {
	needLibrary(t)
	if err := InitLibrary(""); err != nil {
		t.Errorf("InitLibrary(\"\") after init: %v", err)
	}
	p := filepath.Join(t.TempDir(), "other.so")
	os.WriteFile(p, nil, 0o644)
	if err := InitLibrary(p); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Errorf("InitLibrary(other) = %v, want already initialised", err)
	}
	if v := LibraryVersion(); !strings.HasPrefix(v, "1.") {
		t.Errorf("LibraryVersion() = %q", v)
	}
}

// TestModelInfoMatchesORT checks the hand-written protobuf reader against
// ONNX Runtime's own view of each model's inputs and outputs.
func TestModelInfoMatchesORT(t *testing.T) {
	needLibrary(t)
	paths, _ := filepath.Glob("testdata/*.onnx")
	if cases, err := conformance.Load(conformance.DefaultRoot); err == nil {
		for i, c := range cases {
			if !testing.Short() || i%10 == 0 {
				paths = append(paths, c.Model)
			}
		}
	}
	checked := 0
	for _, p := range paths {
		ortIn, ortOut, err := ort.GetInputOutputInfo(p)
		if err != nil {
			continue // models ONNX Runtime cannot load
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseForTest(b)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		for _, side := range []struct {
			what string
			ours []infoView
			ort  []ort.InputOutputInfo
		}{{"inputs", m.inputs, ortIn}, {"outputs", m.outputs, ortOut}} {
			if len(side.ours) != len(side.ort) {
				t.Errorf("%s: %d %s, ONNX Runtime has %d", p, len(side.ours), side.what, len(side.ort))
				continue
			}
			for i, o := range side.ort {
				ours := side.ours[i]
				if ours.name != o.Name || ours.elem != int(o.DataType) || (ours.ranked && !dimsAgree(ours.dims, o.Dimensions, side.what == "outputs")) {
					t.Errorf("%s: %s[%d] is %s %d %v, ONNX Runtime says %s %d %v", p, side.what, i, ours.name, ours.elem, ours.dims, o.Name, o.DataType, o.Dimensions)
				}
			}
		}
		checked++
	}
	if checked < 10 {
		t.Errorf("only %d models checked", checked)
	}
}

// dimsAgree compares declared dimensions with ONNX Runtime's. For outputs
// ONNX Runtime merges in what shape inference found, so a dimension the model
// leaves dynamic may be concrete there.
func dimsAgree(ours, theirs []int64, output bool) bool {
	if len(ours) != len(theirs) {
		return false
	}
	for i := range ours {
		if ours[i] != theirs[i] && !(output && ours[i] == -1) {
			return false
		}
	}
	return true
}

type infoView struct {
	name   string
	elem   int
	ranked bool
	dims   []int64
}

type modelView struct{ inputs, outputs []infoView }

func parseForTest(b []byte) (*modelView, error) {
	pm, err := onnxpb.ParseModel(b)
	if err != nil {
		return nil, err
	}
	view := func(vis []onnxpb.ValueInfo) []infoView {
		out := make([]infoView, len(vis))
		for i, vi := range vis {
			out[i] = infoView{name: vi.Name, elem: int(vi.Elem), ranked: vi.HasShape && vi.Kind == onnxpb.KindTensor}
			for _, d := range vi.Dims {
				out[i].dims = append(out[i].dims, d.Value)
			}
			if out[i].dims == nil {
				out[i].dims = []int64{}
			}
		}
		return out
	}
	return &modelView{inputs: view(pm.Inputs), outputs: view(pm.Outputs)}, nil
}

func TestModelCacheIntern(t *testing.T) {
	c := &ModelCache{Dir: filepath.Join(t.TempDir(), "models")}
	ctx := context.Background()
	model, err := os.ReadFile("testdata/mlp.onnx")
	if err != nil {
		t.Fatal(err)
	}
	// Two bundles with the same model, one with another.
	dir := t.TempDir()
	a, b, other := filepath.Join(dir, "a.onnx"), filepath.Join(dir, "b.onnx"), filepath.Join(dir, "other.onnx")
	os.WriteFile(a, model, 0o644)
	os.WriteFile(b, model, 0o644)
	os.WriteFile(other, []byte("other bytes"), 0o644)
	da, err := c.Intern(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := c.Intern(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	do, err := c.Intern(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(model)
	if want := hex.EncodeToString(sum[:]); da != want || db != want || do == want {
		t.Errorf("digests %s %s %s, want %s twice and another", da, db, do, want)
	}
	sameFile := func(x, y string) bool {
		fx, errX := os.Stat(x)
		fy, errY := os.Stat(y)
		return errX == nil && errY == nil && os.SameFile(fx, fy)
	}
	if !sameFile(a, b) || !sameFile(a, c.Path(da)) || sameFile(a, other) {
		t.Errorf("same model: linked %v to each other, %v to the cache; other model linked to it: %v", sameFile(a, b), sameFile(a, c.Path(da)), sameFile(a, other))
	}
	if got, _ := os.ReadFile(b); !bytes.Equal(got, model) {
		t.Error("interned copy differs from the model")
	}
	// Again: nothing changes.
	if d, err := c.Intern(ctx, b); err != nil || d != da || !sameFile(b, c.Path(da)) {
		t.Errorf("second Intern = %s %v", d, err)
	}
	entries, _ := os.ReadDir(c.Dir)
	if len(entries) != 2 {
		t.Errorf("cache holds %d files, want 2", len(entries))
	}
	if _, err := c.Intern(ctx, filepath.Join(dir, "missing.onnx")); err == nil {
		t.Error("Intern of a missing file succeeded")
	}
}

func TestModelCache(t *testing.T) {
	c := &ModelCache{Dir: filepath.Join(t.TempDir(), "models")}
	ctx := context.Background()
	digest, path, err := c.PutFile(ctx, "testdata/add_mul.onnx")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile("testdata/add_mul.onnx")
	sum := sha256.Sum256(want)
	if digest != hex.EncodeToString(sum[:]) || path != c.Path(digest) {
		t.Errorf("digest %s path %s, want %x in %s", digest, path, sum, c.Dir)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Error("cached copy differs")
	}
	if p, ok := c.Lookup(digest); !ok || p != path {
		t.Errorf("Lookup = %q, %v", p, ok)
	}
	// Known content is not read again.
	if d, p, err := c.Put(ctx, iotest.ErrReader(errors.New("read")), digest); err != nil || d != digest || p != path {
		t.Errorf("Put of a cached digest = %s %s %v", d, p, err)
	}
	// Content that does not match the expected digest is refused and leaves
	// nothing behind.
	other := strings.Repeat("0", 64)
	if _, _, err := c.Put(ctx, strings.NewReader("not the model"), other); err == nil || !strings.Contains(err.Error(), "want "+other) {
		t.Errorf("mismatched Put: %v", err)
	}
	if _, ok := c.Lookup(other); ok {
		t.Error("mismatched content was cached")
	}
	entries, _ := os.ReadDir(c.Dir)
	if len(entries) != 1 {
		t.Errorf("cache holds %d files, want 1", len(entries))
	}
	if _, ok := c.Lookup("../etc/passwd"); ok {
		t.Error("Lookup accepted a path")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := c.Put(cancelled, strings.NewReader("x"), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context: %v", err)
	}
	// The cached copy serves.
	s := newServer(t, path, nil)
	if len(s.model.inputs) != 2 {
		t.Errorf("model from cache has %d inputs", len(s.model.inputs))
	}
}
