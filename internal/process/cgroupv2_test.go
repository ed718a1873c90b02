package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

// The v2 child is this test binary run again by TestCgroupV2 in a mount
// namespace of its own, where it mounts a cgroup2 hierarchy on
// /sys/fs/cgroup (a pure v2 layout, whatever the host has), moves itself
// into a fresh cgroup there and runs v2ChildTests with cgroup mode v2 only.
const (
	v2ChildEnv = "EBB_PROCESS_TEST_V2"       // the cgroup the child makes and enters
	v2ReadyEnv = "EBB_PROCESS_TEST_V2_READY" // set for the child's own helpers: the controller in use
	v2Root     = "/sys/fs/cgroup"
)

// v2ChildTests are the tests the child runs on the v2 hierarchy: every one
// that places, kills or cleans up cgroups. Memory limits are left out
// because this machine kind binds the memory controller to cgroup v1, where
// TestMemoryLimit enforces them; on a host with memory on v2 the main run
// already uses v2.
var v2ChildTests = []string{
	"TestCgroupV2Setup",
	"TestExitStatus",
	"TestOutputLines",
	"TestStop",
	"TestKillKillsTree",
	"TestMainExitEndsTree",
	"TestDaemonEscapingGroup",
	"TestCgroupPlacement",
	"TestStartErrors",
	"TestCloseKillsAndCleansUp",
	"TestManagersAreExclusive",
	"TestLeftoversCleaned",
}

// TestCgroupV2 runs the cgroup v2 code path for real: setupV2 (with the
// evacuation of the process into a supervisor leaf), clone3 into a cgroup,
// cgroup.kill, removal and leftover cleanup, on a cgroup2 hierarchy the test
// mounts.
func TestCgroupV2(t *testing.T) {
	if os.Getenv(v2ChildEnv) != "" {
		t.Skip("inside the v2 child")
	}
	if os.Geteuid() != 0 {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "mounting a cgroup2 hierarchy needs root")
	}
	if fss, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fss), "\tcgroup2\n") {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "the kernel has no cgroup2 file system")
	}
	group := fmt.Sprintf("ebbtest-v2-%d", os.Getpid())
	cmd := exec.Command(os.Args[0], "-test.run=^("+strings.Join(v2ChildTests, "|")+")$", "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), v2ChildEnv+"="+group)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "cannot make a mount namespace: %v", err)
	}
	t.Logf("v2 child output:\n%s", out)
	if err != nil {
		t.Fatalf("v2 child: %v", err)
	}
	for _, name := range v2ChildTests {
		if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).Match(out) {
			t.Errorf("%s did not pass in the v2 child", name)
		}
	}
	if n := strings.Count(string(out), "--- SKIP"); n > 0 {
		t.Errorf("%d tests or subtests skipped in the v2 child; every one must run", n)
	}
	if !regexp.MustCompile(`(?m)^v2 child: mode v2 with the (memory|hugetlb) controller`).Match(out) {
		t.Error("the child did not report its v2 setup")
	}
}

// TestCgroupV2Setup runs in the v2 child: a manager in mode v2 makes its
// parent cgroup under the child's, moves the child out into a supervisor
// leaf first (a cgroup with processes cannot hand controllers to
// children), and starts processes inside instance cgroups with clone3.
func TestCgroupV2Setup(t *testing.T) {
	if os.Getenv(v2ChildEnv) == "" {
		t.Skip("runs in TestCgroupV2's child, on the hierarchy it mounts")
	}
	m := newTestManager(t, Config{CgroupMode: ModeV2})
	if m.CgroupMode() != ModeV2 {
		t.Fatalf("CgroupMode() = %q, want v2", m.CgroupMode())
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	self, err := parseProcCgroup(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	own := self.unified
	if want := "/" + m.cfg.CgroupName + ".supervisor"; !strings.HasSuffix(own, want) {
		t.Errorf("own cgroup %q, want it moved to …%s", own, want)
	}
	base := filepath.Dir(filepath.Join(v2Root, own))
	if m.cg.parent != filepath.Join(base, m.cfg.CgroupName) {
		t.Errorf("parent cgroup %q, want %q", m.cg.parent, filepath.Join(base, m.cfg.CgroupName))
	}
	for _, dir := range []string{base, m.cg.parent} {
		if on, _ := readWords(filepath.Join(dir, "cgroup.subtree_control")); !contains(on, v2Controller) {
			t.Errorf("%s/cgroup.subtree_control = %q, want %s enabled", dir, on, v2Controller)
		}
	}
	if !m.cg.hasKill {
		t.Error("hasKill = false; cgroup.kill exists since Linux 5.14")
	}
	out := newLineLog()
	p := start(t, m, Spec{ID: "v2", Path: "/bin/sh", Args: []string{"-c", "grep '^0::' /proc/self/cgroup"}, Stdout: out.add})
	if got, want := out.wait(t), "0::"+strings.TrimPrefix(filepath.Join(m.cg.parent, "v2"), v2Root); got != want {
		t.Errorf("child's cgroup %q, want %q", got, want)
	}
	waitDone(t, p)
	if m.cg.noCloneInto.Load() {
		t.Error("clone3(CLONE_INTO_CGROUP) was not used")
	}
	if p.OOMKilled() {
		t.Error("OOMKilled() = true")
	}
}

// setupV2Child makes the v2 child's hierarchy; it returns how to undo
// what it did to the hierarchy.
func setupV2Child(group string) (func() error, error) {
	if ctrl := os.Getenv(v2ReadyEnv); ctrl != "" {
		// A helper the child started: same namespace and cgroup.
		v2Controller = ctrl
		modes = []string{ModeV2}
		return func() error { return nil }, nil
	}
	// EINVAL: /sys/fs/cgroup is no mount point here; mount over the directory.
	if err := syscall.Unmount(v2Root, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		return nil, fmt.Errorf("unmount %s: %w", v2Root, err)
	}
	if err := syscall.Mount("cgroup2", v2Root, "cgroup2", 0, ""); err != nil {
		return nil, fmt.Errorf("mount cgroup2 on %s: %w", v2Root, err)
	}
	// A pure v2 layout: v1 hierarchies mounted elsewhere go too, or auto
	// mode could still land on v1.
	mounts, _, err := readCgroupState()
	if err != nil {
		return nil, err
	}
	for _, mt := range mounts {
		if mt.fsType == "cgroup" {
			if err := syscall.Unmount(mt.mountPoint, syscall.MNT_DETACH); err != nil {
				return nil, fmt.Errorf("unmount %s: %w", mt.mountPoint, err)
			}
		}
	}
	avail, err := readWords(filepath.Join(v2Root, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	enabledAtRoot := ""
	if !contains(avail, "memory") {
		if !contains(avail, "hugetlb") {
			return nil, fmt.Errorf("the v2 hierarchy has neither the memory nor the hugetlb controller (%q)", avail)
		}
		v2Controller = "hugetlb"
	}
	if on, err := readWords(filepath.Join(v2Root, "cgroup.subtree_control")); err != nil {
		return nil, err
	} else if !contains(on, v2Controller) {
		if err := enableController(v2Root, v2Controller); err != nil {
			return nil, err
		}
		enabledAtRoot = v2Controller
	}
	dir := filepath.Join(v2Root, group)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	pid := strconv.Itoa(os.Getpid())
	if err := writeFile(filepath.Join(dir, "cgroup.procs"), pid); err != nil {
		return nil, err
	}
	os.Setenv(v2ReadyEnv, v2Controller)
	modes = []string{ModeV2}
	fmt.Printf("v2 child: mode v2 with the %s controller, in %s\n", v2Controller, dir)
	return func() error {
		if err := writeFile(filepath.Join(v2Root, "cgroup.procs"), pid); err != nil {
			return err
		}
		// What a failed test left running is killed with the tree.
		err := removeCgroup(dir, true, cgroupRemoveTimeout)
		if enabledAtRoot != "" {
			// Busy while another test binary's child uses it; that one
			// turns it off when it is done.
			_ = writeFile(filepath.Join(v2Root, "cgroup.subtree_control"), "-"+enabledAtRoot)
		}
		return err
	}, nil
}

// runV2Child is TestMain in the v2 child.
func runV2Child(m *testing.M, group string) int {
	undo, err := setupV2Child(group)
	if err != nil {
		fmt.Println("v2 child:", err)
		return 1
	}
	if os.Getenv("EBB_PROCESS_TEST_HELPER") == "leftover" {
		leftoverHelper()
		return 0
	}
	code := m.Run()
	if err := undo(); err != nil {
		fmt.Println("v2 child: clean up the hierarchy:", err)
		return 1
	}
	return code
}
