"""murano_local keeps everything in its data directory across kill -9 and restart; the operator CLI."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest
import requests
from click.testing import CliRunner

from harness import MuranoLocal, free_port, port_open, stop_process, wait_for
from murano_local.cli import main


def cli(murano, *args):
    return CliRunner().invoke(main, ["--url", murano.url] + list(args))


def activate(murano, identity):
    murano.add_device(identity)
    r = requests.post(murano.url + "/provision/activate", data={"id": identity})
    assert r.status_code == 200
    return {"X-Exosite-CIK": r.text}


def test_state_tokens_history_and_content_survive_kill_9(murano, tmp_path):
    auth = activate(murano, "gw")
    assert requests.post(murano.url + "/onep:v1/stack/alias", data="temp=21", headers=auth).status_code == 204
    assert requests.post(murano.url + "/onep:v1/stack/record", data="alias=log&100=a&200=b",
                         headers=auth).status_code == 204
    murano.set("gw", "engine_fetch", '{"install": [{"name": "app.v1.tar.gz"}]}')
    blob = tmp_path / "app.v1.tar.gz"
    blob.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 64)
    assert cli(murano, "content", "upload", str(blob)).exit_code == 0
    state, history = murano.state("gw"), murano.history("gw", "log")

    murano.kill()
    murano.start()

    assert murano.state("gw") == state and murano.history("gw", "log") == history
    r = requests.get(murano.url + "/onep:v1/stack/alias?engine_fetch",
                     headers=dict(auth, **{"Request-Timeout": "5000"}))
    assert (r.status_code, r.text) == (200, "engine_fetch=" + requests.utils.quote(
        '{"install": [{"name": "app.v1.tar.gz"}]}', safe="").replace("%20", "+"))
    assert requests.get(murano.url + "/provision/download?id=app.v1.tar.gz", headers=auth).content == \
        blob.read_bytes()
    assert requests.post(murano.url + "/provision/activate", data={"id": "gw"}).status_code == 409


@pytest.mark.slow
def test_every_acknowledged_write_survives_kill_9_mid_stream(murano):
    auth = activate(murano, "w")
    acked = []
    stop = threading.Event()

    def writer():
        session = requests.Session()
        n = 0
        while not stop.is_set():
            try:
                r = session.post(murano.url + "/onep:v1/stack/alias", data="n=%d" % n, headers=auth, timeout=5)
            except requests.RequestException:
                return
            if r.status_code == 204:
                acked.append(str(n))
            n += 1

    for _round in range(3):
        stop.clear()
        thread = threading.Thread(target=writer)
        thread.start()
        wait_for(lambda r=_round: len(acked) >= 20 * (r + 1), 30, message="writes acknowledged")
        murano.kill()
        stop.set()
        thread.join(10)
        murano.start()
        stored = {p["value"] for p in murano.history("w", "n", limit=100000)}
        assert set(acked) <= stored


def test_operator_cli_devices_state_history(murano):
    result = cli(murano, "device", "add", "cli-1")
    assert result.exit_code == 0 and "cli-1" in result.stdout
    assert cli(murano, "device", "add", "cli-1").exit_code == 0
    assert cli(murano, "device", "list").stdout.split() == ["cli-1", "whitelisted"]
    auth = {"X-Exosite-CIK": requests.post(murano.url + "/provision/activate", data={"id": "cli-1"}).text}
    listed = json.loads(cli(murano, "device", "list", "--json").stdout)
    assert [(d["identity"], d["status"]) for d in listed] == [("cli-1", "provisioned")]

    requests.post(murano.url + "/onep:v1/stack/alias", data="a=1&b=2", headers=auth)
    requests.post(murano.url + "/onep:v1/stack/alias", data="a=3", headers=auth)
    assert cli(murano, "device", "write", "cli-1", "b", "from-cloud").exit_code == 0
    state = json.loads(cli(murano, "device", "read", "cli-1", "b").stdout)
    assert list(state) == ["b"]
    assert (state["b"]["reported"], state["b"]["set"]) == ("2", "from-cloud")
    history = json.loads(cli(murano, "device", "history", "cli-1", "a", "--limit", "1").stdout)
    assert [h["value"] for h in history] == ["3"]
    assert all(isinstance(h["timestamp"], int) for h in history)

    result = cli(murano, "device", "write", "ghost", "a", "1")
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1 and "404" in result.stderr


def test_operator_cli_content(murano, tmp_path):
    blob = tmp_path / "f.bin"
    blob.write_bytes(b"x" * 1000)
    assert cli(murano, "content", "upload", str(blob), "--name", "fw.v2.tar.gz").exit_code == 0
    assert cli(murano, "content", "list").stdout.split() == ["fw.v2.tar.gz", "1000", "application/octet-stream"]
    assert cli(murano, "content", "delete", "fw.v2.tar.gz").exit_code == 0
    assert json.loads(cli(murano, "content", "list", "--json").stdout) == []
    result = cli(murano, "content", "delete", "fw.v2.tar.gz")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1


def test_device_read_decodes_dataports_holding_json(murano):
    """engine_report, fetch_status...: Murano stores JSON as text; read shows it decoded and indented."""
    auth = activate(murano, "gw-r")
    report = {"apps": [{"counter": {"status": "RUNNING", "version": "2"}}], "gwe_version": "0.1.0"}
    requests.post(murano.url + "/onep:v1/stack/alias", headers=auth, timeout=10,
                  data={"engine_report": json.dumps(report), "temp": "19.5", "note": "[not json", "empty": ""})
    assert cli(murano, "device", "write", "gw-r", "engine_fetch", '{"install": []}').exit_code == 0
    shown = cli(murano, "device", "read", "gw-r")
    assert shown.exit_code == 0
    state = json.loads(shown.stdout)
    assert state["engine_report"]["reported"] == report and state["engine_fetch"]["set"] == {"install": []}
    assert (state["temp"]["reported"], state["note"]["reported"], state["empty"]["reported"]) == ("19.5", "[not json", "")
    assert "\n      \"apps\": [\n" in shown.stdout  # indented, for a terminal
    compact = cli(murano, "device", "read", "gw-r", "engine_report", "--json")
    assert compact.stdout.count("\n") == 1 and json.loads(compact.stdout) == {"engine_report": state["engine_report"]}
    raw = json.loads(cli(murano, "device", "read", "gw-r", "engine_report", "--raw").stdout)
    assert raw["engine_report"]["reported"] == json.dumps(report)  # as stored


def test_cli_reports_an_unreachable_server_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "device", "list"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "nothing answers at http://127.0.0.1:9 " in result.stderr


def test_content_range_requests(murano, tmp_path):
    auth = activate(murano, "r")
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 4)
    assert cli(murano, "content", "upload", str(blob)).exit_code == 0
    url = murano.url + "/provision/download?id=blob"
    r = requests.get(url, headers=dict(auth, Range="bytes=10-19"))
    assert r.status_code == 206 and r.content == bytes(range(10, 20))
    assert r.headers["Content-Range"] == "bytes 10-19/1024"
    r = requests.get(url, headers=dict(auth, Range="bytes=1000-"))
    assert r.status_code == 206 and r.content == bytes(range(232, 256))
    r = requests.get(url, headers=dict(auth, Range="bytes=-4"))
    assert r.status_code == 206 and r.content == bytes(range(252, 256))
    r = requests.get(url, headers=dict(auth, Range="bytes=5000-"))
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */1024"
    r = requests.get(url, headers=dict(auth, Range="bytes=1-2,5-6"))
    assert r.status_code == 200 and len(r.content) == 1024


def run_serve(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "murano_local", "serve"] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_a_taken_port_and_a_bad_data_dir_in_one_line(murano, tmp_path):
    result = run_serve("--port", str(murano.port), "--data", str(tmp_path / "other"), "--log-level", "ERROR")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "cannot serve" in result.stderr
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_serve("--port", "0", "--data", str(not_a_dir / "sub"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "data directory" in result.stderr
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "murano_local.sqlite3").write_bytes(b"this is not a database" * 100)
    result = run_serve("--port", "0", "--data", str(garbage))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "data directory" in result.stderr


def test_connections_over_the_cap_get_503(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "murano_local", "serve", "--port", str(port), "--data",
                             str(tmp_path / "d"), "--max-connections", "3"], stderr=subprocess.DEVNULL)
    held = []
    try:
        wait_for(lambda: port_open(port), 15)
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(lambda: _status(port) == 503, 10, message="a 503 beyond the cap")
        for s in held:
            s.close()
        wait_for(lambda: _status(port) == 200, 10, message="service once connections are released")
    finally:
        stop_process(proc)


def _status(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /timestamp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(s.recv(100).split(b" ")[1])


def test_sigterm_stops_promptly_even_while_connections_arrive(tmp_path):
    server = MuranoLocal(str(tmp_path / "term"))
    for _round in range(5):
        server.start()
        stop = threading.Event()

        def hammer(stop=stop):
            while not stop.is_set():
                try:
                    socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                except OSError:
                    pass

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(5) == 0
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            server.kill()


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_and_data_directory_are_private(murano, tmp_path):
    auth = activate(murano, "secret")  # the token is in the -wal until a checkpoint
    assert requests.post(murano.url + "/onep:v1/stack/alias", data="a=1", headers=auth).status_code == 204
    database = os.path.join(murano.data, "murano_local.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        assert _mode(database + suffix) == 0o600, suffix
    assert _mode(murano.data) == 0o700 and _mode(os.path.join(murano.data, "content")) == 0o700
    # a data directory left readable by an older version is tightened at start
    murano.stop()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(database + suffix):
            os.chmod(database + suffix, 0o644)
    os.chmod(murano.data, 0o755)
    murano.start()
    assert requests.get(murano.url + "/onep:v1/stack/alias?a", headers=auth).text == "a=1"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(database + suffix):
            assert _mode(database + suffix) == 0o600, suffix
    assert _mode(murano.data) == 0o700
