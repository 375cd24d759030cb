"""Shared parts of the reliability lab's tests: bounded or full counts, and the figures they report.

The suite runs each fault model a bounded number of times; ``scripts/reliability`` sets
``GWE_LAB_FULL=1`` for the full counts and ``GWE_LAB_FIGURES=<file>`` to collect every figure
(one JSON object a line) for docs/RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import random
import time

FULL = os.environ.get("GWE_LAB_FULL") == "1"


def count(bounded: int, full: int) -> int:
    """How many faults to inject: ``full`` in scripts/reliability, ``bounded`` in the suite."""
    return full if FULL else bounded


def rng(name: str) -> random.Random:
    """A random source per test, seeded from GWE_LAB_SEED (printed with the figure, so a failing
    run can be repeated) or from the clock."""
    seed = int(os.environ.get("GWE_LAB_SEED", "0")) or int(time.time() * 1000) % 1000003
    r = random.Random("%s:%d" % (name, seed))
    r.seed_value = seed
    print("LAB SEED %s GWE_LAB_SEED=%d" % (name, seed))  # shown with a failure's captured output
    return r


def figure(model: str, **numbers) -> dict:
    """Report one fault model's figure: printed (pytest -s shows it) and, under
    scripts/reliability, appended to GWE_LAB_FIGURES."""
    row = dict(model=model, full=FULL, **numbers)
    line = json.dumps(row, sort_keys=True)
    print("LAB FIGURE " + line)
    path = os.environ.get("GWE_LAB_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    return row


def kill_users(mountpoint: str, *roots) -> int:
    """SIGKILL, as the power cut would, the processes ``roots`` (Popen objects or pids) with all
    their descendants and every process whose working directory is under ``mountpoint``."""
    import psutil

    victims = {}
    for root in roots:
        pid = getattr(root, "pid", root)
        try:
            proc = psutil.Process(pid)
            for p in [proc] + proc.children(recursive=True):
                victims[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    mount = os.path.abspath(mountpoint) + os.sep
    for p in psutil.process_iter():
        try:
            if (p.cwd() + os.sep).startswith(mount) and p.pid != os.getpid():
                victims[p.pid] = p
        except (psutil.Error, OSError):
            pass
    for p in victims.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    for root in roots:
        if hasattr(root, "wait"):
            root.wait(10)
    return len(victims)


class Tmpfs:
    """A small tmpfs mounted at ``path`` (root only): a disk that fills up, or turns read-only."""

    def __init__(self, path: str, size: str) -> None:
        import subprocess

        self.path = path
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "lab", path], check=True)

    def remount(self, *options: str) -> None:
        import subprocess

        subprocess.run(["mount", "-o", ",".join(("remount",) + options), self.path], check=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int, name: str = ".filler") -> int:
        """Grow a filler file until at most ``leave`` bytes are free; returns the bytes free."""
        path = os.path.join(self.path, name)
        with open(path, "ab", buffering=0) as f:  # unbuffered: a write the full disk refused is not retried at close
            chunk = b"\0" * 65536
            while self.free() > leave:
                try:
                    f.write(chunk[:max(4096, min(len(chunk), self.free() - leave))])
                except OSError:
                    break
        return self.free()

    def unfill(self, name: str = ".filler") -> None:
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        import subprocess

        subprocess.run(["umount", "-l", self.path], check=False)


def produce(url: str, serial: str, stop, acked: dict, next_seq: dict, answers=None, pause: float = 0.05) -> None:
    """A gmq producer: writes v=<serial>:<seq>, a new value per attempt, until ``stop`` is set.
    A value counts in ``acked[serial]`` once it got 204; ``answers`` (a Counter) tallies every
    status (``"error"`` for no answer)."""
    import requests

    session = requests.Session()
    headers = {"X-Exosite-VMS": "p p %s" % serial, "Content-Type": "application/x-www-form-urlencoded"}
    while not stop.is_set():
        seq = next_seq[serial]
        next_seq[serial] += 1
        try:
            status = session.post(url + "/onep:v1/stack/alias", data="v=%s:%d" % (serial, seq), headers=headers,
                                  timeout=5).status_code
        except requests.RequestException:
            status = "error"
        if answers is not None:
            answers[status] += 1
        if status == 204:
            acked[serial].add(seq)
        else:
            session.close()
            session = requests.Session()
            time.sleep(pause)
    session.close()


def lost_values(murano, acked: dict) -> int:
    """How many of the acknowledged ``acked[serial]`` values are not in murano_local's history."""
    lost = 0
    for serial, seqs in acked.items():
        got = {int(p["value"].split(":")[1]) for p in murano.history(serial, "v", limit=100000)}
        lost += len(seqs - got)
    return lost


class LoopExt4:
    """An ext4 image on a loop device mounted at ``path`` (root only), mounted errors=remount-ro:
    ``fail()`` raises a filesystem error (ext4's trigger_fs_error), after which the kernel
    refuses every write, as with a dying SD card; ``reboot()`` unmounts, runs e2fsck and mounts
    it again."""

    def __init__(self, path: str, size_mb: int = 32) -> None:
        import subprocess

        self.path, self.image = path, path.rstrip("/") + ".img"
        os.makedirs(path, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.image], check=True)
        self.mount()

    def mount(self) -> None:
        import subprocess

        subprocess.run(["mount", "-o", "loop,errors=remount-ro", self.image, self.path], check=True)
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", self.path], check=True, capture_output=True,
                                text=True).stdout.strip()
        self.sysfs = "/sys/fs/ext4/%s" % os.path.basename(source)

    def fail(self) -> None:
        with open(os.path.join(self.sysfs, "trigger_fs_error"), "w") as f:
            f.write("1")

    def reboot(self) -> int:
        """Unmount, e2fsck -fy (its exit code is returned), mount again.

        umount returns once the mount is detached, but the filesystem lives on while I/O of it is
        still queued; a mount then would get that same, failed filesystem back (read-only). So the
        loop device must be gone (the kernel detaches it when the filesystem is released) first."""
        import subprocess

        from harness import wait_for

        subprocess.run(["umount", self.path], check=True)
        wait_for(lambda: not subprocess.run(["losetup", "-j", self.image], capture_output=True,
                                            text=True).stdout.strip(), 30, interval=0.05,
                 message="the loop device of %s released" % self.image)
        code = subprocess.run(["e2fsck", "-fy", self.image], capture_output=True).returncode
        self.mount()
        return code

    def close(self) -> None:
        import subprocess

        subprocess.run(["umount", "-l", self.path], check=False)
        try:
            os.unlink(self.image)
        except FileNotFoundError:
            pass
