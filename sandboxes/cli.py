"""``verirl sandbox build [--force]`` and ``verirl sandbox doctor``.

``doctor`` reports the engine, its version, the image and tag, and, from inside a real pool
container, which limits actually hold: memory, pids, CPU quota, read-only root fs, tmpfs, no
network, non-root uid, no capabilities, no-new-privileges, seccomp; and whether the process
backend would get a network namespace.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

PROBE = r"""
import json, os
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return True
    except OSError:
        return False
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None
print(json.dumps({
    "uid": os.getuid(),
    "cap_eff": status("CapEff"),
    "no_new_privs": status("NoNewPrivs"),
    "seccomp": status("Seccomp"),
    "rootfs_writable": writable("/probe"),
    "tmp_writable": writable("/tmp/probe"),
    "net_ifaces": sorted(os.listdir("/sys/class/net")),
    "mem_limit": read("/sys/fs/cgroup/memory/memory.limit_in_bytes") or read("/sys/fs/cgroup/memory.max"),
    "pids_limit": read("/sys/fs/cgroup/pids/pids.max") or read("/sys/fs/cgroup/pids.max"),
    "cpu_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or read("/sys/fs/cgroup/cpu.max"),
}))
"""


def doctor() -> int:
    from verirl.sandboxes.engine import EngineUnavailable, client, image_present, image_tag

    tag = image_tag()
    print(f"image tag (from manifest): {tag}")
    try:
        c = client(timeout=10)
    except EngineUnavailable as e:
        print(f"engine: NOT RUNNING ({e})")
        print("fix: `python -m verirl.sandboxes.engine up` (as root), or use --sandbox process")
        _process_report()
        return 1
    v = c.version()
    print(f"engine: running, Docker {v.get('Version')} (API {v.get('ApiVersion')})")
    sec = c.info().get("SecurityOptions") or []
    print(f"engine security options: {', '.join(sec) or 'none (no seccomp profile)'}")
    if not image_present(c, tag):
        print("image: MISSING; run `verirl sandbox build`")
        _process_report()
        return 1
    print("image: present")
    from verirl.sandboxes.docker_pool import DockerPool

    with DockerPool(workers=1) as pool:
        ctr = pool._idle.get()
        r = ctr.exec_run(["python3", "-I", "-S", "-c", PROBE], user=pool.user)
        pool._idle.put(ctr)
        probe: dict[str, Any] = json.loads(r.output.decode())
    checks = [
        ("non-root user", probe["uid"] != 0, f"uid {probe['uid']}"),
        ("all capabilities dropped", int(probe["cap_eff"], 16) == 0, f"CapEff {probe['cap_eff']}"),
        ("no-new-privileges", probe["no_new_privs"] == "1", f"NoNewPrivs {probe['no_new_privs']}"),
        ("seccomp filter", probe["seccomp"] == "2", f"Seccomp mode {probe['seccomp']}"),
        ("read-only root fs", not probe["rootfs_writable"], ""),
        ("tmpfs work dir", probe["tmp_writable"], "/tmp"),
        ("network none", probe["net_ifaces"] == ["lo"], f"interfaces {probe['net_ifaces']}"),
        ("memory cap", _limited(probe["mem_limit"]), f"{probe['mem_limit']}"),
        ("pids cap", _limited(probe["pids_limit"]), f"{probe['pids_limit']}"),
        ("cpu quota", _limited(probe["cpu_quota"]), f"{probe['cpu_quota']}"),
    ]
    bad = 0
    for name, ok, info in checks:
        print(f"  [{'ok' if ok else 'NO'}] {name:26s} {info}")
        bad += not ok and name != "seccomp filter"  # seccomp depends on the engine's build
    _process_report()
    return 1 if bad else 0


def _limited(v: str | None) -> bool:
    if v is None:
        return False
    return v not in ("max", "-1") and not v.startswith("max ") and v != "9223372036854771712"


def _process_report() -> None:
    from verirl.sandboxes.process import unshare_prefix

    pre = unshare_prefix()
    how = " ".join(pre) if pre else "NOT available: the process backend has the host network"
    print(f"process backend: namespaces via {how}")


def sandbox_command(args: argparse.Namespace) -> int:
    if args.action == "doctor":
        return doctor()
    from verirl.sandboxes.engine import EngineUnavailable, build_image, ensure_up

    try:
        build_image(ensure_up(build=False), force=bool(getattr(args, "force", False)))
    except EngineUnavailable as e:
        print(f"verirl sandbox build: {e}")
        return 1
    return 0
