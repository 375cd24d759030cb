"""gmq's HTTP API as apps see it: a real gmq process, real sockets, the queue file checked on disk."""
import json
import os
import select
import socket
import subprocess
import sys
import threading

import pytest
import requests
from murano_client.http import MuranoHTTP

from gmq_harness import GmqProcess, raw
from harness import free_port, wait_for


@pytest.fixture
def gmq(gwe_home):
    server = GmqProcess(str(gwe_home))
    server.start()
    yield server
    server.stop()


def test_write_record_and_alias_record_are_queued_durably(gmq):
    assert gmq.post("/onep:v1/stack/alias", "temp=42&hum=30").status_code == 204
    assert gmq.post("/onep:v1/stack/alias/temp", "1700000000=41&1700000001.5=43").status_code == 204
    assert gmq.post("/onep:v1/stack/record", "alias=hum&1700000002=29&alias=temp&1700000003=44").status_code == 204
    rows = gmq.queued()
    assert [(r[1], r[3]) for r in rows] == [("temp", "42"), ("hum", "30"), ("temp", "41"), ("temp", "43"),
                                            ("hum", "29"), ("temp", "44")]
    assert [r[2] for r in rows[2:]] == [1700000000, 1700000001.5, 1700000002, 1700000003]
    assert all(r[0] == "sn1" for r in rows)


def test_murano_client_unchanged_activates_writes_and_records(gmq):
    client = MuranoHTTP(murano_host=gmq.url + "/", murano_id="dev-7", murano_port=gmq.port)
    client.http_activate()
    assert client.is_activated() and len(client.murano_token()) == 40
    assert client.http_write("temp", "21.5").success
    assert client.http_record({"temp": {"1700000100": "20.0", "1700000101": "20.5"}}).success
    assert [(r[0], r[1], r[3]) for r in gmq.queued()] == [("dev-7", "temp", "21.5"), ("dev-7", "temp", "20.0"),
                                                           ("dev-7", "temp", "20.5")]
    # activating again gives the same local token; the token authenticates as that client
    again = requests.post(gmq.url + "/provision/activate", data="id=dev-7", timeout=5)
    assert again.status_code == 200 and again.text == client.murano_token()


def test_status_reports_queue_counters_and_clients(gmq):
    gmq.post("/onep:v1/stack/alias", "a=1&b=2")
    st = gmq.status()
    assert st["queue"]["depth"] == 2 and st["counters"]["accepted"] == 2
    assert set(st["counters"]) >= {"accepted", "delivered", "dropped", "dead_lettered", "retried", "rejected",
                                   "expired", "resent"}
    assert st["queue"]["oldest_age"] >= 0 and st["alarms"] == []
    assert [c["client"] for c in st["forwarder"]["clients"]] == ["sn1"]
    assert st["forwarder"]["clients"][0]["queued"] == 2
    cli = subprocess.run([sys.executable, "-m", "gmq", "status"], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0 and json.loads(cli.stdout)["queue"]["depth"] == 2


@pytest.mark.parametrize("path,body,headers,status", [
    ("/onep:v1/stack/alias", "temp=1", {}, 401),
    ("/onep:v1/stack/alias", "temp=1", {"X-Exosite-CIK": "short"}, 401),
    ("/onep:v1/stack/alias", "temp=1", {"X-Exosite-VMS": "only two"}, 400),
    ("/onep:v1/stack/alias", "", None, 400),
    ("/onep:v1/stack/alias", "=novalue", None, 400),
    ("/onep:v1/stack/alias", "%ff=1", None, 400),
    ("/onep:v1/stack/alias?temp", "temp=1", None, 400),
    ("/onep:v1/stack/alias/temp", "notatime=1", None, 400),
    ("/onep:v1/stack/alias/temp", "1e300=1", None, 400),
    ("/onep:v1/stack/alias/", "1700000000=1", None, 400),
    ("/onep:v1/stack/alias/%ff", "1700000000=1", None, 400),
    ("/onep:v1/stack/record", "1700000000=1", None, 400),
    ("/onep:v1/stack/record", "alias=&1700000000=1", None, 400),
    ("/provision/activate", "vendor=x", {}, 400),
    ("/nowhere", "a=1", None, 404),
])
def test_bad_requests_get_a_clear_4xx_and_queue_nothing(gmq, path, body, headers, status):
    resp = gmq.post(path, body, headers=headers) if headers is not None else gmq.post(path, body)
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("text/plain") and 0 < len(resp.text) < 200
    assert gmq.queued() == []
    assert gmq.post("/onep:v1/stack/alias", "ok=1").status_code == 204  # still serving


def test_malformed_http_is_answered_and_the_server_stays_up(gmq):
    assert raw(gmq, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(gmq, b"POST /onep:v1/stack/alias HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert raw(gmq, b"BREW /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert raw(gmq, b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p s\r\n\r\n").startswith(b"HTTP/1.1 400")
    chunked = b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na=1\r\n0\r\n\r\n"
    assert raw(gmq, chunked).startswith(b"HTTP/1.1 411")
    assert raw(gmq, b"GET / HTTP/1.1\r\nHost: gmq\r\nbad header\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(gmq, b"GET / HTTP/1.1\r\nHost: gmq\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    dup = b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\na=1"
    assert raw(gmq, dup).startswith(b"HTTP/1.1 400")
    assert gmq.queued() == []
    assert gmq.post("/onep:v1/stack/alias", "ok=1").status_code == 204


def test_huge_body_is_413_without_reading_it(gmq):
    head = (b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p s\r\nContent-Length: %d\r\n\r\n"
            % (50 * 1024 * 1024))
    assert raw(gmq, head + b"a=" + b"x" * 1000).startswith(b"HTTP/1.1 413")
    assert gmq.queued() == []


def test_slow_request_gets_408_while_others_are_served(gwe_home):
    gmq = GmqProcess(str(gwe_home), server={"request_timeout": 3})
    gmq.start()
    try:
        with socket.create_connection(("127.0.0.1", gmq.port), timeout=10) as slow:
            slow.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p s\r\nContent-Length: 100\r\n\r\na=")
            assert gmq.post("/onep:v1/stack/alias", "fast=1").status_code == 204
            # served while the slow one still waits for its body, not after its 408
            assert select.select([slow], [], [], 0)[0] == []
            answer = slow.recv(1000)
            assert answer.startswith(b"HTTP/1.1 408")
        assert [r[1] for r in gmq.queued()] == ["fast"]
    finally:
        gmq.stop()


def test_connection_cap_answers_503(gwe_home):
    gmq = GmqProcess(str(gwe_home), server={"max_connections": 4})
    gmq.start()
    try:
        held = []

        def grab():  # a served keep-alive connection that stays open (the start-up probe may hold a slot briefly)
            s = socket.create_connection(("127.0.0.1", gmq.port), timeout=5)
            s.sendall(b"GET /timestamp HTTP/1.1\r\nHost: gmq\r\n\r\n")
            if s.recv(1000).startswith(b"HTTP/1.1 200"):
                held.append(s)
                return True
            s.close()
            return False

        for _ in range(4):
            wait_for(grab, 5)
        extra = socket.create_connection(("127.0.0.1", gmq.port), timeout=5)
        extra.sendall(b"GET /status HTTP/1.1\r\nHost: gmq\r\n\r\n")
        assert extra.recv(1000).startswith(b"HTTP/1.1 503")
        extra.close()
        for s in held:
            s.close()
        wait_for(lambda: gmq.post("/onep:v1/stack/alias", "a=1").status_code == 204, 5)
    finally:
        gmq.stop()


def test_oversize_value_is_413(gmq):
    resp = gmq.post("/onep:v1/stack/alias", "big=" + "x" * 70000)
    assert resp.status_code == 413 and "limit" in resp.text
    assert gmq.queued() == []


def test_cfg_set_and_reread_apply_without_restart(gmq):
    pid = gmq.proc.pid
    run = lambda *args: subprocess.run([sys.executable, "-m", "gmq", *args], capture_output=True, text=True,
                                       timeout=30, env=dict(os.environ, GWE_HOME=gmq.home))
    for key, value in (("policy", "reject_new"), ("max_value_bytes", "50"), ("max_bytes", "100")):
        assert run("cfg", "set", "queue", key, value).returncode == 0
    assert run("cfg", "get", "queue", "policy").stdout.strip() == "reject_new"
    assert gmq.post("/onep:v1/stack/alias", "a=" + "x" * 60).status_code == 204  # old limits still apply
    reread = run("reread")
    assert reread.returncode == 0 and json.loads(reread.stdout)["applied"] is True
    assert gmq.post("/onep:v1/stack/alias", "a=" + "x" * 60).status_code == 413
    assert gmq.post("/onep:v1/stack/alias", "a=" + "y" * 40).status_code == 507  # 61 queued + 41 > 100
    assert len(gmq.queued()) == 1 and gmq.proc.pid == pid


def test_cfg_errors_are_one_line_and_change_nothing(gwe_home):
    env = dict(os.environ, GWE_HOME=str(gwe_home))
    run = lambda *args: subprocess.run([sys.executable, "-m", "gmq", *args], capture_output=True, text=True,
                                       timeout=30, env=env)
    for args in (("cfg", "set", "queue", "policy", "sometimes"), ("cfg", "set", "queue", "nosuch", "1"),
                 ("cfg", "set", "queue", "max_bytes", "ten"), ("cfg", "set", "queue", "max_value_bytes", "999999999999"),
                 ("cfg", "get", "nosection"), ("reread",), ("status",)):
        if args[0] != "cfg":  # nothing listens on the configured port
            assert run("cfg", "set", "server", "port", str(free_port())).returncode == 0
        result = run(*args)
        assert result.returncode == 1, args
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, (args, result.stderr)
    assert run("cfg", "get", "queue", "policy").stdout.strip() == "drop_oldest"


def test_upstream_defaults_to_gateway_cfg_host(gwe_home):
    from atomic_config import gwe_paths, set_option
    from gmq import config
    paths = gwe_paths(str(gwe_home)).ensure()
    set_option(paths.gateway_cfg, "device", "host", "https://abc.m2.example.io")
    assert config.load(paths).upstream == "https://abc.m2.example.io"
    set_option(paths.gmq_cfg, "upstream", "host", "http://127.0.0.1:9")
    assert config.load(paths).upstream == "http://127.0.0.1:9"


def _small_filesystem(directory):
    """Mount a 6 MiB tmpfs on ``directory`` (gmq keeps 4.25 of it in reserve); False where mounting is not
    permitted."""
    os.makedirs(directory, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(directory)],
                          capture_output=True).returncode == 0


def test_full_disk_is_507_and_nothing_queued_is_lost(gwe_home):
    lib = os.path.join(str(gwe_home), "var", "lib", "gwe")
    mounted = _small_filesystem(lib)
    try:
        if mounted:  # a real full disk: sqlite's own "disk full" must come back as 507
            gmq = GmqProcess(str(gwe_home), queue={"min_free_disk": 0})
        else:  # no mount here: the free-disk reserve is the observable instead
            gmq = GmqProcess(str(gwe_home), queue={"min_free_disk": 1 << 60, "max_bytes": 1 << 61})
        gmq.start()
        try:
            acked, status = [], None
            for i in range(4000):
                status = gmq.post("/onep:v1/stack/alias", "v%d=%s" % (i, "x" * 1000)).status_code
                if status != 204:
                    break
                acked.append("v%d" % i)
            assert status == 507, status
            assert acked, "nothing was accepted before the disk was full"
            small = gmq.post("/onep:v1/stack/alias", "more=1").status_code  # still answering; fits a page, or not
            assert small in (204, 507)
            acked += ["more"] if small == 204 else []
            assert gmq.status()["queue"]["depth"] == len(acked)
            gmq.kill()  # power cut while full
            gmq.start()
            assert [r[1] for r in gmq.queued()] == acked
            assert gmq.rows("PRAGMA quick_check") == [("ok",)]
            assert gmq.status()["alarms"] == []
        finally:
            gmq.stop()
    finally:
        if mounted:
            subprocess.run(["umount", lib], check=True)


def test_corrupt_queue_at_start_is_quarantined_salvaged_and_alarmed(gwe_home):
    gmq = GmqProcess(str(gwe_home))
    gmq.start()
    body = "&".join("%d=%s" % (1700000000 + i, "v" * 200) for i in range(2000))
    assert gmq.post("/onep:v1/stack/alias/temp", body).status_code == 204
    gmq.stop()
    db = gmq.paths.gmq_db
    size = os.path.getsize(db)
    with open(db, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 16384)
    gmq.start()
    try:
        st = gmq.status()
        assert [a["kind"] for a in st["alarms"]] == ["db_corrupt"]
        kept = [n for n in os.listdir(os.path.dirname(db))
                if n.startswith("gmq.db.corrupt-") and not n.endswith(("-wal", "-shm"))]  # the database itself
        assert kept and os.path.getsize(os.path.join(os.path.dirname(db), kept[0])) == size
        assert 0 < st["queue"]["depth"] < 2000  # the readable rows, salvaged
        assert gmq.post("/onep:v1/stack/alias", "after=1").status_code == 204
        env = dict(os.environ, GWE_HOME=gmq.home)
        cleared = subprocess.run([sys.executable, "-m", "gmq", "clear-alarms"], capture_output=True, text=True,
                                 timeout=30, env=env)
        assert cleared.returncode == 0 and json.loads(cleared.stdout) == {"cleared": 1}
        assert gmq.status()["alarms"] == []
    finally:
        gmq.stop()


def test_queue_full_under_drop_oldest_keeps_the_newest(gwe_home):
    gmq = GmqProcess(str(gwe_home), queue={"max_value_bytes": 100, "max_bytes": 1000, "policy": "drop_oldest"})
    gmq.start()
    try:
        for i in range(30):  # 30 x ~54 bytes into a 1000-byte queue
            assert gmq.post("/onep:v1/stack/alias", "v=%02d%s" % (i, "x" * 51)).status_code == 204
        values = [r[3][:2] for r in gmq.queued()]
        assert values == ["%02d" % i for i in range(30 - len(values), 30)]  # the oldest went, in order
        st = gmq.status()
        assert st["queue"]["bytes"] <= 1000 and st["counters"]["dropped"] == 30 - len(values)
        assert st["counters"]["accepted"] == 30
    finally:
        gmq.stop()


def test_strict_framing_over_a_real_socket(gmq):
    """The issue's cases, end to end: each refused with 400 and nothing queued; a Connection list closes."""
    vms = b"X-Exosite-VMS: p p s\r\nContent-Length: 3\r\n"
    for bad in (b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX\x00Y: 1\r\n" + vms + b"\r\na=1",
                b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX: a\rb\r\n" + vms + b"\r\na=1",
                b"POST /onep:v1/stack/alias HTTP/1.1\r\n" + vms + b"\r\na=1",
                b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\n" + vms + b"Content-Length: 3\r\n\r\na=1"):
        assert raw(gmq, bad).startswith(b"HTTP/1.1 400"), bad
    answer = raw(gmq, b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nConnection: keep-alive, close\r\n" + vms
                 + b"\r\na=1POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\n" + vms + b"\r\na=2", timeout=3)
    assert answer.count(b"HTTP/1.1 204") == 1 and b"Connection: close" in answer  # the second is never read
    assert [r[1] for r in gmq.queued()] == ["a"]


@pytest.mark.parametrize("path,body,headers", [
    ("/alarms/clear", "", {"Origin": "http://evil.example", "Content-Type": "text/plain"}),
    ("/alarms/clear", "", {"Content-Type": "text/plain;charset=UTF-8"}),  # fetch(mode: "no-cors") with a string
    ("/reread", "", {"Origin": "null"}),
    ("/reread", "x", {"Content-Type": "multipart/form-data; boundary=b"}),
    ("/onep:v1/stack/alias", "a=1", {"Origin": "http://evil.example", "X-Exosite-VMS": "p p s"}),
    ("/onep:v1/stack/alias", "a=1", {"Sec-Fetch-Site": "cross-site", "X-Exosite-VMS": "p p s"}),
    ("/provision/activate", "id=evil", {"Origin": "http://evil.example"}),
])
def test_a_web_page_cannot_change_gmq(gmq, path, body, headers):
    """CORS "simple" requests (no preflight) from any page open on the gateway: refused, nothing changed."""
    before = gmq.status()
    resp = requests.post(gmq.url + path, data=body, headers=headers, timeout=10)
    assert resp.status_code in (403, 415), resp.text
    after = gmq.status()
    assert after["queue"]["depth"] == before["queue"]["depth"] == 0
    assert after["forwarder"]["clients"] == before["forwarder"]["clients"] == []
    assert "restart_needed_for" not in resp.text


def _rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_many_aliases_in_one_request_are_bounded_in_count_and_memory(gmq):
    """1 MiB of 262,144 aliases (x8 at once) is 413 before it is decoded: RSS stays near idle, others flow."""
    tiny = "&".join("a%d=1" % (i % 1000) for i in range(262144))[:1 << 20]
    base = _rss_mib(gmq.proc.pid)
    results = []

    def flood():
        results.append(requests.post(gmq.url + "/onep:v1/stack/alias", data=tiny,
                                     headers={"X-Exosite-VMS": "p p flood"}, timeout=60).status_code)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    assert gmq.post("/onep:v1/stack/alias", "calm=1").status_code == 204  # not stalled behind the floods
    for t in threads:
        t.join(60)
    assert results == [413] * 8
    assert _rss_mib(gmq.proc.pid) - base < 40  # was +89 MiB for one such request, +527 for eight
    assert gmq.post("/onep:v1/stack/alias", "&".join("k%d=%d" % (i, i) for i in range(10000))).status_code == 204
    assert gmq.status()["queue"]["depth"] == 10001
