"""Defects found in review of gmq's front end and forwarder: each test failed before its fix."""
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from gmq_harness import GmqProcess, ScriptedUpstream, raw
from harness import free_port, wait_for

from gmq.limits import Limits
from gmq.queue import DurableQueue


@pytest.fixture
def gmq(gwe_home):
    server = GmqProcess(str(gwe_home))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("length,status", [(b"\xb2", b"400"), (b"9" * 5000, b"413")])
def test_content_length_that_isdigit_but_not_int_is_answered_and_the_server_survives(gmq, length, status):
    # latin-1 superscript two passes str.isdigit() but not int(); 5000 digits exceed int()'s digit limit
    head = b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p s\r\nContent-Length: " + length + b"\r\n\r\n"
    assert raw(gmq, head).startswith(b"HTTP/1.1 " + status)
    assert gmq.proc.poll() is None
    assert gmq.post("/onep:v1/stack/alias", "ok=1").status_code == 204


def test_pipelined_requests_then_half_close_are_all_answered(gmq):
    one = b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: gmq\r\nX-Exosite-VMS: p p s\r\nContent-Length: 3\r\n\r\na=%d"
    answer = raw(gmq, b"".join(one % i for i in range(3)) + b"GET /timestamp HTTP/1.1\r\nHost: gmq\r\n\r\n", shut=True)
    assert answer.count(b"HTTP/1.1 204 ") == 3 and answer.count(b"HTTP/1.1 200 ") == 1, answer
    assert [r[3] for r in gmq.queued()] == ["0", "1", "2"]
    assert raw(gmq, b"GET /timestamp HTTP/1.1\r\nHost: gmq\r\n\r\n", shut=True).startswith(b"HTTP/1.1 200")
    wait_for(lambda: gmq.status()["connections"] == 1, 5)  # only the status request's own connection


class ThrottlingUpstream(ScriptedUpstream):
    """The first ``throttled`` records get ``status``."""

    def __init__(self, throttled: int, status: int) -> None:
        self.left, self.status, self.recorded = throttled, status, []
        super().__init__()

    def answer(self, pairs):
        if self.left > 0:
            self.left -= 1
            return self.status, "slow down"
        alias = None
        for k, v in pairs:
            if k == "alias":
                alias = v
            else:
                self.recorded.append((alias, v))
        return 204, ""


@pytest.mark.parametrize("status", [429, 408, 301, 302])
def test_throttled_upstream_is_retried_never_dead_lettered(gwe_home, status):
    upstream = ThrottlingUpstream(6, status)
    gmq = GmqProcess(str(gwe_home), upstream={"host": upstream.url, "backoff_initial": 0.05, "backoff_max": 0.2,
                                             "batch_size": 50})
    gmq.start()
    try:
        body = "&".join("%d=%d" % (1700000000 + i, i) for i in range(8))
        assert gmq.post("/onep:v1/stack/alias/temp", body).status_code == 204
        st = wait_for(lambda: (lambda s: s["queue"]["depth"] == 0 and s)(gmq.status()), 30)
        assert [v for _, v in upstream.recorded] == [str(i) for i in range(8)]
        assert st["counters"]["dead_lettered"] == 0 and gmq.rows("SELECT count(*) FROM dead_letter") == [(0,)]
        assert st["counters"]["retried"] >= 6
    finally:
        gmq.stop()
        upstream.close()


def test_salvage_keeps_every_row_that_can_still_be_read(tmp_path):
    path = str(tmp_path / "gmq.db")
    q = DurableQueue(path)
    q.append_many([(1, [("a", 1700000000 + i, "v%06d" % i)]) for i in range(20000)])
    q.close()
    with open(path, "r+b") as f:  # wreck the headers of a few pages in the middle
        for page in (40, 60, 80, 100, 120):
            f.seek(page * 4096)
            f.write(b"\xff" * 100)
    readable = []
    conn = sqlite3.connect(path)
    for rowid in range(1, 20001):  # what a reader can still get, row by row
        try:
            row = conn.execute("SELECT value FROM queue WHERE id = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            readable.append(row[0])
    conn.close()
    assert 0 < len(readable) < 20000
    q = DurableQueue(path)
    try:
        assert q.salvage_report is not None
        assert [v.value for v in q.take(1, 30000)] == readable
    finally:
        q.close()


def test_a_client_that_pipelines_without_reading_neither_blocks_others_nor_grows_memory(gmq):
    import psutil
    rss_before = psutil.Process(gmq.proc.pid).memory_info().rss
    alone = []
    for _ in range(3):  # what a post costs on this machine now, without the hog
        started = time.monotonic()
        assert gmq.post("/onep:v1/stack/alias", "other=0").status_code == 204
        alone.append(time.monotonic() - started)
    hog = socket.create_connection(("127.0.0.1", gmq.port), timeout=5)
    hog.setblocking(False)
    request = b"GET /status HTTP/1.1\r\nHost: gmq\r\n\r\n" * 1000
    sent, deadline = 0, time.monotonic() + 3
    try:
        while time.monotonic() < deadline and sent < 200:  # up to 200,000 requests, never reading an answer
            try:
                hog.send(request)
                sent += 1
            except BlockingIOError:
                time.sleep(0.01)
        started = time.monotonic()
        assert gmq.post("/onep:v1/stack/alias", "other=1").status_code == 204
        # the event loop is not stuck answering the hog (a margin for a loaded machine: 15 posts' time)
        assert time.monotonic() - started < max(2.0, 15 * sorted(alone)[1])
        time.sleep(3)  # let it work through what it has read
        growth = psutil.Process(gmq.proc.pid).memory_info().rss - rss_before
        assert growth < 32 * 1024 * 1024, growth  # answers nobody reads are not piled up in memory
    finally:
        hog.close()
    wait_for(lambda: gmq.status()["connections"] == 1, 15)


def _gmq_cli(home, *args):
    env = dict(os.environ, GWE_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "gmq"] + list(args), env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("section,option,value", [
    ("queue", "ttl", "nan"), ("upstream", "backoff_max", "nan"), ("server", "request_timeout", "nan"),
    ("server", "request_timeout", "0"), ("upstream", "timeout", "-1"), ("server", "port", "99999"),
    ("server", "max_connections", "0"), ("server", "max_body_bytes", "0"),
])
def test_cfg_refuses_values_that_would_break_or_empty_the_queue(gwe_home, section, option, value):
    before = _gmq_cli(gwe_home, "cfg", "--json").stdout
    result = _gmq_cli(gwe_home, "cfg", "set", "--", section, option, value)
    assert result.returncode == 1 and result.stderr.startswith("gmq: ") and result.stderr.count("\n") == 1
    assert _gmq_cli(gwe_home, "cfg", "--json").stdout == before


def test_a_nan_ttl_written_by_hand_is_not_applied_and_expires_nothing(gmq):
    assert gmq.post("/onep:v1/stack/alias", "keep=1").status_code == 204
    with open(gmq.paths.gmq_cfg, "a") as f:
        f.write("\n[queue]\nttl = nan\n")
    resp = requests.post(gmq.url + "/reread", timeout=10)
    assert resp.status_code == 422 and "ttl" in resp.text
    st = gmq.status()
    assert st["queue"]["ttl"] == 0.0 and st["queue"]["depth"] == 1


def test_gmq_status_talks_to_gmq_directly_even_with_a_proxy_in_the_environment(gmq):
    env = dict(os.environ, GWE_HOME=gmq.home, http_proxy="http://127.0.0.1:%d" % free_port(),
               HTTP_PROXY="http://127.0.0.1:%d" % free_port(), no_proxy="", NO_PROXY="")
    result = subprocess.run([sys.executable, "-m", "gmq", "status"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"depth": 0' in result.stdout


def test_http10_keep_alive_is_confirmed_in_every_answer(gmq):
    with socket.create_connection(("127.0.0.1", gmq.port), timeout=5) as s:
        s.sendall(b"POST /onep:v1/stack/alias HTTP/1.0\r\nConnection: keep-alive\r\nX-Exosite-VMS: p p s\r\n"
                  b"Content-Length: 3\r\n\r\na=1")
        answer = s.recv(1000)
        assert answer.startswith(b"HTTP/1.1 204") and b"\r\nConnection: keep-alive\r\n" in answer
        s.sendall(b"GET /timestamp HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = s.recv(1000)
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: keep-alive\r\n" in answer
    answer = raw(gmq, b"GET /timestamp HTTP/1.0\r\n\r\n")  # without keep-alive: answered, then closed
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer


def test_out_of_file_descriptors_neither_spins_nor_floods_the_log(gwe_home):
    import psutil
    gmq = GmqProcess(str(gwe_home))
    with open(gmq.log, "ab") as log:
        gmq.proc = subprocess.Popen([sys.executable, "-m", "gmq", "serve"], env=dict(os.environ, GWE_HOME=gmq.home),
                                    stdout=subprocess.DEVNULL, stderr=log,
                                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
    socks = []
    try:
        wait_for(gmq._up, 15)
        for _ in range(60):  # more connections than the process has descriptors
            socks.append(socket.create_connection(("127.0.0.1", gmq.port), timeout=5))
        proc = psutil.Process(gmq.proc.pid)
        wait_for(lambda: "accept failed" in gmq.log_text(), 5)
        before = sum(proc.cpu_times()[:2])
        time.sleep(1.0)  # measure the idle cost of a listener it cannot serve
        assert sum(proc.cpu_times()[:2]) - before < 0.3
        assert gmq.log_text().count("accept failed") < 20
        for s in socks:
            s.close()
        socks = []
        wait_for(lambda: gmq.post("/onep:v1/stack/alias", "a=1").status_code == 204, 15)
    finally:
        for s in socks:
            s.close()
        gmq.stop()


def test_ttl_expires_a_backlog_of_over_a_thousand_chunks_without_recursion_error(tmp_path, monkeypatch):
    """The fault was recursion per chunk of SCAN values (RecursionError past 1,000 chunks: a backlog
    of 500,000); chunks of 50 reach it with a tenth of the values to write."""
    import gmq.queue

    monkeypatch.setattr(gmq.queue, "SCAN", 50)
    now = [1700000000.0]
    q = DurableQueue(str(tmp_path / "gmq.db"), Limits(ttl=10, max_bytes=10 ** 9), clock=lambda: now[0])
    try:
        q.append_many([(1, [("a", None, "x")] * 51000)])
        now[0] += 100
        assert q.expire() == 51000  # was: RecursionError after 1,000 chunks
        assert q.depth == 0 and q.counters()["expired"] == 51000
    finally:
        q.close()


def test_expect_100_continue_is_ignored_for_http10_as_rfc_9110_requires(gmq):
    with socket.create_connection(("127.0.0.1", gmq.port), timeout=5) as s:
        s.sendall(b"POST /onep:v1/stack/alias HTTP/1.0\r\nExpect: 100-continue\r\nX-Exosite-VMS: p p s\r\n"
                  b"Content-Length: 3\r\n\r\n")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):  # an HTTP/1.0 client cannot parse an interim 1xx answer
            s.recv(1000)
        s.settimeout(5)
        s.sendall(b"a=1")
        assert s.recv(1000).startswith(b"HTTP/1.1 204")


def test_gmq_status_against_something_else_on_the_port_is_one_line_not_a_traceback(gwe_home):
    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            data = b"<html>not gmq</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        GmqProcess(str(gwe_home), port=other.server_address[1])  # writes gmq.cfg only
        result = _gmq_cli(gwe_home, "status")
        assert result.returncode == 1 and result.stderr.startswith("gmq: ") and result.stderr.count("\n") == 1, \
            result.stderr
    finally:
        other.shutdown()
        other.server_close()
