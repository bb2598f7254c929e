"""Docker engine bring-up and the offline-built sandbox image.

``python -m verirl.sandboxes.engine up`` (what ``make sandbox`` runs) is idempotent:

1. a running engine is found through the docker SDK (``DOCKER_HOST`` or the default socket);
2. otherwise, as root with apt, Debian's ``docker.io`` and ``debootstrap`` are installed when
   missing and ``dockerd`` is started detached (``setsid``, log in /var/log/verirl-dockerd.log),
   so it outlives the calling ``make``; we wait for its socket;
3. the sandbox image is built when missing, without any registry: ``debootstrap --variant=minbase
   --include=python3-minimal bookworm DIR``, a dedicated non-root user appended to
   ``DIR/etc/passwd``, then ``tar -C DIR -c . | docker import - NAME:TAG``. TAG is a hash of
   ``sandboxes/image/manifest.txt``, so the image is rebuilt exactly when the manifest changes.

It never raises to the Makefile: when no engine can be had it prints a loud message and exits 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_NAME = "verirl-sandbox"
LABEL = "verirl.sandbox"  # every container we start carries it, so stale ones can be reaped
MANIFEST = Path(__file__).parent / "image" / "manifest.txt"
DOCKERD_LOG = Path("/var/log/verirl-dockerd.log")
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
DEBIAN_MIRROR = os.environ.get("VERIRL_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class EngineUnavailable(RuntimeError):
    """No Docker engine could be reached or started."""


@dataclass(frozen=True)
class Manifest:
    suite: str
    variant: str
    include: str
    user: str  # an /etc/passwd line: name:x:uid:gid

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[2])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[3])


def read_manifest(path: Path = MANIFEST) -> Manifest:
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return Manifest(**fields)


def image_tag(path: Path = MANIFEST) -> str:
    """``verirl-sandbox:<12 hex of the manifest's sha256>``."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{IMAGE_NAME}:{digest}"


def client(timeout: int = 60) -> Any:
    """A docker SDK client to a live engine, or EngineUnavailable."""
    import docker

    try:
        c = docker.from_env(timeout=timeout)
        c.ping()
        return c
    except Exception as e:
        raise EngineUnavailable(f"no Docker engine reachable: {e}") from None


def engine_running() -> bool:
    try:
        client(timeout=5)
        return True
    except EngineUnavailable:
        return False


def _log(msg: str) -> None:
    print(f"[verirl sandbox] {msg}", flush=True)


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(f"need root and apt-get to install {packages}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _log(f"installing {' '.join(packages)} with apt-get")
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    r = subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env)
    if r.returncode != 0:
        raise EngineUnavailable(f"apt-get install {packages} failed (exit {r.returncode})")


def start_engine(wait_s: float = 60.0) -> None:
    """Start dockerd detached (installing docker.io first when missing) and wait for it."""
    if shutil.which("dockerd") is None:
        _apt_install(["docker.io"])
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd is not running and only root can start it")
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_pidfile()
    _log(f"starting dockerd (log: {DOCKERD_LOG})")
    try:
        with open(DOCKERD_LOG, "ab") as log:
            # setsid + no inherited stdio: the daemon must outlive `make` and its terminal.
            subprocess.Popen(
                ["dockerd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as e:
        raise EngineUnavailable(f"cannot start dockerd: {e}") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if engine_running():
            _log("dockerd is up")
            return
        time.sleep(0.5)
    raise EngineUnavailable(f"dockerd did not answer within {wait_s:.0f}s; see {DOCKERD_LOG}")


def dockerd_pid() -> int | None:
    """The pid of a live (not zombie) local dockerd, or None."""
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and Path(f"/proc/{p}/comm").read_text().strip() == "dockerd":
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    return int(p)
        except (OSError, IndexError):
            pass
    return None


def clear_stale_pidfile() -> None:
    """A dockerd that died (SIGKILL, a crash) leaves its pid file, and a new one then refuses
    to start ("pid file found"): remove it when no dockerd lives."""
    if DOCKERD_PIDFILE.exists() and dockerd_pid() is None:
        _log(f"removing the stale {DOCKERD_PIDFILE}")
        DOCKERD_PIDFILE.unlink(missing_ok=True)


def image_present(c: Any, tag: str | None = None) -> bool:
    import docker

    try:
        c.images.get(tag or image_tag())
        return True
    except docker.errors.ImageNotFound:
        return False


def build_image(c: Any, force: bool = False) -> str:
    """Build the sandbox image from the manifest when missing (or `force`); returns its tag."""
    tag = image_tag()
    if not force and image_present(c, tag):
        _log(f"image {tag} present")
        return tag
    m = read_manifest()
    if shutil.which("debootstrap") is None:
        _apt_install(["debootstrap"])
    if os.geteuid() != 0:
        raise EngineUnavailable("building the sandbox image needs root (debootstrap)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="verirl-image-") as tmp:
        root = Path(tmp) / "root"
        _log(f"debootstrap {m.variant} {m.suite} (+{m.include}) -> {root}")
        r = subprocess.run(
            [
                "debootstrap",
                f"--variant={m.variant}",
                f"--include={m.include}",
                m.suite,
                str(root),
                DEBIAN_MIRROR,
            ],
            stdout=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise EngineUnavailable(f"debootstrap failed (exit {r.returncode})")
        with open(root / "etc" / "passwd", "a") as f:
            f.write(m.user + "\n")
        with open(root / "etc" / "group", "a") as f:
            f.write(f"{m.user.split(':')[0]}:x:{m.gid}:\n")
        # Package caches are dead weight in every container.
        shutil.rmtree(root / "var" / "cache" / "apt", ignore_errors=True)
        shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imp = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise EngineUnavailable(f"docker import of {tag} failed")
    _log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    return tag


def ensure_up(build: bool = True) -> Any:
    """Engine running (started if needed) and image built; returns a docker client."""
    if not engine_running():
        start_engine()
    c = client()
    if build:
        build_image(c)
    return c


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["up"], ["up", "--force"]):
        print("usage: python -m verirl.sandboxes.engine up [--force]", file=sys.stderr)
        return 2
    try:
        c = ensure_up(build=False)
        build_image(c, force="--force" in argv)
    except EngineUnavailable as e:
        bar = "!" * 78
        print(
            f"\n{bar}\n!! verirl: NO DOCKER SANDBOX: {e}\n"
            f"!! Docker-marked tests will be SKIPPED; the process backend is used instead.\n{bar}\n",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
