package sandbox

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/elastic/go-seccomp-bpf/arch"
)

// TestFastAllowChangesNoDecision runs the filter with and without the
// search tree in a BPF interpreter, for every syscall number (native and
// x32), a foreign architecture and random arguments, and wants the same
// answer each time.
func TestFastAllowChangesNoDecision(t *testing.T) {
	useFastAllow = false
	linear, err := compileSeccomp()
	useFastAllow = true
	if err != nil {
		t.Fatal(err)
	}
	tree, err := compileSeccomp()
	if err != nil {
		t.Fatal(err)
	}
	vmOf := func(raw []byte) *bpf.VM {
		var insns []bpf.RawInstruction
		for i := 0; i+8 <= len(raw); i += 8 {
			insns = append(insns, bpf.RawInstruction{Op: binary.NativeEndian.Uint16(raw[i:]), Jt: raw[i+2], Jf: raw[i+3], K: binary.NativeEndian.Uint32(raw[i+4:])})
		}
		prog, ok := bpf.Disassemble(insns)
		if !ok {
			t.Fatal("cannot disassemble the filter")
		}
		vm, err := bpf.NewVM(prog)
		if err != nil {
			t.Fatalf("NewVM: %v", err)
		}
		return vm
	}
	a, b := vmOf(linear.raw), vmOf(tree.raw)
	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	// seccomp_data as the interpreter reads it (big-endian words; the
	// same encoding for both programs).
	data := func(nr, audit uint32, args [6]uint64) []byte {
		d := make([]byte, 64)
		binary.BigEndian.PutUint32(d[0:], nr)
		binary.BigEndian.PutUint32(d[4:], audit)
		for i, v := range args {
			binary.BigEndian.PutUint32(d[16+8*i:], uint32(v>>32))
			binary.BigEndian.PutUint32(d[20+8*i:], uint32(v))
		}
		return d
	}
	r := rand.New(rand.NewPCG(1, 2))
	checked, allowed := 0, 0
	for _, audit := range []uint32{uint32(info.ID), 0x40000003 /* i386 */} {
		for _, base := range []uint32{0, uint32(info.SeccompMask)} {
			for nr := uint32(0); nr < 1024; nr++ {
				for k := range 4 {
					var args [6]uint64
					if k > 0 {
						for i := range args {
							args[i] = r.Uint64() >> (r.IntN(64))
						}
					}
					in := data(base+nr, audit, args)
					x, err1 := a.Run(in)
					y, err2 := b.Run(in)
					if err1 != nil || err2 != nil || x != y {
						t.Fatalf("nr %d arch %#x args %v: linear %#x (%v), tree %#x (%v)", base+nr, audit, args, x, err1, y, err2)
					}
					checked++
					if uint32(x) == 0x7fff0000 {
						allowed++
					}
				}
			}
		}
	}
	if allowed < 1000 {
		t.Fatalf("only %d of %d checks allowed: the comparison proves little", allowed, checked)
	}
	t.Logf("%d decisions compared (%d allowed); %d instructions linear, %d with the tree", checked, allowed, len(linear.raw)/8, len(tree.raw)/8)
}
