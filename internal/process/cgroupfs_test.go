package process

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const hybridMountinfo = `22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
`

const unifiedMountinfo = `24 1 0:22 / / rw - overlay overlay rw
29 24 0:26 /../.. /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 24 0:40 / /mnt/my\040dir rw shared:3 master:2 - ext4 /dev/sdb rw
`

const containerMountinfo = `700 690 0:50 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
`

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []mount
	}{
		{"hybrid", hybridMountinfo, []mount{
			{"/", "/", "ext4", []string{"rw"}},
			{"/", "/sys/fs/cgroup", "tmpfs", []string{"ro", "mode=755"}},
			{"/", "/sys/fs/cgroup/unified", "cgroup2", []string{"rw", "nsdelegate"}},
			{"/", "/sys/fs/cgroup/memory", "cgroup", []string{"rw", "memory"}},
			{"/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", []string{"rw", "cpu", "cpuacct"}},
			{"/", "/sys/fs/cgroup/pids", "cgroup", []string{"rw", "pids"}},
		}},
		{"unified with escapes", unifiedMountinfo, []mount{
			{"/", "/", "overlay", []string{"rw"}},
			{"/../..", "/sys/fs/cgroup", "cgroup2", []string{"rw", "nsdelegate", "memory_recursiveprot"}},
			{"/", "/mnt/my dir", "ext4", []string{"rw"}},
		}},
		{"garbage is skipped", "nonsense\n1 2 3\n" + containerMountinfo, []mount{
			{"/docker/abc", "/sys/fs/cgroup/memory", "cgroup", []string{"rw", "memory"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.input))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestFindMounts(t *testing.T) {
	hybrid, _ := parseMountinfo(strings.NewReader(hybridMountinfo))
	unified, _ := parseMountinfo(strings.NewReader(unifiedMountinfo))
	both := append(append([]mount(nil), hybrid...), unified...)
	tests := []struct {
		name      string
		mounts    []mount
		wantV2    string // mount point, "" for none
		wantMem   string
		wantPids  string
		wantCPUAc string
	}{
		{"hybrid", hybrid, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu,cpuacct"},
		{"unified", unified, "/sys/fs/cgroup", "", "", ""},
		{"prefers /sys/fs/cgroup", both, "/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu,cpuacct"},
		{"nothing", nil, "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			point := func(m mount, ok bool) string {
				if !ok {
					return ""
				}
				return m.mountPoint
			}
			if got := point(findV2Mount(tt.mounts)); got != tt.wantV2 {
				t.Errorf("v2 mount %q, want %q", got, tt.wantV2)
			}
			if got := point(findV1Mount(tt.mounts, "memory")); got != tt.wantMem {
				t.Errorf("memory mount %q, want %q", got, tt.wantMem)
			}
			if got := point(findV1Mount(tt.mounts, "pids")); got != tt.wantPids {
				t.Errorf("pids mount %q, want %q", got, tt.wantPids)
			}
			if got := point(findV1Mount(tt.mounts, "cpuacct")); got != tt.wantCPUAc {
				t.Errorf("cpuacct mount %q, want %q", got, tt.wantCPUAc)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	input := `12:pids:/user.slice/user-1000.slice
4:memory:/process_api/a1
2:cpu,cpuacct:/
1:name=systemd:/user.slice
0::/user.slice/user-1000.slice/session-2.scope
`
	got, err := parseProcCgroup(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	want := procCgroups{
		unified:    "/user.slice/user-1000.slice/session-2.scope",
		hasUnified: true,
		v1: map[string]string{
			"pids":         "/user.slice/user-1000.slice",
			"memory":       "/process_api/a1",
			"cpu":          "/",
			"cpuacct":      "/",
			"name=systemd": "/user.slice",
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	pure, _ := parseProcCgroup(strings.NewReader("0::/\n"))
	if !pure.hasUnified || pure.unified != "/" || len(pure.v1) != 0 {
		t.Errorf("pure v2: got %+v", pure)
	}
}

func TestCgroupDir(t *testing.T) {
	tests := []struct {
		name string
		m    mount
		path string
		want string
	}{
		{"host root", mount{root: "/", mountPoint: "/sys/fs/cgroup"}, "/", "/sys/fs/cgroup"},
		{"host nested", mount{root: "/", mountPoint: "/sys/fs/cgroup/memory"}, "/process_api/a1", "/sys/fs/cgroup/memory/process_api/a1"},
		{"container sees its own cgroup as root", mount{root: "/docker/abc", mountPoint: "/sys/fs/cgroup/memory"}, "/docker/abc", "/sys/fs/cgroup/memory"},
		{"below the container's root", mount{root: "/docker/abc", mountPoint: "/sys/fs/cgroup/memory"}, "/docker/abc/sub", "/sys/fs/cgroup/memory/sub"},
		{"outside the mounted subtree", mount{root: "/docker/abc", mountPoint: "/sys/fs/cgroup/memory"}, "/docker/abcdef", "/sys/fs/cgroup/memory"},
		{"cgroup namespace above the root", mount{root: "/../..", mountPoint: "/sys/fs/cgroup"}, "/", "/sys/fs/cgroup"},
		{"deleted", mount{root: "/", mountPoint: "/sys/fs/cgroup"}, "/a/b (deleted)", "/sys/fs/cgroup/a/b"},
		{"empty", mount{root: "/", mountPoint: "/sys/fs/cgroup"}, "", "/sys/fs/cgroup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cgroupDir(tt.m, tt.path); got != tt.want {
				t.Errorf("cgroupDir(%+v, %q) = %q, want %q", tt.m, tt.path, got, tt.want)
			}
		})
	}
}

func TestParseKeyed(t *testing.T) {
	events := "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"
	oomControl := "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
	tests := []struct {
		name   string
		input  string
		key    string
		want   uint64
		wantOK bool
	}{
		{"v2 oom_kill", events, "oom_kill", 1, true},
		{"v2 oom is not oom_kill", events, "oom", 2, true},
		{"v1 oom_kill", oomControl, "oom_kill", 3, true},
		{"v1 before 4.13", "oom_kill_disable 0\nunder_oom 0\n", "oom_kill", 0, false},
		{"garbage value", "oom_kill x\n", "oom_kill", 0, false},
		{"empty", "", "oom_kill", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseKeyed([]byte(tt.input), tt.key)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("parseKeyed(%q) = %d, %v; want %d, %v", tt.key, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseVmHWM(t *testing.T) {
	status := "Name:\tpython3\nVmPeak:\t  30000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n"
	if got, ok := parseVmHWM([]byte(status)); !ok || got != 12345<<10 {
		t.Errorf("parseVmHWM = %d, %v; want %d, true", got, ok, 12345<<10)
	}
	// Kernel threads have no memory lines.
	if got, ok := parseVmHWM([]byte("Name:\tkthreadd\n")); ok {
		t.Errorf("parseVmHWM without VmHWM = %d, true; want false", got)
	}
}

// fakeTree writes files (path → content) under a new directory, standing
// in for a cgroup file system where the real one is not available.
func fakeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// fakeMkdir makes a directory holding empty control files, like cgroupfs.
func fakeMkdir(t *testing.T, files ...string) func(string) error {
	return func(dir string) error {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}
}

func readFakeFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSetupV2PathChoice(t *testing.T) {
	// ebb runs in /system.slice/ebb.service with memory and pids
	// delegated; its parent becomes ebb.service/ebb.
	fs := fakeTree(t, map[string]string{
		"system.slice/ebb.service/cgroup.controllers":         "cpu memory pids",
		"system.slice/ebb.service/cgroup.subtree_control":     "memory pids",
		"system.slice/ebb.service/ebb/cgroup.controllers":     "memory pids",
		"system.slice/ebb.service/ebb/cgroup.subtree_control": "",
		"system.slice/ebb.service/ebb/cgroup.kill":            "",
		"system.slice/ebb.service/ebb/memory.swap.max":        "max",
		"system.slice/ebb.service/ebb/memory.oom.group":       "0",
	})
	mounts := []mount{{root: "/", mountPoint: fs, fsType: "cgroup2"}}
	self := procCgroups{unified: "/system.slice/ebb.service", hasUnified: true}
	cfg := Config{Root: "/r", CgroupName: "ebb", PidsMax: 99}
	c, err := setupV2(cfg, slog.New(slog.DiscardHandler), mounts, self)
	if err != nil {
		t.Fatalf("setupV2: %v", err)
	}
	defer func() {
		for _, f := range c.locks {
			f.Close()
		}
	}()
	if want := filepath.Join(fs, "system.slice/ebb.service/ebb"); c.parent != want {
		t.Errorf("parent %q, want %q", c.parent, want)
	}
	if c.mode != ModeV2 || !c.hasKill || !c.hasSwap || !c.hasOOMGroup {
		t.Errorf("mode %q kill %v swap %v oom.group %v; want v2 and all present", c.mode, c.hasKill, c.hasSwap, c.hasOOMGroup)
	}
	if !c.v2Pids {
		t.Error("pids controller not enabled for instances")
	}
	if got := readFakeFile(t, filepath.Join(c.parent, "cgroup.subtree_control")); got == "" {
		t.Error("parent subtree_control not written, want memory and pids enabled")
	}

	// A second manager must not take the same parent.
	if _, err := setupV2(cfg, slog.New(slog.DiscardHandler), mounts, self); !errors.Is(err, errLocked) {
		t.Errorf("second setupV2 = %v, want errLocked", err)
	}

	// An instance's limits.
	c.mkdir = fakeMkdir(t, "memory.max", "memory.swap.max", "memory.oom.group", "pids.max")
	ic, err := c.create("fn-1", 64<<20)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	for file, want := range map[string]string{
		"memory.max":       "67108864",
		"memory.swap.max":  "0",
		"memory.oom.group": "1",
		"pids.max":         "99",
	} {
		if got := readFakeFile(t, filepath.Join(ic.dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if ic.dir != filepath.Join(c.parent, "fn-1") {
		t.Errorf("instance cgroup %q, want %q", ic.dir, filepath.Join(c.parent, "fn-1"))
	}

	// OOM and peak readings come from the v2 files.
	os.WriteFile(filepath.Join(ic.dir, "memory.events"), []byte("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"), 0o644)
	os.WriteFile(filepath.Join(ic.dir, "memory.peak"), []byte("123456\n"), 0o644)
	if !ic.oomKilled(false) {
		t.Error("oomKilled = false with oom_kill 1")
	}
	if v, ok := ic.peak(); !ok || v != 123456 {
		t.Errorf("peak = %d, %v; want 123456, true", v, ok)
	}
	os.WriteFile(filepath.Join(ic.dir, "memory.events"), []byte("low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n"), 0o644)
	if ic.oomKilled(true) {
		t.Error("oomKilled = true with oom_kill 0")
	}
}

func TestSetupV2Refusals(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		self    procCgroups
		wantErr string
	}{
		{"no memory controller (hybrid unified)", map[string]string{"cgroup.controllers": ""}, procCgroups{unified: "/", hasUnified: true}, "memory controller is not available"},
		{"no v2 membership", map[string]string{"cgroup.controllers": "memory"}, procCgroups{}, "no cgroup v2 membership"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := fakeTree(t, tt.files)
			_, err := setupV2(Config{CgroupName: "ebb"}, slog.New(slog.DiscardHandler), []mount{{root: "/", mountPoint: fs, fsType: "cgroup2"}}, tt.self)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("setupV2 = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := setupV2(Config{CgroupName: "ebb"}, slog.New(slog.DiscardHandler), nil, procCgroups{}); err == nil {
		t.Error("setupV2 without a cgroup2 mount succeeded")
	}
}

func TestCreateV1Limits(t *testing.T) {
	fs := fakeTree(t, map[string]string{"memory/ebb/memory.limit_in_bytes": "", "pids/ebb/pids.max": ""})
	c := &cgroups{mode: ModeV1, log: slog.New(slog.DiscardHandler), parent: filepath.Join(fs, "memory/ebb"), pidsParent: filepath.Join(fs, "pids/ebb"), pidsMax: 50, hasSwap: true,
		mkdir: fakeMkdir(t, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max")}
	ic, err := c.create("fn-2", 128<<20)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	for file, want := range map[string]string{
		"memory.limit_in_bytes":       "134217728",
		"memory.memsw.limit_in_bytes": "134217728",
	} {
		if got := readFakeFile(t, filepath.Join(ic.dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if ic.pidsDir != filepath.Join(fs, "pids/ebb/fn-2") {
		t.Errorf("pids cgroup %q", ic.pidsDir)
	}
	if err := ic.limitPidsV1(); err != nil {
		t.Fatal(err)
	}
	if got := readFakeFile(t, filepath.Join(ic.pidsDir, "pids.max")); got != "50" {
		t.Errorf("pids.max = %q, want 50", got)
	}

	// Without a limit nothing is written.
	ic, err = c.create("fn-3", 0)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := readFakeFile(t, filepath.Join(ic.dir, "memory.limit_in_bytes")); got != "" {
		t.Errorf("memory.limit_in_bytes = %q without a limit, want it untouched", got)
	}

	// OOM detection: the oom_kill counter, else failcnt plus SIGKILL.
	tests := []struct {
		name       string
		oomControl string
		failcnt    string
		mainKilled bool
		want       bool
	}{
		{"counter set", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", "0", false, true},
		{"counter zero", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "9", true, false},
		{"old kernel, limit hit and killed", "oom_kill_disable 0\nunder_oom 0\n", "9", true, true},
		{"old kernel, limit hit, exited", "oom_kill_disable 0\nunder_oom 0\n", "9", false, false},
		{"old kernel, killed under the limit", "oom_kill_disable 0\nunder_oom 0\n", "0", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.WriteFile(filepath.Join(ic.dir, "memory.oom_control"), []byte(tt.oomControl), 0o644)
			os.WriteFile(filepath.Join(ic.dir, "memory.failcnt"), []byte(tt.failcnt), 0o644)
			if got := ic.oomKilled(tt.mainKilled); got != tt.want {
				t.Errorf("oomKilled(%v) = %v, want %v", tt.mainKilled, got, tt.want)
			}
		})
	}
}

func TestEnableController(t *testing.T) {
	fs := fakeTree(t, map[string]string{"a/cgroup.subtree_control": "", "b/cgroup.subtree_control": "cpu memory\n"})
	if err := enableController(filepath.Join(fs, "a"), "memory"); err != nil {
		t.Fatal(err)
	}
	if got := readFakeFile(t, filepath.Join(fs, "a/cgroup.subtree_control")); got != "+memory" {
		t.Errorf("subtree_control = %q, want +memory", got)
	}
	if err := enableController(filepath.Join(fs, "b"), "memory"); err != nil {
		t.Fatal(err)
	}
	if got := readFakeFile(t, filepath.Join(fs, "b/cgroup.subtree_control")); got != "cpu memory\n" {
		t.Errorf("already enabled controller was written again: %q", got)
	}
}

func TestInstanceEnv(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"empty", nil, []string{"TMPDIR=/s", "TMP=/s", "TEMP=/s", "HOME=/w"}},
		{"set ones kept", []string{"HOME=/h", "TMP=/t", "TMPDIRX=1"}, []string{"HOME=/h", "TMP=/t", "TMPDIRX=1", "TMPDIR=/s", "TEMP=/s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := instanceEnv(tt.env, "/w", "/s"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("instanceEnv = %q, want %q", got, tt.want)
			}
		})
	}
}
