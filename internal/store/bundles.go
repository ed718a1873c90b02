package store

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrDigestMismatch is returned (wrapped) by PutBundle when the content does
// not hash to the digest it was stored under.
var ErrDigestMismatch = errors.New("bundle content does not match its digest")

// streamDeadline stands in for "no deadline" on bundle transfers: the
// object store library otherwise limits a whole transfer without a deadline
// to its short default request timeout, too short for a large bundle.
const streamDeadline = 24 * time.Hour

func validDigest(d string) bool {
	if len(d) != sha256.Size*2 {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// objectDigest is the object store's own spelling of a sha256 digest.
func objectDigest(hexDigest string) string {
	raw, _ := hex.DecodeString(hexDigest)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(raw)
}

func bundleNotFound(digest string) error {
	return &notFoundError{what: "bundle " + digest}
}

func withStreamDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, streamDeadline)
}

// PutBundle stores the content of r under digest, the lowercase hex sha256 of
// that content. The content is verified while it streams: on a mismatch
// PutBundle returns an error matching ErrDigestMismatch and nothing is left
// stored. If the digest is already stored, r is not read at all.
func (s *Store) PutBundle(ctx context.Context, digest string, r io.Reader) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validDigest(digest) {
		return fmt.Errorf("put bundle: digest %q is not a lowercase hex sha256", digest)
	}
	unlock, err := s.bundleLocks.lock(ctx, digest)
	if err != nil {
		return fmt.Errorf("put bundle %s: %w", digest, err)
	}
	defer unlock()

	want := objectDigest(digest)
	info, err := s.bundles.GetInfo(ctx, digest)
	switch {
	case err == nil && info.Digest == want:
		return nil
	case err == nil:
		// Not what its name promises (written by something other than this
		// package); overwrite it with verified content.
		s.log.Warn("replacing bundle whose content does not match its name", "digest", digest)
	case !errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("put bundle %s: %w", digest, err)
	}

	ctx, cancel := withStreamDeadline(ctx)
	defer cancel()
	vr := &verifyingReader{r: r, h: sha256.New(), digest: digest}
	// The library stops at the first read error that is not io.EOF and
	// purges the chunks it sent; the meta entry that makes an object exist
	// is written only after EOF, so a mismatch leaves nothing behind.
	if _, err := s.bundles.Put(ctx, jetstream.ObjectMeta{Name: digest}, vr); err != nil {
		return fmt.Errorf("put bundle %s: %w", digest, err)
	}
	return nil
}

// verifyingReader turns the end of a stream whose hash is not digest into an
// error, so that the consumer never sees a clean EOF for wrong content.
type verifyingReader struct {
	r      io.Reader
	h      hash.Hash
	digest string
	n      int64
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.digest {
			return n, fmt.Errorf("%w: %d bytes hash to %s", ErrDigestMismatch, v.n, got)
		}
	}
	return n, err
}

// GetBundle writes the bundle stored under digest to w; an error matching
// ebb.ErrNotFound says there is none. The object store verifies the content
// against its recorded hash as it streams; on any error w may have received
// part of the bundle and must be discarded.
func (s *Store) GetBundle(ctx context.Context, digest string, w io.Writer) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validDigest(digest) {
		return bundleNotFound(digest)
	}
	ctx, cancel := withStreamDeadline(ctx)
	defer cancel()
	res, err := s.bundles.Get(ctx, digest)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return bundleNotFound(digest)
	}
	if err != nil {
		return fmt.Errorf("get bundle %s: %w", digest, err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return fmt.Errorf("get bundle %s: %w", digest, err)
	}
	if info.Digest != objectDigest(digest) {
		return fmt.Errorf("get bundle %s: %w: stored content hashes to %s", digest, ErrDigestMismatch, info.Digest)
	}
	if _, err := io.Copy(w, res); err != nil {
		return fmt.Errorf("get bundle %s: %w", digest, err)
	}
	return nil
}

// DeleteBundle removes the bundle stored under digest; an error matching
// ebb.ErrNotFound says there was none.
func (s *Store) DeleteBundle(ctx context.Context, digest string) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validDigest(digest) {
		return bundleNotFound(digest)
	}
	unlock, err := s.bundleLocks.lock(ctx, digest)
	if err != nil {
		return fmt.Errorf("delete bundle %s: %w", digest, err)
	}
	defer unlock()
	// Deleting leaves a tombstone that the library's Delete accepts again
	// without complaint; asking first is how a repeat is told apart.
	_, err = s.bundles.GetInfo(ctx, digest)
	if err == nil {
		err = s.bundles.Delete(ctx, digest)
	}
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return bundleNotFound(digest)
	}
	if err != nil {
		return fmt.Errorf("delete bundle %s: %w", digest, err)
	}
	return nil
}

// BundleInfo describes one stored bundle.
type BundleInfo struct {
	Digest  string
	Size    uint64
	ModTime time.Time
}

// ListBundles returns every stored bundle; the garbage collector compares
// them with the versions that are kept.
func (s *Store) ListBundles(ctx context.Context) ([]BundleInfo, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	infos, err := s.bundles.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list bundles: %w", err)
	}
	out := make([]BundleInfo, 0, len(infos))
	for _, in := range infos {
		if in.Deleted || !validDigest(in.Name) {
			continue
		}
		out = append(out, BundleInfo{Digest: in.Name, Size: in.Size, ModTime: in.ModTime})
	}
	return out, nil
}
