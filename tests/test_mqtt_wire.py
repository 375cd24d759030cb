"""Our MQTT transport's wire behaviour seen from a real mosquitto broker: topics, payloads, QoS."""
import json
import threading

import pytest

from device_client import Device, NetworkError
from device_client.transport_mqtt import MqttTransport, check_mqtt_url, publish_size
from harness import free_port, wait_for
from mqtt_helpers import RawClient


class FakeCloud(RawClient):
    """Answers ``$provision/<id>`` with a token on the same topic, as Murano does."""

    TOKEN = "T" * 40

    def __init__(self, port: int) -> None:
        super().__init__(port, subscribe=("$provision/+", "$resource/#", "$resource.batch"))
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        self.messages.append((message.topic, message.payload, message.qos))
        if message.topic.startswith("$provision/") and not message.payload:
            client.publish(message.topic, self.TOKEN, qos=1)


@pytest.fixture
def cloud(mosquitto):
    cloud = FakeCloud(mosquitto.port).wait_connected()
    wait_for(lambda: cloud.client.want_write() is False, 5)
    yield cloud
    cloud.close()


def _device(mosquitto, **kwargs):
    transport = MqttTransport("mqtt://127.0.0.1:%d" % mosquitto.port, subscribe_pushes=True, **kwargs)
    return Device("http://127.0.0.1:9", serial="dev9", transport=transport, usage_db=False)


def test_topics_payloads_and_qos(mosquitto, cloud):
    with _device(mosquitto) as dev:
        assert dev.activate() == FakeCloud.TOKEN
        dev.write({"temp": 21.5, "state": {"on": True}})
        dev.record({"temp": [(1700000000, 1), (1700000000.5, 2)], "hum": [(1700000000, 40)]})
        wait_for(lambda: len(cloud.messages) >= 5, 5, message="messages at the cloud")
    seen = [(topic, payload, qos) for topic, payload, qos in cloud.messages if payload != FakeCloud.TOKEN.encode()]
    assert seen[0] == ("$provision/dev9", b"", 1)
    assert seen[1:3] == [("$resource/temp", b"21.5", 1), ("$resource/state", b'{"on":true}', 1)]
    topic, payload, qos = seen[3]
    assert (topic, qos) == ("$resource.batch", 1)
    assert json.loads(payload) == [{"timestamp": 1700000000000000, "values": {"temp": "1", "hum": "40"}},
                                   {"timestamp": 1700000000500000, "values": {"temp": "2"}}]


def test_cloud_pushes_reach_long_poll_and_listeners(mosquitto, cloud):
    with _device(mosquitto, connect_timeout=5) as dev:
        dev.activate()
        heard = []
        got = threading.Event()
        dev.on_set(lambda alias, value, ts: (heard.append((alias, value, ts)), got.set()))
        assert dev.long_poll(["engine_fetch"], timeout_ms=200) == ({}, None)  # connects and subscribes
        cloud.publish("$resource/engine_fetch/1700000000123456", b'{"install": []}').wait_for_publish(5)
        cloud.publish("$resource/other/1700000000123457", b"ignored by this poll").wait_for_publish(5)
        values, last_modified = dev.long_poll(["engine_fetch"], timeout_ms=5000)
        assert values == {"engine_fetch": '{"install": []}'}
        assert last_modified == "Tue, 14 Nov 2023 22:13:20 GMT"
        got.wait(5)
        assert heard[0] == ("engine_fetch", '{"install": []}', 1700000000123456)
        assert dev.long_poll(["other"], timeout_ms=1000)[0] == {"other": "ignored by this poll"}


def test_unreachable_broker_is_a_network_error():
    with Device("http://127.0.0.1:9", token="t" * 40, transport="mqtt",
                mqtt_url="mqtt://127.0.0.1:%d" % free_port(), connect_timeout=1, usage_db=False) as dev:
        with pytest.raises(NetworkError, match="cannot connect"):
            dev.write("a", 1)


def test_an_identity_that_is_no_topic_level_is_refused_before_connecting():
    port = free_port()  # nothing listens: a connection attempt would be a NetworkError
    for serial in ("a+b", "a#", "a\x00b"):
        with Device("http://127.0.0.1:%d" % port, serial=serial, transport="mqtt",
                    mqtt_url="mqtt://127.0.0.1:%d" % port, connect_timeout=1, usage_db=False) as dev:
            with pytest.raises(ValueError):
                dev.activate()


def test_urls_and_sizes():
    assert check_mqtt_url("mqtts://h.example") == ("mqtts", "h.example", 8883)
    assert check_mqtt_url("mqtt://127.0.0.1:1884") == ("mqtt", "127.0.0.1", 1884)
    for bad in ("http://h", "mqtt://", "mqtt://h/path", "mqtt://u@h"):
        with pytest.raises(ValueError):
            check_mqtt_url(bad)
    assert Device("https://abc.m2.exosite.io", transport="mqtt", usage_db=False).transport.url == \
        "mqtts://abc.m2.exosite.io:8883"
    with pytest.raises(ValueError):
        Device("https://abc.m2.exosite.io", mqtt_url="mqtts://x", usage_db=False)
    # PUBLISH: 1 type byte + remaining length (1 byte below 128) + 2 + topic + 2 packet id + payload
    assert publish_size("$resource/a", b"1") == 1 + 1 + 2 + 11 + 2 + 1
    assert publish_size("t", b"x" * 200) == 1 + 2 + 2 + 1 + 2 + 200


def test_broker_restart_reconnects_with_backoff(mosquitto, cloud):
    import time

    with _device(mosquitto, connect_timeout=10, read_timeout=15) as dev:
        dev.activate()
        dev.write("seq", 1)
        mosquitto.stop()
        cloud.close()
        time.sleep(3)
        attempts = dev.transport.reconnects
        assert 2 <= attempts <= 5  # 0.5 s doubling with jitter, not a tight loop
        mosquitto.start()
        watcher = FakeCloud(mosquitto.port).wait_connected()
        wait_for(lambda: dev.transport.connected, 15, message="reconnected after the broker restart")
        dev.write("seq", 2)
        wait_for(lambda: ("$resource/seq", b"2", 1) in watcher.messages, 5, message="write after the restart")
        watcher.close()
