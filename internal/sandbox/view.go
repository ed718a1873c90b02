package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A view makes host paths reachable by the sandbox's uids. bwrap resolves
// its bind sources as the function's uid, before it enters any namespace, so
// every directory above a source must be searchable by that uid; ebb's data
// directory usually sits under a 0700 home or temporary directory. Rather
// than open those to every local user, the sandbox bind-mounts each source
// read-only under its view directory, which is mode 0710 and owned by the
// sandbox group (UIDs.First): only the function uids, which carry that group,
// can search it, and only bwrap ever runs as them outside a sandbox. Inside a
// sandbox nothing of the view is mounted but the paths bound on purpose.
type view struct {
	dir string
	gid uint32

	mu     sync.Mutex        // guards mounts, seq, closed
	mounts map[string]string // host path → its path in the view
	seq    int
	closed bool
}

// tempViewDir makes a fresh view directory under the first of /run,
// /dev/shm and the temporary directory whose parents everyone may search.
func tempViewDir() string {
	for _, parent := range []string{"/run", "/dev/shm", os.TempDir()} {
		if searchable(parent) != nil {
			continue
		}
		if d, err := os.MkdirTemp(parent, "ebb-sandbox-"); err == nil {
			return d
		}
	}
	return ""
}

// newView prepares dir: made (0710, group gid) if missing, emptied of what
// a previous run that died left mounted there.
func newView(dir string, gid uint32) (*view, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("make sandbox view: %q is not absolute", dir)
	}
	if err := os.MkdirAll(dir, 0o710); err != nil {
		return nil, fmt.Errorf("make sandbox view: %w", err)
	}
	if err := os.Chown(dir, 0, int(gid)); err != nil {
		return nil, fmt.Errorf("make sandbox view: %w", err)
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return nil, fmt.Errorf("make sandbox view: %w", err)
	}
	if err := searchable(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("make sandbox view %s: %w", dir, err)
	}
	v := &view{dir: dir, gid: gid, mounts: map[string]string{}}
	if err := v.unmountAll(); err != nil {
		return nil, err
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
	return v, nil
}

// searchable checks that every directory from dir up to / can be searched
// by anyone: the view's own mode is what restricts it.
func searchable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by other users (mode %v)", d, fi.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}

// reach returns a path under the view at which a sandbox uid finds path:
// below an exposed directory when there is one, else a new read-only bind
// of path itself (a file or a directory).
func (v *view) reach(path string) (string, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return "", errors.New("sandbox view is closed")
	}
	for src, dst := range v.mounts {
		if path == src {
			return dst, nil
		}
		if rel, ok := strings.CutPrefix(path, src+"/"); ok {
			return filepath.Join(dst, rel), nil
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("expose %s to sandboxes: %w", path, err)
	}
	v.seq++
	dst := filepath.Join(v.dir, strconv.Itoa(v.seq)+"-"+sanitize(filepath.Base(path)))
	if fi.IsDir() {
		err = os.Mkdir(dst, 0o700)
	} else {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return "", fmt.Errorf("expose %s to sandboxes: %w", path, err)
	}
	if err := unix.Mount(path, dst, "", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		return "", fmt.Errorf("expose %s to sandboxes: bind: %w", path, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		unix.Unmount(dst, unix.MNT_DETACH)
		os.Remove(dst)
		return "", fmt.Errorf("expose %s to sandboxes: read-only: %w", path, err)
	}
	v.mounts[path] = dst
	return dst, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r < ' ' {
			return '_'
		}
		return r
	}, s)
}

// close unmounts everything in the view.
func (v *view) close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	err := v.unmountAll()
	for _, dst := range v.mounts {
		os.Remove(dst)
	}
	v.mounts = nil
	if err == nil {
		// Made again at the next start; left behind, one per data dir
		// (per test) would pile up.
		os.Remove(v.dir)
	}
	return err
}

// unmountAll detaches every mount at or below the view directory, read from
// /proc/self/mountinfo (a previous run's too).
func (v *view) unmountAll() error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(mp, v.dir+"/") {
			points = append(points, mp)
		}
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		if err := unix.Unmount(points[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", points[i], err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
