package platform

import "syscall"

// syscallKill0 reports whether pid is alive (nil) or gone.
func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }
