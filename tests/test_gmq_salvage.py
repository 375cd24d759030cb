"""A damaged gmq.db: salvage, and what it may never do (send a value under another device's identity)."""
import sqlite3

from gmq_harness import GmqProcess
from harness import wait_for


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
