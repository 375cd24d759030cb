"""Self-tests of the power-loss filesystem: after a cut, exactly what was made durable is left."""
import os
import sqlite3
import subprocess
import sys

from lab import figure


def write_file(path, data, sync=False, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_unsynced_file_is_gone_and_fsynced_file_survives(powerloss):
    disk = powerloss()
    root = disk.mountpoint
    write_file(root + "/durable", b"kept", sync=True)
    write_file(root + "/entry-only", b"data never synced")
    sync_dir(root)
    write_file(root + "/nothing-synced", b"lost")
    write_file(root + "/data-only", b"data synced, entry not", sync=True)
    report = disk.cut()
    assert report["unsynced_ops"] > 0
    disk.mount()
    assert sorted(os.listdir(root)) == ["durable", "entry-only"]
    assert read(root + "/durable") == b"kept"
    assert read(root + "/entry-only") == b""  # the name was durable, the data was not


def test_overwrite_truncate_and_unlink_without_fsync_revert(powerloss):
    disk = powerloss()
    root = disk.mountpoint
    old = bytes(range(256)) * 64  # 16 KiB over four pages
    write_file(root + "/f", old, sync=True)
    write_file(root + "/g", b"g", sync=True)
    sync_dir(root)
    with open(root + "/f", "r+b") as f:
        f.seek(5000)
        f.write(b"X" * 3000)
        f.truncate(9000)
        f.write(b"tail")
    os.unlink(root + "/g")
    assert not os.path.exists(root + "/g")
    disk.cut()
    disk.mount()
    assert read(root + "/f") == old
    assert read(root + "/g") == b"g"


def test_rename_reverts_without_directory_fsync_and_holds_with_it(powerloss):
    disk = powerloss()
    root = disk.mountpoint
    os.mkdir(root + "/a")
    os.mkdir(root + "/b")
    for name in ("x", "y"):
        write_file(root + "/a/" + name, name.encode() * 3, sync=True)
    sync_dir(root + "/a")
    sync_dir(root)
    os.rename(root + "/a/x", root + "/a/x2")               # no directory fsync: reverts
    os.rename(root + "/a/y", root + "/b/y")
    sync_dir(root + "/b")                                  # an fsync of either side makes it whole
    write_file(root + "/b/tmp", b"new", sync=True)
    os.rename(root + "/b/tmp", root + "/b/z")              # never synced: gone
    disk.cut()
    disk.mount()
    assert sorted(os.listdir(root + "/a")) == ["x"]
    assert sorted(os.listdir(root + "/b")) == ["y"]
    assert read(root + "/a/x") == b"xxx"
    assert read(root + "/b/y") == b"yyy"


def test_atomic_replace_gives_old_or_new(powerloss):
    """The atomic-write recipe: tmp, fsync, rename, fsync dir. Cut before the dir fsync: old;
    after it: new; never anything else."""
    disk = powerloss()
    root = disk.mountpoint
    write_file(root + "/cfg", b"old", sync=True)
    sync_dir(root)
    write_file(root + "/.cfg.tmp", b"new", sync=True)
    os.rename(root + "/.cfg.tmp", root + "/cfg")
    assert read(root + "/cfg") == b"new"
    disk.cut()
    disk.mount()
    assert os.listdir(root) == ["cfg"] and read(root + "/cfg") == b"old"
    write_file(root + "/.cfg.tmp", b"new", sync=True)
    os.rename(root + "/.cfg.tmp", root + "/cfg")
    sync_dir(root)
    disk.cut()
    disk.mount()
    assert os.listdir(root) == ["cfg"] and read(root + "/cfg") == b"new"


def test_prefix_keeps_writes_in_order_and_tear_cuts_at_a_sector(powerloss):
    """keep="prefix": the unsynced appends that survive are a prefix of those issued; with tear,
    the next one is cut at a 512-byte boundary (of the file offset). (The kernel splits writes at
    page boundaries, so the filesystem sees more writes than the test issued.)"""
    disk = powerloss()
    root = disk.mountpoint
    chunks = [bytes([65 + i]) * 1000 for i in range(12)]
    seen_lengths = set()
    for seed in range(6):
        write_file(root + "/log", b"", sync=True)
        sync_dir(root)
        with open(root + "/log", "ab", buffering=0) as f:
            for c in chunks:
                f.write(c)
        report = disk.cut(keep="prefix", tear=True, seed=seed)
        disk.mount()
        data = read(root + "/log")
        whole = b"".join(chunks)
        assert whole.startswith(data), "not a prefix of what was written"
        if report["torn"]:
            assert len(data) % 512 == 0
        seen_lengths.add(len(data))
    assert len(seen_lengths) > 1, "every seed kept the same amount: the prefix is not random"


def test_sqlite_wal_full_survives_and_synchronous_off_loses(powerloss):
    """sqlite in WAL mode on the power-loss filesystem, from a subprocess SIGKILLed by the cut:
    synchronous=FULL keeps every committed row; synchronous=OFF (no fsync) loses committed rows,
    which is the kind of defect the lab exists to catch."""
    disk = powerloss()
    root = disk.mountpoint
    script = r"""
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=WAL"); con.execute("PRAGMA synchronous=" + sys.argv[2])
con.execute("CREATE TABLE IF NOT EXISTS t(x)")
for i in range(int(sys.argv[3])):
    con.execute("INSERT INTO t VALUES (?)", (i,))
print("committed", flush=True)
sys.stdin.read()
"""
    lost = {}
    for mode in ("FULL", "OFF"):
        db = os.path.join(root, mode + ".db")
        proc = subprocess.Popen([sys.executable, "-c", script, db, mode, "300"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "committed"
        sync_dir(root)  # the file names are durable; only the rows are in question
        disk.cut()
        proc.kill()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
        disk.mount()
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        except sqlite3.OperationalError:  # not even the table survived
            rows = 0
        finally:
            con.close()
        lost[mode] = 300 - rows
    figure("powerloss_fs_self_test_sqlite", committed=300, lost_full=lost["FULL"], lost_off=lost["OFF"])
    assert lost["FULL"] == 0
    assert lost["OFF"] == 300


def test_processes_get_eio_after_the_cut(powerloss):
    """From the instant of the cut nothing reaches the disk: a process still writing gets EIO."""
    disk = powerloss()
    root = disk.mountpoint
    f = open(root + "/f", "wb", buffering=0)
    report = disk._command({"cmd": "cut"})
    assert report["unsynced_ops"] >= 1
    try:
        f.write(b"after the cut")
    except OSError:
        pass
    else:
        raise AssertionError("a write after the cut succeeded")
    finally:
        try:
            f.close()
        except OSError:
            pass
    disk.unmount()
    disk.mount()
    assert os.listdir(root) == []
