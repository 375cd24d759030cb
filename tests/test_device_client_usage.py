"""The usage log and usage_report: wire bytes checked against a relay that counts what murano_local
really received and sent, concurrent logging from several processes, the size cap."""
import os
import socket
import subprocess
import sys

import psutil
import requests

from device_client import Device, UsageLog, usage_report
from device_client.usage import InterfaceResolver
from harness import CountingRelay, wait_for

METRICS = {"num", "type", "tot_rx", "max_rx", "tot_tx", "max_tx", "rq_time_avg", "rq_time_max"}


def totals(per_identity: dict, field: str) -> int:
    return sum(metrics[field] for metrics in per_identity.values())


def test_usage_report_matches_what_the_server_received(murano, tmp_path):
    db = str(tmp_path / "usage.db")
    blob = os.urandom(50_000)
    requests.put("%s/api:1/service/%s/content/item/app.v1.tar.gz" % (murano.url, murano.product_id),
                 data=blob, timeout=10).raise_for_status()
    for identity in ("gw-a", "gw-b"):
        murano.add_device(identity)
    relay_gwe, relay_app = CountingRelay(murano.port), CountingRelay(murano.port)
    try:
        with Device("http://127.0.0.1:%d" % relay_gwe.port, serial="gw-a", identity="gwe", usage_db=db) as gwe:
            gwe.activate()
            gwe.write({"a": 1})
            gwe.write("a", 2)
            gwe.read("a")
            gwe.read_write({"b": 1}, "a")
            gwe.long_poll("engine_fetch", timeout_ms=300)
            gwe.record({"h": [(1700000000, 1), (1700000001, 2)]})
            gwe.timestamp()
        with Device("http://127.0.0.1:%d" % relay_app.port, serial="gw-b", identity="app1", usage_db=db) as app:
            app.activate()
            app.write({"x": 1, "y": "two"})
            app.read("x", "y")
            app.list_content()
            app.content_info("app.v1.tar.gz")
            app.download_content("app.v1.tar.gz", str(tmp_path / "app.tgz"))
    finally:
        relay_gwe.close()
        relay_app.close()

    report = usage_report(db)
    assert set(report) == {"lo"}
    lo = report["lo"]
    assert set(lo) == {"gwe", "app1", "top_consumer"} and lo["top_consumer"] == "app1"
    assert {key: m["num"] for key, m in lo["gwe"].items()} == {
        "actvt:[]": 1, "write:['a']": 2, "read:['a']": 1, "readwrite:['b', 'a']": 1, "long_poll:['engine_fetch']": 1,
        "record:['h']": 1, "get:[]": 1}
    assert {key: m["type"] for key, m in lo["gwe"].items()} == {
        "actvt:[]": "post", "write:['a']": "post", "read:['a']": "get", "readwrite:['b', 'a']": "post",
        "long_poll:['engine_fetch']": "get", "record:['h']": "post", "get:[]": "get"}
    assert {key: m["num"] for key, m in lo["app1"].items()} == {
        "actvt:[]": 1, "write:['x', 'y']": 1, "read:['x', 'y']": 1, "list_content:[]": 1,
        "content_info:['app.v1.tar.gz']": 2, "get_content:['app.v1.tar.gz']": 1}  # a download checks the info
    for per_identity in (lo["gwe"], lo["app1"]):
        for metrics in per_identity.values():
            assert set(metrics) == METRICS
            assert metrics["max_rx"] <= metrics["tot_rx"] and metrics["max_tx"] <= metrics["tot_tx"]
            assert 0 < metrics["rq_time_avg"] <= metrics["rq_time_max"] or metrics["rq_time_max"] == 0
    # Byte for byte what crossed the wire, per identity.
    assert totals(lo["gwe"], "tot_tx") == relay_gwe.to_server
    assert totals(lo["gwe"], "tot_rx") == relay_gwe.to_client
    assert totals(lo["app1"], "tot_tx") == relay_app.to_server
    assert totals(lo["app1"], "tot_rx") == relay_app.to_client
    assert lo["app1"]["get_content:['app.v1.tar.gz']"]["tot_rx"] > len(blob)
    assert lo["gwe"]["write:['a']"]["max_tx"] * 2 >= lo["gwe"]["write:['a']"]["tot_tx"]
    assert lo["gwe"]["long_poll:['engine_fetch']"]["rq_time_max"] >= 0.29

    flushed = usage_report(db, flush=True)
    assert flushed == report
    assert usage_report(db) == {}


LOGGER = """
import sys
from device_client import UsageLog
log = UsageLog(sys.argv[1], max_rows=int(sys.argv[4]) if len(sys.argv) > 4 else 50000)
for i in range(int(sys.argv[2])):
    log.record("eth0", sys.argv[3], "write", "post", ["data_in"], 100, 10, 0.001, 204)
log.close()
sys.exit(1 if log.failures else 0)
"""


def test_concurrent_logging_and_flushing_lose_and_repeat_no_row(tmp_path):
    db = str(tmp_path / "usage.db")
    rows_each, names = 400, ["app%d" % i for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, db, str(rows_each), name]) for name in names]
    reports = []
    while any(p.poll() is None for p in procs):
        reports.append(usage_report(db, flush=True))
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    reports.append(usage_report(db, flush=True))
    counted = {name: 0 for name in names}
    tx = 0
    for report in reports:
        for name, per_key in report.get("eth0", {}).items():
            if name != "top_consumer":
                counted[name] += per_key["write:['data_in']"]["num"]
                tx += per_key["write:['data_in']"]["tot_tx"]
    assert counted == {name: rows_each for name in names}
    assert tx == 100 * rows_each * len(names)
    assert len(reports) > 2  # some flushes really ran while the writers were logging


def test_snapshot_then_flush_accounts_for_every_row_under_the_cap(tmp_path):
    """gwe's way: snapshot, deliver, then flush; with writers and the size cap racing it."""
    db = str(tmp_path / "usage.db")
    rows_each, writers = 500, 3
    # 200 rows under a 64-row cap before any snapshot: drops are certain, not left to timing.
    assert subprocess.run([sys.executable, "-c", LOGGER, db, "200", "early", "64"]).returncode == 0
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, db, str(rows_each), "w%d" % i, "64"])
             for i in range(writers)]
    usage = UsageLog(db)
    counted = dropped = cycles = 0

    def take():
        snapshot = usage.snapshot()
        for name, per_key in snapshot.report.get("eth0", {}).items():
            if name != "top_consumer":
                assert per_key["write:['data_in']"]["num"] > 0
        usage.flush(snapshot)
        return snapshot.rows, snapshot.report.get("dropped", 0)

    while any(p.poll() is None for p in procs):
        rows, lost = take()
        counted, dropped, cycles = counted + rows, dropped + lost, cycles + 1
    assert [p.wait(60) for p in procs] == [0] * writers
    rows, lost = take()
    counted, dropped = counted + rows, dropped + lost
    assert counted + dropped == rows_each * writers + 200
    assert dropped > 0 and cycles > 2  # the cap and the flushes really raced the writers
    assert usage.snapshot().report == {}
    usage.close()


def test_the_log_is_capped_and_drops_are_counted(tmp_path):
    db = str(tmp_path / "usage.db")
    log = UsageLog(db, max_rows=32)
    for _ in range(100):
        log.record("wlan0", "gwe", "read", "get", ["a"], 50, 60, 0.01, 200)
    report = usage_report(db)
    kept = report["wlan0"]["gwe"]["read:['a']"]["num"]
    assert kept <= 32 + 16 and kept + report["dropped"] == 100
    assert usage_report(db, flush=True) == report
    log.record("wlan0", "gwe", "read", "get", ["a"], 50, 60, 0.01, 200)
    assert usage_report(db) == {"wlan0": {"gwe": {"read:['a']": {
        "num": 1, "type": "get", "tot_rx": 60, "max_rx": 60, "tot_tx": 50, "max_tx": 50,
        "rq_time_avg": 0.01, "rq_time_max": 0.01}}, "top_consumer": "gwe"}}
    log.close()


def test_top_consumer_is_the_identity_moving_most_bytes(tmp_path):
    db = str(tmp_path / "usage.db")
    log = UsageLog(db)
    log.record("eth0", "gwe", "read", "get", ["a"], 100, 100, 0.1, 200)
    log.record("eth0", "app", "write", "post", ["b"], 150, 100, 0.1, 204)
    log.record("ppp0", "gwe", "write", "post", ["b"], 10, 10, 0.1, 204)
    report = usage_report(db)
    assert report["eth0"]["top_consumer"] == "app" and report["ppp0"]["top_consumer"] == "gwe"
    log.close()


def test_logging_failures_never_break_a_request(murano, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    murano.add_device("gw-c")
    with Device(murano.url, serial="gw-c", usage_db=str(blocker / "usage.db")) as dev:
        dev.activate()
        dev.write("a", 1)
        assert dev.read("a") == {"a": "1"}
        assert dev.usage.failures >= 1
    with Device(murano.url, token=dev.token, usage_db=False) as quiet:
        quiet.write("a", 2)
        assert quiet.usage is None


def test_interfaces_are_named_from_local_addresses():
    resolver = InterfaceResolver()
    assert resolver.resolve("127.0.0.1") == "lo"
    assert resolver.resolve("::ffff:127.0.0.1") == "lo"
    for iface, addrs in psutil.net_if_addrs().items():
        for snic in addrs:
            if snic.family in (socket.AF_INET, socket.AF_INET6):
                assert resolver.resolve(snic.address) in (iface, *psutil.net_if_addrs()), snic.address
    assert resolver.resolve("192.0.2.123") == "unknown"
    assert resolver.resolve(None) == "unknown"


def test_requests_through_an_http_proxy_are_metered_too(murano, tmp_path, monkeypatch):
    db = str(tmp_path / "usage.db")
    murano.add_device("gw-p")
    proxy = CountingRelay(murano.port)  # murano_local accepts absolute-URI requests, as from a proxy
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:%d" % proxy.port)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with Device(murano.url, serial="gw-p", identity="proxied", usage_db=db) as dev:
            dev.activate()
            dev.write("a", 1)
            assert dev.read("a") == {"a": "1"}
    finally:
        proxy.close()
    lo = usage_report(db)["lo"]
    assert {key: m["num"] for key, m in lo["proxied"].items()} == {"actvt:[]": 1, "write:['a']": 1, "read:['a']": 1}
    assert proxy.to_server > 0
    assert totals(lo["proxied"], "tot_tx") == proxy.to_server
    assert totals(lo["proxied"], "tot_rx") == proxy.to_client


KILLED_LOGGER = """
import sys
from device_client import UsageLog
log = UsageLog(sys.argv[1], max_rows=int(sys.argv[4]) if len(sys.argv) > 4 else 50000)
print("ready", flush=True)
while True:
    log.record("eth0", "victim", "write", "post", ["a"], 1, 1, 0.001, 204)
"""


def test_loggers_killed_mid_write_leave_a_sound_database(tmp_path):
    db = str(tmp_path / "usage.db")
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", KILLED_LOGGER, db], stdout=subprocess.PIPE)
                 for _ in range(2)]
        for proc in procs:
            assert proc.stdout.readline() == b"ready\n"
        usage_report(db, flush=True)
        wait_for(lambda: usage_report(db), 30, message="rows logged after the flush")  # still writing when killed
        for proc in procs:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
    import sqlite3
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    report = usage_report(db, flush=True)
    assert report["eth0"]["victim"]["write:['a']"]["num"] > 0
    assert usage_report(db) == {}
