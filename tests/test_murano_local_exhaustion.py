"""murano_local under hostile load: requests with huge numbers of values, slow clients."""
import hashlib
import os
import socket
import threading
import time

import psutil
import pytest
import requests

from harness import MuranoLocal, read_until_closed
from device_api import MAX_READ_ALIASES, MAX_VALUES_PER_REQUEST


def activate(murano, identity):
    murano.add_device(identity)
    return {"X-Exosite-CIK": requests.post(murano.url + "/provision/activate", data={"id": identity}).text}


def test_a_request_with_millions_of_aliases_is_refused_without_stalling_others(murano):
    hostile, polite = activate(murano, "hostile"), activate(murano, "polite")
    body = b"&".join(b"a%d=1" % (i % 10) for i in range(2_000_000))[:8 * 1024 * 1024]  # 8 MiB, ~2M fields
    server = psutil.Process(murano.proc.pid)
    rss_before = server.memory_info().rss
    answers = []

    def flood():
        answers.append(requests.post(murano.url + "/onep:v1/stack/alias", data=body, headers=hostile, timeout=120))

    thread = threading.Thread(target=flood)
    thread.start()
    slowest = 0.0
    while thread.is_alive():  # another device is served all along
        started = time.monotonic()
        assert requests.post(murano.url + "/onep:v1/stack/alias", data="t=1", headers=polite,
                             timeout=30).status_code == 204
        slowest = max(slowest, time.monotonic() - started)
    thread.join()
    assert answers[0].status_code == 413 and str(MAX_VALUES_PER_REQUEST * 2) in answers[0].text
    assert slowest < 3.0
    assert server.memory_info().rss - rss_before < 80 * 2 ** 20
    assert "a0" not in murano.state("hostile")


def test_the_bounds_on_values_and_aliases_per_request(murano):
    auth = activate(murano, "many")
    url = murano.url + "/onep:v1/stack/alias"
    most = "&".join("a%d=%d" % (i, i) for i in range(MAX_VALUES_PER_REQUEST))
    assert requests.post(url, data=most, headers=auth).status_code == 204
    assert len(murano.state("many")) == MAX_VALUES_PER_REQUEST
    r = requests.post(url, data=most + "&one=more", headers=auth)
    assert r.status_code == 413 and "one" not in murano.state("many")
    points = "alias=p&" + "&".join("%d=x" % (1_600_000_000 + i) for i in range(MAX_VALUES_PER_REQUEST + 1))
    r = requests.post(murano.url + "/onep:v1/stack/record", data=points, headers=auth)
    assert r.status_code == 413 and murano.history("many", "p") == []
    names = "&".join("a%d" % i for i in range(MAX_READ_ALIASES + 1))
    assert requests.get(url + "?" + names, headers=auth).status_code == 413
    r = requests.get(url + "?" + names.rsplit("&", 1)[0], headers=auth)
    assert r.status_code == 200 and r.text.count("=") == MAX_READ_ALIASES


@pytest.fixture
def impatient(tmp_path):
    """A server that gives a request 2 s to arrive."""
    server = MuranoLocal(str(tmp_path / "ml"), args=["--request-timeout", "2"]).start()
    yield server
    server.stop()


def _slow_clients(port, count, head):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head)
        s.setblocking(False)
        socks.append(s)
    return socks


def test_a_thousand_slow_clients_do_not_starve_a_polite_one(impatient):
    auth = activate(impatient, "polite")
    slow = _slow_clients(impatient.port, 1000, b"GET /onep:v1/stack/alias?x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        session = requests.Session()
        started = time.monotonic()
        served = 0
        while time.monotonic() - started < 3:  # the slow ones trickle a byte each 0.2 s meanwhile
            for s in slow:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            t0 = time.monotonic()
            assert session.post(impatient.url + "/onep:v1/stack/alias", data="n=%d" % served, headers=auth,
                                timeout=10).status_code == 204
            assert time.monotonic() - t0 < 2
            served += 1
            time.sleep(0.2)
        assert served >= 5 and len(impatient.history("polite", "n")) == served
        # each slow request was cut at its deadline with a 408, though it kept sending
        answers = []
        for s in slow:
            s.setblocking(True)
            s.settimeout(10)
            answers.append(s.recv(200).split(b"\r\n")[0])
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}
    finally:
        for s in slow:
            s.close()


def test_silent_connections_and_slow_bodies_are_cut_at_the_deadline(impatient):
    auth = activate(impatient, "slow")
    silent = socket.create_connection(("127.0.0.1", impatient.port))
    body = socket.create_connection(("127.0.0.1", impatient.port))
    body.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + auth["X-Exosite-CIK"].encode()
                 + b"\r\nContent-Length: 100\r\n\r\nkeep=")
    started = time.monotonic()
    for s in (silent, body):
        s.settimeout(10)
    assert read_until_closed(silent).startswith(b"HTTP/1.1 408")  # a connection must send its first request in time
    assert read_until_closed(body).startswith(b"HTTP/1.1 408")
    assert 1.5 < time.monotonic() - started < 6
    assert "keep" not in impatient.state("slow")
    silent.close()
    body.close()


def test_a_long_poll_may_wait_longer_than_a_request_may_take_to_arrive(impatient):
    auth = dict(activate(impatient, "poller"), **{"Request-Timeout": "4000"})
    url = impatient.url + "/onep:v1/stack/alias?cmd"
    started = time.monotonic()
    assert requests.get(url, headers=auth, timeout=20).status_code == 304
    assert time.monotonic() - started >= 3.9
    threading.Timer(3, impatient.set, args=("poller", "cmd", "go")).start()
    r = requests.get(url, headers=dict(auth, **{"Request-Timeout": "10000"}), timeout=20)
    assert (r.status_code, r.text) == (200, "cmd=go")


def test_uploads_over_the_in_memory_limit_are_streamed_and_a_stalled_one_is_dropped(impatient, tmp_path):
    blob = os.urandom(20 * 1024 * 1024)  # over the 8 MiB held in memory: streamed to its file
    url = impatient.url + "/api:1/service/localproduct/content/item/"
    server = psutil.Process(impatient.proc.pid)
    rss_before = server.memory_info().rss
    assert requests.put(url + "big.bin", data=blob, timeout=60).status_code == 201
    assert server.memory_info().rss - rss_before < 16 * 2 ** 20
    auth = activate(impatient, "reader")
    got = requests.get(impatient.url + "/provision/download?id=big.bin", headers=auth, timeout=60).content
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    # one that stops halfway is cut at the deadline: nothing stored, no file left behind
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
        sock.sendall(b"PUT /api:1/service/localproduct/content/item/stalled.bin HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(blob) + blob[:10 * 1024 * 1024])
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400") and time.monotonic() - started < 8
    assert [c["id"] for c in requests.get(url, timeout=10).json()] == ["big.bin"]
    assert len(os.listdir(os.path.join(impatient.data, "content"))) == 1
    # an ordinary request over the in-memory limit is refused unread
    r = requests.post(impatient.url + "/onep:v1/stack/alias", data=blob[:9 * 1024 * 1024], headers=auth, timeout=30)
    assert r.status_code == 413
