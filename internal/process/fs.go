package process

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Names of an instance's directories under Root/<id>.
const (
	workDirName    = "task"
	scratchDirName = "tmp"
)

// makeInstanceDirs creates dir (Root/<id>) with its work and scratch
// directories and links every top-level entry of codeDir into the work
// directory, so that code opening "model.bin" relative to its cwd finds the
// bundle's file while whatever it writes stays its own.
func makeInstanceDirs(dir, codeDir string) error {
	// The instance runs as ebb's user; nobody else needs to look inside.
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create instance directory: %w", err)
	}
	work := filepath.Join(dir, workDirName)
	if err := os.Mkdir(work, 0o700); err != nil {
		return fmt.Errorf("create work directory: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, scratchDirName), 0o700); err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	if codeDir == "" {
		return nil
	}
	entries, err := os.ReadDir(codeDir)
	if err != nil {
		return fmt.Errorf("read code directory: %w", err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(codeDir, e.Name()), filepath.Join(work, e.Name())); err != nil {
			return fmt.Errorf("link code into work directory: %w", err)
		}
	}
	return nil
}

// removeTree removes dir and everything below it without following links.
// An instance may have left directories it made unwritable or unreadable;
// when a plain removal fails, permissions are restored and it is tried again.
func removeTree(dir string) error {
	err := os.RemoveAll(dir)
	if err == nil {
		return nil
	}
	makeWritable(dir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// makeWritable gives the owner full access to every directory under dir
// that can be reached, so that RemoveAll can empty them. Errors are ignored:
// the following RemoveAll reports what still cannot be removed.
func makeWritable(dir string) {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return
	}
	_ = os.Chmod(dir, 0o700)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			makeWritable(filepath.Join(dir, e.Name()))
		}
	}
}

// isStaleInstanceDir says whether Root/name looks like an instance directory
// a previous run left behind: a valid instance id holding nothing but the
// work and scratch directories. Anything else under Root is not ebb's to
// delete (Root might have been pointed at a directory with other content).
func isStaleInstanceDir(root string, e fs.DirEntry) bool {
	if !e.IsDir() || !validID(e.Name()) {
		return false
	}
	entries, err := os.ReadDir(filepath.Join(root, e.Name()))
	if err != nil {
		return false
	}
	for _, c := range entries {
		if !c.IsDir() || (c.Name() != workDirName && c.Name() != scratchDirName) {
			return false
		}
	}
	return true
}
