"""A damaged gmq.db: salvage, and what it may never do (send a value under another device's identity)."""
import os
import re
import shutil
import signal
import sqlite3

import pytest

from gmq_harness import GmqProcess
from harness import GiveUp, wait_for


def damage_table(db: str, table: str) -> None:
    """Overwrite the root page of ``table`` in the (checkpointed) database file with garbage."""
    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    finally:
        conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


def test_values_whose_client_record_is_lost_are_dead_lettered_never_sent_as_another(gwe_home, murano):
    gmq = GmqProcess(str(gwe_home))  # no upstream yet: the values wait
    gmq.start()
    for serial in ("dev-a", "dev-b"):
        for i in range(3):
            assert gmq.post("/onep:v1/stack/alias", "reading=%s-%d" % (serial, i), serial=serial).status_code == 204
    gmq.stop()  # clean: the WAL is checkpointed into gmq.db
    damage_table(gmq.paths.gmq_db, "clients")
    murano.add_device("dev-c")
    gmq.configure(upstream={"host": murano.url, "backoff_initial": 0.05, "backoff_max": 0.2})
    gmq.start()
    try:
        st = gmq.status()
        assert {a["kind"] for a in st["alarms"]} == {"db_corrupt", "client_unresolved"}
        assert st["queue"]["depth"] == 0 and st["queue"]["dead_letter"] == 6  # set aside, counted, kept
        assert st["counters"]["dead_lettered"] == 6
        assert gmq.post("/onep:v1/stack/alias", "reading=dev-c-0", serial="dev-c").status_code == 204
        wait_for(lambda: murano.history("dev-c", "reading"), 30, message="dev-c delivered")
        wait_for(lambda: gmq.status()["queue"]["depth"] == 0, 30)
        assert [p["value"] for p in murano.history("dev-c", "reading")] == ["dev-c-0"]  # nobody else's values
        assert sorted(v for (v,) in gmq.rows("SELECT value FROM dead_letter")) == [
            "dev-a-0", "dev-a-1", "dev-a-2", "dev-b-0", "dev-b-1", "dev-b-2"]
    finally:
        gmq.stop()


def damaged_queue(gmq):
    """gmq SIGKILLed with 30,000 values (past a checkpoint: the oldest in gmq.db, the newest only in its
    WAL), then a stretch of old leaf pages of gmq.db scribbled."""
    gmq.start()
    for n in range(30):
        body = "&".join("%d=%s" % (1700000000 + n * 1000 + i, "v" * 200) for i in range(1000))
        assert gmq.post("/onep:v1/stack/alias/temp", body).status_code == 204
    gmq.kill()
    db = gmq.paths.gmq_db
    assert os.path.exists(db + "-wal")
    size = os.path.getsize(db)
    with open(db, "r+b") as f:
        f.seek(size // 4 // 4096 * 4096)  # old leaf pages, whose newer copies are not in the WAL
        f.write(b"\xff" * 16384)
    return db


def salvaged_depth(db, tmp_path):
    """What an uninterrupted salvage of a copy of these damaged files keeps."""
    from gmq.queue import DurableQueue

    copy = str(tmp_path / "reference" / "gmq.db")
    os.makedirs(os.path.dirname(copy))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            shutil.copy(db + suffix, copy + suffix)
    q = DurableQueue(copy)
    try:
        assert [a["kind"] for a in q.stats()["alarms"]] == ["db_corrupt"]
        return q.depth
    finally:
        q.close()


@pytest.mark.parametrize("step", ["salvage_copied", "salvage_marked", "salvage_moved-wal", "salvage_renamed"])
def test_a_salvage_killed_at_any_step_is_finished_by_the_next_start(gwe_home, tmp_path, monkeypatch, step):
    gmq = GmqProcess(str(gwe_home))
    db = damaged_queue(gmq)
    expected = salvaged_depth(db, tmp_path)
    assert 0 < expected < 30000
    monkeypatch.setenv("GWE_GMQ_CRASH_AT", step)
    with pytest.raises(GiveUp):
        gmq.start(timeout=30)  # killed by the hook at exactly that step of the salvage
    assert gmq.proc.returncode == -signal.SIGKILL and ("test hook GWE_GMQ_CRASH_AT=%s" % step) in gmq.log_text()
    monkeypatch.delenv("GWE_GMQ_CRASH_AT")
    gmq.start()
    try:
        st = gmq.status()
        assert [a["kind"] for a in st["alarms"]] == ["db_corrupt"]  # the alarm survived the kill
        assert st["queue"]["depth"] == expected  # every readable row, not an empty queue
        directory = os.path.dirname(db)
        kept = sorted(n for n in os.listdir(directory) if ".corrupt-" in n)
        assert any(re.match(r"gmq\.db\.corrupt-[0-9T-]+$", n) for n in kept), kept  # the damaged database kept
        assert not [n for n in os.listdir(directory) if ".salvage" in n]
        assert gmq.rows("PRAGMA quick_check") == [("ok",)]
    finally:
        gmq.stop()


def test_a_record_longer_than_sqlite_allows_is_damage_not_a_disk_failure(tmp_path):
    """A scribbled page can make quick_check fail with SQLITE_TOOBIG (a record claiming a value past
    sqlite's length limit; seen in the lab): damage to salvage, not a disk failure that stops gmq."""
    from gmq.salvage import is_damage

    conn = sqlite3.connect(":memory:")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10)
    with pytest.raises(sqlite3.DataError) as too_big:
        conn.execute("SELECT zeroblob(100)").fetchall()
    assert too_big.value.sqlite_errorname == "SQLITE_TOOBIG"
    assert is_damage(too_big.value)
    with pytest.raises(sqlite3.OperationalError) as cannot_open:  # the disk's state: not damage
        sqlite3.connect("file:%s?mode=ro" % (tmp_path / "absent" / "gmq.db"), uri=True)
    assert not is_damage(cannot_open.value)
