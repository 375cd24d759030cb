"""gmq forwarding upstream over MQTT (gmq.cfg [upstream] transport = mqtt) to a real murano_local."""
import pytest
import requests

from gmq_harness import GmqProcess
from harness import MuranoLocal, wait_for

FAST = {"backoff_initial": 0.05, "backoff_max": 0.4, "batch_size": 50}


@pytest.fixture
def server(tmp_path):
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True).start()
    yield server
    server.stop()


def _history(server, serial, alias):
    return [(p["timestamp"], p["value"]) for p in reversed(server.history(serial, alias, limit=100000))]


def _drained(gmq):
    st = gmq.status()
    return st["queue"]["depth"] == 0 and st


def test_gmq_delivers_over_mqtt_and_reprovisions(gwe_home, server):
    server.add_device("sn1")
    gmq = GmqProcess(str(gwe_home), upstream=dict(FAST, host=server.url, transport="mqtt",
                                                  mqtt_url=server.mqtt_url)).start()
    try:
        for i in range(120):
            assert gmq.post("/onep:v1/stack/alias", "seq=%d" % i).status_code == 204
        assert gmq.post("/onep:v1/stack/record", "alias=temp&1700000000=20&1700000001.25=21").status_code == 204
        st = wait_for(lambda: _drained(gmq), 30, message="queue drained")
        assert st["counters"]["delivered"] == 122 and st["counters"]["dead_lettered"] == 0
        assert [v for _, v in _history(server, "sn1", "seq")] == [str(i) for i in range(120)]
        assert [t for t, _ in _history(server, "sn1", "temp")] == [1700000000000000, 1700000001250000]

        admin = "%s/api:1/service/%s/device2/identity/sn1" % (server.url, server.product_id)
        requests.delete(admin, timeout=10).raise_for_status()  # the token dies with the device
        server.add_device("sn1")
        gmq.post("/onep:v1/stack/alias", "a=after")
        wait_for(lambda: [v for _, v in _history(server, "sn1", "a")] == ["after"], 30,
                 message="delivered after re-provisioning")
        assert "401" in gmq.log_text()

        # an alias Murano allows but an MQTT topic cannot carry travels in $resource.batch (records)
        assert gmq.post("/onep:v1/stack/alias", "odd%2Balias/x=1&ok=2").status_code == 204
        wait_for(lambda: [v for _, v in _history(server, "sn1", "ok")] == ["2"], 30, message="the rest flows")
        st = wait_for(lambda: _drained(gmq), 30)
        assert st["counters"]["dead_lettered"] == 0 and [v for _, v in _history(server, "sn1", "odd+alias/x")] == ["1"]
    finally:
        gmq.stop()


def test_a_transport_switch_mid_drain_sends_every_value_once_in_order(gwe_home, server):
    """The stager encodes the next batch for the transport of its moment; a reread to MQTT while a batch
    encoded for HTTP is staged must not send that body over MQTT."""
    server.add_device("sn1")
    gmq = GmqProcess(str(gwe_home), upstream=dict(FAST, host=server.url, transport="http")).start()
    try:
        total = 20000
        for start in range(0, total, 500):
            body = "alias=seq&" + "&".join("%d=%d" % (1700000000 + i, i) for i in range(start, start + 500))
            assert gmq.post("/onep:v1/stack/record", body).status_code == 204
        wait_for(lambda: gmq.status()["counters"]["delivered"] >= 1000, 60, message="the drain under way")
        gmq.configure(upstream={"transport": "mqtt", "mqtt_url": server.mqtt_url})
        assert requests.post(gmq.url + "/reread", timeout=10).status_code == 200
        assert gmq.status()["queue"]["depth"] > 0, "drained before the switch: nothing tested"
        st = wait_for(lambda: _drained(gmq), 120, message="queue drained")
        assert st["counters"]["dead_lettered"] == 0 and st["counters"]["delivered"] == total
        assert st["forwarder"]["failures"] == 0, gmq.log_text()[-2000:]  # no form body refused over MQTT
        assert [v for _, v in _history(server, "sn1", "seq")] == [str(i) for i in range(total)]
    finally:
        gmq.stop()
