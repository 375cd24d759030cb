"""The gdc CLI as a real subprocess (``python -m device_client``) against murano_local."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import requests
from harness import free_port


def gdc(*args, env=None):
    return subprocess.run([sys.executable, "-m", "device_client", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.slow
def test_gdc_session_against_murano_local(murano, gwe_home, tmp_path):
    murano.add_device("gw-cli")
    blob = os.urandom(100_000)
    requests.put("%s/api:1/service/%s/content/item/app.v2.tar.gz" % (murano.url, murano.product_id),
                 data=blob, timeout=10).raise_for_status()
    db = str(tmp_path / "usage.db")
    base = ["--host", murano.url, "--serial", "gw-cli", "--usage-db", db]

    activated = gdc(*base, "activate")
    assert activated.returncode == 0, activated.stderr
    token = activated.stdout.strip()
    token_file = os.path.join(str(gwe_home), "var", "lib", "gwe", "tokens",
                              "gw-cli@127.0.0.1_%d.token" % int(murano.url.rsplit(":", 1)[1]))
    assert open(token_file).read().strip() == token and stat.S_IMODE(os.stat(token_file).st_mode) == 0o600

    assert gdc(*base, "write", "temp=21", "msg=a b=c").returncode == 0
    assert murano.state("gw-cli")["msg"]["reported"] == "a b=c"
    read = gdc(*base, "--json", "read", "temp", "msg")
    assert json.loads(read.stdout) == {"temp": "21", "msg": "a b=c"}
    assert gdc(*base, "read", "temp").stdout == "temp=21\n"

    polled = gdc(*base, "poll", "config_io", "--timeout-ms", "300", "--json")
    assert polled.returncode == 0 and json.loads(polled.stdout) == {"values": {}, "last_modified": None}

    assert gdc(*base, "record", "data_in", "1700000000=1", "1700000001.5=2").returncode == 0
    assert [p["timestamp"] for p in murano.history("gw-cli", "data_in")] == [1700000001500000, 1700000000000000]

    assert abs(int(gdc(*base, "timestamp").stdout) - time.time()) < 5
    assert gdc(*base, "content", "list").stdout.split() == ["app.v2.tar.gz"]
    info = json.loads(gdc(*base, "content", "info", "app.v2.tar.gz", "--json").stdout)
    assert info["size"] == len(blob)
    dest = str(tmp_path / "got.tgz")
    got = gdc(*base, "content", "get", "app.v2.tar.gz", dest, "--sha256", hashlib.sha256(blob).hexdigest())
    assert got.returncode == 0, got.stderr
    assert open(dest, "rb").read() == blob

    bad = gdc(*base, "content", "get", "app.v2.tar.gz", str(tmp_path / "bad.tgz"), "--sha256", "0" * 64)
    assert bad.returncode == 8 and bad.stderr.count("\n") == 1 and "sha256" in bad.stderr
    assert not os.path.exists(str(tmp_path / "bad.tgz"))

    usage = json.loads(gdc("--usage-db", db, "usage", "--json").stdout)
    assert usage["lo"]["top_consumer"] == "gdc"
    assert usage["lo"]["gdc"]["write:['temp', 'msg']"]["num"] == 1
    assert usage["lo"]["gdc"]["read:['temp', 'msg']"]["num"] == 1
    assert usage["lo"]["gdc"]["read:['temp']"]["num"] == 1
    flushed = json.loads(gdc("--usage-db", db, "usage", "--flush").stdout)
    assert flushed == usage
    assert json.loads(gdc("--usage-db", db, "usage").stdout) == {}
    nowhere = str(tmp_path / "no" / "usage.db")
    assert json.loads(gdc("--usage-db", nowhere, "usage").stdout) == {} and not os.path.exists(nowhere)


def test_gdc_failures_are_one_line_and_an_exit_code(murano, gwe_home):
    down = "http://127.0.0.1:%d" % free_port()
    cases = [
        (["--host", down, "--token", "t" * 40, "--no-usage", "read", "a"], 6, "refused"),
        (["--host", murano.url, "--serial", "nobody", "--no-usage", "activate"], 4, "404"),
        (["--host", murano.url, "--serial", "not-yet", "--no-usage", "read", "a"], 3, "activate"),
        (["--host", murano.url, "--token", "t" * 40, "--no-usage", "read", "a"], 3, "401"),
        (["--host", murano.url, "--no-usage", "write", "novalue"], 2, "ALIAS=VALUE"),
        (["--host", "ftp://x", "--no-usage", "timestamp"], 2, "host"),
        (["--no-usage", "timestamp"], 2, "--host"),
        (["nosuchcommand"], 2, "nosuchcommand"),
    ]
    for args, code, text in cases:
        result = gdc(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("gdc: error: "), (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_stored_token_is_never_sent_to_another_host(murano, gwe_home):
    """The default token file belongs to one host: the same serial against another server must
    not send it the first one's token (a local dev server would get a real device's token)."""
    import http.server
    import threading

    received = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            received.append(self.headers.get("X-Exosite-CIK"))
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        murano.add_device("gw-two")
        activated = gdc("--host", murano.url, "--serial", "gw-two", "--no-usage", "activate")
        assert activated.returncode == 0, activated.stderr
        token = activated.stdout.strip()
        elsewhere = gdc("--host", "http://127.0.0.1:%d" % other.server_address[1], "--serial", "gw-two",
                        "--no-usage", "read", "a")
        assert elsewhere.returncode == 3 and "activate" in elsewhere.stderr
        assert token not in received and received == []
        again = gdc("--host", murano.url, "--serial", "gw-two", "--no-usage", "read", "a")
        assert again.returncode == 0, again.stderr  # the first host's token is still there for it
    finally:
        other.shutdown()
        other.server_close()


def test_the_original_form_gdc_write_cik_alias_value(murano, gwe_home, tmp_path):
    """Reference §8: ``gdc write "$(gwe --gateway-cik)" fetch_status "…"``, run by a shell as the
    original docs did, lands on the gateway's Murano (Gateway.cfg); before activation gwe prints
    ``''`` and gdc says so in one line (exit 3) instead of sending anything."""
    from device_client import Device
    from gwe import config

    config.update_gateway_config({"host": murano.url, "vendor": murano.product_id, "model": murano.product_id,
                                  "uuid": "gw-legacy"})
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    line = 'gdc write "$(gwe --gateway-cik)" fetch_status "install log: a=1 & b=2"'
    before = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60, env=env)
    assert before.returncode == 3 and before.stderr.count("\n") == 1 and "not activated" in before.stderr
    assert "Traceback" not in before.stderr

    murano.add_device("gw-legacy")
    with Device(murano.url, serial="gw-legacy", usage_db=False) as device:
        config.update_gateway_config({"cik": device.activate()})
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert murano.state("gw-legacy")["fetch_status"]["reported"] == "install log: a=1 & b=2"
    usage = json.loads(gdc("usage", "--json").stdout)
    assert usage["lo"]["gdc"]["write:['fetch_status']"]["num"] == 1

    # today's form is unchanged, and a first argument without "=" needs exactly CIK ALIAS VALUE
    cik = config.load_gateway_config().cik
    assert gdc("--host", murano.url, "--token", cik, "write", "a=1", "b=2").returncode == 0
    assert murano.state("gw-legacy")["b"]["reported"] == "2"
    wrong = gdc("write", cik, "fetch_status")
    assert wrong.returncode == 2 and "CIK ALIAS VALUE" in wrong.stderr and cik not in wrong.stderr
