"""gmq forwarding to a real murano_local: order, original timestamps, 401, dead letters, 409, outage."""
import re
import sqlite3

import requests

from gmq_harness import GmqProcess, ScriptedUpstream
from harness import wait_for

FAST = {"backoff_initial": 0.05, "backoff_max": 0.4, "batch_size": 50}


def start_gmq(home, upstream_url, **upstream):
    settings = dict(FAST, host=upstream_url, **{k: str(v) for k, v in upstream.items()})
    return GmqProcess(str(home), upstream=settings).start()


def drained(gmq):
    st = gmq.status()
    return st["queue"]["depth"] == 0 and st


def history(murano, serial, alias):
    """[(timestamp µs, value)] oldest first."""
    return [(p["timestamp"], p["value"]) for p in reversed(murano.history(serial, alias, limit=100000))]


def test_delivers_in_order_with_original_timestamps(gwe_home, murano):
    murano.add_device("sn1")
    gmq = start_gmq(gwe_home, murano.url)
    try:
        for i in range(120):
            assert gmq.post("/onep:v1/stack/alias", "seq=%d" % i).status_code == 204
        assert gmq.post("/onep:v1/stack/record", "alias=temp&1700000000=20&1700000001.25=21").status_code == 204
        st = wait_for(lambda: drained(gmq), 30, message="queue drained")
        assert st["counters"]["delivered"] == 122 and st["counters"]["dead_lettered"] == 0
        seq = history(murano, "sn1", "seq")
        assert [v for _, v in seq] == [str(i) for i in range(120)]
        assert [t for t, _ in history(murano, "sn1", "temp")] == [1700000000000000, 1700000001250000]
        assert st["forwarder"]["clients"][0]["activated"] is True
    finally:
        gmq.stop()


def test_401_reprovisions_the_client(gwe_home, murano):
    murano.add_device("sn1")
    gmq = start_gmq(gwe_home, murano.url)
    try:
        gmq.post("/onep:v1/stack/alias", "a=before")
        wait_for(lambda: drained(gmq), 30)
        admin = "%s/api:1/service/%s/device2/identity/sn1" % (murano.url, murano.product_id)
        requests.delete(admin, timeout=10).raise_for_status()  # the token dies with the device
        murano.add_device("sn1")
        gmq.post("/onep:v1/stack/alias", "a=after")
        wait_for(lambda: drained(gmq), 30)
        assert [v for _, v in history(murano, "sn1", "a")] == ["after"]
        assert "401" in gmq.log_text()
    finally:
        gmq.stop()


class RefusingUpstream(ScriptedUpstream):
    """Record answers 400 to any batch holding the value ``bad`` (a rule of upstream's that gmq cannot know)."""

    def __init__(self, bad):
        self.bad = bad
        self.recorded = []
        super().__init__()

    def answer(self, pairs):
        if any(k != "alias" and v == self.bad for k, v in pairs):
            return 400, "value refused"
        self.recorded.extend(v for k, v in pairs if k != "alias")
        return 204, ""


def test_value_upstream_refuses_is_dead_lettered_and_the_rest_flows(gwe_home):
    upstream = RefusingUpstream("17")
    gmq = start_gmq(gwe_home, upstream.url)
    try:
        for i in range(30):
            assert gmq.post("/onep:v1/stack/alias/ok", "%d=%d" % (1700000000 + i, i)).status_code == 204
        st = wait_for(lambda: drained(gmq), 30)
        assert st["counters"]["dead_lettered"] == 1 and st["queue"]["dead_letter"] == 1
        assert upstream.recorded == [str(i) for i in range(30) if i != 17]
        dead = gmq.rows("SELECT alias, value, status FROM dead_letter")
        assert dead == [("ok", "17", 400)]
    finally:
        gmq.stop()
        upstream.close()


def test_value_queued_before_the_contract_is_dead_lettered_not_sent(gwe_home, murano):
    """A queue from an older gmq may hold what Murano refuses (alias 'temp.c'): it is set aside, the rest flows."""
    murano.add_device("sn1")
    gmq = GmqProcess(str(gwe_home))
    gmq.start()
    gmq.post("/onep:v1/stack/alias", "ok=1&other=2")
    gmq.stop()
    conn = sqlite3.connect(gmq.paths.gmq_db)
    with conn:
        conn.execute("UPDATE queue SET alias = 'temp.c' WHERE alias = 'other'")
    conn.close()
    gmq = start_gmq(gwe_home, murano.url)
    try:
        st = wait_for(lambda: drained(gmq), 30)
        assert st["counters"]["dead_lettered"] == 1 and [v for _, v in history(murano, "sn1", "ok")] == ["1"]
        assert gmq.rows("SELECT alias, status FROM dead_letter") == [("temp.c", None)]
    finally:
        gmq.stop()


class ConflictingUpstream(ScriptedUpstream):
    """Record answers 409 for chosen timestamps."""

    def __init__(self, conflicts):
        self.conflicts = set(conflicts)
        self.recorded = []
        super().__init__()

    def answer(self, pairs):
        alias = None
        clash, points = [], []
        for k, v in pairs:
            if k == "alias":
                alias = v
            elif k in self.conflicts:
                clash.append((alias, k))
            else:
                points.append((alias, k, v))
        if clash:
            return 409, "&".join("%s=%s" % c for c in clash)
        self.recorded.extend(points)
        return 204, ""


def test_record_conflict_dead_letters_the_clash_without_loss_or_endless_retry(gwe_home):
    upstream = ConflictingUpstream({"1700000005"})
    gmq = start_gmq(gwe_home, upstream.url)
    try:
        body = "&".join("%d=%d" % (1700000000 + i, i) for i in range(10))
        assert gmq.post("/onep:v1/stack/alias/temp", body).status_code == 204
        st = wait_for(lambda: drained(gmq), 30)
        assert [p[2] for p in upstream.recorded] == [str(i) for i in range(10) if i != 5]
        assert gmq.rows("SELECT alias, ts, status FROM dead_letter") == [("temp", 1700000005, 409)]
        assert st["counters"]["dead_lettered"] == 1
        assert upstream.requests <= 4  # activate, the 409, the rest: no retry loop
    finally:
        gmq.stop()
        upstream.close()


def test_outage_everything_arrives_and_backoff_stays_in_bounds(gwe_home, murano):
    murano.add_device("sn1")
    gmq = start_gmq(gwe_home, murano.url, backoff_initial=0.1, backoff_max=0.8)
    try:
        gmq.post("/onep:v1/stack/alias", "n=start")
        wait_for(lambda: drained(gmq), 30)
        murano.stop()
        for i in range(200):
            assert gmq.post("/onep:v1/stack/alias", "n=%d" % i).status_code == 204
        wait_for(lambda: len(gmq.status()["forwarder"]["recent_delays"]) >= 5, 30, message="retries during outage")
        assert gmq.status()["queue"]["depth"] == 200
        murano.start()
        st = wait_for(lambda: drained(gmq), 30)
        assert [v for _, v in history(murano, "sn1", "n")] == ["start"] + [str(i) for i in range(200)]
        delays = st["forwarder"]["recent_delays"]
        assert all(0.05 <= d <= 0.8 for d in delays), delays  # jitter 0.5: [initial/2, max]
        assert max(delays) > 0.4  # it did grow towards the maximum
        assert st["counters"]["retried"] >= len(delays)
    finally:
        gmq.stop()


def test_batches_fit_the_body_limit_of_murano(gwe_home, murano):
    """Twelve 1 MiB values in a batch of 500 would be a 12 MiB record: murano_local answers 413 above 8 MiB."""
    murano.add_device("sn1")
    gmq = GmqProcess(str(gwe_home), server={"max_body_bytes": 2 << 20}, queue={"max_value_bytes": 2 << 20})
    gmq.start()
    for i in range(12):
        assert gmq.post("/onep:v1/stack/alias", "big=%d%s" % (i, "x" * ((1 << 20) - 3))).status_code == 204
    gmq.stop()
    gmq = start_gmq(gwe_home, murano.url, batch_size=500)
    try:
        st = wait_for(lambda: drained(gmq), 60, message="drained")
        assert st["counters"]["delivered"] == 12 and st["counters"]["dead_lettered"] == 0
        # a status 413, not the digits of a port or a log line's milliseconds (that failed once on ":60413")
        assert not re.search(r"(?<![\d:,.])413(?!\d)", gmq.log_text()) and st["forwarder"]["requests"] <= 12
        assert [v[:2] for _, v in history(murano, "sn1", "big")] == ["%dx" % i for i in range(10)] + ["10", "11"]
    finally:
        gmq.stop()


def voluntary_switches(pid):
    """Context switches in which any thread of ``pid`` went to sleep: one per wake-up."""
    import glob

    total = 0
    for status in glob.glob("/proc/%d/task/*/status" % pid):
        with open(status) as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def test_idle_gmq_sleeps_until_a_value_arrives_and_forwards_it_at_once(gwe_home, murano):
    """Nothing polls: the HTTP loop, the forwarder and expiry sleep until there is work (issue 16)."""
    import time

    murano.add_device("sn1")
    gmq = start_gmq(gwe_home, murano.url, probe_interval=3600)
    try:
        assert gmq.post("/onep:v1/stack/alias", "seq=0").status_code == 204
        wait_for(lambda: drained(gmq), 30, message="first value delivered")
        time.sleep(0.5)  # the status request's connection closed; answers sent
        before = voluntary_switches(gmq.proc.pid)
        time.sleep(3.0)
        woke = voluntary_switches(gmq.proc.pid) - before
        assert woke <= 3, "idle gmq woke %d times in 3 s" % woke  # it was ~30 (ticks of 0.25, 0.2 and 1 s)
        sent = time.monotonic()
        assert gmq.post("/onep:v1/stack/alias", "seq=1").status_code == 204
        wait_for(lambda: len(history(murano, "sn1", "seq")) == 2, 10, interval=0.02, message="second value upstream")
        assert time.monotonic() - sent < 2.0  # woken by the commit, not by a timer
    finally:
        gmq.stop()
