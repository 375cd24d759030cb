"""Power cuts under murano_local's store and the usage log.

murano_local acknowledges a write with 204 after its commit (synchronous=FULL): after each cut
every acknowledged value is in the device's history and every token it handed out still works.
The usage log runs synchronous=NORMAL by design (statistics, no fsync per request): a cut may
lose its newest rows, never corrupt it, and what survives is a prefix of what was logged.
"""
import os
import sqlite3
import threading
import time

import pytest
import requests
from harness import MuranoLocal
from lab import count, figure, kill_users, rng

from device_client.usage import UsageLog, usage_report

WRITERS = 3


def write_values(url, token, stop, acked, next_seq):
    session = requests.Session()
    headers = {"X-Exosite-CIK": token, "Content-Type": "application/x-www-form-urlencoded"}
    while not stop.is_set():
        seq = next_seq[token]
        next_seq[token] += 1
        try:
            ok = session.post(url + "/onep:v1/stack/alias", data="v=%d" % seq, headers=headers,
                              timeout=5).status_code == 204
        except requests.RequestException:
            ok = False
        if ok:
            acked[token].add(seq)
        else:
            session.close()
            session = requests.Session()
            time.sleep(0.05)
    session.close()


@pytest.mark.slow
def test_murano_local_store_survives_power_cuts(tmp_path, powerloss):
    disk = powerloss()
    r = rng("murano_store")
    cuts = count(2, 25)
    murano = MuranoLocal(disk.mountpoint)
    murano.log = str(tmp_path / "murano_local.log")
    murano.start()
    tokens = {}
    try:
        for i in range(WRITERS):
            sn = "store-%d" % i
            murano.add_device(sn)
            resp = requests.post(murano.url + "/provision/activate", data={"id": sn}, timeout=10)
            assert resp.status_code == 200, resp.text
            tokens[resp.text.strip()] = sn
        acked = {t: set() for t in tokens}
        next_seq = {t: 0 for t in tokens}
        for _ in range(cuts):
            stop = threading.Event()
            threads = [threading.Thread(target=write_values, args=(murano.url, t, stop, acked, next_seq))
                       for t in tokens]
            for t in threads:
                t.start()
            time.sleep(r.uniform(0.2, 1.0))
            keep = r.choice(["none", "prefix"])
            disk.cut(keep=keep, tear=keep == "prefix", seed=r.randrange(1 << 30))
            kill_users(disk.mountpoint, murano.proc)
            stop.set()
            for t in threads:
                t.join(30)
            disk.mount()
            murano.start()
        lost = total = tokens_lost = 0
        for token, sn in tokens.items():
            got = {int(p["value"]) for p in murano.history(sn, "v", limit=100000)}
            lost += len(acked[token] - got)
            total += len(acked[token])
            resp = requests.post(murano.url + "/onep:v1/stack/alias", data="v=-1",
                                 headers={"X-Exosite-CIK": token}, timeout=10)
            tokens_lost += resp.status_code != 204
    finally:
        murano.stop()
    figure("murano_local_store_power_cut", cuts=cuts, acknowledged=total, lost=lost, tokens_lost=tokens_lost,
           seed=r.seed_value)
    assert total > 10 * cuts, "the load was not real"
    assert lost == 0 and tokens_lost == 0


def log_rows(db, stop, logged):
    usage = UsageLog(db)
    n = 0
    while not stop.is_set():
        usage.record("eth0", "app", "write", "POST", ["v"], tx=n, rx=0, duration=0.001, status=204)
        if usage.failures:
            break
        logged[0] = n = n + 1


def test_usage_log_survives_power_cuts_intact(powerloss):
    disk = powerloss()
    r = rng("usage_log")
    cuts = count(2, 30)
    db = os.path.join(disk.mountpoint, "usage.db")
    UsageLog(db).record("eth0", "app", "write", "POST", ["v"], tx=-1, rx=0, duration=0.0, status=204)
    disk.sync()
    logged_total = lost_total = worst = 0
    for _ in range(cuts):
        stop, logged = threading.Event(), [0]
        t = threading.Thread(target=log_rows, args=(db, stop, logged))
        t.start()
        time.sleep(r.uniform(0.1, 0.6))
        keep = r.choice(["none", "prefix"])
        disk.cut(keep=keep, tear=keep == "prefix", seed=r.randrange(1 << 30))
        stop.set()
        t.join(30)
        disk.mount()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            kept = [tx for (tx,) in conn.execute("SELECT tx FROM requests WHERE tx >= 0 AND id > "
                                                 "(SELECT max(id) FROM requests WHERE tx < 0) ORDER BY id")]
            conn.execute("INSERT INTO requests (ts, iface, identity, kind, method, aliases, tx, rx, duration) "
                         "VALUES (0, 'eth0', 'app', 'write', 'post', '[v]', -1, 0, 0)")  # marks the next round
            conn.commit()
        finally:
            conn.close()
        assert kept == list(range(len(kept))), "the surviving rows are not a prefix of those logged"
        logged_total += logged[0]
        lost_total += logged[0] - len(kept)
        worst = max(worst, logged[0] - len(kept))
    report = usage_report(db)
    figure("usage_log_power_cut", cuts=cuts, rows_logged=logged_total, rows_lost=lost_total, worst_cut=worst,
           corrupt=0, seed=r.seed_value)
    assert "eth0" in report
    assert logged_total > 10 * cuts


def test_a_fresh_murano_local_data_directory_survives_a_cut(tmp_path, powerloss):
    """murano-local serve --data on a new directory, a device added (200), then the power goes:
    the device is still there. (The new directory's own entry must be made durable too.)"""
    disk = powerloss()
    murano = MuranoLocal(disk.mountpoint)  # serves --data <disk>/data, a directory it creates
    murano.log = str(tmp_path / "murano_local.log")
    murano.start()
    try:
        murano.add_device("fresh-1")
        disk.cut()
        kill_users(disk.mountpoint, murano.proc)
        disk.mount()
        murano.start()
        assert "fresh-1" in {d["identity"] for d in murano._admin("GET", "/identity").json()["items"]}
    finally:
        murano.stop()
