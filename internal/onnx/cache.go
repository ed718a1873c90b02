package onnx

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ModelCache keeps model files on local disk named by the sha256 of their
// content, so that a model is stored once per node: every function and
// version whose bundle carries the same bytes shares one file (Intern makes
// the bundle's copy a hard link to it), one copy on disk and in the page
// cache, whatever its manifest says. Writes go to a temporary file that is
// renamed into place, so concurrent writers of the same model and readers
// never see a partial file.
type ModelCache struct {
	// Dir holds the models; it is created on first use.
	Dir string
}

// Path is where the model with the given hex sha256 lives in the cache.
func (c *ModelCache) Path(digest string) string {
	return filepath.Join(c.Dir, digest+".onnx")
}

// Lookup returns the cached model's path if it is there.
func (c *ModelCache) Lookup(digest string) (string, bool) {
	if !validDigest(digest) {
		return "", false
	}
	p := c.Path(digest)
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return "", false
	}
	return p, true
}

func validDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	_, err := hex.DecodeString(d)
	return err == nil
}

// Put stores the model read from r and returns its digest and cached path.
// If want is not empty it is the expected hex sha256, and content that does
// not match is refused. Reading stops when ctx ends.
func (c *ModelCache) Put(ctx context.Context, r io.Reader, want string) (digest, path string, err error) {
	if want != "" && !validDigest(want) {
		return "", "", fmt.Errorf("cache model: %q is not a hex sha256", want)
	}
	if p, ok := c.Lookup(want); ok {
		return want, p, nil
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	tmp, err := os.CreateTemp(c.Dir, ".incoming-*")
	if err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	if _, err = io.Copy(io.MultiWriter(tmp, h), ctxReader{ctx, r}); err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	digest = hex.EncodeToString(h.Sum(nil))
	if want != "" && digest != want {
		err = fmt.Errorf("cache model: content has sha256 %s, want %s", digest, want)
		return "", "", err
	}
	if err = tmp.Sync(); err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	path = c.Path(digest)
	if err = os.Rename(tmp.Name(), path); err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	return digest, path, nil
}

// PutFile stores a copy of the model file at src.
func (c *ModelCache) PutFile(ctx context.Context, src string) (digest, path string, err error) {
	f, err := os.Open(src)
	if err != nil {
		return "", "", fmt.Errorf("cache model: %w", err)
	}
	defer f.Close()
	return c.Put(ctx, f, "")
}

// Intern puts the model file at path in the cache and makes path a hard
// link to the cached file, so that every copy of the same model on this
// node is one file. A path that is already linked to its cache entry costs a
// hash of the file. Where links are impossible (another file system) the
// cache gets a copy and path is left as it is.
func (c *ModelCache) Intern(ctx context.Context, path string) (digest string, err error) {
	digest, err = hashFile(ctx, path)
	if err != nil {
		return "", fmt.Errorf("cache model: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", fmt.Errorf("cache model: %w", err)
	}
	cached := c.Path(digest)
	switch err := os.Link(path, cached); {
	case err == nil:
		return digest, nil // path is the cache entry now
	case !errors.Is(err, fs.ErrExist):
		// No link (another file system, say): a copy serves the cache.
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("cache model: %w", err)
		}
		defer f.Close()
		_, _, err = c.Put(ctx, f, digest)
		return digest, err
	}
	// The cache has these bytes already: point path at them.
	fp, errP := os.Stat(path)
	fc, errC := os.Stat(cached)
	if errP != nil || errC != nil {
		return "", fmt.Errorf("cache model: %w", errors.Join(errP, errC))
	}
	if os.SameFile(fp, fc) {
		return digest, nil
	}
	tmp := path + ".link"
	os.Remove(tmp)
	if err := os.Link(cached, tmp); err != nil {
		return digest, nil // a copy of the same bytes still serves
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("cache model: %w", err)
	}
	return digest, nil
}

func hashFile(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// Prune removes the cached models that only the cache holds: Intern makes a
// bundle's model a hard link to its cache entry, so an entry with one link
// left belongs to no bundle any more. It returns how many bytes it freed.
// Half-written entries (a crash during Put) are removed too; Prune must not
// run while a Put is under way.
func (c *ModelCache) Prune() (int64, error) {
	entries, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("prune model cache: %w", err)
	}
	var freed int64
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(c.Dir, name)
		fi, err := os.Lstat(path)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Nlink != 1 || !strings.HasSuffix(name, ".onnx") || !validDigest(strings.TrimSuffix(name, ".onnx")) {
			continue
		}
		if err := os.Remove(path); err == nil {
			freed += fi.Size()
		}
	}
	return freed, nil
}
