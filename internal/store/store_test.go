package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openStore opens an embedded store on dir (a fresh temp dir when empty) and
// closes it when the test ends.
func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	start := time.Now()
	s, err := Open(testCtx(t), Config{DataDir: dir})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Logf("Open took %s", time.Since(start))
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func testFunction(name string, version int) *ebb.Function {
	spec := ebb.Spec{
		Name:    name,
		Runtime: ebb.RuntimePython,
		Handler: "app.handler",
		Env:     map[string]string{"GREETING": "hello " + name},
		Preload: []string{"numpy"},
	}
	spec.Defaults()
	return &ebb.Function{
		Spec:      spec,
		Version:   version,
		Digest:    digestOf([]byte(fmt.Sprintf("%s-%d", name, version))),
		Size:      int64(100 + version),
		CreatedAt: time.Date(2025, 3, 1, 12, 0, version, 0, time.UTC),
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty means valid
	}{
		{"embedded", Config{DataDir: "/d"}, ""},
		{"embedded listen", Config{DataDir: "/d", Listen: "127.0.0.1:0"}, ""},
		{"embedded listen no host", Config{DataDir: "/d", Listen: ":4222"}, ""},
		{"external", Config{URL: "nats://a:4222,nats://b:4222", Replicas: 3}, ""},
		{"no data dir", Config{}, "data directory is required"},
		{"embedded replicas", Config{DataDir: "/d", Replicas: 3}, "replicas must be 1"},
		{"replicas range", Config{URL: "nats://a", Replicas: 6}, "out of range"},
		{"negative replicas", Config{URL: "nats://a", Replicas: -1}, "out of range"},
		{"listen with url", Config{URL: "nats://a", Listen: "127.0.0.1:0"}, "only to the embedded"},
		{"listen no port", Config{DataDir: "/d", Listen: "127.0.0.1"}, "listen"},
		{"listen bad port", Config{DataDir: "/d", Listen: "127.0.0.1:99999"}, "port"},
		{"server name space", Config{DataDir: "/d", ServerName: "my ebb"}, "server name"},
		{"empty url entry", Config{URL: "nats://a,,nats://b"}, "empty server entry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				if cfg.Replicas < 1 || cfg.ServerName == "" {
					t.Errorf("defaults not applied: replicas %d, server name %q", cfg.Replicas, cfg.ServerName)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFunctionsCRUD(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")

	if fns, err := s.ListFunctions(ctx); err != nil || len(fns) != 0 {
		t.Fatalf("ListFunctions on empty store = %v, %v; want none", fns, err)
	}
	for _, name := range []string{"churn", "alpha", "zeta"} {
		if err := s.PutFunction(ctx, testFunction(name, 1)); err != nil {
			t.Fatalf("PutFunction(%s): %v", name, err)
		}
	}
	got, err := s.GetFunction(ctx, "churn")
	if err != nil {
		t.Fatalf("GetFunction(churn): %v", err)
	}
	if want := testFunction("churn", 1); !reflect.DeepEqual(got, want) {
		t.Errorf("GetFunction(churn) = %+v, want %+v", got, want)
	}

	// Replacing keeps one entry per name, with the new content.
	if err := s.PutFunction(ctx, testFunction("churn", 2)); err != nil {
		t.Fatalf("PutFunction(churn v2): %v", err)
	}
	fns, err := s.ListFunctions(ctx)
	if err != nil {
		t.Fatalf("ListFunctions: %v", err)
	}
	var names []string
	for _, fn := range fns {
		names = append(names, fmt.Sprintf("%s@%d", fn.Spec.Name, fn.Version))
	}
	if want := []string{"alpha@1", "churn@2", "zeta@1"}; !reflect.DeepEqual(names, want) {
		t.Errorf("ListFunctions = %v, want %v", names, want)
	}

	if err := s.DeleteFunction(ctx, "alpha"); err != nil {
		t.Fatalf("DeleteFunction(alpha): %v", err)
	}
	if _, err := s.GetFunction(ctx, "alpha"); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("GetFunction(alpha) after delete: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteFunction(ctx, "alpha"); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("second DeleteFunction(alpha): err = %v, want ErrNotFound", err)
	}
	fns, err = s.ListFunctions(ctx)
	if err != nil || len(fns) != 2 {
		t.Errorf("ListFunctions after delete = %d functions, %v; want 2", len(fns), err)
	}
	// A deleted name can be deployed again.
	if err := s.PutFunction(ctx, testFunction("alpha", 5)); err != nil {
		t.Fatalf("PutFunction(alpha) after delete: %v", err)
	}
	if got, err := s.GetFunction(ctx, "alpha"); err != nil || got.Version != 5 {
		t.Errorf("GetFunction(alpha) after re-put = %v, %v; want version 5", got, err)
	}
}

func TestFunctionsNotFoundAndInvalid(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")

	for _, name := range []string{"missing", "", "UPPER", "a.b", "a*", "a b", "-x", strings.Repeat("a", 64), "../../etc", "a\x00b"} {
		if _, err := s.GetFunction(ctx, name); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("GetFunction(%q): err = %v, want ErrNotFound", name, err)
		}
		if err := s.DeleteFunction(ctx, name); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("DeleteFunction(%q): err = %v, want ErrNotFound", name, err)
		}
	}
	if _, err := s.NextVersion(ctx, "a.b"); err == nil {
		t.Error("NextVersion(a.b) succeeded, want an error")
	}

	bad := func(mut func(fn *ebb.Function)) *ebb.Function {
		fn := testFunction("ok", 1)
		mut(fn)
		return fn
	}
	tests := []struct {
		name string
		fn   *ebb.Function
	}{
		{"nil", nil},
		{"bad name", bad(func(fn *ebb.Function) { fn.Spec.Name = "Bad.Name" })},
		{"bad spec", bad(func(fn *ebb.Function) { fn.Spec.MemoryMiB = 1 })},
		{"version 0", bad(func(fn *ebb.Function) { fn.Version = 0 })},
		{"no digest", bad(func(fn *ebb.Function) { fn.Digest = "" })},
		{"upper digest", bad(func(fn *ebb.Function) { fn.Digest = strings.ToUpper(fn.Digest) })},
	}
	for _, tt := range tests {
		if err := s.PutFunction(ctx, tt.fn); err == nil {
			t.Errorf("PutFunction(%s) succeeded, want an error", tt.name)
		}
	}
	if fns, err := s.ListFunctions(ctx); err != nil || len(fns) != 0 {
		t.Errorf("ListFunctions after rejected puts = %d, %v; want none", len(fns), err)
	}
}

func TestNextVersion(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")

	for want := 1; want <= 3; want++ {
		got, err := s.NextVersion(ctx, "churn")
		if err != nil || got != want {
			t.Fatalf("NextVersion(churn) = %d, %v; want %d", got, err, want)
		}
	}
	if got, err := s.NextVersion(ctx, "other"); err != nil || got != 1 {
		t.Fatalf("NextVersion(other) = %d, %v; want 1 (counters are per name)", got, err)
	}

	// Deleting the function must not reset its counter.
	if err := s.PutFunction(ctx, testFunction("churn", 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteFunction(ctx, "churn"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.NextVersion(ctx, "churn"); err != nil || got != 4 {
		t.Fatalf("NextVersion(churn) after delete = %d, %v; want 4", got, err)
	}

	// Concurrent callers, including on a fresh name where they race to
	// create the counter, get distinct consecutive numbers.
	for _, tc := range []struct {
		name  string
		first int
	}{{"churn", 5}, {"fresh", 1}} {
		const n = 20
		results := make(chan int, n)
		errs := make(chan error, n)
		start := make(chan struct{})
		for range n {
			go func() {
				<-start
				v, err := s.NextVersion(ctx, tc.name)
				if err != nil {
					errs <- err
					return
				}
				results <- v
			}()
		}
		close(start)
		seen := make(map[int]bool)
		for range n {
			select {
			case v := <-results:
				if seen[v] {
					t.Errorf("%s: version %d handed out twice", tc.name, v)
				}
				seen[v] = true
			case err := <-errs:
				t.Errorf("%s: concurrent NextVersion: %v", tc.name, err)
			}
		}
		for v := tc.first; v < tc.first+n; v++ {
			if !seen[v] {
				t.Errorf("%s: version %d never handed out; got %v", tc.name, v, seen)
			}
		}
	}
}

// failingReader fails the test if anything reads it.
type failingReader struct{ t *testing.T }

func (r failingReader) Read([]byte) (int, error) {
	r.t.Error("reader of an already stored bundle was read")
	return 0, io.ErrUnexpectedEOF
}

func TestBundles(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")

	content := randomBytes(1, 5<<20+123)
	digest := digestOf(content)
	if err := s.PutBundle(ctx, digest, bytes.NewReader(content)); err != nil {
		t.Fatalf("PutBundle: %v", err)
	}
	var buf bytes.Buffer
	if err := s.GetBundle(ctx, digest, &buf); err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	if !bytes.Equal(buf.Bytes(), content) {
		t.Fatalf("GetBundle returned %d bytes (digest %s), want %d bytes (digest %s)", buf.Len(), digestOf(buf.Bytes()), len(content), digest)
	}

	// Storing it again does not even read the content.
	if err := s.PutBundle(ctx, digest, failingReader{t}); err != nil {
		t.Fatalf("PutBundle again: %v", err)
	}

	// Wrong content for a digest is rejected and leaves nothing stored.
	other := randomBytes(2, 1<<20)
	otherDigest := digestOf(other)
	err := s.PutBundle(ctx, otherDigest, bytes.NewReader(content))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("PutBundle with wrong content: err = %v, want ErrDigestMismatch", err)
	}
	if err := s.GetBundle(ctx, otherDigest, io.Discard); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("GetBundle after rejected put: err = %v, want ErrNotFound", err)
	}
	if st, err := s.bundles.Status(ctx); err != nil {
		t.Errorf("bundle store status: %v", err)
	} else if st.Size() > uint64(len(content))+64<<10 {
		t.Errorf("bundle store holds %d bytes after a rejected put, want about %d (rejected chunks left behind)", st.Size(), len(content))
	}
	// The digest can still be stored with the right content afterwards.
	if err := s.PutBundle(ctx, otherDigest, bytes.NewReader(other)); err != nil {
		t.Fatalf("PutBundle(other): %v", err)
	}

	// An empty bundle is still a bundle.
	emptyDigest := digestOf(nil)
	if err := s.PutBundle(ctx, emptyDigest, bytes.NewReader(nil)); err != nil {
		t.Fatalf("PutBundle(empty): %v", err)
	}
	buf.Reset()
	if err := s.GetBundle(ctx, emptyDigest, &buf); err != nil || buf.Len() != 0 {
		t.Errorf("GetBundle(empty) = %d bytes, %v; want 0, nil", buf.Len(), err)
	}

	if err := s.DeleteBundle(ctx, digest); err != nil {
		t.Fatalf("DeleteBundle: %v", err)
	}
	if err := s.GetBundle(ctx, digest, io.Discard); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("GetBundle after delete: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteBundle(ctx, digest); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("DeleteBundle twice: err = %v, want ErrNotFound", err)
	}
	// After a delete, a put stores the content again (it is not a no-op).
	if err := s.PutBundle(ctx, digest, bytes.NewReader(content)); err != nil {
		t.Fatalf("PutBundle after delete: %v", err)
	}
	buf.Reset()
	if err := s.GetBundle(ctx, digest, &buf); err != nil || !bytes.Equal(buf.Bytes(), content) {
		t.Errorf("GetBundle after re-put: %d bytes, %v; want the content", buf.Len(), err)
	}
}

func TestBundleDigestValidation(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	valid := digestOf([]byte("x"))
	for _, d := range []string{"", "abc", strings.ToUpper(valid), valid + "0", "../" + valid[3:], strings.Repeat("g", 64)} {
		if err := s.PutBundle(ctx, d, strings.NewReader("x")); err == nil {
			t.Errorf("PutBundle(%q) succeeded, want an error", d)
		}
		if err := s.GetBundle(ctx, d, io.Discard); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("GetBundle(%q): err = %v, want ErrNotFound", d, err)
		}
		if err := s.DeleteBundle(ctx, d); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("DeleteBundle(%q): err = %v, want ErrNotFound", d, err)
		}
	}
	if err := s.GetBundle(ctx, valid, io.Discard); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("GetBundle(absent): err = %v, want ErrNotFound", err)
	}
	// A reader error is reported, not stored.
	readErr := errors.New("client went away")
	if err := s.PutBundle(ctx, valid, io.MultiReader(strings.NewReader("partial"), errReader{readErr})); !errors.Is(err, readErr) {
		t.Errorf("PutBundle with failing reader: err = %v, want %v", err, readErr)
	}
	if err := s.GetBundle(ctx, valid, io.Discard); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("GetBundle after failed put: err = %v, want ErrNotFound", err)
	}
}

func TestBundleConcurrentPuts(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	content := randomBytes(4, 2<<20)
	digest := digestOf(content)
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() { errs <- s.PutBundle(ctx, digest, bytes.NewReader(content)) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent PutBundle: %v", err)
		}
	}
	var buf bytes.Buffer
	if err := s.GetBundle(ctx, digest, &buf); err != nil || !bytes.Equal(buf.Bytes(), content) {
		t.Fatalf("GetBundle = %d bytes, %v; want the content", buf.Len(), err)
	}
	// One copy stored, not one per writer.
	st, err := s.bundles.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > uint64(len(content))+64<<10 {
		t.Errorf("bundle store holds %d bytes for one %d-byte bundle", st.Size(), len(content))
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestBundleLarge stores a 1 GiB bundle; it is slow, so it runs only when
// EBB_STORE_LARGE=1.
func TestBundleLarge(t *testing.T) {
	if os.Getenv("EBB_STORE_LARGE") != "1" {
		t.Skip("set EBB_STORE_LARGE=1 to store a 1 GiB bundle")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := openStore(t, "")
	const size = 1 << 30
	block := randomBytes(3, 1<<20)
	h := sha256.New()
	for range size / len(block) {
		h.Write(block)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	start := time.Now()
	if err := s.PutBundle(ctx, digest, &repeatReader{block: block, left: size}); err != nil {
		t.Fatalf("PutBundle(1 GiB): %v", err)
	}
	t.Logf("PutBundle(1 GiB) took %s", time.Since(start))
	start = time.Now()
	cw := &countingWriter{h: sha256.New()}
	if err := s.GetBundle(ctx, digest, cw); err != nil {
		t.Fatalf("GetBundle(1 GiB): %v", err)
	}
	t.Logf("GetBundle(1 GiB) took %s", time.Since(start))
	if got := hex.EncodeToString(cw.h.Sum(nil)); cw.n != size || got != digest {
		t.Errorf("GetBundle returned %d bytes hashing to %s, want %d bytes hashing to %s", cw.n, got, size, digest)
	}
}

type repeatReader struct {
	block []byte
	off   int
	left  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.left)], r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	r.left -= n
	return n, nil
}

type countingWriter struct {
	h hash.Hash
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}

func TestKeys(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")

	h1 := digestOf([]byte("secret-1"))
	h2 := digestOf([]byte("secret-2"))
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	k1 := ebb.Key{ID: "0000aaaa", Name: "admin", Role: ebb.RoleAdmin, CreatedAt: t0, Hash: h1}
	k2 := ebb.Key{ID: "0000bbbb", Name: "ci", Role: ebb.RoleInvoke, Functions: []string{"img-*"}, RPS: 5,
		CreatedAt: t0.Add(time.Hour), Hash: h2, AccessKeyID: "EBBAAAA", SealedSecret: "c2VhbGVk"}
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatalf("CreateKey(k2): %v", err)
	}
	if err := s.CreateKey(ctx, k1); err != nil {
		t.Fatalf("CreateKey(k1): %v", err)
	}
	got, err := s.GetKey(ctx, k2.ID)
	if err != nil || !reflect.DeepEqual(*got, k2) {
		t.Errorf("GetKey(k2) = %+v, %v; want %+v", got, err, k2)
	}
	keys, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	if want := []ebb.Key{k1, k2}; !reflect.DeepEqual(keys, want) {
		t.Errorf("ListKeys = %+v, want %+v", keys, want)
	}
	// The stored record never holds the secret, only its hash.
	e, err := s.keys.Get(ctx, k1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(e.Value(), []byte("secret-1")) {
		t.Errorf("stored key record %s contains the secret", e.Value())
	}

	// Errors.
	if err := s.CreateKey(ctx, ebb.Key{ID: k1.ID, Hash: h2}); !errors.Is(err, ErrKeyIDInUse) {
		t.Errorf("CreateKey with a used ID: err = %v, want ErrKeyIDInUse", err)
	}
	for _, bad := range []ebb.Key{{ID: "abc", Hash: h1}, {ID: "ZZZZZZZZ", Hash: h1}, {ID: "0000cccc", Hash: "abc"}, {ID: "0000cccc", Hash: strings.ToUpper(h1)}} {
		if err := s.CreateKey(ctx, bad); err == nil {
			t.Errorf("CreateKey(%+v) succeeded, want an error", bad)
		}
	}
	for _, id := range []string{"", "abc", "zzzzzzzz", "00000000", h1} {
		if _, err := s.GetKey(ctx, id); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("GetKey(%q): err = %v, want ErrNotFound", id, err)
		}
		if err := s.DeleteKey(ctx, id); !errors.Is(err, ebb.ErrNotFound) {
			t.Errorf("DeleteKey(%q): err = %v, want ErrNotFound", id, err)
		}
	}

	// Update, then delete; a late update of a deleted key does not bring
	// it back.
	k2.LastUsed = t0.Add(2 * time.Hour)
	if err := s.UpdateKey(ctx, k2); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	if got, _ := s.GetKey(ctx, k2.ID); got == nil || !got.LastUsed.Equal(k2.LastUsed) {
		t.Errorf("after UpdateKey, GetKey = %+v", got)
	}
	if err := s.DeleteKey(ctx, k2.ID); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if err := s.UpdateKey(ctx, k2); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("UpdateKey after DeleteKey: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteKey(ctx, k2.ID); !errors.Is(err, ebb.ErrNotFound) {
		t.Errorf("DeleteKey twice: err = %v, want ErrNotFound", err)
	}
}

// TestLegacyKeys reads keys as ebb stored them before roles (under the hash
// of their secret, with an admin flag): they are admin keys, found by ID,
// and move to their ID when updated.
func TestLegacyKeys(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	h := digestOf([]byte("old-secret"))
	t0 := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	old, _ := json.Marshal(map[string]any{"id": h[:8], "name": "admin", "admin": true, "created_at": t0})
	if _, err := s.keys.Put(ctx, h, old); err != nil {
		t.Fatal(err)
	}
	keys, err := s.ListKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("ListKeys = %+v, %v", keys, err)
	}
	want := ebb.Key{ID: h[:8], Name: "admin", Role: ebb.RoleAdmin, CreatedAt: t0, Hash: h}
	if !reflect.DeepEqual(keys[0], want) {
		t.Errorf("legacy key = %+v, want %+v", keys[0], want)
	}
	want.LastUsed = t0.Add(time.Hour)
	if err := s.UpdateKey(ctx, want); err != nil {
		t.Fatalf("UpdateKey(legacy): %v", err)
	}
	if _, err := s.keys.Get(ctx, h); err == nil {
		t.Error("the legacy record is still under the hash after an update")
	}
	if got, err := s.GetKey(ctx, h[:8]); err != nil || !reflect.DeepEqual(*got, want) {
		t.Errorf("GetKey after moving = %+v, %v; want %+v", got, err, want)
	}
	if err := s.DeleteKey(ctx, h[:8]); err != nil {
		t.Fatal(err)
	}
}

func TestAudit(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	if recs, err := s.Audit(ctx, time.Time{}, 10); err != nil || len(recs) != 0 {
		t.Fatalf("Audit on an empty log = %v, %v", recs, err)
	}
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	for i := range 5 {
		rec := AuditRecord{Time: t0.Add(time.Duration(i) * time.Second), KeyID: "0000aaaa", Action: "function.deploy", Target: fmt.Sprintf("fn-%d", i), Status: 201}
		if err := s.AppendAudit(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	// The newest three, oldest first.
	recs, err := s.Audit(ctx, time.Time{}, 3)
	if err != nil || len(recs) != 3 {
		t.Fatalf("Audit(limit 3) = %d records, %v", len(recs), err)
	}
	for i, r := range recs {
		if n := i + 2; r.Target != fmt.Sprintf("fn-%d", n) || r.Seq != uint64(n+1) || !r.Time.Equal(t0.Add(time.Duration(n)*time.Second)) {
			t.Errorf("record %d = %+v, want fn-%d", i, r, n)
		}
	}
	if recs, err := s.Audit(ctx, time.Time{}, 100); err != nil || len(recs) != 5 {
		t.Errorf("Audit(limit 100) = %d records, %v; want 5", len(recs), err)
	}
	if recs, err := s.Audit(ctx, time.Now().Add(time.Hour), 100); err != nil || len(recs) != 0 {
		t.Errorf("Audit(since the future) = %d records, %v; want 0", len(recs), err)
	}
}

// fixture is what the reopen and kill -9 tests write and expect back.
type fixture struct {
	fns    []*ebb.Function
	bundle []byte
	key    string
}

func newFixture() fixture {
	return fixture{
		fns:    []*ebb.Function{testFunction("alpha", 1), testFunction("beta", 2)},
		bundle: randomBytes(7, 3<<20),
		key:    digestOf([]byte("fixture-secret")),
	}
}

func (f fixture) write(ctx context.Context, s *Store) error {
	for _, fn := range f.fns {
		for range fn.Version {
			if _, err := s.NextVersion(ctx, fn.Spec.Name); err != nil {
				return err
			}
		}
		if err := s.PutFunction(ctx, fn); err != nil {
			return err
		}
	}
	if err := s.PutBundle(ctx, digestOf(f.bundle), bytes.NewReader(f.bundle)); err != nil {
		return err
	}
	if err := s.AppendAudit(ctx, AuditRecord{Time: time.Date(2025, 2, 2, 0, 0, 1, 0, time.UTC), KeyID: f.key[:8], Action: "function.deploy", Target: "alpha", Status: 201}); err != nil {
		return err
	}
	return s.CreateKey(ctx, ebb.Key{ID: f.key[:8], Hash: f.key, Name: "fixture", Role: ebb.RoleAdmin, CreatedAt: time.Date(2025, 2, 2, 0, 0, 0, 0, time.UTC)})
}

func (f fixture) check(t *testing.T, ctx context.Context, s *Store) {
	t.Helper()
	got, err := s.ListFunctions(ctx)
	if err != nil {
		t.Fatalf("ListFunctions: %v", err)
	}
	if !reflect.DeepEqual(got, f.fns) {
		t.Errorf("ListFunctions = %+v, want %+v", got, f.fns)
	}
	var buf bytes.Buffer
	if err := s.GetBundle(ctx, digestOf(f.bundle), &buf); err != nil {
		t.Errorf("GetBundle: %v", err)
	} else if !bytes.Equal(buf.Bytes(), f.bundle) {
		t.Errorf("GetBundle returned %d bytes, want the %d written", buf.Len(), len(f.bundle))
	}
	if k, err := s.GetKey(ctx, f.key[:8]); err != nil || k.Name != "fixture" || k.Role != ebb.RoleAdmin || k.Hash != f.key {
		t.Errorf("GetKey = %+v, %v; want the fixture key", k, err)
	}
	// The audit log is in JetStream too.
	if recs, err := s.Audit(ctx, time.Time{}, 10); err != nil || len(recs) != 1 || recs[0].Target != "alpha" || recs[0].KeyID != f.key[:8] {
		t.Errorf("Audit = %+v, %v; want the fixture's record", recs, err)
	}
	// Version counters survived too: the next numbers follow on.
	for _, fn := range f.fns {
		if v, err := s.NextVersion(ctx, fn.Spec.Name); err != nil || v != fn.Version+1 {
			t.Errorf("NextVersion(%s) = %d, %v; want %d", fn.Spec.Name, v, err, fn.Version+1)
		}
	}
}

func TestReopen(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	f := newFixture()

	s, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := f.write(ctx, s); err != nil {
		t.Fatalf("write fixture: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if _, err := s.GetFunction(ctx, "alpha"); !errors.Is(err, ebb.ErrClosed) {
		t.Errorf("GetFunction after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.WatchFunctions(ctx); !errors.Is(err, ebb.ErrClosed) {
		t.Errorf("WatchFunctions after Close: err = %v, want ErrClosed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
		t.Errorf("JetStream store not under DataDir/jetstream: %v", err)
	}

	f.check(t, ctx, openStore(t, dir))
}

func TestLockExcludesSecondOpen(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	s, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	_, err = Open(ctx, Config{DataDir: dir})
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second Open: err = %v, want ErrDataDirInUse", err)
	}
	if want := fmt.Sprintf("data directory %s is in use by another ebb", dir); err.Error() != want {
		t.Errorf("second Open: err = %q, want %q", err, want)
	}
	// The failed Open must not have disturbed the first store.
	if err := s.PutFunction(ctx, testFunction("alpha", 1)); err != nil {
		t.Errorf("PutFunction on the first store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2 := openStore(t, dir)
	if _, err := s2.GetFunction(ctx, "alpha"); err != nil {
		t.Errorf("GetFunction after reopen: %v", err)
	}
}

const helperEnv = "EBB_STORE_HELPER_DIR"

// TestHelperProcess is not a test: TestKill9Durability runs the test binary
// again with only this function and helperEnv set, as the process to kill.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9Durability")
	}
	ctx := context.Background()
	s, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	if err := newFixture().write(ctx, s); err != nil {
		fmt.Fprintln(os.Stderr, "write:", err)
		os.Exit(2)
	}
	fmt.Println("written")
	// Hold the store open until the parent has checked the lock.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func TestKill9Durability(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	written := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if sc.Text() == "written" {
			written = true
			break
		}
	}
	if !written {
		_ = cmd.Wait()
		t.Fatalf("helper never reported \"written\"; stderr:\n%s", stderr.String())
	}

	// While the helper lives, its lock keeps us out.
	if _, err := Open(ctx, Config{DataDir: dir}); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("Open while the helper holds the store: err = %v, want ErrDataDirInUse", err)
	}

	// Let it kill itself, without Close.
	if _, err := io.WriteString(stdin, "die\n"); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("helper exited with %v, want death by SIGKILL", err)
	}
	if ws, ok := exitErr.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper exited with %v, want death by SIGKILL; stderr:\n%s", err, stderr.String())
	}

	// The dead process's lock is gone with it, and everything it was
	// told was written is there.
	newFixture().check(t, ctx, openStore(t, dir))
}

func TestWatchFunctions(t *testing.T) {
	ctx, cancelAll := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancelAll()
	s := openStore(t, "")
	if err := s.PutFunction(ctx, testFunction("existing", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFunction(ctx, testFunction("gone", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteFunction(ctx, "gone"); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := s.WatchFunctions(wctx)
	if err != nil {
		t.Fatalf("WatchFunctions: %v", err)
	}
	var got []string
	next := func() FunctionEvent {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("watch channel closed early")
			}
			return ev
		case <-ctx.Done():
			t.Fatalf("no watch event before the test deadline; got %q", got)
		}
		return FunctionEvent{}
	}
	describe := func(ev FunctionEvent) string {
		if ev.Function == nil {
			return ev.Name + " deleted"
		}
		return fmt.Sprintf("%s put v%d", ev.Name, ev.Function.Version)
	}

	// The current registry first (without long-deleted functions), then
	// each change in order.
	if err := s.PutFunction(ctx, testFunction("new", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFunction(ctx, testFunction("existing", 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteFunction(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	want := []string{"existing put v1", "new put v1", "existing put v2", "new deleted"}
	for range want {
		got = append(got, describe(next()))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("watch events = %q, want %q", got, want)
	}

	cancel()
	for ev := range events {
		t.Errorf("event after cancel: %s", describe(ev))
	}
}

func TestWatchFunctionsEndsOnClose(t *testing.T) {
	ctx := testCtx(t)
	s, err := Open(ctx, Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	events, err := s.WatchFunctions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads: Close must still stop the watcher and return.
	for i := range 3 {
		if err := s.PutFunction(ctx, testFunction(fmt.Sprintf("f%d", i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	n := 0
	for range events {
		n++
	}
	if n > 3 {
		t.Errorf("got %d events after Close for 3 puts", n)
	}
}

func TestListenAndExternal(t *testing.T) {
	ctx := testCtx(t)
	embedded, err := Open(ctx, Config{DataDir: t.TempDir(), Listen: ":0", ServerName: "ebb-test"})
	if err != nil {
		t.Fatalf("Open(embedded, listen): %v", err)
	}
	defer embedded.Close()
	url := embedded.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("ClientURL() = %q, want nats://127.0.0.1:PORT", url)
	}

	start := time.Now()
	external, err := Open(ctx, Config{URL: url})
	if err != nil {
		t.Fatalf("Open(external %s): %v", url, err)
	}
	t.Logf("Open(external) took %s", time.Since(start))
	if got := external.ClientURL(); got != "" {
		t.Errorf("external ClientURL() = %q, want empty", got)
	}
	// Both see one state: the external store bound the buckets the
	// embedded one created.
	if err := external.PutFunction(ctx, testFunction("shared", 1)); err != nil {
		t.Fatalf("PutFunction via external: %v", err)
	}
	if _, err := embedded.GetFunction(ctx, "shared"); err != nil {
		t.Errorf("GetFunction via embedded: %v", err)
	}
	v1, err := embedded.NextVersion(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := external.NextVersion(ctx, "shared")
	if err != nil || v2 != v1+1 {
		t.Errorf("NextVersion across stores = %d then %d, %v; want consecutive", v1, v2, err)
	}
	if err := external.Close(); err != nil {
		t.Errorf("Close(external): %v", err)
	}
	if err := embedded.Close(); err != nil {
		t.Errorf("Close(embedded): %v", err)
	}

	// An external server that is not there fails Open promptly.
	if _, err := Open(ctx, Config{URL: url}); err == nil {
		t.Error("Open of a stopped external server succeeded")
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://a:4222", "nats://a:4222"},
		{"nats://user:pw@a:4222,nats://b:4222", "nats://***@a:4222,nats://b:4222"},
		{"tok@a:4222", "***@a:4222"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEmbeddedWithoutListenHasNoPort(t *testing.T) {
	s := openStore(t, "")
	if got := s.ClientURL(); got != "" {
		t.Errorf("ClientURL() = %q without Listen, want empty (no port)", got)
	}
	if !s.Conn().IsConnected() {
		t.Error("Conn() is not connected")
	}
	if _, err := s.JetStream().AccountInfo(testCtx(t)); err != nil {
		t.Errorf("JetStream().AccountInfo: %v", err)
	}
}

// TestWatchKeys: a node learns of keys created, rotated and revoked through
// another (here, the same store) from the watch, and not of what was there
// before it began.
func TestWatchKeys(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	old := ebb.Key{ID: "0000aaaa", Role: ebb.RoleAdmin, Hash: digestOf([]byte("old"))}
	if err := s.CreateKey(ctx, old); err != nil {
		t.Fatal(err)
	}
	events, err := s.WatchKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k := ebb.Key{ID: "0000bbbb", Role: ebb.RoleInvoke, Hash: digestOf([]byte("new"))}
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	k.Hash = digestOf([]byte("rotated"))
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	want := []string{"0000bbbb put " + digestOf([]byte("new")), "0000bbbb put " + digestOf([]byte("rotated")), "0000bbbb delete"}
	for i, w := range want {
		select {
		case ev := <-events:
			got := ev.ID + " delete"
			if ev.Key != nil {
				got = ev.ID + " put " + ev.Key.Hash
			}
			if got != w {
				t.Fatalf("event %d = %q, want %q", i, got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d (%s) never came", i, w)
		}
	}
}

// TestUsageRecordsBeforeSubjectsPerFunction checks that record batches
// written on the single subject used before batches were kept per function
// are still read, for one function and for all.
func TestUsageRecordsBeforeSubjectsPerFunction(t *testing.T) {
	s := openStore(t, "")
	ctx := testCtx(t)
	if err := s.appendUsage(ctx, usageSubject, []byte("old\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendUsageRecords(ctx, "a", []byte("a\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendUsageRecords(ctx, "b", []byte("b\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendUsageRecords(ctx, "Not/A.name", []byte("x\n")); !errors.Is(err, ebb.ErrNotFound) {
		t.Fatalf("a batch for an invalid name: %v, want not found", err)
	}
	read := func(fn string) string {
		var got []byte
		if err := s.UsageRecords(ctx, fn, time.Time{}, func(b []byte) error { got = append(got, b...); return nil }); err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	if got := read("a"); got != "old\na\n" {
		t.Errorf("records of a: %q, want the old batch and a's", got)
	}
	if got := read(""); got != "old\na\nb\n" {
		t.Errorf("all records: %q", got)
	}
}

// Reading usage leaves no consumers behind: the server caps a stream's
// consumers (1000 by default), and a dashboard polling usage would
// otherwise have every read refused within minutes.
func TestUsageReadsLeaveNoConsumers(t *testing.T) {
	s := openStore(t, "")
	ctx := context.Background()
	if err := s.AppendUsageRecords(ctx, "a", []byte("a\n")); err != nil {
		t.Fatal(err)
	}
	const reads = 1100
	for i := range reads {
		n := 0
		if err := s.UsageRecords(ctx, "a", time.Time{}, func([]byte) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("read %d: %d records, %v", i, n, err)
		}
	}
	info, err := s.usage.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers > 5 {
		t.Errorf("%d consumers on the usage stream after %d reads, want them deleted", info.State.Consumers, reads)
	}
}
