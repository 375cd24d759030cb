import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness import wait_for


def test_supervisord_runs_a_program_and_reports_it(supervisord, tmp_path):
    marker = tmp_path / "ran"
    supervisord.add_program("sleeper", "%s -c \"open('%s','w').close(); import time; time.sleep(60)\""
                            % (sys.executable, marker), startsecs=1, autorestart="false")
    wait_for(lambda: supervisord.state("sleeper") == "RUNNING", 15, message="sleeper RUNNING")
    info = supervisord.rpc().supervisor.getProcessInfo("sleeper")
    assert info["pid"] > 0 and marker.exists()
    supervisord.rpc().supervisor.stopProcess("sleeper")
    assert supervisord.state("sleeper") == "STOPPED"


def test_supervisord_reports_a_crashing_program_fatal(supervisord):
    supervisord.add_program("crasher", "/bin/false", startsecs=1, startretries=1)
    wait_for(lambda: supervisord.state("crasher") == "FATAL", 15, message="crasher FATAL")


def test_mosquitto_publish_and_receive(mosquitto):
    got = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_subscribe = lambda c, u, mid, rc, props: subscribed.set()
    sub.on_message = lambda c, u, msg: got.append((msg.topic, msg.payload, msg.qos))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish("t/x", b"hello", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: got, 10, message="message through the broker")
        assert got == [("t/x", b"hello", 1)]
    finally:
        sub.loop_stop()
        sub.disconnect()
