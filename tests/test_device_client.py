"""device_client.Device against a real murano_local (and small real servers for cut transfers and TLS)."""
import hashlib
import http.server
import os
import socket
import ssl
import stat
import subprocess
import threading
import time

import pytest
import requests

from device_client import Device, errors, usage_report
from harness import free_port, wait_for

CONTENT_NAME = "app.v1.tar.gz"


def upload(murano, name: str, data: bytes) -> None:
    resp = requests.put("%s/api:1/service/%s/content/item/%s" % (murano.url, murano.product_id, name), data=data,
                        headers={"Content-Type": "application/gzip"}, timeout=10)
    assert resp.status_code == 201, resp.text


def remove_device(murano, identity: str) -> None:
    resp = requests.delete("%s/api:1/service/%s/device2/identity/%s" % (murano.url, murano.product_id, identity),
                           timeout=10)
    assert resp.status_code == 204


@pytest.fixture
def usage_db(tmp_path):
    return str(tmp_path / "usage.db")


@pytest.fixture
def device(murano, tmp_path, usage_db):
    murano.add_device("gw-1")
    dev = Device(murano.url, serial="gw-1", token_file=str(tmp_path / "tokens" / "gw-1"), identity="test",
                 usage_db=usage_db, read_timeout=10)
    dev.activate()
    yield dev
    dev.close()


def test_activate_stores_the_token_0600_and_reuses_it(murano, tmp_path, usage_db):
    murano.add_device("gw-2")
    token_file = str(tmp_path / "tokens" / "gw-2")
    with Device(murano.url, product_id=murano.product_id, serial="gw-2", token_file=token_file,
                usage_db=usage_db) as dev:
        assert not dev.activated
        token = dev.activate()
        assert len(token) == 40 and token.isalnum() and dev.activated and dev.token == token
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert open(token_file).read().strip() == token
    with Device(murano.url, serial="gw-2", token_file=token_file, usage_db=usage_db) as again:
        assert again.token == token
        assert again.activate() == token  # held: no request, so no 409
        with pytest.raises(errors.Conflict) as caught:
            again.activate(force=True)
        assert caught.value.status == 409
        again.write({"alive": 1})
    assert murano.state("gw-2")["alive"]["reported"] == "1"


def test_activation_of_an_unknown_identity_is_not_found(murano, usage_db):
    with Device(murano.url, serial="stranger", usage_db=usage_db) as dev:
        with pytest.raises(errors.NotFound) as caught:
            dev.activate()
    assert caught.value.status == 404 and not dev.activated


def test_calls_before_activation_raise_not_activated_without_a_request(murano, usage_db):
    with Device(murano.url, serial="gw-x", usage_db=usage_db) as dev:
        for call in (lambda: dev.write("a", 1), lambda: dev.read("a"), lambda: dev.list_content()):
            with pytest.raises(errors.NotActivated) as caught:
                call()
            assert caught.value.status is None


def test_write_one_and_many_then_read(device, murano):
    device.write("temp", 21.5)
    device.write({"hum": 40, "on": True, "config": {"rate": [1, 2]}, "note": "a b&c=d"})
    state = murano.state("gw-1")
    assert {a: state[a]["reported"] for a in ("temp", "hum", "on", "config", "note")} == {
        "temp": "21.5", "hum": "40", "on": "true", "config": '{"rate":[1,2]}', "note": "a b&c=d"}
    assert device.read("temp", "note", "config") == {"temp": "21.5", "note": "a b&c=d", "config": '{"rate":[1,2]}'}
    assert device.read(["hum"]) == {"hum": "40"}
    assert device.read("never_written") == {}


def test_read_write_writes_then_reads_in_one_request(device, murano):
    assert device.read_write({"cmd": "go", "n": 2}, "cmd", "missing") == {"cmd": "go"}
    assert murano.state("gw-1")["n"]["reported"] == "2"
    assert device.read_write({"x": 1}, "missing") == {}


def test_bad_input_is_refused_before_any_request(device):
    for call in (lambda: device.write({}), lambda: device.write("a", None), lambda: device.write("", 1),
                 lambda: device.long_poll("a", timeout_ms=0), lambda: device.long_poll("a", timeout_ms=300001),
                 lambda: device.record({"a": [("yesterday", 1)]}), lambda: device.read()):
        with pytest.raises((ValueError, TypeError)):
            call()


def test_long_poll_times_out_then_wakes_on_a_cloud_set(device, murano):
    started = time.monotonic()
    assert device.long_poll("config_io", timeout_ms=800, since="0") == ({}, "0")
    assert 0.7 <= time.monotonic() - started < 5

    results = []
    poller = threading.Thread(target=lambda: results.append(device.long_poll(["config_io", "data_out"], 20000)))
    started = time.monotonic()
    poller.start()
    wait_for(lambda: murano.info()["long_polls_waiting"] == 1, message="the poll to block")
    murano.set("gw-1", "data_out", "reboot")
    poller.join(15)
    assert time.monotonic() - started < 10
    values, last_modified = results[0]
    assert values == {"data_out": "reboot"} and last_modified.endswith("GMT")
    # Echo it back (resolves the pending set); polling from last_modified then blocks until the timeout.
    device.write("data_out", "reboot")
    assert device.long_poll("data_out", timeout_ms=500, since=last_modified) == ({}, last_modified)


def test_long_poll_from_last_modified_neither_repeats_nor_misses_a_set(device, murano):
    # Last-Modified is an HTTP-date (whole seconds): a set not echoed back must not come
    # again from it (watch() would spin on it), and a second set, even within the same
    # second, must still come.
    murano.set("gw-1", "cfg", "v1")
    values, last_modified = device.long_poll("cfg", timeout_ms=1000)
    assert values == {"cfg": "v1"}
    assert device.long_poll("cfg", timeout_ms=300, since=last_modified) == ({}, last_modified)
    murano.set("gw-1", "cfg", "v2")
    values, again = device.long_poll("cfg", timeout_ms=1000, since=last_modified)
    assert values == {"cfg": "v2"}
    assert device.long_poll("cfg", timeout_ms=300, since=again) == ({}, again)


def test_long_poll_since_float_seconds_keeps_its_fraction(device, murano):
    murano.set("gw-1", "cfg", "v1")
    set_at = murano.state("gw-1")["cfg"]["timestamp"] / 1e6
    assert device.long_poll("cfg", timeout_ms=300, since=set_at - 0.000002)[0] == {"cfg": "v1"}
    assert device.long_poll("cfg", timeout_ms=300, since=set_at + 0.000002)[0] == {}  # already seen


def test_record_keeps_the_given_timestamps(device, murano):
    device.record({"data_in": [(1554975272.470659, '{"a": 1}'), (1554975273, '{"a": 2}')], "temp": [(1700000000, 5)]})
    assert murano.history("gw-1", "data_in") == [
        {"timestamp": 1554975273000000, "value": '{"a": 2}'},
        {"timestamp": 1554975272470659, "value": '{"a": 1}'}]
    assert murano.history("gw-1", "temp") == [{"timestamp": 1700000000000000, "value": "5"}]


def test_a_prepared_record_is_the_record_it_was_prepared_from(device, murano):
    """prepare_record encodes without sending (gmq's stager, another thread); record sends it as is."""
    prepared = device.prepare_record({"temp": [(1700000000, 5), (1700000001.5, 6)], "hum": [(1700000000, 40)]})
    assert murano.history("gw-1", "temp") == []  # nothing sent yet
    device.record(prepared)
    assert murano.history("gw-1", "temp") == [{"timestamp": 1700000001500000, "value": "6"},
                                              {"timestamp": 1700000000000000, "value": "5"}]
    assert murano.history("gw-1", "hum") == [{"timestamp": 1700000000000000, "value": "40"}]
    with pytest.raises(ValueError):
        device.prepare_record({"temp": []})  # what record refuses, prepare_record refuses


def test_record_conflict_body_is_parsed():
    conflict = errors.Conflict("record: HTTP 409", 409, "temp=1554975272,1554975273&hum=1554975280&temp=1554975290")
    assert conflict.conflicts == {"temp": ["1554975272", "1554975273", "1554975290"], "hum": ["1554975280"]}
    assert errors.Conflict("activate: HTTP 409", 409, "").conflicts == {}


def test_timestamp(device):
    assert abs(device.timestamp() - time.time()) < 5


def test_401_drops_the_token_and_activate_provisions_again(device, murano, tmp_path):
    token_file = str(tmp_path / "tokens" / "gw-1")
    old = device.token
    remove_device(murano, "gw-1")
    with pytest.raises(errors.NotActivated) as caught:
        device.write("a", 1)
    assert caught.value.status == 401 and caught.value.body
    assert device.token is None and not device.activated and not os.path.exists(token_file)
    murano.add_device("gw-1")
    new = device.activate()
    assert new != old and open(token_file).read().strip() == new
    device.write("a", 2)
    assert murano.state("gw-1")["a"]["reported"] == "2"


def test_a_server_that_is_down_raises_network_error_then_recovers(device, murano):
    murano.kill()
    for call in (lambda: device.write("a", 1), lambda: device.read("a"), lambda: device.timestamp(),
                 lambda: device.long_poll("a", 1000)):
        with pytest.raises(errors.NetworkError) as caught:
            call()
        assert caught.value.status is None and "refused" in str(caught.value)
    assert device.activated  # a network failure keeps the token
    murano.start()
    device.write("a", 3)
    assert device.read("a") == {"a": "3"}


def test_content_list_info_and_download_with_progress(device, murano, tmp_path):
    blob = os.urandom(700_000)
    upload(murano, CONTENT_NAME, blob)
    assert device.list_content() == [CONTENT_NAME]
    info = device.content_info(CONTENT_NAME)
    assert info["content_type"] == "application/gzip" and info["size"] == len(blob) and info["meta"] == ""
    seen = []
    dest = str(tmp_path / "app.tgz")
    result = device.download_content(CONTENT_NAME, dest, sha256=hashlib.sha256(blob).hexdigest(),
                                     progress=lambda done, total: seen.append((done, total)))
    assert open(dest, "rb").read() == blob and result.size == len(blob) and result.resumed_from == 0
    assert result.sha256 == hashlib.sha256(blob).hexdigest()
    assert seen[0] == (0, len(blob)) and seen[-1] == (len(blob), len(blob)) and len(seen) > 5
    assert not os.path.exists(dest + ".part")
    with pytest.raises(errors.NotFound):
        device.content_info("missing.v1.tar.gz")
    with pytest.raises(errors.NotFound):
        device.download_content("missing.v1.tar.gz", str(tmp_path / "missing"))


def test_sha256_mismatch_leaves_no_file(device, murano, tmp_path):
    upload(murano, CONTENT_NAME, b"x" * 5000)
    dest = str(tmp_path / "app.tgz")
    with pytest.raises(errors.ContentMismatch):
        device.download_content(CONTENT_NAME, dest, sha256="0" * 64)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    with pytest.raises(errors.ContentMismatch):
        device.download_content(CONTENT_NAME, dest, max_bytes=4999)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


class Interrupted(Exception):
    pass


def interrupt_at(limit):
    """A progress callback that stops the download once ``limit`` bytes are on disk (a killed process)."""
    def progress(done, total):
        if done >= limit:
            raise Interrupted()
    return progress


def test_an_interrupted_download_resumes_with_a_range_from_murano_local(device, murano, tmp_path):
    blob = os.urandom(1_000_000)
    upload(murano, CONTENT_NAME, blob)
    dest = str(tmp_path / "app.tgz")
    with pytest.raises(Interrupted):
        device.download_content(CONTENT_NAME, dest, progress=interrupt_at(300_000))
    kept = os.path.getsize(dest + ".part")
    assert 300_000 <= kept < len(blob) and not os.path.exists(dest)
    result = device.download_content(CONTENT_NAME, dest, sha256=hashlib.sha256(blob).hexdigest())
    assert result.resumed_from == kept and open(dest, "rb").read() == blob
    # Interrupted after the last byte: the server answers the resume with 416 and the part is verified as is.
    with pytest.raises(Interrupted):
        device.download_content(CONTENT_NAME, dest, progress=interrupt_at(len(blob)))
    assert os.path.getsize(dest + ".part") == len(blob)
    result = device.download_content(CONTENT_NAME, dest, sha256=hashlib.sha256(blob).hexdigest())
    assert result.resumed_from == len(blob) and not os.path.exists(dest + ".part")


def test_content_replaced_within_the_same_second_is_not_spliced(device, murano, tmp_path):
    old, new = os.urandom(1_000_000), os.urandom(1_000_000)
    wait_for(lambda: time.time() % 1 < 0.5, message="the start of a second")  # both uploads in one second
    upload(murano, CONTENT_NAME, old)
    dest = str(tmp_path / "app.tgz")
    with pytest.raises(Interrupted):
        device.download_content(CONTENT_NAME, dest, progress=interrupt_at(300_000))
    upload(murano, CONTENT_NAME, new)  # same name, same size, other bytes
    result = device.download_content(CONTENT_NAME, dest)
    assert open(dest, "rb").read() == new and result.resumed_from == 0


class CuttingContentServer(http.server.ThreadingHTTPServer):
    """Serves one blob with Range support; the first full download is cut after ``cut_at`` bytes."""

    daemon_threads = True

    def __init__(self, blob: bytes, cut_at: int) -> None:
        self.blob, self.cut_at, self.updated = blob, cut_at, 1700000000
        self.ranges = []
        super().__init__(("127.0.0.1", 0), _CuttingHandler)

    def replace(self, blob: bytes) -> None:
        self.blob, self.updated = blob, self.updated + 60


class _CuttingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        if "info=true" in self.path:
            info = ("application/gzip,%d,%d," % (len(server.blob), server.updated)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(info)))
            self.end_headers()
            self.wfile.write(info)
            return
        byte_range = self.headers.get("Range")
        server.ranges.append(byte_range)
        if byte_range is None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.blob)))
            self.end_headers()
            self.wfile.write(server.blob[:server.cut_at])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # cut mid-body
            self.close_connection = True
            return
        start = int(byte_range.split("=")[1].rstrip("-"))
        self.send_response(206)
        self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(server.blob) - 1, len(server.blob)))
        self.send_header("Content-Length", str(len(server.blob) - start))
        self.end_headers()
        self.wfile.write(server.blob[start:])


def test_a_download_cut_mid_transfer_resumes_with_range(tmp_path, usage_db):
    blob = os.urandom(1_000_000)
    server = CuttingContentServer(blob, cut_at=400_000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = str(tmp_path / "app.tgz")
    try:
        with Device("http://127.0.0.1:%d" % server.server_address[1], token="t" * 40, usage_db=usage_db) as dev:
            with pytest.raises(errors.NetworkError):
                dev.download_content(CONTENT_NAME, dest, sha256=hashlib.sha256(blob).hexdigest())
            assert not os.path.exists(dest)
            kept = os.path.getsize(dest + ".part")
            assert 0 < kept <= 400_000
            result = dev.download_content(CONTENT_NAME, dest, sha256=hashlib.sha256(blob).hexdigest())
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [None, "bytes=%d-" % kept]
    assert result.resumed_from == kept and open(dest, "rb").read() == blob
    assert not os.path.exists(dest + ".part") and not os.path.exists(dest + ".part.source")


def test_a_partial_download_is_not_resumed_once_the_content_changed(tmp_path, usage_db):
    old, new = os.urandom(500_000), os.urandom(500_000)
    server = CuttingContentServer(old, cut_at=200_000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = str(tmp_path / "app.tgz")
    try:
        with Device("http://127.0.0.1:%d" % server.server_address[1], token="t" * 40, usage_db=usage_db) as dev:
            with pytest.raises(errors.NetworkError):
                dev.download_content(CONTENT_NAME, dest)
            assert os.path.getsize(dest + ".part") > 0
            server.replace(new)  # same size, other bytes: a resume would splice two versions
            server.cut_at = len(new)
            result = dev.download_content(CONTENT_NAME, dest)
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [None, None]
    assert result.resumed_from == 0 and open(dest, "rb").read() == new


class _SwapAfterInfoHandler(_CuttingHandler):
    """Replaces the blob right after answering an info request, once ``server.swap_to`` is set."""

    def do_GET(self):
        super().do_GET()
        if "info=true" in self.path and getattr(self.server, "swap_to", None) is not None:
            self.server.replace(self.server.swap_to)
            self.server.swap_to = None


def test_a_resume_answered_for_a_copy_replaced_after_the_check_is_not_spliced(tmp_path, usage_db):
    old, new = os.urandom(500_000), os.urandom(600_000)
    server = CuttingContentServer(old, cut_at=200_000)
    server.RequestHandlerClass = _SwapAfterInfoHandler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = str(tmp_path / "app.tgz")
    try:
        with Device("http://127.0.0.1:%d" % server.server_address[1], token="t" * 40, usage_db=usage_db) as dev:
            with pytest.raises(errors.NetworkError):
                dev.download_content(CONTENT_NAME, dest)
            kept = os.path.getsize(dest + ".part")
            server.swap_to, server.cut_at = new, len(new)  # replaced between the check and the Range request
            result = dev.download_content(CONTENT_NAME, dest)
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [None, "bytes=%d-" % kept, None]
    assert result.resumed_from == 0 and open(dest, "rb").read() == new


# -- TLS -----------------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = str(tmp_path_factory.mktemp("pki"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=" + name, cwd=d)
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext + "\n")
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=d)
    return d


class _RecordingTLSHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        peer = self.connection.getpeercert()
        self.server.seen.append((self.headers.get("X-Exosite-CIK"), dict(x[0] for x in peer["subject"])["commonName"]
                                 if peer else None))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _tls_server(pki, require_client_cert):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingTLSHandler)
    server.daemon_threads = True
    server.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(pki, "server.pem"), os.path.join(pki, "server.key"))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(os.path.join(pki, "ca.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_tls_is_verified_by_default_and_trusts_a_given_ca(pki, usage_db, monkeypatch):
    server = _tls_server(pki, require_client_cert=False)
    url = "https://127.0.0.1:%d" % server.server_address[1]
    try:
        with Device(url, token="t" * 40, usage_db=usage_db) as dev:
            with pytest.raises(errors.TLSError):
                dev.write("a", 1)
        with Device(url, token="t" * 40, ca_file=os.path.join(pki, "ca.pem"), usage_db=usage_db) as dev:
            dev.write("a", 1)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", os.path.join(pki, "ca.pem"))  # as requests takes it
        with Device(url, token="t" * 40, usage_db=usage_db) as dev:
            dev.write("a", 1)
    finally:
        server.shutdown()
        server.server_close()
    assert server.seen == [("t" * 40, None)] * 2


def test_the_environment_is_read_when_the_device_is_made_not_for_each_request(device, murano, monkeypatch):
    """requests looks up proxies, no_proxy and the CA bundle again for every request (0.5 ms of
    CPU each); a Device, which talks to one host, takes them as it is made."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:%d" % free_port())  # nothing listens there
    device.write("a", 1)
    assert device.read("a") == {"a": "1"}


def test_tls_client_certificate_auth_sends_no_token(pki, usage_db):
    server = _tls_server(pki, require_client_cert=True)
    url = "https://127.0.0.1:%d" % server.server_address[1]
    cert = (os.path.join(pki, "client.pem"), os.path.join(pki, "client.key"))
    try:
        with Device(url, ca_file=os.path.join(pki, "ca.pem"), cert=cert, identity="test-tls",
                    usage_db=usage_db) as dev:
            assert dev.activated and dev.activate() == ""
            dev.write("a", 1)
    finally:
        server.shutdown()
        server.server_close()
    assert server.seen == [(None, "client")]
    write = usage_report(usage_db)["lo"]["test-tls"]["write:['a']"]
    assert write["num"] == 1 and write["tot_tx"] > 100 and write["tot_rx"] > 20  # metered inside TLS too


def test_mqtt_takes_a_combined_client_certificate_file_as_http_does(pki, tmp_path):
    """``cert="combined.pem"`` (certificate and key in one file) is documented for both transports."""
    combined = str(tmp_path / "client-combined.pem")
    with open(combined, "w") as out:
        for name in ("client.pem", "client.key"):
            with open(os.path.join(pki, name)) as part:
                out.write(part.read())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(pki, "server.pem"), os.path.join(pki, "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(os.path.join(pki, "ca.pem"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    seen = []

    def serve():  # a TLS endpoint that notes the client certificate, then hangs up
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    seen.append(dict(x[0] for x in tls.getpeercert()["subject"])["commonName"])
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with Device("https://127.0.0.1:9", transport="mqtt", mqtt_url="mqtts://127.0.0.1:%d" % listener.getsockname()[1],
                    ca_file=os.path.join(pki, "ca.pem"), cert=combined, usage_db=False, connect_timeout=2) as dev:
            with pytest.raises(errors.NetworkError):
                dev.write("a", 1)  # the fake endpoint speaks no MQTT
    finally:
        listener.close()
    assert seen and seen[0] == "client"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's next scripted (status, body, headers)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body, headers = self.server.script.pop(0)
        self.server.paths.append(self.path)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def test_http_failures_map_to_error_types_with_status_and_body(usage_db):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    server.daemon_threads = True
    server.script = [
        (403, b"Device Not in Murano", []),
        (400, b"bad alias", []),
        (500, b"database on fire", []),
        (503, b"", []),
        (302, b"", [("Location", "http://127.0.0.1:1/steal-the-token")]),
        (200, b"x" * (17 * 1024 * 1024), []),
        (200, b"no-equals-sign", []),
    ]
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Device("http://127.0.0.1:%d" % server.server_address[1], token="t" * 40, usage_db=usage_db) as dev:
            expected = [(errors.Forbidden, 403, "Device Not in Murano"), (errors.RequestError, 400, "bad alias"),
                        (errors.ServerError, 500, "database on fire"), (errors.ServerError, 503, ""),
                        (errors.DeviceAPIError, 302, ""), (errors.DeviceAPIError, 200, ""),
                        (errors.DeviceAPIError, 200, "no-equals-sign")]
            for kind, status, body in expected:
                with pytest.raises(kind) as caught:
                    dev.read("a")
                assert (caught.value.status, caught.value.body) == (status, body)
                assert not isinstance(caught.value, errors.NetworkError)
            assert dev.activated  # only a 401 drops the token
    finally:
        server.shutdown()
        server.server_close()
    assert server.paths == ["/onep:v1/stack/alias?a"] * 7  # the redirect was not followed


def test_a_server_that_never_answers_times_out(usage_db):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never reads or answers
    try:
        with Device("http://127.0.0.1:%d" % listener.getsockname()[1], token="t" * 40, read_timeout=0.5,
                    usage_db=usage_db) as dev:
            started = time.monotonic()
            with pytest.raises(errors.NetworkError) as caught:
                dev.read("a")
            assert time.monotonic() - started > 0.4
            assert caught.value.status is None and "timed out" in str(caught.value)
        listener.settimeout(0.3)
        connections = []
        with pytest.raises(socket.timeout):
            while True:
                connections.append(listener.accept()[0])
        assert len(connections) == 1  # a timeout is not retried on a new connection
        for conn in connections:
            conn.close()
    finally:
        listener.close()
    assert usage_report(usage_db)["lo"]["gwe"]["read:['a']"]["num"] == 1  # the request went out: it is logged


def test_an_untested_urllib3_is_one_clear_error():
    """The HTTP transport uses urllib3 internals (ConnectionCls, pool_classes_by_scheme): another major is refused."""
    import sys

    from device_client.transport_http import check_urllib3

    check_urllib3()  # the installed one is fine
    for version in ("3.0.0", "1.26.18", "garbage"):
        with pytest.raises(ImportError, match=r"needs urllib3 2\.x"):
            check_urllib3(version)
    code = ("import urllib3; urllib3.__version__ = '3.1.0'; from device_client import Device; "
            "Device('http://127.0.0.1:1', serial='x', usage_db=False)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("ImportError: device_client needs urllib3 2.x")
