"""murano_local on the wire: libexosite_c's byte-level transcripts, keep-alive, and bad input."""
import http.client
import re
import socket
import threading
import time

import pytest
import requests

from harness import MuranoLocal, read_until_closed, wait_for

UA = b"User-Agent: Exosite-Async-C-lib/1.0\r\n"
FORM = (b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
        b"Accept: application/x-www-form-urlencoded; charset=utf-8\r\n")
HOST = b"Host: aVendor.m2.exosite.com\r\n"


def exchange(port, raw, timeout=10.0):
    """Send raw request bytes, read one response. Returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.fixture
def avendor(tmp_path):
    """Product ``avendor`` as libexosite's Host header names it; device 1234567 whitelisted."""
    server = MuranoLocal(str(tmp_path / "ml"), product_id="avendor").start()
    server.add_device("1234567")
    yield server
    server.stop()


def activate_raw(server):
    body = b"vendor=aVendor&model=aModel&sn=1234567"
    return exchange(server.port, b"POST /provision/activate HTTP/1.1\r\n" + HOST + UA + b"Connection: close\r\n"
                    + FORM + b"Content-Length: 38\r\n\r\n" + body)


def with_cik(token):
    return HOST + UA + b"Connection: close\r\nX-Exosite-CIK: " + token + b"\r\n" + FORM


def test_activate_transcript(avendor):
    status, headers, body = activate_raw(avendor)
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "40" and len(body) == 40 and body.isalnum()
    status, _, body = activate_raw(avendor)
    assert (status, body) == (409, b"")


def test_activate_unknown_serial_is_404(tmp_path):
    server = MuranoLocal(str(tmp_path / "ml"), product_id="avendor").start()
    try:
        status, headers, body = activate_raw(server)
        assert status == 404 and headers["content-type"].startswith("text/plain") and body
    finally:
        server.stop()


def test_write_read_hybrid_longpoll_timestamp_transcripts(avendor):
    token = activate_raw(avendor)[2]
    status, headers, body = exchange(avendor.port, b"POST /onep:v1/stack/alias HTTP/1.1\r\n" + with_cik(token)
                                     + b"Content-Length: 24\r\n\r\ntemp=42&hum=30&lux=14000")
    assert (status, headers["content-length"], body) == (204, "0", b"")

    status, headers, body = exchange(avendor.port, b"GET /onep:v1/stack/alias?temp&hum&lux HTTP/1.1\r\n"
                                     + with_cik(token) + b"\r\n")
    assert (status, headers["content-length"], body) == (200, "24", b"temp=42&hum=30&lux=14000")

    status, _, body = exchange(avendor.port, b"POST /onep:v1/stack/alias?temp&hum&lux HTTP/1.1\r\n"
                               + with_cik(token) + b"Content-Length: 24\r\n\r\ntemp=43&hum=31&lux=14001")
    assert (status, body) == (200, b"temp=43&hum=31&lux=14001")

    for alias, value in (("temp", "42"), ("hum", "30"), ("lux", "14000")):
        avendor.set("1234567", alias, value)
    started = time.monotonic()
    status, headers, body = exchange(avendor.port, b"GET /onep:v1/stack/alias?temp&hum&lux HTTP/1.1\r\n"
                                     + with_cik(token) + b"Request-Timeout: 300000\r\n\r\n")
    assert (status, headers["content-length"], body) == (200, "24", b"temp=42&hum=30&lux=14000")
    assert headers["last-modified"].endswith(" GMT") and time.monotonic() - started < 5

    status, headers, body = exchange(avendor.port, b"GET /timestamp HTTP/1.1\r\n" + HOST + UA
                                     + b"Connection: close\r\n" + FORM + b"\r\n")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    assert abs(int(body) - time.time()) < 5 and headers["content-length"] == str(len(body))


def test_long_poll_if_modified_since_forms(murano):
    murano.add_device("d")
    token = requests.post(murano.url + "/provision/activate", data={"id": "d"}).text
    murano.set("d", "cfg", "v1")
    headers = {"X-Exosite-CIK": token, "Request-Timeout": "200"}
    url = murano.url + "/onep:v1/stack/alias?cfg"
    # pending and newer than If-Modified-Since: answered at once, whatever the form
    for since in ("0", "0.5", "Thu, 01 Jan 1970 00:00:10 GMT"):
        r = requests.get(url, headers=dict(headers, **{"If-Modified-Since": since}))
        assert (r.status_code, r.text) == (200, "cfg=v1"), since
    # older than If-Modified-Since: not news
    future = str(time.time() + 3600)
    assert requests.get(url, headers=dict(headers, **{"If-Modified-Since": future})).status_code == 304
    r = requests.get(url, headers=dict(headers, **{"Request-Timeout": "400000", "If-Modified-Since": "garbage"}))
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/plain")


def test_keep_alive_serves_many_requests_on_one_connection(murano):
    murano.add_device("ka")
    session = requests.Session()
    token = session.post(murano.url + "/provision/activate", data={"id": "ka"}).text
    for i in range(50):
        assert session.post(murano.url + "/onep:v1/stack/alias", data="n=%d" % i,
                            headers={"X-Exosite-CIK": token}).status_code == 204
    r = session.get(murano.url + "/onep:v1/stack/alias?n", headers={"X-Exosite-CIK": token})
    assert r.text == "n=49"
    assert len(murano.history("ka", "n")) == 50


def test_hundreds_of_concurrent_long_polls_all_wake(murano):
    count = 200
    tokens = []
    for i in range(count):
        murano.add_device("lp%d" % i)
        tokens.append(requests.post(murano.url + "/provision/activate", data={"id": "lp%d" % i}).text)
    results = [None] * count

    def poll(i):
        r = requests.get(murano.url + "/onep:v1/stack/alias?cmd", timeout=60,
                         headers={"X-Exosite-CIK": tokens[i], "Request-Timeout": "30000"})
        results[i] = (r.status_code, r.text)

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    wait_for(lambda: murano.info()["long_polls_waiting"] == count, 20, message="all polls blocked")
    for i in range(count):
        murano.set("lp%d" % i, "cmd", "go%d" % i)
    for t in threads:
        t.join(30)
    assert results == [(200, "cmd=go%d" % i) for i in range(count)]


# -- bad input: 4xx with a short plain-text reason, and nothing stored ---------------------

@pytest.fixture
def device(murano):
    murano.add_device("bad")
    token = requests.post(murano.url + "/provision/activate", data={"id": "bad"}).text
    requests.post(murano.url + "/onep:v1/stack/alias", data="keep=1", headers={"X-Exosite-CIK": token})
    return murano, token


def assert_unchanged(murano, before):
    assert murano.state("bad") == before
    assert len(murano.history("bad", "keep")) == 1


@pytest.mark.parametrize("method,path,headers,body,status", [
    ("POST", "/onep:v1/stack/alias", {"X-Exosite-CIK": "x" * 40}, "keep=2", 401),
    ("POST", "/onep:v1/stack/alias", {"X-Exosite-CIK": None}, "keep=2", 401),
    ("GET", "/onep:v1/stack/alias?keep", {"X-Exosite-CIK": "nope"}, None, 401),
    ("POST", "/onep:v1/stack/record", {"X-Exosite-CIK": "nope"}, "alias=keep&1=2", 401),
    ("GET", "/provision/download", {"X-Exosite-CIK": None}, None, 401),
    ("POST", "/onep:v1/stack/alias", {}, "novalue", 400),
    ("POST", "/onep:v1/stack/alias", {}, b"keep=%ff", 400),
    ("POST", "/onep:v1/stack/alias", {}, b"\xff\xfe=1", 400),
    ("POST", "/onep:v1/stack/alias", {}, "=2", 400),
    ("POST", "/onep:v1/stack/alias", {}, "bad.alias=2&keep=2", 400),
    ("POST", "/onep:v1/stack/alias", {}, "keep=<1 MiB + 1>", 413),
    ("POST", "/onep:v1/stack/record", {}, "1=2&alias=keep", 400),
    ("POST", "/onep:v1/stack/record", {}, "alias=keep&notatime=2", 400),
    ("POST", "/onep:v1/stack/record", {}, "alias=keep&-5=2", 400),
    ("POST", "/onep:v1/stack/alias/keep", {}, "nan=2", 400),
    ("GET", "/onep:v1/stack/alias?keep", {"Request-Timeout": "soon"}, None, 400),
    ("GET", "/onep:v1/stack/alias?keep", {"Request-Timeout": "-1"}, None, 400),
    ("GET", "/onep:v1/stack/alias", {}, None, 400),
    ("POST", "/onep:v1/stack/alias", {"Content-Type": "application/json"}, '{"keep": 2}', 415),
    ("GET", "/provision/download?id=missing", {}, None, 404),
    ("GET", "/provision/download?id=missing&info=true", {}, None, 404),
    ("GET", "/no/such/path", {}, None, 404),
    ("DELETE", "/onep:v1/stack/alias", {}, None, 405),
])
def test_bad_requests_get_4xx_and_change_nothing(device, method, path, headers, body, status):
    murano, token = device
    before = murano.state("bad")
    headers = dict(headers)
    headers.setdefault("X-Exosite-CIK", token)  # None: requests leaves the header out
    if body == "keep=<1 MiB + 1>":
        body = "keep=" + "x" * (1024 * 1024 + 1)
    r = requests.request(method, murano.url + path, headers=headers, data=body, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "\n" not in r.text.strip() and len(r.text) < 200
    assert_unchanged(murano, before)


def test_missing_token_header_is_401(device):
    murano, _token = device
    r = requests.post(murano.url + "/onep:v1/stack/alias", data="keep=2")
    assert r.status_code == 401 and r.text


def test_oversize_body_is_413_without_reading_it(device):
    murano, token = device
    before = murano.state("bad")
    status, headers, body = exchange(murano.port, b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\n"
                                     b"X-Exosite-CIK: " + token.encode() + b"\r\n"
                                     b"Content-Length: 104857600\r\n\r\nkeep=2")
    assert status == 413 and headers["connection"] == "close" and body
    assert_unchanged(murano, before)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
    b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\nkeep=2",
    b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nkeep=2\r\n0\r\n\r\n",
    b"GET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /onep:v1/stack/alias?keep\r\n",  # HTTP/0.9
    b"\r\nGET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\n\r\n",  # as h11: no empty line before it
    b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nkeep=2",
])
def test_garbage_requests_and_headers_are_4xx(device, raw):
    murano, token = device
    before = murano.state("bad")
    status, headers, body = exchange(murano.port, raw.replace(b"Host: x\r\n", b"Host: x\r\nX-Exosite-CIK: "
                                                              + token.encode() + b"\r\n"))
    assert 400 <= status < 500 and body
    assert headers.get("content-type", "").startswith("text/plain")
    assert_unchanged(murano, before)  # and the server still answers
    with open(murano.log) as log:
        assert "Traceback" not in log.read()


def test_request_body_shorter_than_content_length_changes_nothing(device):
    murano, token = device
    before = murano.state("bad")
    with socket.create_connection(("127.0.0.1", murano.port), timeout=10) as sock:
        sock.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + token.encode()
                     + b"\r\nContent-Length: 100\r\n\r\nkeep=2")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert_unchanged(murano, before)


@pytest.mark.parametrize("method,path,body,status", [
    ("PATCH", "/identity/bad/state", b"not json", 400),
    ("PATCH", "/identity/bad/state", b"[1, 2]", 400),
    ("PATCH", "/identity/bad/state", b"{}", 400),
    ("PATCH", "/identity/bad/state", b'{"a.b": "1"}', 400),
    ("PATCH", "/identity/ghost/state", b'{"keep": "9"}', 404),
    ("PATCH", "/identity/bad", b'{"reprovision": "yes"}', 400),
    ("GET", "/identity/bad/history/keep?limit=abc", None, 400),
    ("GET", "/identity/bad/history/keep?limit=0", None, 400),
    ("GET", "/identity/ghost", None, 404),
    ("DELETE", "/identity/ghost", None, 404),
    ("POST", "/identity/bad/state", b"{}", 405),
    ("GET", "/identity/%ff", None, 400),
])
def test_bad_admin_requests_get_4xx_and_change_nothing(device, method, path, body, status):
    murano, _token = device
    before = murano.state("bad")
    r = requests.request(method, murano.url + "/api:1/service/localproduct/device2" + path, data=body, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("text/plain") and r.text
    assert_unchanged(murano, before)


def test_bad_product_and_content_names(device):
    murano, _token = device
    assert requests.get(murano.url + "/api:1/service/bad%20pid/device2/identity/").status_code == 400
    r = requests.put(murano.url + "/api:1/service/localproduct/content/item/a%2Cb", data=b"x")
    assert r.status_code == 400
    # the info line is "<type>,<size>,<updated>,<meta>": a comma in the type would shift the size
    r = requests.put(murano.url + "/api:1/service/localproduct/content/item/ab", data=b"x",
                     headers={"Content-Type": "application/x-thing; v=1,2"})
    assert r.status_code == 400 and "Content-Type" in r.text
    assert requests.get(murano.url + "/api:1/service/localproduct/content/item").json() == []


def test_identity_record_and_removal(device):
    murano, token = device
    base = murano.url + "/api:1/service/localproduct/device2/identity/bad"
    record = requests.get(base).json()
    assert (record["identity"], record["status"], record["auth"]) == ("bad", "provisioned", {"type": "token"})
    assert isinstance(record["lastseen"], int) and record["state"]["keep"]["reported"] == "1"
    assert requests.delete(base).status_code == 204
    r = requests.get(murano.url + "/onep:v1/stack/alias?keep", headers={"X-Exosite-CIK": token})
    assert r.status_code == 401
    assert requests.get(base).status_code == 404


def test_a_long_poll_whose_client_hangs_up_is_released_at_once(device):
    murano, token = device
    polls = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", murano.port))
        s.sendall(b"GET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + token.encode()
                  + b"\r\nRequest-Timeout: 300000\r\n\r\n")
        polls.append(s)
    wait_for(lambda: murano.info()["long_polls_waiting"] == 5, 10)
    for s in polls[:4]:
        s.close()
    wait_for(lambda: murano.info()["long_polls_waiting"] == 1, 5, message="hung-up polls to end")
    murano.set("bad", "keep", "woken")  # the one still connected is answered as usual
    polls[4].settimeout(10)
    assert polls[4].recv(4096).startswith(b"HTTP/1.1 200")
    polls[4].close()


def test_conflicting_content_length_is_400_and_the_smuggled_request_is_not_served(device):
    murano, token = device
    before = murano.state("bad")
    with socket.create_connection(("127.0.0.1", murano.port), timeout=10) as sock:
        sock.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + token.encode()
                     + b"\r\nContent-Length: 6\r\nContent-Length: 44\r\n\r\nkeep=2"
                     b"GET /timestamp HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close\r\n" in answer
    assert_unchanged(murano, before)


def test_pipelined_requests_are_answered_in_order(device):
    murano, token = device
    cik = b"X-Exosite-CIK: " + token.encode() + b"\r\n"
    with socket.create_connection(("127.0.0.1", murano.port), timeout=10) as sock:
        sock.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\n" + cik + b"Content-Length: 6\r\n\r\nkeep=3"
                     b"GET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\n" + cik + b"\r\n"
                     b"HEAD /timestamp HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /onep:v1/stack/alias?keep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + cik + b"\r\n")
        answer = read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", answer)
    assert statuses == [b"204", b"200", b"200", b"200"]
    assert answer.count(b"keep=3") == 2  # and HEAD sent no body
    assert answer.endswith(b"keep=3")


def test_expect_100_continue_gets_the_interim_answer(device):
    murano, token = device
    with socket.create_connection(("127.0.0.1", murano.port), timeout=10) as sock:
        sock.sendall(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + token.encode()
                     + b"\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"keep=4")
        assert sock.recv(100).startswith(b"HTTP/1.1 204")
    assert murano.state("bad")["keep"]["reported"] == "4"


def test_http_1_0_keep_alive_is_kept_and_said(device):
    murano, _token = device
    with socket.create_connection(("127.0.0.1", murano.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /timestamp HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            answer = sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive\r\n" in answer
        sock.sendall(b"GET /timestamp HTTP/1.0\r\n\r\n")
        assert b"Connection: close\r\n" in read_until_closed(sock)
