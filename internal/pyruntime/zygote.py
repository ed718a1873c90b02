"""ebb's Python fork-server (zygote) for one function version.

It imports the manifest's preload modules and the handler's module once
(paying for library imports and the module's global scope, e.g. loading a
model), then forks instances on request. A forked child shares the zygote's
memory copy-on-write and serves the Lambda Runtime API at once. Before its
first fork the zygote collects garbage and freezes what is left (gc.freeze),
so that the children's collector never walks, and so never writes to and
copies, the objects they share with it.

Control channel: a SOCK_SEQPACKET unix socket on fd 3, one JSON object per
message. ebb sends {"op": "fork", "tag", "env", "dir", "cgroup",
"cgroup_fds", "hello"} with descriptors attached (SCM_RIGHTS), in this order:

  - the child's stdout and stderr write ends (always);
  - "cgroup_fds" (a count, default 0) descriptors of cgroup.procs files that
    ebb opened for writing. The child writes "0" (itself) to each as its
    first act, then closes them: the kernel checks such a write against the
    credentials of the opener, so a child that runs unprivileged, or sees no
    /sys, still enters its cgroups. When there are none, the child writes
    its pid into each path of "cgroup" (a list) instead, as before;
  - when "hello" is true, one end of a unix socket whose other end ebb reads
    with SO_PASSCRED. Right after its cgroup writes the child sends one
    message on it with SCM_CREDENTIALS (its pid, uid, gid), then closes it:
    the kernel translates the pid into the reader's pid namespace, which is
    how ebb learns the child's pid when the zygote runs in a pid namespace
    of its own (the pids in this channel are the zygote's namespace's).

The zygote closes its copies of all of them right after the fork. It answers
{"op": "forked", "tag", "pid"} or {"op": "refused", "tag", "reason"}, and
reports each child it reaps as {"op": "exit", "pid", "status"} (the raw wait
status). At start it sends {"op": "ready"} or {"op": "init_error", ...}.

Nothing is written next to this file at run time (the directory may be a
read-only mount): the shim is imported without writing its bytecode.

The zygote must be single-threaded whenever it forks: a thread's locks would
be copied held into the child with no thread left to release them. Thread
pools of numeric libraries are therefore limited to one thread (by ebb, in the
environment, before anything is imported), and every fork is preceded by a
check; a zygote that grew a thread refuses to fork and says why.
"""

import array
import errno
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback

CTRL_FD = 3
MAX_MSG = 1 << 20
# Descriptors one fork request may carry: stdout, stderr, the cgroup.procs
# files (several with cgroup v1) and the hello socket.
MAX_FDS = 64

_libc_prctl = None


def _prctl():
    # ctypes is imported here, before any fork, so that children do not pay
    # for it; a zygote without ctypes still works, its children just do not
    # die with it.
    global _libc_prctl
    try:
        import ctypes

        _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        _libc_prctl = None


def _send(sock, msg):
    data = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    while True:
        try:
            sock.sendall(data)
            return
        except InterruptedError:
            continue


def _threads():
    """Returns the number of OS threads of this process and a reason string
    when it is more than one."""
    try:
        n = len(os.listdir("/proc/self/task"))
    except OSError:
        n = 1
    import threading

    if n == 1 and threading.active_count() == 1:
        return 1, ""
    names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    return max(n, threading.active_count()), "the zygote has %d threads (python threads: %s); forking it is unsafe" % (
        n,
        ", ".join(names) or "none",
    )


def _recv(sock):
    """Returns (message dict, [fds]) or (None, []) at EOF."""
    fds = array.array("i")
    while True:
        try:
            data, ancdata, flags, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            break
        except InterruptedError:
            continue
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        msg = json.loads(data)
    except ValueError:
        msg = {}
    return msg, list(fds)


def _child(shim, handler, msg, fds, zygote_pid):
    """Runs in the forked child; never returns. fds are those of the fork
    request: stdout, stderr, then the cgroup.procs files, then hello."""
    code = 1
    try:
        out_fd, err_fd = fds[0], fds[1]
        n_cgroup = msg.get("cgroup_fds") or 0
        cgroup_fds = fds[2 : 2 + n_cgroup]
        hello_fd = fds[2 + n_cgroup] if msg.get("hello") else -1
        # Into the instance's cgroups before anything else, so that all it
        # allocates from now on counts against its own memory limit.
        if cgroup_fds:
            for fd in cgroup_fds:
                os.write(fd, b"0")
                os.close(fd)
        else:
            me = str(os.getpid())
            for path in msg.get("cgroup") or ():
                with open(path, "w") as f:
                    f.write(me)
        if hello_fd >= 0:
            # The credentials are checked and translated by the kernel; the
            # payload is only there because a message needs one.
            hello = socket.socket(fileno=hello_fd)
            creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
            hello.sendmsg([b"hello"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
            hello.close()
        os.setsid()
        if _libc_prctl is not None:
            _libc_prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != zygote_pid:
                os._exit(1)  # the zygote died before the prctl took hold
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it at start
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        # Nothing of the zygote's is meant for the child: not the control
        # socket, not the wakeup pipe, not what user code opened at import.
        os.closerange(3, _max_fd())
        os.chdir(msg["dir"])
        env = msg.get("env") or {}
        os.environ.clear()
        os.environ.update(env)
        _reseed()
        api = env.get("AWS_LAMBDA_RUNTIME_API", "")
        shim.serve(api, handler)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        try:
            os.write(2, ("[ERROR] runtime API: %s\n" % e).encode("utf-8", "replace"))
        except OSError:
            pass
    finally:
        os._exit(code)


def _max_fd():
    try:
        return max(int(x) for x in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _reseed():
    # Each instance must draw its own random numbers, as a fresh interpreter
    # would: the state copied from the zygote is the same in every child.
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception:
            pass


def _reap(sock, children):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, {"op": "exit", "pid": pid, "status": status})


def main():
    sock = socket.socket(fileno=CTRL_FD)
    os.set_inheritable(CTRL_FD, False)
    shim_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, shim_dir)
    # No __pycache__ next to the shim: its directory may be read-only, and
    # a zygote is started rarely enough not to need one.
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        import bootstrap as shim
    finally:
        sys.dont_write_bytecode = dont_write

    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != shim_dir]
    _prctl()
    started = time.monotonic()
    preload = [m for m in os.environ.get("EBB_PRELOAD", "").split(",") if m]
    try:
        # The handler's own directories come first, as in a child.
        shim._setup_path(os.path.abspath(os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()))
        for name in preload:
            try:
                __import__(name)
            except BaseException as e:
                raise shim.InitError(
                    "Runtime.ImportModuleError",
                    "Unable to preload module '%s': %s" % (name, shim._describe(e)),
                    shim._user_frames(e.__traceback__),
                )
        handler = shim.load_handler()
    except shim.InitError as e:
        shim._log_error(e.error_type, e.message, e.stack_trace)
        _send(sock, {"op": "init_error", "type": e.error_type, "message": e.message, "stack": e.stack_trace})
        os._exit(1)
    init_ms = (time.monotonic() - started) * 1000
    # Everything alive now is shared with every child; freezing it keeps the
    # children's collections off these pages (each visit would write to an
    # object's header and copy its page). The collect first leaves out what
    # import-time garbage there is.
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    _, reason = _threads()
    _send(sock, {"op": "ready", "pid": os.getpid(), "init_ms": init_ms, "threads": reason})

    zygote_pid = os.getpid()
    children = set()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signo, frame: None)
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            _reap(sock, children)
        if sock not in ready:
            continue
        msg, fds = _recv(sock)
        if msg is None:
            # ebb closed the channel: the zygote is done; its children die
            # with it (parent-death signal).
            os._exit(0)
        tag = msg.get("tag")
        n_cgroup = msg.get("cgroup_fds") or 0
        ok = isinstance(n_cgroup, int) and 0 <= n_cgroup <= MAX_FDS
        want = 2 + n_cgroup + (1 if msg.get("hello") else 0) if ok else -1
        if msg.get("op") != "fork" or len(fds) != want or not isinstance(msg.get("dir"), str):
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "refused", "tag": tag, "reason": "malformed fork request"})
            continue
        _, reason = _threads()
        if reason:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "refused", "tag": tag, "reason": reason})
            continue
        try:
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "refused", "tag": tag, "reason": "fork: %s" % e})
            continue
        if pid == 0:
            _child(shim, handler, msg, fds, zygote_pid)
        children.add(pid)
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "forked", "tag": tag, "pid": pid})


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)
