package sandbox

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	mobyseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompProgram is the compiled filter: the raw struct sock_filter array
// bwrap's --seccomp reads, plus what the translation had to leave out (for
// tests and the log).
type seccompProgram struct {
	raw     []byte
	dropped []string
}

// mobyArch is the profile's name for the architecture ebb runs on (the
// profile uses GOARCH-like names in its includes/excludes).
var mobyArch = map[string]string{"amd64": "amd64", "arm64": "arm64"}

// compileSeccomp translates Docker's default profile (moby/profiles, the one
// every container runtime ships) into BPF for the running architecture.
// Translation rules, each chosen so the result is never looser than the
// profile:
//   - capability-conditional rules resolve as "no capabilities": a rule that
//     includes a capability is dropped, one that excludes one is kept;
//   - arch and minimum-kernel conditions resolve against this host;
//   - names this architecture does not have are skipped (libseccomp does the
//     same);
//   - an argument condition go-seccomp-bpf cannot express drops an allow rule
//     (deny is stricter) and widens an errno rule to the whole syscall;
//   - actions other than allow/errno (none in the default profile) become
//     errno EPERM;
//   - only the native ABI is allowed: go-seccomp-bpf fails other audit arches
//     (i386 via int 0x80 on amd64, arm32 on arm64) with the default action and
//     x32 with ENOSYS, where Docker allows the sub-architectures.
func compileSeccomp() (*seccompProgram, error) {
	goarch, ok := mobyArch[runtime.GOARCH]
	if !ok {
		return nil, fmt.Errorf("compile seccomp: architecture %s is not supported", runtime.GOARCH)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("compile seccomp: %w", err)
	}
	kernel, err := hostKernel()
	if err != nil {
		return nil, fmt.Errorf("compile seccomp: %w", err)
	}
	profile := mobyseccomp.DefaultProfile()
	if profile.DefaultAction != specs.ActErrno {
		return nil, fmt.Errorf("compile seccomp: unexpected default action %s", profile.DefaultAction)
	}
	defaultErrno := uint(unix.EPERM)
	if profile.DefaultErrnoRet != nil {
		defaultErrno = *profile.DefaultErrnoRet
	}

	prog := &seccompProgram{}
	// Allow rules collect into one group; unconditional names win over
	// conditional ones for the same syscall (rules are OR'ed in libseccomp).
	allowAll := map[string]bool{}
	var allowNames []string
	allowCond := map[string][]seccompbpf.ArgumentConditions{}
	var condOrder []string
	// Errno rules become their own groups, placed before the allow group so
	// that a syscall named in both is denied (the stricter reading).
	var denyGroups []seccompbpf.SyscallGroup
	denied := map[string]bool{}
	denyCond := map[string]bool{} // named by a conditional errno rule

	for _, rule := range profile.Syscalls {
		if !ruleApplies(rule, goarch, kernel) {
			continue
		}
		names := rule.Names
		if rule.Name != "" {
			names = append(slices.Clone(names), rule.Name)
		}
		var known []string
		for _, n := range names {
			if _, ok := info.SyscallNames[n]; ok {
				known = append(known, n)
			}
		}
		if len(known) == 0 {
			continue
		}
		conds, expressible := translateArgs(rule.Args)
		switch rule.Action {
		case specs.ActAllow:
			if !expressible {
				prog.dropped = append(prog.dropped, fmt.Sprintf("allow %v if %v", known, rule.Args))
				continue
			}
			for _, n := range known {
				if len(conds) == 0 {
					if !allowAll[n] {
						allowAll[n] = true
						allowNames = append(allowNames, n)
					}
					continue
				}
				if _, seen := allowCond[n]; !seen {
					condOrder = append(condOrder, n)
				}
				allowCond[n] = append(allowCond[n], conds)
			}
		default:
			errno := defaultErrno
			if rule.Action == specs.ActErrno && rule.ErrnoRet != nil {
				errno = *rule.ErrnoRet
			}
			g := seccompbpf.SyscallGroup{Action: seccompbpf.ActionErrno | seccompbpf.Action(errno&0xffff)}
			for _, n := range known {
				if denied[n] {
					continue
				}
				if len(conds) == 0 || !expressible {
					g.Names = append(g.Names, n)
					denied[n] = true
				} else {
					g.NamesWithCondtions = append(g.NamesWithCondtions, seccompbpf.NameWithConditions{Name: n, Conditions: conds})
					denyCond[n] = true
				}
			}
			denyGroups = append(denyGroups, g)
		}
	}

	// Syscalls allowed whatever their arguments and named by no errno rule
	// are decided by a search tree ahead of go-seccomp-bpf's linear
	// program (fastAllow), and left out of it.
	var fast []uint32
	var slow []string
	for _, n := range allowNames {
		if !useFastAllow || denied[n] || denyCond[n] {
			slow = append(slow, n)
			continue
		}
		fast = append(fast, uint32(info.SyscallNames[n]))
	}
	allow := seccompbpf.SyscallGroup{Action: seccompbpf.ActionAllow, Names: slow}
	for _, n := range condOrder {
		if allowAll[n] {
			continue
		}
		for _, c := range allowCond[n] {
			allow.NamesWithCondtions = append(allow.NamesWithCondtions, seccompbpf.NameWithConditions{Name: n, Conditions: c})
		}
	}
	policy := seccompbpf.Policy{
		// ActionErrno alone returns EPERM (go-seccomp-bpf adds it), which is
		// the profile's defaultErrnoRet.
		DefaultAction: seccompbpf.ActionErrno,
		Syscalls:      append(denyGroups, allow),
	}
	if defaultErrno != uint(unix.EPERM) {
		return nil, fmt.Errorf("compile seccomp: default errno %d is not EPERM", defaultErrno)
	}
	insns, err := policy.Assemble()
	if err != nil {
		return nil, fmt.Errorf("compile seccomp: %w", err)
	}
	if useFastAllow {
		insns = append(fastAllow(info, fast), insns...)
	}
	rawInsns, err := bpf.Assemble(insns)
	if err != nil {
		return nil, fmt.Errorf("compile seccomp: %w", err)
	}
	// struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } in host
	// byte order, which is what bwrap hands to prctl(PR_SET_SECCOMP).
	raw := make([]byte, 0, 8*len(rawInsns))
	for _, in := range rawInsns {
		raw = binary.NativeEndian.AppendUint16(raw, in.Op)
		raw = append(raw, in.Jt, in.Jf)
		raw = binary.NativeEndian.AppendUint32(raw, in.K)
	}
	prog.raw = raw
	return prog, nil
}

// ruleApplies resolves a rule's includes/excludes for this host and a
// process with no capabilities.
func ruleApplies(rule *mobyseccomp.Syscall, goarch string, kernel [2]uint64) bool {
	if inc := rule.Includes; inc != nil {
		if len(inc.Caps) > 0 {
			return false
		}
		if len(inc.Arches) > 0 && !slices.Contains(inc.Arches, goarch) {
			return false
		}
		if inc.MinKernel != nil && !kernelAtLeast(kernel, inc.MinKernel) {
			return false
		}
	}
	if exc := rule.Excludes; exc != nil {
		// Excluded caps: we have none, so the exclusion never fires.
		if len(exc.Arches) > 0 && slices.Contains(exc.Arches, goarch) {
			return false
		}
		if exc.MinKernel != nil && kernelAtLeast(kernel, exc.MinKernel) {
			return false
		}
	}
	return true
}

func kernelAtLeast(have [2]uint64, want *mobyseccomp.KernelVersion) bool {
	if have[0] != want.Kernel {
		return have[0] > want.Kernel
	}
	return have[1] >= want.Major
}

// translateArgs maps libseccomp comparisons (AND'ed within one rule) onto
// go-seccomp-bpf's; ok is false when one has no equivalent.
func translateArgs(args []specs.LinuxSeccompArg) (conds seccompbpf.ArgumentConditions, ok bool) {
	for _, a := range args {
		c := seccompbpf.Condition{Argument: uint32(a.Index), Value: a.Value}
		switch a.Op {
		case specs.OpEqualTo:
			c.Operation = seccompbpf.Equal
		case specs.OpNotEqual:
			c.Operation = seccompbpf.NotEqual
		case specs.OpLessThan:
			c.Operation = seccompbpf.LessThan
		case specs.OpLessEqual:
			c.Operation = seccompbpf.LessOrEqual
		case specs.OpGreaterThan:
			c.Operation = seccompbpf.GreaterThan
		case specs.OpGreaterEqual:
			c.Operation = seccompbpf.GreaterOrEqual
		case specs.OpMaskedEqual:
			// (arg & Value) == ValueTwo. go-seccomp-bpf has "no bit of the
			// mask set" and "any bit of the mask set"; those equal
			// MASKED_EQ only for ValueTwo 0, or for a one-bit mask equal to
			// ValueTwo.
			switch {
			case a.ValueTwo == 0:
				c.Operation = seccompbpf.BitsNotSet
			case a.ValueTwo == a.Value && a.Value&(a.Value-1) == 0:
				c.Operation = seccompbpf.BitsSet
			default:
				return nil, false
			}
		default:
			return nil, false
		}
		if a.Index > 5 {
			return nil, false
		}
		conds = append(conds, c)
	}
	return conds, true
}

// hostKernel returns the running kernel's version and major revision.
func hostKernel() ([2]uint64, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return [2]uint64{}, fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return [2]uint64{}, fmt.Errorf("parse kernel release %q", release)
	}
	k, err1 := strconv.ParseUint(parts[0], 10, 32)
	m, err2 := strconv.ParseUint(leadingDigits(parts[1]), 10, 32)
	if err1 != nil || err2 != nil {
		return [2]uint64{}, fmt.Errorf("parse kernel release %q", release)
	}
	return [2]uint64{k, m}, nil
}

func leadingDigits(s string) string {
	for i, r := range s {
		if r < '0' || r > '9' {
			return s[:i]
		}
	}
	return s
}

// useFastAllow is false only in the test that checks that the search tree
// changes no decision.
var useFastAllow = true

// fastAllow is a program prefix that allows the syscalls in nums (native
// architecture, not x32) after a binary search, and otherwise goes on to the
// instruction that follows it. The kernel runs a filter once per syscall
// number when it is loaded, to cache the numbers it always allows, and that
// is on every sandboxed process's start: with ~330 names in one linear list
// it cost about a millisecond; a search takes a few comparisons each.
func fastAllow(info *arch.Info, nums []uint32) []bpf.Instruction {
	slices.Sort(nums)
	nums = slices.Compact(nums)
	const rest = ^uint32(0) // a jump to the end of the prefix, patched below
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.Jump{Skip: rest},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
	}
	if info.SeccompMask != 0 {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(info.SeccompMask), SkipFalse: 1}, bpf.Jump{Skip: rest})
	}
	prog = append(prog, searchTree(nums)...)
	for i, in := range prog {
		if j, ok := in.(bpf.Jump); ok && j.Skip == rest {
			prog[i] = bpf.Jump{Skip: uint32(len(prog) - i - 1)}
		}
	}
	return prog
}

// searchTree allows the syscall number in A if it is one of nums (sorted),
// else jumps to the end (a Jump with Skip ^0, for fastAllow to patch).
// Leaves compare a few numbers each; inner nodes pick a half, with a long
// jump over the left one (conditional jumps reach only 255 instructions).
func searchTree(nums []uint32) []bpf.Instruction {
	const leaf = 6
	if len(nums) <= leaf {
		var out []bpf.Instruction
		for i, n := range nums {
			out = append(out, bpf.JumpIf{Cond: bpf.JumpEqual, Val: n, SkipTrue: uint8(len(nums) - i)})
		}
		return append(out, bpf.Jump{Skip: ^uint32(0)}, bpf.RetConstant{Val: uint32(seccompbpf.ActionAllow)})
	}
	mid := len(nums) / 2
	left, right := searchTree(nums[:mid]), searchTree(nums[mid:])
	out := []bpf.Instruction{
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: nums[mid], SkipFalse: 1},
		bpf.Jump{Skip: uint32(len(left))},
	}
	out = append(out, left...)
	return append(out, right...)
}
