package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// mount is one line of /proc/self/mountinfo, reduced to what finding cgroup
// hierarchies needs.
type mount struct {
	root       string   // the path inside the file system that is mounted
	mountPoint string   // where it is mounted
	fsType     string   // "cgroup", "cgroup2", …
	superOpts  []string // for cgroup v1 these name the controllers
}

// parseMountinfo reads the format of proc(5) /proc/[pid]/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Lines it cannot make sense of are skipped: a mount ebb does not care about
// must not stop it from starting.
func parseMountinfo(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+3 >= len(fields) {
			continue
		}
		mounts = append(mounts, mount{
			root:       unescapeMountField(fields[3]),
			mountPoint: unescapeMountField(fields[4]),
			fsType:     fields[sep+1],
			superOpts:  strings.Split(fields[sep+3], ","),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return mounts, nil
}

// unescapeMountField undoes the kernel's octal escaping of space, tab,
// newline and backslash (\040, \011, \012, \134) in mountinfo paths.
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// procCgroups is the content of /proc/self/cgroup: where the process sits in
// each hierarchy.
type procCgroups struct {
	unified    string            // path in the v2 hierarchy ("0::/path"); "" when absent
	hasUnified bool              // a "0::" line was present
	v1         map[string]string // v1 controller (or "name=systemd") → path
}

// parseProcCgroup reads cgroups(7) /proc/[pid]/cgroup lines
// "hierarchy-ID:controller-list:cgroup-path".
func parseProcCgroup(r io.Reader) (procCgroups, error) {
	pc := procCgroups{v1: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrls == "" {
			pc.unified, pc.hasUnified = path, true
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c != "" {
				pc.v1[c] = path
			}
		}
	}
	if err := sc.Err(); err != nil {
		return pc, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	return pc, nil
}

// findV2Mount picks the cgroup2 mount to use, preferring the conventional
// /sys/fs/cgroup (pure unified hierarchy) over others such as the hybrid
// layout's /sys/fs/cgroup/unified.
func findV2Mount(mounts []mount) (mount, bool) {
	var found mount
	ok := false
	for _, m := range mounts {
		if m.fsType != "cgroup2" {
			continue
		}
		if m.mountPoint == "/sys/fs/cgroup" {
			return m, true
		}
		if !ok {
			found, ok = m, true
		}
	}
	return found, ok
}

// findV1Mount finds the cgroup v1 hierarchy that has controller attached.
func findV1Mount(mounts []mount, controller string) (mount, bool) {
	for _, m := range mounts {
		if m.fsType != "cgroup" {
			continue
		}
		for _, o := range m.superOpts {
			if o == controller {
				return m, true
			}
		}
	}
	return mount{}, false
}

// cgroupDir maps a cgroup path from /proc/self/cgroup to a directory under
// m. The mount may expose only a subtree of the hierarchy (a container sees
// its own cgroup as the mount's root), so the mount's root is cut off the
// path; a path outside the mounted subtree maps to the mount point itself,
// the highest cgroup this process can see.
func cgroupDir(m mount, path string) string {
	path = strings.TrimSuffix(path, " (deleted)")
	if path == "" || !strings.HasPrefix(path, "/") {
		return m.mountPoint
	}
	root := strings.TrimSuffix(m.root, "/")
	if root == "" {
		return filepath.Join(m.mountPoint, path)
	}
	if path == root {
		return m.mountPoint
	}
	if rest, ok := strings.CutPrefix(path, root+"/"); ok {
		return filepath.Join(m.mountPoint, rest)
	}
	return m.mountPoint
}

// readKeyed returns the value of key in a cgroup file of "key value" lines
// (memory.events, memory.oom_control, memory.stat).
func readKeyed(path, key string) (uint64, bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	v, ok := parseKeyed(b, key)
	return v, ok, nil
}

func parseKeyed(b []byte, key string) (uint64, bool) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte{' '})
		if !ok || string(k) != key {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// readUint reads a cgroup file holding one number (memory.peak,
// memory.max_usage_in_bytes, memory.failcnt).
func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}

// readPids lists the process ids in a cgroup.procs file.
func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// writeFile writes a control file. cgroup files must be written with one
// write(2) and without O_CREAT or O_TRUNC games; the kernel's error (EINVAL,
// EBUSY, EACCES) is what callers branch on.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// readWords returns the space-separated words of a file such as
// cgroup.controllers.
func readWords(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// parseVmHWM finds the "VmHWM:  1234 kB" line of /proc/<pid>/status and
// returns it in bytes.
func parseVmHWM(b []byte) (uint64, bool) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		rest, ok := bytes.CutPrefix(line, []byte("VmHWM:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, false
		}
		n, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return 0, false
		}
		return n << 10, true
	}
	return 0, false
}

// isBusy says whether err is the kernel refusing to remove or change a cgroup
// because it still has tasks or children.
func isBusy(err error) bool {
	return errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.ENOTEMPTY)
}
