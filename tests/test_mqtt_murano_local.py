"""MQTT end to end against a real murano_local subprocess: our transport, raw paho, and Exosite's murano-client."""
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from device_client import Device, NotActivated, RequestError, usage_report
from harness import MuranoLocal, wait_for
from mqtt_helpers import RawClient, make_tls


@pytest.fixture
def server(tmp_path):
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True).start()
    yield server
    server.stop()


def _device(server, serial, tmp_path, **kwargs):
    kwargs.setdefault("usage_db", str(tmp_path / "usage.db"))
    return Device(server.url, serial=serial, transport="mqtt", mqtt_url=server.mqtt_url, **kwargs)


def test_write_record_push_and_echo(server, tmp_path):
    server.add_device("gw1")
    with _device(server, "gw1", tmp_path) as dev:
        token = dev.activate()
        assert len(token) == 40
        dev.write({"temp": 21.5, "cfg": {"a": 1}})
        state = server.state("gw1")
        assert state["temp"]["reported"] == state["temp"]["set"] == "21.5"
        assert state["cfg"]["reported"] == '{"a":1}'

        dev.record({"temp": [(1700000000, 1), (1700000001.25, 2)]})
        history = server.history("gw1", "temp")
        assert [(p["timestamp"], p["value"]) for p in history[-2:]] == [
            (1700000001250000, "2"), (1700000000000000, "1")]

        pushed = []
        dev.on_set(lambda alias, value, ts: pushed.append((alias, value, ts)))
        setter = threading.Timer(0.2, server.set, ("gw1", "engine_fetch", '{"install": []}'))
        setter.start()
        started = time.monotonic()
        values, last_modified = dev.long_poll(["engine_fetch", "update_interval"], timeout_ms=15000)
        assert time.monotonic() - started < 5  # pushed on the set, not answered at the poll's timeout
        assert values == {"engine_fetch": '{"install": []}'}
        assert last_modified.endswith("GMT")
        assert pushed[0][:2] == ("engine_fetch", '{"install": []}')
        assert pushed[0][2] == server.state("gw1")["engine_fetch"]["timestamp"]

        assert server.state("gw1")["engine_fetch"]["reported"] is None  # pending until echoed
        dev.write("engine_fetch", values["engine_fetch"])
        assert server.state("gw1")["engine_fetch"]["reported"] == '{"install": []}'
        assert dev.long_poll(["engine_fetch"], timeout_ms=300) == ({}, None)
        dev.write("engine_fetch", "")  # gwe clears a job it took: an empty payload is a value too
        assert server.state("gw1")["engine_fetch"]["reported"] == ""

        assert dev.read("temp") == {"temp": "21.5"}  # over HTTP: MQTT has no read
        assert abs(dev.timestamp() - time.time()) < 5

    report = usage_report(str(tmp_path / "usage.db"))
    rows = report["lo"]["gwe"]
    assert rows["write:['temp']"]["type"] == "post" and rows["write:['temp']"]["tot_rx"] == 4  # one PUBACK
    record = rows["record:['temp']"]
    assert record["type"] == "post" and record["tot_rx"] == 4 and record["tot_tx"] > 60
    assert rows["long_poll:['engine_fetch']"]["type"] == "get"
    assert rows["actvt:[]"]["tot_rx"] > 40


def test_pending_sets_are_pushed_on_connect(server, tmp_path):
    server.add_device("gw2")
    with _device(server, "gw2", tmp_path) as dev:
        dev.activate()
        server.set("gw2", "update_interval", "60")  # not connected yet: nothing to push to
    with _device(server, "gw2", tmp_path, token=dev.token) as again:
        started = time.monotonic()
        assert again.long_poll(["update_interval"], timeout_ms=15000)[0] == {"update_interval": "60"}
        assert time.monotonic() - started < 5  # pushed on connect, not answered at the poll's timeout


def test_devices_never_see_each_other(server, tmp_path):
    for name in ("a", "b"):
        server.add_device(name)
    dev_a, dev_b = _device(server, "a", tmp_path), _device(server, "b", tmp_path)
    try:
        dev_a.activate(), dev_b.activate()
        spy = RawClient(server.mqtt_port, "", dev_b.token,
                        subscribe=("$resource/#", "#", "$provision/#")).wait_connected()
        wait_for(lambda: len(spy.granted) == 3, 5, message="SUBACKs")
        assert all(code.is_failure for code in spy.granted)  # subscriptions are refused: pushes need none
        dev_a.write("secret", "from-a")
        with_will = RawClient(server.mqtt_port, "", dev_a.token, will=("$resource/secret", b"will-of-a"))
        with_will.wait_connected()
        with_will.client.socket().shutdown(socket.SHUT_RDWR)  # dies without DISCONNECT: the Will fires
        wait_for(with_will.disconnected.is_set, 5, message="the Will's connection gone")
        with_will.close()
        server.set("a", "engine_fetch", "for-a")
        assert dev_a.long_poll(["engine_fetch"], timeout_ms=3000)[0] == {"engine_fetch": "for-a"}
        assert dev_b.long_poll(["engine_fetch"], timeout_ms=500) == ({}, None)
        server.set("b", "engine_fetch", "for-b")
        wait_for(lambda: spy.messages, 5, message="b's own push")
        assert [(t.split("/")[1], p) for t, p, _q in spy.messages] == [("engine_fetch", b"for-b")]
        assert spy.messages[0][2] == 1  # pushed at QoS 1
        assert "secret" not in server.state("b")
        spy.close()
    finally:
        dev_a.close()
        dev_b.close()


def test_wills_are_dropped_not_retained_in_memory(tmp_path):
    """An anonymous client that sets a retained Will and drops its connection, again and again,
    must not grow the broker's retained messages (nothing is ever relayed to read them)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from harness import free_port
    from murano_local.mqtt import MqttFrontEnd
    from murano_local.service import Murano

    murano = Murano(str(tmp_path / "data"))
    port = free_port()
    front = MqttFrontEnd(murano, listeners=[(port, None, None)]).start()
    try:
        for i in range(3):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
            client.will_set("junk/%d" % i, b"x" * 60000, qos=0, retain=True)
            client.connect("127.0.0.1", port, 60)
            client.loop_start()
            wait_for(client.is_connected, 5, message="connected")
            client.loop_stop()
            client.socket().close()  # no DISCONNECT: the broker sees an abnormal end
            # amqtt handles the Will before it reports the disconnection that empties _clients
            wait_for(lambda: not front._clients, 5, message="the broker to drop the connection")
        assert front.broker.retained_messages == {}
    finally:
        front.stop()
        murano.close()


def _never_acknowledged(info) -> bool:
    """No PUBACK came; under load the server may even cut the client before the PUBLISH is sent."""
    try:
        return not info.is_published()
    except RuntimeError:  # paho: "Message publish failed: The client is not currently connected"
        return True


def test_refusals(server, tmp_path):
    server.add_device("gw3")
    with _device(server, "gw3", tmp_path) as dev:
        dev.activate()
        with pytest.raises(RequestError, match="without a token"):
            dev.activate(force=True)  # already activated: the server closes the connection
        token = dev.token
    with _device(server, "nobody", tmp_path) as stranger:
        with pytest.raises(RequestError):
            stranger.activate()
    with _device(server, "gw3", tmp_path, token="x" * 40) as forged:
        with pytest.raises(NotActivated):
            forged.write("a", 1)
        assert forged.token is None  # dropped, as after an HTTP 401

    anonymous = RawClient(server.mqtt_port).wait_connected()
    info = anonymous.publish("$resource/temp", b"1")
    wait_for(anonymous.disconnected.is_set, 5, message="anonymous publisher disconnected")
    assert _never_acknowledged(info)
    anonymous.close()

    for topic, payload in (("$resource/bad.alias", b"1"), ("$resource.batch", b"not json"),
                           ("$resource.batch", b'[{"timestamp": "x", "values": {"a": 1}}]'),
                           ("$resource/temp", b"\xff\xfe"),
                           ("$resource.batch", json.dumps([{"timestamp": 1700000000 + i, "values": {"t": i}}
                                                           for i in range(10001)]).encode())):
        raw = RawClient(server.mqtt_port, "", token).wait_connected()
        info = raw.publish(topic, payload)
        wait_for(raw.disconnected.is_set, 5, message="refused publish on %s" % topic)
        assert _never_acknowledged(info)
        raw.close()
    assert server.state("gw3") == {}

    wrong_owner = RawClient(server.mqtt_port, "someone-else", token)
    wait_for(wrong_owner.disconnected.is_set, 5, message="CONNACK refused")
    assert wrong_owner.connack and "authoriz" in wrong_owner.connack.lower()
    wrong_owner.close()


def test_batch_in_seconds_or_microseconds(server, tmp_path):
    server.add_device("gw4")
    with _device(server, "gw4", tmp_path) as dev:
        token = dev.activate()
    raw = RawClient(server.mqtt_port, "gw4", token).wait_connected()  # identity/password form
    batch = [{"timestamp": 1700000000, "values": {"t": 1}},
             {"timestamp": 1700000001500000, "values": {"t": "two", "j": {"k": True}}}]
    raw.publish("$resource.batch", json.dumps(batch).encode()).wait_for_publish(5)
    raw.close()
    assert [(p["timestamp"], p["value"]) for p in server.history("gw4", "t")] == [
        (1700000001500000, "two"), (1700000000000000, "1")]
    assert server.history("gw4", "j")[0]["value"] == '{"k":true}'


def test_server_restart_mid_stream_loses_nothing_confirmed(tmp_path):
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True).start()
    server.add_device("gw5")
    dev = _device(server, "gw5", tmp_path, connect_timeout=15, read_timeout=15, usage_db=False)
    confirmed, failures = [], []
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set() and n < 5000:
            try:
                dev.write("seq", n)
                confirmed.append(n)
            except Exception as exc:  # a write that fails is the caller's to retry: not confirmed
                failures.append(exc)
            n += 1

    try:
        dev.activate()
        thread = threading.Thread(target=writer)
        thread.start()
        wait_for(lambda: len(confirmed) > 50, 10, message="writes flowing")
        server.kill()
        killed_at = len(confirmed)
        server.start()
        wait_for(lambda: len(confirmed) > killed_at + 50, 20, message="writes flowing after the restart")
        stop.set()
        thread.join(20)
        stored = {int(p["value"]) for p in server.history("gw5", "seq", limit=100000)}
        assert set(confirmed) <= stored
        assert dev.transport.reconnects >= 1
    finally:
        stop.set()
        dev.close()
        server.stop()


def test_murano_client_unchanged_over_tls(tmp_path):
    from murano_client.mqtt import MuranoMQTT

    ca, cert, key = make_tls(str(tmp_path / "tls"))
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True, mqtt_cert=cert, mqtt_key=key).start()
    inbox = queue.Queue()
    client = None
    try:
        server.add_device("exo1")
        client = MuranoMQTT(murano_host="https://localhost", murano_port=server.mqtt_port, murano_id="exo1",
                            murano_cacert=ca, queue_inbound_messages=inbox)
        client.start()
        wait_for(client.is_activated, 10, message="murano-client activation")
        assert len(client.murano_token()) == 40
        client.publish("$resource/data_in", '{"temperature": 20}', qos=1).wait_for_publish(5)
        assert server.state("exo1")["data_in"]["reported"] == '{"temperature": 20}'
        server.set("exo1", "config_io", "cfg-v1")
        message = inbox.get(timeout=5)
        resource, stamp = message.topic.split("/")[1:]
        assert (resource, message.payload) == ("config_io", "cfg-v1")
        assert int(stamp) == server.state("exo1")["config_io"]["timestamp"]
        # the same token over TLS with our transport, verified against the test CA
        with Device("http://127.0.0.1:%d" % server.port, token=client.murano_token(), transport="mqtt",
                    mqtt_url="mqtts://localhost:%d" % server.mqtt_port, ca_file=ca, usage_db=False) as dev:
            dev.write("config_io", "cfg-v1")
        assert server.state("exo1")["config_io"]["reported"] == "cfg-v1"
    finally:
        if client is not None:
            client.always_reconnect = False
            client.loop_stop()
            client.disconnect()
        server.stop()


def test_tls_is_verified_by_default(tmp_path):
    from device_client import TLSError

    _ca, cert, key = make_tls(str(tmp_path / "tls"))
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True, mqtt_cert=cert, mqtt_key=key).start()
    try:
        with Device(server.url, token="t" * 40, transport="mqtt", mqtt_url=server.mqtt_url, usage_db=False,
                    connect_timeout=5) as dev:
            with pytest.raises(TLSError, match="not trusted"):
                dev.write("a", 1)
    finally:
        server.stop()


def test_mqtt_activation_against_an_untrusted_certificate_is_a_tls_error(tmp_path):
    from device_client import TLSError

    _ca, cert, key = make_tls(str(tmp_path / "tls"))
    server = MuranoLocal(str(tmp_path / "murano_local"), mqtt_port=True, mqtt_cert=cert, mqtt_key=key).start()
    try:
        server.add_device("tls-1")
        with Device(server.url, serial="tls-1", transport="mqtt", mqtt_url=server.mqtt_url, usage_db=False,
                    connect_timeout=5) as dev:
            with pytest.raises(TLSError, match="not trusted"):
                dev.activate()
        assert server.state("tls-1") == {} and not dev.activated
    finally:
        server.stop()


def test_serve_without_amqtt_says_how_to_install(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "amqtt").mkdir(parents=True)
    (shadow / "amqtt" / "__init__.py").write_text("raise ImportError('amqtt is not installed')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]]))
    proc = subprocess.run([sys.executable, "-m", "murano_local", "serve", "--port", "0", "--mqtt-port", "1883",
                           "--data", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'murano-local: error: the MQTT endpoint needs amqtt: pip install "gateway-engine[mqtt-server]"']
    assert not (tmp_path / "data").exists()


def test_serve_with_another_amqtt_version_says_which_one_it_needs(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "amqtt" / "plugins").mkdir(parents=True)
    (shadow / "amqtt" / "__init__.py").write_text('__version__ = "0.13.0"\n')
    (shadow / "amqtt" / "broker.py").write_text("class Broker:\n    pass\n")  # its private step is gone
    (shadow / "amqtt" / "plugins" / "__init__.py").write_text("")
    (shadow / "amqtt" / "plugins" / "base.py").write_text("class BaseAuthPlugin:\n    pass\n\n\n"
                                                          "class BaseTopicPlugin:\n    pass\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]]))
    proc = subprocess.run([sys.executable, "-m", "murano_local", "serve", "--port", "0", "--mqtt-port", "1883",
                           "--data", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'murano-local: error: the MQTT endpoint needs amqtt 0.12.1 (it replaces a private step of its broker), '
        'found 0.13.0: pip install "amqtt==0.12.1"']
    assert not (tmp_path / "data").exists()


def _gdc(*args):
    return subprocess.run([sys.executable, "-m", "device_client", *args], capture_output=True, text=True, timeout=60)


def test_gdc_over_mqtt(server, gwe_home, tmp_path):
    server.add_device("gw-cli")
    base = ["--host", server.url, "--transport", "mqtt", "--mqtt-url", server.mqtt_url, "--serial", "gw-cli",
            "--usage-db", str(tmp_path / "usage.db")]
    activated = _gdc(*base, "activate")
    assert activated.returncode == 0, activated.stderr
    assert len(activated.stdout.strip()) == 40
    assert _gdc(*base, "write", "temp=21").returncode == 0
    assert server.state("gw-cli")["temp"]["reported"] == "21"
    assert _gdc(*base, "record", "temp", "1700000000=20").returncode == 0
    assert server.history("gw-cli", "temp")[-1] == {"timestamp": 1700000000000000, "value": "20"}
    server.set("gw-cli", "config_io", "v2")
    polled = _gdc(*base, "--json", "poll", "config_io", "--timeout-ms", "5000")
    assert json.loads(polled.stdout)["values"] == {"config_io": "v2"}
    assert _gdc(*base, "read", "temp").stdout == "temp=21\n"

    bad = _gdc("--host", server.url, "--mqtt-url", "mqtt://x:1", "--token", "t" * 40, "write", "a=1")
    assert bad.returncode == 2 and bad.stderr.strip() == "gdc: error: mqtt_url goes with transport='mqtt'"
    down = _gdc("--host", server.url, "--transport", "mqtt", "--mqtt-url", "mqtt://127.0.0.1:9",
                "--token", "t" * 40, "--connect-timeout", "1", "write", "a=1")
    assert down.returncode == 6 and len(down.stderr.strip().splitlines()) == 1, down.stderr


def test_token_revoked_while_connected(server, tmp_path):
    import requests

    server.add_device("gw6")
    with _device(server, "gw6", tmp_path, read_timeout=10) as dev:
        dev.activate()
        dev.write("a", 1)
        requests.delete("%s/api:1/service/%s/device2/identity/gw6" % (server.url, server.product_id),
                        timeout=10).raise_for_status()
        server.add_device("gw6")
        with pytest.raises(NotActivated):
            dev.write("a", 2)  # refused on the open connection, then at CONNECT: never confirmed
        assert dev.token is None and "a" not in server.state("gw6")
        dev.activate()
        dev.write("a", 3)
        assert server.state("gw6")["a"]["reported"] == "3"


def _murano_local_cli(server, *args):
    proc = subprocess.run([sys.executable, "-m", "murano_local", "--url", server.url, *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_operator_cli_sees_publishes_and_reaches_the_device(server, tmp_path):
    server.add_device("gw7")
    with _device(server, "gw7", tmp_path) as dev:
        dev.activate()
        dev.write("temp", 19.5)
        assert json.loads(_murano_local_cli(server, "device", "read", "gw7", "temp"))["temp"]["reported"] == "19.5"
        arrived = []
        dev.on_set(lambda alias, value, ts: arrived.append((time.monotonic(), alias, value)))
        dev.long_poll(["config_io"], timeout_ms=100)  # connected and listening
        _murano_local_cli(server, "device", "write", "gw7", "config_io", "v9")
        set_done = time.monotonic()
        wait_for(lambda: arrived, 2, message="push of the operator's set")
        assert arrived[0][1:] == ("config_io", "v9") and arrived[0][0] - set_done < 1.0


def test_mqtt_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = subprocess.run([sys.executable, "-m", "murano_local", "serve", "--port", "0", "--mqtt-port",
                               str(busy.getsockname()[1]), "--data", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("murano-local: error: cannot serve MQTT on 127.0.0.1:"), lines


def test_a_prepared_record_travels_as_a_batch(server, tmp_path):
    server.add_device("gw1")
    with _device(server, "gw1", tmp_path) as dev:
        dev.activate()
        prepared = dev.prepare_record({"temp": [(1700000000, 1), (1700000001.25, 2)]})
        assert b'"timestamp":1700000001250000' in prepared.body  # the $resource.batch JSON, encoded up front
        dev.record(prepared)
        assert [(p["timestamp"], p["value"]) for p in server.history("gw1", "temp")] == [
            (1700000001250000, "2"), (1700000000000000, "1")]
        over_http = Device(server.url, token=dev.token, usage_db=False)
        with pytest.raises(ValueError, match="prepared for MqttTransport"):
            over_http.record(prepared)  # a batch's JSON is not a form: refused, nothing sent
        over_http.close()
        assert len(server.history("gw1", "temp")) == 2
