"""gmq forwarding to a real murano_local: order, original timestamps, 401, dead letters, 409, outage."""
from urllib.parse import quote

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


def test_value_upstream_refuses_is_dead_lettered_and_the_rest_flows(gwe_home, murano):
    murano.add_device("sn1")
    gmq = start_gmq(gwe_home, murano.url)
    try:
        for i in range(30):
            alias = "bad.alias" if i == 17 else "ok"  # murano refuses '.' in aliases (400)
            assert gmq.post("/onep:v1/stack/alias/" + quote(alias), "%d=%d" % (1700000000 + i, i)).status_code == 204
        st = wait_for(lambda: drained(gmq), 30)
        assert st["counters"]["dead_lettered"] == 1 and st["queue"]["dead_letter"] == 1
        assert [v for _, v in history(murano, "sn1", "ok")] == [str(i) for i in range(30) if i != 17]
        dead = gmq.rows("SELECT alias, value, status FROM dead_letter")
        assert dead == [("bad.alias", "17", 400)]
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
