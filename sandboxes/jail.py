"""The process backend's filesystem view (stdlib only; run by the runner, as root, in fresh
mount, pid and IPC namespaces, before any job): a chroot into a tmpfs that holds read-only
binds of the system directories and the interpreter's prefix, a fresh /proc of the runner's
pid namespace, a minimal /dev with its own /dev/shm and mqueue, and /tmp. Host files (the
scorer's input, the repository, other runners' scratch) are not there; host processes are
not in /proc. The sample uid has no capability, so it cannot leave the chroot.
"""

import ctypes
import os


def enter_jail(spec):
    """Process backend, as root in fresh mount/pid/ipc namespaces: chroot into a tmpfs that
    holds only read-only binds of the system directories (and the interpreter's prefix), a
    fresh /proc of our pid namespace, a minimal /dev with its own /dev/shm and mqueue, and
    /tmp. Host files (the scorer's input, the repository, other runners) are not there.
    Returns None, or why it failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 1, 2, 4, 8
    ms_remount, ms_bind, ms_rec, ms_private = 32, 4096, 16384, 1 << 18

    def mount(src, dst, fstype, flags, data=None):
        enc = [None if x is None else x.encode() for x in (src, dst, fstype, data)]
        if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
            raise OSError(
                ctypes.get_errno(), f"mount {src} on {dst}: {os.strerror(ctypes.get_errno())}"
            )

    root = spec["root"]
    try:
        mount(None, "/", None, ms_rec | ms_private)
        mount("tmpfs", root, "tmpfs", ms_nosuid | ms_nodev, f"mode=0755,size={spec['tmp_mb']}m")
        for d in spec["dirs"]:
            if os.path.islink(d):
                os.symlink(os.readlink(d), root + d)
            elif os.path.isdir(d):
                os.makedirs(root + d, exist_ok=True)
                mount(d, root + d, None, ms_bind | ms_rec)
                mount(None, root + d, None, ms_remount | ms_bind | ms_rdonly | ms_nosuid | ms_nodev)
        os.makedirs(root + "/etc", exist_ok=True)
        for f in spec["files"] + [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
        ]:
            if os.path.exists(f):
                os.makedirs(os.path.dirname(root + f), exist_ok=True)
                open(root + f, "a").close()
                mount(f, root + f, None, ms_bind)
                if f.startswith("/etc/"):
                    mount(
                        None,
                        root + f,
                        None,
                        ms_remount | ms_bind | ms_rdonly | ms_nosuid | ms_nodev,
                    )
        for d, mode in (
            ("/proc", 0o555),
            ("/tmp", 0o1777),
            ("/dev/shm", 0o1777),
            ("/dev/mqueue", 0o1777),
        ):
            os.makedirs(root + d, exist_ok=True)
            os.chmod(root + d, mode)
        mount("proc", root + "/proc", "proc", ms_nosuid | ms_nodev | ms_noexec)
        mount("tmpfs", root + "/dev/shm", "tmpfs", ms_nosuid | ms_nodev, "mode=1777,size=16m")
        mount("mqueue", root + "/dev/mqueue", "mqueue", ms_nosuid | ms_nodev | ms_noexec)
        os.symlink("/proc/self/fd", root + "/dev/fd")
        os.chroot(root)
        os.chdir("/")
    except OSError as e:
        return str(e)
    return None
