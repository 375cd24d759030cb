"""gmq's reading of sqlite's WAL (gmq/wal.py) against sqlite itself, on real WAL files: where
sqlite stops replaying, which intact commits it drops after a damaged frame, and what a salvage
then recovers. sqlite's own answer comes from ``PRAGMA wal_checkpoint`` on a copy (its second
column is the number of frames sqlite accepted)."""
import os
import shutil
import sqlite3

from gmq import salvage, wal
from gmq.queue import DurableQueue

ROWS_PER_COMMIT = 40


def wal_snapshot(tmp_path, commits, name="snap"):
    """A database and its WAL as a SIGKILL leaves them: ``commits`` transactions, none checkpointed."""
    work = tmp_path / ("work-" + name)
    work.mkdir()
    db = str(work / "q.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(commits):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [("%d:%s" % (i, "x" * 100),)] * ROWS_PER_COMMIT)
        conn.execute("COMMIT")
    snap = tmp_path / name
    snap.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(db + suffix, str(snap / "q.db") + suffix)  # copied while open: nothing checkpointed
    conn.close()
    return str(snap / "q.db")


def sqlite_accepts(db, tmp_path):
    """(frames sqlite replays from the WAL, rows it then shows), read from a copy."""
    copy = tmp_path / ("sqlite-view-%d" % len(os.listdir(tmp_path)))
    copy.mkdir()
    for suffix in ("", "-wal"):
        if os.path.exists(db + suffix):
            shutil.copy(db + suffix, str(copy / "q.db") + suffix)
    conn = sqlite3.connect(str(copy / "q.db"))
    try:
        table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone()
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0] if table else 0
        frames = conn.execute("PRAGMA wal_checkpoint").fetchone()[1]
    finally:
        conn.close()
    return frames, rows


def scribble(path, offset, n=512):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(n))


def test_the_scan_replays_exactly_the_frames_sqlite_replays(tmp_path):
    db = wal_snapshot(tmp_path, 30)
    scan = wal.inspect(db)
    frames, rows = sqlite_accepts(db, tmp_path)
    assert rows == 30 * ROWS_PER_COMMIT
    assert scan.frames == frames and len(scan.replayed) == frames and scan.replayed[-1].commit
    assert not scan.damaged and scan.broken_at is None


def test_a_damaged_frame_is_found_with_the_intact_commits_sqlite_drops_after_it(tmp_path):
    db = wal_snapshot(tmp_path, 30)
    scribble(db + "-wal", os.path.getsize(db + "-wal") // 2)
    frames, rows = sqlite_accepts(db, tmp_path)
    assert rows < 30 * ROWS_PER_COMMIT  # sqlite dropped committed rows, and says nothing
    scan = wal.inspect(db)
    assert len(scan.replayed) == frames
    assert scan.damaged and scan.broken_at > frames
    assert any(f.commit for f in scan.dropped)
    assert "WAL damaged" in salvage.check(db)


def test_a_torn_last_write_or_an_older_generation_is_not_damage(tmp_path):
    """What a power cut leaves (the last frame half written) and what a restarted WAL holds (frames of
    the previous generation after the current ones) are what sqlite is meant to ignore."""
    db = wal_snapshot(tmp_path, 10, "torn")
    size = os.path.getsize(db + "-wal")
    with open(db + "-wal", "r+b") as f:
        f.truncate(size - 1000)  # the last frame torn
    scan = wal.inspect(db)
    assert not scan.damaged and len(scan.replayed) == sqlite_accepts(db, tmp_path)[0]
    assert salvage.check(db) is None

    work = tmp_path / "restarted"
    work.mkdir()
    path = str(work / "q.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(20):
        conn.execute("INSERT INTO t (v) VALUES (?)", ("first generation %d" % i,))
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # complete: the next write starts the WAL over
    conn.execute("INSERT INTO t (v) VALUES ('second generation')")
    snap = tmp_path / "restarted-snap"
    snap.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(path + suffix, str(snap / "q.db") + suffix)
    conn.close()
    db = str(snap / "q.db")
    scan = wal.inspect(db)
    assert scan.frames > len(scan.replayed) > 0  # the old frames are still in the file
    assert not scan.damaged and len(scan.replayed) == sqlite_accepts(db, tmp_path)[0]


def test_a_damaged_wal_header_is_damage(tmp_path):
    """sqlite ignores a whole WAL whose header checksum fails: every commit in it would go."""
    db = wal_snapshot(tmp_path, 10)
    scribble(db + "-wal", 24, 8)  # the header's checksum
    frames, rows = sqlite_accepts(db, tmp_path)
    assert frames == 0 and rows == 0
    scan = wal.inspect(db)
    assert scan.damaged and len(scan.dropped) >= scan.frames - 2


def test_salvage_of_a_damaged_wal_keeps_every_intact_commit(tmp_path):
    """The queue database killed with its newest values only in the WAL, one frame in the middle
    damaged: the queue reopens with an alarm, the damaged WAL kept, and every value except those
    on the damaged page (a frame is one page), where sqlite alone would keep only the first half."""
    work = tmp_path / "q"
    work.mkdir()
    path = str(work / "gmq.db")
    q = DurableQueue(path)
    q._conn.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(40):
        q.append(1, [("v", 1700000000 + i * 100 + j / 1000, "%d" % (i * 100 + j)) for j in range(100)])
    snap = tmp_path / "killed"
    snap.mkdir()
    db = str(snap / "gmq.db")
    for suffix in ("", "-wal"):
        shutil.copy(path + suffix, db + suffix)
    per_page = max(n for (n,) in q._rconn.execute("SELECT ncell FROM dbstat WHERE name = 'queue'"))
    q.close()
    size = os.path.getsize(db + "-wal")
    scribble(db + "-wal", size // 2, 64)  # inside one frame
    shutil.copy(db, str(tmp_path / "sqlite-alone.db"))
    shutil.copy(db + "-wal", str(tmp_path / "sqlite-alone.db-wal"))
    alone = sqlite3.connect(str(tmp_path / "sqlite-alone.db")).execute("SELECT count(*) FROM queue").fetchone()[0]

    reopened = DurableQueue(db)
    try:
        stats = reopened.stats()
        assert [a["kind"] for a in stats["alarms"]] == ["db_corrupt"]
        assert "WAL damaged" in stats["alarms"][0]["detail"]
        assert reopened.depth >= 4000 - 2 * per_page > alone, (reopened.depth, alone, per_page)
        values = [v.value for v in reopened.take(1, 5000)]
        assert values == sorted(values, key=int)  # in order, nothing invented
        assert set(values) <= {str(n) for n in range(4000)}
    finally:
        reopened.close()
    kept = [n for n in os.listdir(str(snap)) if ".corrupt-" in n]
    assert any(n.endswith("-wal") for n in kept), kept  # the damaged WAL, beside the database
    assert not [n for n in os.listdir(str(snap)) if ".salvage" in n]


def test_salvage_reads_every_row_up_to_a_truncation(tmp_path):
    """A file cut short keeps its first pages: every row on them is salvaged (sqlite refuses a file
    shorter than its header says, and its cursor reads one row ahead of what it hands out)."""
    path = str(tmp_path / "gmq.db")
    q = DurableQueue(path)
    for i in range(30):
        q.append(1, [("v", 1700000000 + i * 100 + j / 1000, "x%d" % (i * 100 + j)) for j in range(100)])
    q.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    keep = os.path.getsize(path) // 4096 * 3 // 4
    kept_rows = sum(n for p, n in conn.execute(
        "SELECT pageno, ncell FROM dbstat WHERE name = 'queue' AND pagetype = 'leaf'") if p <= keep)
    conn.close()
    with open(path, "r+b") as f:
        f.truncate(keep * 4096)
    reopened = DurableQueue(path)
    try:
        assert [a["kind"] for a in reopened.stats()["alarms"]] == ["db_corrupt"]
        assert reopened.depth == kept_rows > 0
    finally:
        reopened.close()
