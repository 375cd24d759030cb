"""The upstream link's state for local apps: gmq's GET /connection and /status, gwe's engine_report."""
import time

import pytest
import requests
from gmq_harness import GmqProcess
from gwe_helpers import configure_gateway, reported_json, start_gwe
from harness import stop_process, wait_for

from device_client import errors
from device_client.link import BACKOFF, CONNECTED, OFFLINE, LinkState, state_after

# Each transition must be visible to a local app within this long of the cause (the issue's
# acceptance); the probe and backoff below are set well inside it.
VISIBLE_WITHIN_S = 1.0


@pytest.mark.parametrize("exc, state", [
    (errors.NetworkError("refused"), OFFLINE),
    (errors.TLSError("bad certificate"), OFFLINE),
    (errors.ServerError("busy", 503), BACKOFF),
    (errors.RequestError("slow down", 429), BACKOFF),
    (errors.DeviceAPIError("moved", 302), BACKOFF),
    (errors.RequestError("bad value", 400), CONNECTED),
    (errors.NotFound("no such client", 404), CONNECTED),
    (OSError("disk"), OFFLINE),
])
def test_a_failure_leaves_the_link_state_of_its_kind(exc, state):
    assert state_after(exc) == state


def test_since_moves_only_on_a_transition_and_retry_counts_down():
    now = [1000.0]
    link = LinkState("http://up", clock=lambda: now[0])
    assert link.snapshot()["state"] == OFFLINE and link.snapshot()["checked"] is None
    now[0] = 1001.0
    link.succeeded()
    now[0] = 1002.0
    link.succeeded()
    snap = link.snapshot()
    assert (snap["state"], snap["since"], snap["checked"], snap["next_retry"]) == (CONNECTED, 1001.0, 1002.0, None)
    now[0] = 1003.0
    link.failed_with(errors.NetworkError("long_poll: Connection refused"), retry_in=4.0)
    now[0] = 1005.0
    link.failed_with(errors.NetworkError("long_poll: Connection refused"), retry_in=4.0)
    snap = link.snapshot()
    assert snap["state"] == OFFLINE and snap["since"] == 1003.0 and snap["next_retry"] == 1009.0
    assert snap["retry_in"] == 4.0 and "Connection refused" in snap["last_error"] and snap["transitions"] == 2
    link.succeeded()
    assert link.snapshot()["last_error_at"] == 1005.0  # the last error stays readable once connected again
    with pytest.raises(ValueError):
        link.failed("x", state="sideways")


def _connection(gmq):
    resp = requests.get(gmq.url + "/connection", timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    return resp.json()


def test_local_app_sees_murano_local_go_down_and_up_within_a_second(gwe_home, murano):
    gmq = GmqProcess(gwe_home, upstream={"host": murano.url, "probe_interval": 0.2, "backoff_initial": 0.1,
                                         "backoff_max": 0.3}).start()
    try:
        first = wait_for(lambda: (lambda c: c if c["state"] == CONNECTED else None)(_connection(gmq)), 10,
                         message="gmq connected")
        assert first["upstream"] == murano.url and first["next_retry"] is None

        murano.stop()  # SIGTERM and wait: the server is gone when this returns
        down_at = time.monotonic()
        offline = wait_for(lambda: (lambda c: c if c["state"] == OFFLINE else None)(_connection(gmq)), 10,
                           interval=0.02, message="gmq offline")
        seen_down = time.monotonic() - down_at
        assert offline["last_error"].startswith("NetworkError") and offline["since"] > first["since"]
        assert offline["next_retry"] is not None and offline["retry_in"] <= 0.3

        murano.start()  # returns once murano_local answers /timestamp
        up_at = time.monotonic()
        back = wait_for(lambda: (lambda c: c if c["state"] == CONNECTED else None)(_connection(gmq)), 10,
                        interval=0.02, message="gmq connected again")
        seen_up = time.monotonic() - up_at
        assert back["since"] > offline["since"] and back["last_error"] == offline["last_error"]
        assert gmq.status()["connection"]["state"] == CONNECTED
        assert seen_down < VISIBLE_WITHIN_S, "offline seen %.2fs after murano_local stopped" % seen_down
        assert seen_up < VISIBLE_WITHIN_S, "connected seen %.2fs after murano_local came back" % seen_up
    finally:
        gmq.stop()


def test_a_link_never_tried_is_not_reported_connected(gwe_home):
    gmq = GmqProcess(gwe_home, upstream={"probe_interval": 0}).start()
    try:
        doc = _connection(gmq)
        assert doc["state"] == OFFLINE and doc["checked"] is None  # never talked upstream: not "connected"
    finally:
        gmq.stop()


@pytest.mark.slow
def test_gwe_reports_its_own_link_and_the_outage_it_came_back_from(gwe_home, murano):
    from gwe.status import gateway_status

    configure_gateway(murano, update_interval=60)
    gwe = start_gwe(gwe_home)
    try:
        report = wait_for(lambda: reported_json(murano, "engine_report"), 20, message="first engine_report")
        assert report["connection"]["state"] == CONNECTED and report["connection"]["upstream"] == murano.url
        murano.stop()

        def offline():
            link = gateway_status().get("connection") or {}
            return link if link.get("state") == OFFLINE and "refused" in link["last_error"].lower() else None
        down = wait_for(offline, 15, message="gwe status shows the link offline, refused")
        assert down["next_retry"] is not None
        murano.start()

        def report_after_outage():
            doc = reported_json(murano, "engine_report")
            return doc if doc and doc["connection"]["since"] >= down["since"] else None
        again = wait_for(report_after_outage, 30, interval=0.1, message="engine_report after the outage")
        assert again["connection"]["state"] == CONNECTED
        # the cloud learns why it lost the gateway, and since when it is back
        assert again["connection"]["last_error_at"] >= down["last_error_at"]
        assert again["connection"]["last_error"].startswith("NetworkError")
        assert gateway_status()["connection"]["state"] == CONNECTED
    finally:
        stop_process(gwe)
