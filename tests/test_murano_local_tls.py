"""murano-local over HTTPS and MQTT over TLS with its local CA, for Exosite's own clients unchanged."""
import os
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest
import requests
from murano_client.client import MuranoClient

from harness import MuranoLocal, free_port, wait_for
from mqtt_helpers import make_tls


@pytest.fixture
def tls_server(tmp_path):
    """murano-local with --https-port and --mqtts-port; ``.https`` and ``.mqtts`` are the ports."""
    https, mqtts = free_port(), free_port()
    server = MuranoLocal(str(tmp_path / "ml"), args=["--https-port", str(https), "--mqtts-port", str(mqtts)])
    server.https, server.mqtts = https, mqtts
    server.start()
    yield server
    server.stop()


def local_ca(data):
    out = subprocess.run([sys.executable, "-m", "murano_local", "ca", "--data", data], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.strip()


def _stop(client):
    client.stop_all()


def test_murano_client_over_https_activates_writes_and_long_polls_with_the_local_ca(tls_server):
    ca = local_ca(tls_server.data)
    assert ca == os.path.join(tls_server.data, "tls", "ca.pem")
    tls_server.add_device("exo-https")
    client = MuranoClient(murano_host="https://localhost:%d/" % tls_server.https, murano_id="exo-https",
                          watchlist=["config_io"], murano_cacert=ca, http_timeout=5)
    try:
        client.client_activate()
        assert client.is_activated() and len(client.murano_token()) == 40
        assert client.http_write("data_in", '{"temperature": 20}').code == 204
        assert tls_server.state("exo-https")["data_in"]["reported"] == '{"temperature": 20}'
        client.start_client()  # its tell thread records, its watch thread long-polls config_io
        client.tell(resource="data_in", timestamp=time.time(), payload='{"temperature": 21}')
        wait_for(lambda: '{"temperature": 21}' in [p["value"] for p in tls_server.history("exo-https", "data_in")],
                 15, message="the recorded value")  # at a whole second: older than the write, so history only
        tls_server.set("exo-https", "config_io", "cfg-v1")
        got = client.watch(timeout=15)
        assert (got.resource, got.payload) == ("config_io", "cfg-v1")
    finally:
        _stop(client)
    # not trusted without the local CA: TLS is verified, and there is no plain fallback on that port
    with pytest.raises(requests.exceptions.SSLError):
        requests.get("https://localhost:%d/timestamp" % tls_server.https, timeout=10)
    assert requests.get("https://127.0.0.1:%d/timestamp" % tls_server.https, verify=ca, timeout=10).ok
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get("http://127.0.0.1:%d/timestamp" % tls_server.https, timeout=10)


def test_murano_client_mqtt_over_tls_activates_writes_and_receives_a_set_with_the_local_ca(tls_server):
    ca = local_ca(tls_server.data)
    tls_server.add_device("exo-mqtts")
    client = MuranoClient(murano_host="mqtt://localhost", murano_port=tls_server.mqtts, murano_id="exo-mqtts",
                          watchlist=["config_io"], murano_cacert=ca)
    try:
        client.start_client()  # activates over $provision, then connects with the token
        wait_for(client.is_activated, 15, message="activation over MQTT/TLS")
        assert len(client.murano_token()) == 40
        client.tell(resource="data_in", timestamp=time.time(), payload='{"temperature": 22}')
        wait_for(lambda: '{"temperature": 22}' in [p["value"] for p in tls_server.history("exo-mqtts", "data_in")],
                 15, message="the recorded value")
        tls_server.set("exo-mqtts", "config_io", "cfg-v2")
        got = client.watch(timeout=15)
        assert (got.resource, got.payload) == ("config_io", "cfg-v2")
        assert int(got.timestamp) == tls_server.state("exo-mqtts")["config_io"]["timestamp"]
    finally:
        client.always_reconnect = False
        _stop(client)


def _presented(port, ca):
    """The certificate a TLS server on ``port`` presents, verified against ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert()


def test_the_local_ca_is_made_once_private_and_kept(tls_server, tmp_path):
    ca = local_ca(tls_server.data)
    tls = os.path.dirname(ca)
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(os.path.join(tls, key)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tls).st_mode) == 0o700
    names = dict(_presented(tls_server.https, ca))["subjectAltName"]
    assert {("DNS", "localhost"), ("IP Address", "127.0.0.1"), ("IP Address", "0:0:0:0:0:0:0:1")} <= set(names) \
        or {("DNS", "localhost"), ("IP Address", "127.0.0.1"), ("IP Address", "::1")} <= set(names)
    before = {name: open(os.path.join(tls, name), "rb").read() for name in sorted(os.listdir(tls))}
    tls_server.stop()
    tls_server.start()
    assert {name: open(os.path.join(tls, name), "rb").read() for name in sorted(os.listdir(tls))} == before
    assert _presented(tls_server.mqtts, ca)
    # `ca` on a directory with none yet makes one (clients can be set up before the first start)
    fresh = local_ca(str(tmp_path / "fresh"))
    assert os.path.exists(fresh) and fresh != ca


def test_mqtt_cert_and_key_still_override_the_local_certificate(tmp_path):
    own_ca, cert, key = make_tls(str(tmp_path / "own"))
    https, mqtts = free_port(), free_port()
    server = MuranoLocal(str(tmp_path / "ml"), args=["--https-port", str(https), "--mqtts-port", str(mqtts),
                                                     "--mqtt-cert", cert, "--mqtt-key", key]).start()
    try:
        assert _presented(mqtts, own_ca)  # MQTT: the given certificate
        assert _presented(https, local_ca(server.data))  # HTTPS: the local CA's
        with pytest.raises(ssl.SSLCertVerificationError):
            _presented(mqtts, local_ca(server.data))
    finally:
        server.stop()


def _verifies(cert_path, ca_path):
    """``cert_path`` is signed by the CA in ``ca_path`` (raises otherwise)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    ca = x509.load_pem_x509_certificate(open(ca_path, "rb").read())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    return cert.issuer == ca.subject


def test_a_damaged_or_foreign_server_certificate_is_issued_again(tmp_path):
    from murano_local.tls import LocalCA

    ca = LocalCA(str(tmp_path / "d")).ensure()
    first_ca = open(ca.ca_cert, "rb").read()
    _own_ca, foreign, foreign_key = make_tls(str(tmp_path / "other"))
    os.replace(foreign, ca.server_cert)  # signed by another CA
    os.replace(foreign_key, ca.server_key)
    LocalCA(str(tmp_path / "d")).ensure()
    assert _verifies(ca.server_cert, ca.ca_cert) and open(ca.ca_cert, "rb").read() == first_ca
    open(ca.server_cert, "wb").write(b"")  # what a cut might leave
    LocalCA(str(tmp_path / "d")).ensure(["192.0.2.7"])
    assert _verifies(ca.server_cert, ca.ca_cert)
    assert ca.server_context()
    open(ca.ca_key, "wb").write(b"garbage")  # a CA that cannot sign any more: a new one, said in the log
    LocalCA(str(tmp_path / "d")).ensure()
    assert open(ca.ca_cert, "rb").read() != first_ca and _verifies(ca.server_cert, ca.ca_cert)


def test_a_busy_https_port_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "murano_local", "serve", "--port", "0", "--https-port", str(port),
                               "--data", str(tmp_path / "data"), "--log-level", "ERROR"],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "murano-local: error: cannot serve on 127.0.0.1:%d: Address already in use" % port]
