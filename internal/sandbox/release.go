package sandbox

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
)

// A spare sandbox waits to be claimed. bwrap's own --block-fd waits after
// the namespaces and mounts are made but before it loads the seccomp
// filter and execs the command, so a claim still paid for both: loading
// the filter (the kernel compiles it and runs it once for every syscall
// number to cache what it always allows) took 0.35 ms here, and the exec
// from bwrap the rest of ~1.9 ms from release to a first byte of
// /bin/echo. With a release shim, bwrap execs the shim instead, which
// waits on the block pipe with the filter already loaded and then execs
// the command itself: 1.3-1.4 ms from release to the same byte
// (TestZZ-style measurement in docs/benchmarks.md).
//
// The shim is 80 bytes of x86-64 machine code in a static ELF file that
// the sandbox writes into its view directory and binds read-only at
// ShimPath in each spare: read one byte from the block fd (its number is
// built into the code), exit 1 if that fails or the pipe was closed
// unreleased, close the fd, execve(argv[1], &argv[1], envp), exit 127 if
// that fails. It makes no other syscall, and runs with the sandbox's uid,
// namespaces, no_new_privs and filter, as the command does. A program this
// small has no toolchain of its own to build it with, and a Go shim (ebb's
// own binary) was slower than bwrap: an exec from a multi-threaded Go
// process first waits for its other threads to exit. On other
// architectures, and for a command given by a bare name (execvp's PATH
// search is bwrap's), spares wait in bwrap as before.

// ShimPath is where a spare's release shim is inside its sandbox.
const ShimPath = "/.ebb-release"

// releaseShims writes the shims into one directory, one per block fd
// number (few: 3 + the caller's extra files + 1).
type releaseShims struct {
	dir string

	mu    sync.Mutex // guards paths
	paths map[int]string
}

// shimArch says whether releaseShim can build a shim for this machine.
func shimArch() bool { return runtime.GOARCH == "amd64" }

// path is the host path of the shim for block fd fd, written on first use.
func (r *releaseShims) path(fd int) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.paths[fd]; ok {
		return p, nil
	}
	code, err := releaseShim(fd)
	if err != nil {
		return "", err
	}
	p := filepath.Join(r.dir, ".release-fd"+strconv.Itoa(fd))
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, code, 0o755); err != nil {
		return "", fmt.Errorf("write release shim: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // past the umask
		return "", fmt.Errorf("write release shim: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("write release shim: %w", err)
	}
	if r.paths == nil {
		r.paths = map[int]string{}
	}
	r.paths[fd] = p
	return p, nil
}

// releaseShim is the shim for block fd fd as a static x86-64 ELF file.
func releaseShim(fd int) ([]byte, error) {
	if !shimArch() {
		return nil, fmt.Errorf("build release shim: no shim for %s", runtime.GOARCH)
	}
	if fd < 0 || fd > 1<<20 {
		return nil, fmt.Errorf("build release shim: fd %d out of range", fd)
	}
	imm := binary.LittleEndian.AppendUint32(nil, uint32(fd))
	var code []byte
	put := func(b ...byte) { code = append(code, b...) }
	put(0xbf)
	put(imm...)                       //                     0: mov edi, fd
	put(0x48, 0x8d, 0x74, 0x24, 0xf8) //  5: lea rsi, [rsp-8]   (the red zone: one byte)
	put(0xba, 1, 0, 0, 0)             //            10: mov edx, 1
	put(0x31, 0xc0)                   //                  15: xor eax, eax         (read)
	put(0x0f, 0x05)                   //                  17: syscall
	put(0x85, 0xc0)                   //                  19: test eax, eax
	put(0x7e, 68-23)                  //                 21: jle fail              (EOF or error: not released)
	put(0xbf)
	put(imm...)                       //                     23: mov edi, fd
	put(0xb8, 3, 0, 0, 0)             //            28: mov eax, 3           (close)
	put(0x0f, 0x05)                   //                  33: syscall
	put(0x48, 0x8b, 0x7c, 0x24, 0x10) // 35: mov rdi, [rsp+16]  (argv[1])
	put(0x48, 0x8d, 0x74, 0x24, 0x10) // 40: lea rsi, [rsp+16]  (&argv[1])
	put(0x48, 0x8b, 0x04, 0x24)       //       45: mov rax, [rsp]      (argc)
	put(0x48, 0x8d, 0x54, 0xc4, 0x10) // 49: lea rdx, [rsp+rax*8+16] (envp)
	put(0xb8, 59, 0, 0, 0)            //           54: mov eax, 59          (execve)
	put(0x0f, 0x05)                   //                  59: syscall
	put(0xbf, 127, 0, 0, 0)           //          61: mov edi, 127         (execve failed)
	put(0xeb, 73-68)                  //                 66: jmp exit
	put(0xbf, 1, 0, 0, 0)             //            68: fail: mov edi, 1
	put(0xb8, 60, 0, 0, 0)            //           73: exit: mov eax, 60   (exit)
	put(0x0f, 0x05)                   //                  78: syscall
	if len(code) != 80 {
		return nil, fmt.Errorf("build release shim: %d bytes of code, want 80", len(code))
	}

	// One loadable segment, read and execute, holding the headers and
	// the code, at the conventional base.
	const base = 0x400000
	const hdrs = 64 + 56 // ELF header, one program header
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), byte(elf.ELFOSABI_NONE)})
	b.Write(make([]byte, 8))
	w(uint16(elf.ET_EXEC))
	w(uint16(elf.EM_X86_64))
	w(uint32(elf.EV_CURRENT))
	w(uint64(base + hdrs)) // entry
	w(uint64(64))          // program headers' offset
	w(uint64(0))           // no section headers
	w(uint32(0))           // flags
	w(uint16(64))          // ELF header size
	w(uint16(56))          // program header size
	w(uint16(1))           // program headers
	w(uint16(64))          // section header size
	w(uint16(0))           // section headers
	w(uint16(0))           // section name table index
	w(uint32(elf.PT_LOAD))
	w(uint32(elf.PF_R | elf.PF_X))
	w(uint64(0))                // offset
	w(uint64(base))             // vaddr
	w(uint64(base))             // paddr
	w(uint64(hdrs + len(code))) // file size
	w(uint64(hdrs + len(code))) // memory size
	w(uint64(0x1000))           // alignment
	b.Write(code)
	return b.Bytes(), nil
}
