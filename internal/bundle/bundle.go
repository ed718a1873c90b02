// Package bundle packs a function directory into a tar.gz and unpacks one
// safely. Packing is deterministic (sorted names, no timestamps or owners) so
// that the same files always give the same digest, which is what the artifact
// cache and the object store are keyed by.
package bundle

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Limits bound what Unpack accepts, so that a hostile bundle cannot fill the
// disk or escape its directory.
type Limits struct {
	MaxBytes int64 // total uncompressed size; default 2 GiB
	MaxFiles int   // default 100,000
}

func (l *Limits) defaults() {
	if l.MaxBytes <= 0 {
		l.MaxBytes = 2 << 30
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = 100000
	}
}

// ErrInvalid wraps every reason a bundle is refused.
var ErrInvalid = errors.New("invalid bundle")

// ErrTooLarge is matched (with ErrInvalid) by the errors of a bundle over
// its Limits, so that callers can answer 413 rather than 400.
var ErrTooLarge = errors.New("bundle too large")

// limitError is a bundle over its limits: it is both ErrInvalid and
// ErrTooLarge.
type limitError struct{ msg string }

func (e *limitError) Error() string { return ErrTooLarge.Error() + ": " + e.msg }
func (e *limitError) Is(target error) bool {
	return target == ErrInvalid || target == ErrTooLarge
}

// bare drops the path from an *os.PathError (it names a server directory,
// which a client must not see) and keeps what went wrong.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// skipped names are never packed: VCS metadata and ebb's own data directory.
var skipped = map[string]bool{".git": true, ".hg": true, ".svn": true, "ebb-data": true, "__pycache__": true, ".DS_Store": true}

// Pack writes a deterministic tar.gz of dir to w and returns its hex sha256.
func Pack(dir string, w io.Writer) (string, error) {
	h := sha256.New()
	gz, _ := gzip.NewWriterLevel(io.MultiWriter(w, h), gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if skipped[d.Name()] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		files = append(files, p)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("walk %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, p := range files {
		if err := addFile(tw, dir, p); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("close tar: %w", err)
	}
	if err := gz.Close(); err != nil {
		return "", fmt.Errorf("close gzip: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func addFile(tw *tar.Writer, dir, p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return fmt.Errorf("relative path of %s: %w", p, err)
	}
	hdr := &tar.Header{Name: filepath.ToSlash(rel), Format: tar.FormatPAX}
	switch {
	case fi.Mode().IsDir():
		hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("read link %s: %w", p, err)
		}
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
	case fi.Mode().IsRegular():
		hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, fi.Size(), 0o644
		if fi.Mode()&0o111 != 0 {
			hdr.Mode = 0o755
		}
	default:
		return nil // sockets, devices, fifos: not part of a function
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write header %s: %w", rel, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("copy %s: %w", p, err)
	}
	return nil
}

// Unpack extracts the tar.gz r into dst, which must not exist yet: it is
// created with its content atomically (extracted beside it, then renamed), so a
// crash never leaves a half-written bundle where a complete one is expected.
func Unpack(r io.Reader, dst string, lim Limits) error {
	lim.defaults()
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	// Readable by all, as the files in it: a sandboxed function reads its
	// code as its own uid (its directory's parents keep others out).
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("make temp dir: %w", err)
	}
	if err := extract(r, tmp, lim); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.RemoveAll(tmp)
		if _, statErr := os.Stat(dst); statErr == nil {
			return nil // someone else unpacked the same content first
		}
		return fmt.Errorf("rename bundle dir: %w", err)
	}
	return nil
}

func extract(r io.Reader, root string, lim Limits) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: not gzip: %v", ErrInvalid, err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	var total int64
	files := 0
	// links holds the bundle's symlinks: no entry may be written through one,
	// since the lexical checks below cannot see where a link leads.
	links := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return checkLinks(root, links)
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		files++
		if files > lim.MaxFiles {
			return &limitError{fmt.Sprintf("more than %d files", lim.MaxFiles)}
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if links[dir] {
				return fmt.Errorf("%w: %s is inside symlink %s", ErrInvalid, name, dir)
			}
		}
		target := filepath.Join(root, filepath.FromSlash(name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("%w: make dir %s: %v", ErrInvalid, name, bare(err))
			}
		case tar.TypeReg:
			total += hdr.Size
			if hdr.Size < 0 || total > lim.MaxBytes {
				return &limitError{fmt.Sprintf("larger than %d bytes unpacked", lim.MaxBytes)}
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("%w: make dir for %s: %v", ErrInvalid, name, bare(err))
			}
			mode := os.FileMode(0o644)
			if hdr.Mode&0o111 != 0 {
				mode = 0o755
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
			if err != nil {
				return fmt.Errorf("%w: create %s: %v", ErrInvalid, name, bare(err))
			}
			_, err = io.CopyN(f, tr, hdr.Size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%w: write %s: %v", ErrInvalid, name, bare(err))
			}
		case tar.TypeSymlink:
			// Links may only point inside the bundle, so that code cannot read
			// the host through an innocent-looking path.
			if path.IsAbs(hdr.Linkname) {
				return fmt.Errorf("%w: symlink %s points outside the bundle", ErrInvalid, name)
			}
			if _, err := cleanName(path.Join(path.Dir(name), hdr.Linkname)); err != nil {
				return fmt.Errorf("%w: symlink %s points outside the bundle", ErrInvalid, name)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("%w: make dir for %s: %v", ErrInvalid, name, bare(err))
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("%w: symlink %s: %v", ErrInvalid, name, bare(err))
			}
			links[name] = true
		default:
			// Hard links, devices and fifos have no place in a function.
			return fmt.Errorf("%w: %s has unsupported type %q", ErrInvalid, name, hdr.Typeflag)
		}
	}
}

// maxLinkHops is how many symlinks one path may pass through, as in Linux
// (beyond it the kernel answers ELOOP).
const maxLinkHops = 40

// checkLinks resolves every symlink of the unpacked tree and refuses the
// bundle if one leads outside root. A lexical check of each target alone is
// not enough: `a/up -> ..` stays inside, but `e -> a/up/..` climbs through
// it to root's parent.
func checkLinks(root string, links map[string]bool) error {
	names := make([]string, 0, len(links))
	for name := range links {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := staysInside(root, name); err != nil {
			return fmt.Errorf("%w: symlink %s %v", ErrInvalid, name, err)
		}
	}
	return nil
}

var (
	errLeaves = errors.New("points outside the bundle")
	errLoop   = errors.New("is a loop of symlinks")
)

// staysInside follows name (slash-separated, relative to root) one component
// at a time, as the kernel would, following every symlink on the way, and
// returns an error if the walk ever climbs above root or takes more than
// maxLinkHops links. A component that does not exist ends the following of
// links (a path through it cannot be opened); the rest is taken lexically.
func staysInside(root, name string) error {
	var done []string // resolved components below root
	todo := strings.Split(name, "/")
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return errLeaves
			}
			done = done[:len(done)-1]
			continue
		}
		done = append(done, c)
		p := filepath.Join(root, filepath.Join(done...))
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		if hops++; hops > maxLinkHops {
			return errLoop
		}
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("cannot be read: %v", bare(err))
		}
		if path.IsAbs(target) {
			return errLeaves
		}
		done = done[:len(done)-1]
		todo = append(strings.Split(target, "/"), todo...)
	}
	return nil
}

// Resolve returns the path inside root that name (slash-separated, relative
// to root) leads to once every symlink on the way is followed, or an error
// if it leads outside root. Callers use it to check that a file named by a
// manifest (an onnx model) really is in the bundle.
func Resolve(root, name string) (string, error) {
	if path.IsAbs(name) || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%q %w", name, errLeaves)
	}
	if err := staysInside(root, name); err != nil {
		return "", fmt.Errorf("%q %w", name, err)
	}
	real, err := filepath.EvalSymlinks(filepath.Join(root, filepath.FromSlash(name)))
	if err != nil {
		return "", fmt.Errorf("resolve %q: %w", name, bare(err))
	}
	rootReal, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("resolve bundle root: %w", err)
	}
	if rel, err := filepath.Rel(rootReal, real); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%q %w", name, errLeaves)
	}
	return real, nil
}

// cleanName refuses absolute names and names that climb out with "..".
func cleanName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: bad file name %q", ErrInvalid, name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: file name %q leaves the bundle", ErrInvalid, name)
	}
	return c, nil
}

// ReadFile returns the content of one file (such as ebb.yaml) from a tar.gz,
// reading at most max bytes of it.
func ReadFile(r io.Reader, name string, max int64) ([]byte, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("%w: not gzip: %v", ErrInvalid, err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%w: no %s in bundle", ErrInvalid, name)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if path.Clean(hdr.Name) != name || hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size > max {
			return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, name, max)
		}
		return io.ReadAll(io.LimitReader(tr, max))
	}
}
