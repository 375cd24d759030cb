"""gwe's clear of a value it took (gwe/cloud_sets.py) against a real murano_local, over HTTP and MQTT:
an operator's newer set that reached the cloud before the clear is kept and polled next; a clear
the server does not date by its timestamp falls back to a plain write."""
import json

import pytest

from device_client import Device
from harness import MuranoLocal

REQUEST_V1 = json.dumps({"install": [{"name": "app.v1.tar.gz"}]})
REQUEST_V2 = json.dumps({"install": [{"name": "app.v2.tar.gz"}]})


@pytest.fixture
def server(tmp_path):
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True).start()
    yield server
    server.stop()


def _gateway(server, tmp_path, transport):
    from gwe.cloud_sets import CloudSets

    server.add_device("gw1")
    device = Device(server.url, serial="gw1", transport=transport, token_file=str(tmp_path / "token"),
                    mqtt_url=server.mqtt_url if transport == "mqtt" else None, usage_db=False)
    times = CloudSets(["engine_fetch", "update_interval"])
    times.listen(device)
    device.activate()
    return device, times


@pytest.mark.parametrize("transport", ["http", "mqtt"])
@pytest.mark.parametrize("alias, taken, newer", [("engine_fetch", REQUEST_V1, REQUEST_V2),
                                                 ("update_interval", "30", "30")])
def test_a_clear_keeps_a_set_that_reached_the_cloud_first(server, tmp_path, transport, alias, taken, newer):
    """The operator sets again (even the same value) between gwe's poll and its clear: the clear
    leaves it pending, gwe's next poll returns it, and clearing that one clears the alias."""
    device, times = _gateway(server, tmp_path, transport)
    with device:
        device.long_poll([alias], timeout_ms=300)  # MQTT: connected and listening
        server.set("gw1", alias, taken)
        values, since = device.long_poll([alias], timeout_ms=5000)
        assert values == {alias: taken}
        taken_at = times.of(values, since)
        assert alias in taken_at
        server.set("gw1", alias, newer)  # lands before the clear
        times.clear(device, alias, taken, taken_at[alias])
        state = server.state("gw1")[alias]
        assert state["set"] == newer and state["reported"] != newer, "the clear wiped the newer set"

        values, since = device.long_poll([alias], timeout_ms=5000, since=since)
        assert values == {alias: newer}
        times.clear(device, alias, newer, times.of(values, since)[alias])
        state = server.state("gw1")[alias]
        assert state["set"] == state["reported"] == ""
        assert device.long_poll([alias], timeout_ms=500, since=since)[0] == {}  # nothing pending


def test_a_clear_the_server_does_not_date_falls_back_to_a_write(server, tmp_path):
    """A dated clear the server files elsewhere than at the value's time leaves the state as it is,
    as a server that does not let a record date its state would: the read-back still sees the value,
    a poll from the clear's time finds no newer set, and a plain write clears it. (10**11 s is past
    the Device API's seconds/µs cut-off: murano_local files the record in 1973.)"""
    device, times = _gateway(server, tmp_path, "http")
    with device:
        server.set("gw1", "engine_fetch", REQUEST_V1)
        times.clear(device, "engine_fetch", REQUEST_V1, 10 ** 17)
        state = server.state("gw1")["engine_fetch"]
        assert state["set"] == state["reported"] == ""
        assert [p["timestamp"] for p in server.history("gw1", "engine_fetch") if p["value"] == ""][-1] == 10 ** 11


def test_a_value_without_a_time_is_cleared_by_a_write(server, tmp_path):
    device, times = _gateway(server, tmp_path, "http")
    with device:
        server.set("gw1", "update_interval", "45")
        times.clear(device, "update_interval", "45", None)
        assert server.state("gw1")["update_interval"]["set"] == ""
        assert not [p for p in server.history("gw1", "update_interval") if p["value"] == ""][1:]
