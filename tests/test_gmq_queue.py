"""DurableQueue on real sqlite files: ordering, bounds, TTL, dead letters, counters, salvage."""
import os
import sqlite3
import threading

import pytest

from gmq.limits import Limits
from gmq.queue import DurableQueue, Rejected


def open_queue(tmp_path, **limits):
    return DurableQueue(str(tmp_path / "gmq.db"), Limits(**limits) if limits else None)


def test_append_take_ack_in_order_with_unique_arrival_timestamps(tmp_path):
    q = open_queue(tmp_path)
    assert q.append(1, [("a", None, "1"), ("a", None, "2"), ("b", 1700000000.5, "x")]) == 3
    q.append(2, [("a", None, "other")])
    taken = q.take(1, 10)
    assert [(v.alias, v.value) for v in taken] == [("a", "1"), ("a", "2"), ("b", "x")]
    assert taken[0].ts < taken[1].ts  # two writes of one alias never share a timestamp
    assert taken[2].ts == 1700000000.5  # a recorded value keeps its own
    assert q.ack([v.id for v in taken[:2]]) == 2
    assert [v.value for v in q.take(1, 10)] == ["x"]
    assert q.depth == 2 and q.counters()["delivered"] == 2


def test_counters_and_rows_survive_reopen(tmp_path):
    q = open_queue(tmp_path)
    q.append(1, [("a", None, "1"), ("a", None, "2")])
    q.ack([q.take(1, 1)[0].id])
    q.close()
    q = open_queue(tmp_path)
    c = q.counters()
    assert (c["accepted"], c["delivered"], q.depth, q.depth_by_client()) == (2, 1, 1, {1: 1})
    assert q.bytes == len("a") + len("2")


def test_concurrent_appends_all_stored_once(tmp_path):
    q = open_queue(tmp_path)

    def producer(n):
        for i in range(200):
            q.append(n, [("v", None, str(i))])

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(8):
        assert [v.value for v in q.take(n, 1000)] == [str(i) for i in range(200)]
    assert q.counters()["accepted"] == 1600


def test_reject_new_when_full_keeps_what_is_queued(tmp_path):
    q = open_queue(tmp_path, max_bytes=100, max_value_bytes=50, policy="reject_new", min_free_disk=0)
    q.append(1, [("a", None, "x" * 40)])
    q.append(1, [("a", None, "y" * 40)])
    with pytest.raises(Rejected) as exc:
        q.append(1, [("a", None, "z" * 40)])
    assert exc.value.status == 507
    assert [v.value[0] for v in q.take(1, 10)] == ["x", "y"]
    assert q.counters()["rejected"] == 1


def test_drop_oldest_when_full_counts_drops(tmp_path):
    q = open_queue(tmp_path, max_bytes=100, max_value_bytes=50, policy="drop_oldest", min_free_disk=0)
    for ch in "xyz":
        q.append(1, [("a", None, ch * 40)])
    assert [v.value[0] for v in q.take(1, 10)] == ["y", "z"]
    assert q.counters()["dropped"] == 1 and q.bytes <= 100 and q.depth_by_client() == {1: 2}


def test_oversize_value_is_413_and_stores_nothing(tmp_path):
    q = open_queue(tmp_path, max_value_bytes=10)
    with pytest.raises(Rejected) as exc:
        q.append(1, [("a", None, "ok"), ("a", None, "x" * 20)])
    assert exc.value.status == 413
    assert q.depth == 0


def test_free_disk_reserve_is_507(tmp_path):
    q = open_queue(tmp_path, min_free_disk=1 << 62, max_bytes=1 << 63)
    with pytest.raises(Rejected) as exc:
        q.append(1, [("a", None, "1")])
    assert exc.value.status == 507 and "reserve" in exc.value.reason
    assert q.depth == 0


def test_ttl_expires_oldest(tmp_path):
    now = [1000.0]
    q = DurableQueue(str(tmp_path / "gmq.db"), Limits(ttl=60), clock=lambda: now[0])
    q.append(1, [("a", None, "old")])
    now[0] += 30
    q.append(1, [("a", None, "new")])
    now[0] += 40
    assert q.expire() == 1
    assert [v.value for v in q.take(1, 10)] == ["new"]
    assert q.counters()["expired"] == 1


def test_dead_letter_moves_values_out(tmp_path):
    q = open_queue(tmp_path)
    q.append(1, [("a", None, "bad"), ("a", None, "good")])
    bad = q.take(1, 1)
    q.dead_letter(bad, 400, "rejected upstream")
    assert [v.value for v in q.take(1, 10)] == ["good"]
    assert q.depth_by_client() == {1: 1}
    assert [(d["value"], d["status"]) for d in q.dead_letters()] == [("bad", 400)]
    assert q.stats()["dead_letter"] == 1 and q.counters()["dead_lettered"] == 1


def test_corrupt_database_is_moved_aside_and_salvaged(tmp_path):
    path = tmp_path / "gmq.db"
    q = DurableQueue(str(path))
    for i in range(3000):
        q.append(1, [("a", 1700000000 + i, "value-%04d" % i + "x" * 100)])
    q.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # wreck pages in the middle of the file, keep the header
        f.seek(size // 2)
        f.write(os.urandom(8192))
    q = DurableQueue(str(path))
    stats = q.stats()
    assert [a["kind"] for a in stats["alarms"]] == ["db_corrupt"]
    moved = q.salvage_report.moved_to
    assert os.path.exists(moved) and os.path.getsize(moved) == size  # kept, never deleted
    values = [v.value for v in q.take(1, 5000)]
    assert 0 < len(values) < 3000
    assert values == sorted(values)  # what was saved is still in order
    q.append(1, [("a", None, "after")])  # and the fresh database works
    assert sqlite3.connect(str(path)).execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_database_is_private(tmp_path):
    q = open_queue(tmp_path)
    q.append(1, [("a", None, "1")])
    for suffix in ("", "-wal"):
        assert os.stat(str(tmp_path / "gmq.db") + suffix).st_mode & 0o777 == 0o600


def test_a_schema_1_database_is_renumbered_by_identity_and_keeps_every_value(tmp_path):
    """gmq before schema 2 numbered clients 1, 2, ...; their values follow them to identity-derived ids."""
    from gmq.clients import ClientRegistry, identity_id

    path = str(tmp_path / "gmq.db")
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, client INTEGER NOT NULL, alias TEXT NOT NULL, "
        "ts REAL NOT NULL, value TEXT NOT NULL, arrived REAL NOT NULL, size INTEGER NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, serial TEXT UNIQUE, vendor TEXT, model TEXT, "
        "local_token TEXT NOT NULL UNIQUE, upstream_token TEXT, created REAL NOT NULL);"
        "INSERT INTO clients VALUES (1, 'a', NULL, NULL, 'tok-a', NULL, 1), (2, NULL, NULL, NULL, 'cik0123456789012345678', "
        "'cik0123456789012345678', 2);"
        "INSERT INTO queue (client, alias, ts, value, arrived, size) VALUES (1, 'x', 1, 'a1', 1, 3), (2, 'x', 2, 'c1', 2, 3),"
        " (1, 'x', 3, 'a2', 3, 3);")
    old.commit()
    old.close()
    q = DurableQueue(path)
    clients = ClientRegistry(q)
    a, c = identity_id("a", "tok-a"), identity_id(None, "cik0123456789012345678")
    assert clients.by_serial("a").id == a and clients.by_token("cik0123456789012345678").id == c
    assert [v.value for v in q.take(a, 10)] == ["a1", "a2"] and [v.value for v in q.take(c, 10)] == ["c1"]
    assert q.stats()["alarms"] == [] and q.stats()["dead_letter"] == 0
    q.close()
    reopened = DurableQueue(path)
    assert reopened.depth_by_client() == {a: 2, c: 1}  # renumbered once
    reopened.close()


def wal_frames(path: str) -> int:
    return max(0, os.path.getsize(path + "-wal") - 32) // (4096 + 24)  # header, then (frame header + page)s


def test_marking_a_batch_sent_writes_one_page_not_one_per_value(tmp_path):
    """Sent is a watermark per client (table sent), not an update of every value marked."""
    q = open_queue(tmp_path)
    q.append(1, [("v", None, "%04d" % i + "x" * 60) for i in range(500)])
    batch = q.take(1, 500)
    before = wal_frames(q.path)
    assert q.mark_sent(1, [v.id for v in batch]) == 0
    assert wal_frames(q.path) - before <= 2  # the sent row's page (and a counters page at most)
    assert q.mark_sent(1, [v.id for v in batch[:200]]) == 200  # sent again: counted as resent
    q.ack_and_mark([v.id for v in batch[:200]], 1, [v.id for v in batch[200:]])
    assert q.counters()["resent"] == 500 and q.depth == 300
    q.close()
    q = open_queue(tmp_path)  # the watermark survives a restart: everything left was sent
    assert q.mark_sent(1, [v.id for v in q.take(1, 500)]) == 300
    q.close()


def test_values_sent_before_schema_3_count_as_sent_after_the_upgrade(tmp_path):
    """Schema 2 counted sends per value (queue.attempts); the upgrade turns them into the watermark."""
    path = str(tmp_path / "gmq.db")
    q = DurableQueue(path)
    q.append(1, [("v", None, str(i)) for i in range(10)])
    q.append(2, [("v", None, str(i)) for i in range(10)])
    q.close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE sent")
    old.execute("UPDATE queue SET attempts = 1 WHERE client = 1 AND id <= 4")  # what schema 2 wrote
    old.execute("PRAGMA user_version=2")
    old.commit()
    old.close()
    q = DurableQueue(path)
    assert q.mark_sent(1, [v.id for v in q.take(1, 10)]) == 4
    assert q.mark_sent(2, [v.id for v in q.take(2, 10)]) == 0
    q.close()
