"""Acceptance: Exosite's own client library, unchanged, against murano_local."""
import threading
import time

import pytest
from murano_client.http import MuranoHTTP

from harness import wait_for


@pytest.fixture
def client(murano):
    murano.add_device("gw-001")
    api = MuranoHTTP(murano_host=murano.url + "/", murano_id="gw-001", http_timeout=10)
    api.http_activate()
    assert api.is_activated()
    return api


def test_activate_gives_a_40_char_token_once(murano):
    murano.add_device("gw-002")
    api = MuranoHTTP(murano_host=murano.url + "/", murano_id="gw-002")
    handler = api._http_activate()
    assert handler.activated and len(handler.body) == 40 and handler.body.isalnum()
    again = api._http_activate()
    assert again.code == 409 and not again.activated
    stranger = MuranoHTTP(murano_host=murano.url + "/", murano_id="nobody")._http_activate()
    assert stranger.code == 404


def test_write_then_read_round_trips_raw_json(client, murano):
    assert client.http_write("data_in", '{"some": "json data", "n": [1, 2]}').code == 204
    assert client.http_write_multiple({"temp": "42", "hum": "30"}).code == 204
    read = client.http_read(["data_in", "temp", "hum", "undefined"])
    assert read.code == 200
    assert read.body == 'data_in={"some": "json data", "n": [1, 2]}&temp=42&hum=30'
    state = murano.state("gw-001")
    assert state["temp"]["reported"] == state["temp"]["set"] == "42"
    assert client.http_read(["nothing_here"]).code == 204


def test_long_poll_times_out_with_304(client):
    for since in (None, int(time.time()), str(int(time.time())), time.time()):
        started = time.monotonic()
        response = client.http_long_poll("config_io", timeout_ms=1000, modify_ts=since)
        elapsed = time.monotonic() - started
        assert response.code == 304, since
        assert 0.9 <= elapsed < 5


def test_long_poll_returns_a_value_the_operator_sets_meanwhile(client, murano):
    results = []
    poller = threading.Thread(target=lambda: results.append(
        client.http_long_poll(["config_io", "data_out"], timeout_ms=20000)))
    started = time.monotonic()
    poller.start()
    wait_for(lambda: murano.info()["long_polls_waiting"] == 1, message="the poll to block")
    murano.set("gw-001", "data_out", "reboot now")
    poller.join(15)
    assert time.monotonic() - started < 10
    response = results[0]
    assert response.code == 200 and response.body == "data_out=reboot now"
    assert response.response.headers["Last-Modified"].endswith("GMT")
    # Still pending (not echoed back): answered at once. After the echo, the poll blocks again.
    assert client.http_long_poll("data_out", timeout_ms=5000).code == 200
    client.http_write("data_out", "reboot now")
    assert client.http_long_poll("data_out", timeout_ms=500).code == 304


def test_record_stores_history_with_the_given_timestamps(client, murano):
    response = client.http_record({"data_in": {1554975272.470659: '{"a": 1}', 1554975273: '{"a": 2}'}})
    assert response.code == 204
    assert murano.history("gw-001", "data_in") == [
        {"timestamp": 1554975273000000, "value": '{"a": 2}'},
        {"timestamp": 1554975272470659, "value": '{"a": 1}'},
    ]


def test_timestamp(client):
    response = client.exosite_timestamp()
    assert response.status_code == 200
    assert abs(int(response.text) - time.time()) < 5


def test_content_list_info_download(client, murano, tmp_path):
    blob = tmp_path / "app.v1.tar.gz"
    blob.write_bytes(bytes(range(256)) * 1000)
    from murano_local.cli import main
    from click.testing import CliRunner
    result = CliRunner().invoke(main, ["--url", murano.url, "content", "upload", str(blob),
                                       "--type", "application/gzip"])
    assert result.exit_code == 0, result.output
    listing = client._http_listContent()
    assert listing.status_code == 200 and listing.text.split() == ["app.v1.tar.gz"]
    info = client._http_getContentInfo("app.v1.tar.gz")
    kind, size, updated, meta = info.text.split(",")
    assert (kind, int(size), meta) == ("application/gzip", 256000, "")
    assert abs(int(updated) - time.time()) < 60
    download = client._http_getContent("app.v1.tar.gz", stream=True)
    assert download.status_code == 200
    assert b"".join(download.iter_content(4096)) == blob.read_bytes()
