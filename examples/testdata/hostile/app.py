"""A hostile function: every attempt it makes on ebb, on other functions or
on the host must fail inside ebb's sandbox. It reports what it tried and
what happened, and proves that ordinary work (numpy, /tmp, the network
when allowed) still succeeds. Used by examples/sandbox_test.go."""

import ctypes
import glob
import json
import os
import signal
import socket

import numpy as np


def attempt(fn):
    """Runs one attack: ok=True means it worked (a sandbox failure)."""
    try:
        return {"ok": True, "result": repr(fn())[:300]}
    except BaseException as e:  # noqa: BLE001 - every failure is an answer
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def http(host, port, method="GET", path="/v1/functions", timeout=1.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % (method, path)).encode())
        data = b""
        while len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            raise ConnectionError("no answer")
        return data.decode("latin-1")[:200]
    finally:
        s.close()


def gateways():
    out = []
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[2] != "00000000":
                    out.append(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
    except OSError:
        pass
    return out


def scan_environ(key):
    """Returns the pids whose environment or command line carries key."""
    hits = []
    for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if key.encode() in f.read():
                    hits.append(path)
        except OSError:
            pass
    return hits


def found(hits):
    if not hits:
        raise LookupError("nothing found")
    return hits


def open_mount_roots(data_dir):
    opened = []
    for line in open("/proc/self/mountinfo"):
        root = line.split()[3]
        for path in (root, data_dir, os.path.dirname(root)):
            try:
                opened.append((path, os.listdir(path)[:3]))
            except OSError:
                pass
    return found([o for o in opened if o[0].startswith(data_dir) or o[0] == data_dir])


def mount_cgroup():
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/tmp/cg", exist_ok=True)
    if libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"memory") != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return os.listdir("/tmp/cg")


def write(path, data="x"):
    with open(path, "a") as f:
        f.write(data)
    return "wrote " + path


def handler(event, context):
    port = event["ebb_port"]
    attacks = {}
    hosts = ["127.0.0.1", "localhost", "::1", "127.0.0.2", "0.0.0.0", "::ffff:127.0.0.1"]
    hosts += gateways() + event.get("host_addrs", [])
    for host in hosts:
        attacks["list functions via %s" % host] = attempt(lambda: http(host, port))
        attacks["delete victim via %s" % host] = attempt(
            lambda: http(host, port, "DELETE", "/v1/functions/" + event["victim"])
        )
    own_api = os.environ.get("AWS_LAMBDA_RUNTIME_API", "")
    victim_api = event["victim_runtime_api"]
    if victim_api != own_api:
        host, _, vport = victim_api.rpartition(":")
        attacks["connect to victim runtime api"] = attempt(
            lambda: socket.create_connection((host, int(vport)), timeout=1.0).close() or "connected"
        )
        attacks["victim runtime api"] = attempt(
            lambda: http(host, int(vport), "GET", "/2018-06-01/runtime/invocation/next", 2.0)
        )
    attacks["victim env in /proc"] = attempt(lambda: found(scan_environ(event["victim_key"])))
    attacks["list data dir"] = attempt(lambda: os.listdir(event["data_dir"]))
    # /proc/self/mountinfo names the host path each mount came from (as in
    # any container); knowing a name must give no way in.
    attacks["open host paths named in mountinfo"] = attempt(lambda: open_mount_roots(event["data_dir"]))
    attacks["write own code"] = attempt(lambda: write(os.path.abspath(__file__)))
    attacks["create file in code dir"] = attempt(lambda: write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "new.py")))
    attacks["write own cgroup limit"] = attempt(lambda: write(event["cgroup_limit_file"], str(4 << 30)))
    attacks["list /sys/fs/cgroup"] = attempt(lambda: os.listdir("/sys/fs/cgroup"))
    attacks["mount cgroupfs"] = attempt(mount_cgroup)
    # The release shim ebb binds into exec and http sandboxes (a spare
    # waits in it; absent here, in a python sandbox): neither writing it
    # nor putting one in its place may work.
    attacks["write the release shim"] = attempt(lambda: write("/.ebb-release"))
    attacks["replace the release shim"] = attempt(lambda: write("/.ebb-release.new") and os.replace("/.ebb-release.new", "/.ebb-release"))
    attacks["signal ebb"] = attempt(lambda: os.kill(event["ebb_pid"], signal.SIGCONT))
    attacks["setuid 0"] = attempt(lambda: os.setuid(0))
    attacks["read /etc/shadow"] = attempt(lambda: open("/etc/shadow").read(10))
    attacks["unshare user namespace"] = attempt(ctypes_unshare)
    # What must still work.
    work = {}
    work["numpy"] = attempt(lambda: float(np.linalg.norm(np.arange(12.0).reshape(3, 4))))
    work["tmp"] = attempt(lambda: write("/tmp/scratch.bin", "y" * (1 << 20)) and os.path.getsize("/tmp/scratch.bin"))
    if event.get("outside"):
        work["outside"] = attempt(lambda: http(event["outside"][0], event["outside"][1], "GET", "/", 3.0))
    return {"uid": os.getuid(), "pid": os.getpid(), "attacks": attacks, "work": work}


def ctypes_unshare():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return "unshared"
