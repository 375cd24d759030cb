"""Whose values gmq forwards, under which token: the gateway's own serial, refused activations,
and requests whose two identity headers disagree (real gmq, real murano_local)."""
import requests

from atomic_config import gwe_paths, update_gateway_config
from gmq_harness import GmqProcess
from harness import wait_for

FAST = {"backoff_initial": 0.05, "backoff_max": 0.4}
GATEWAY = "gw-0001"


def start_gmq(home, murano):
    return GmqProcess(str(home), upstream=dict(FAST, host=murano.url)).start()


def activate(murano, serial):
    """Activate ``serial`` directly on murano_local, as gwe does for the gateway; its token."""
    resp = requests.post(murano.url + "/provision/activate", data={"id": serial}, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.text.strip()


def values(murano, serial, alias):
    return sorted(p["value"] for p in murano.history(serial, alias))


def client_status(gmq, serial):
    return next((c for c in gmq.status()["forwarder"]["clients"] if c["client"] == serial), None)


def test_the_gateways_own_serial_goes_with_gwes_token_and_gmq_never_activates_it(gwe_home, murano):
    """An app posting as the gateway's uuid before gwe has activated: the value waits (gmq does not
    take the gateway's one activation); once gwe has activated and written its cik, the value and
    the next ones (X-Exosite-VMS, or the gateway's CIK as legacy apps send it) reach the gateway."""
    murano.add_device(GATEWAY)
    paths = gwe_paths(str(gwe_home)).ensure()
    update_gateway_config({"uuid": GATEWAY, "host": murano.url}, paths.gateway_cfg)
    gmq = start_gmq(gwe_home, murano)
    try:
        assert gmq.post("/onep:v1/stack/alias", "v=early", serial=GATEWAY).status_code == 204
        wait_for(lambda: (client_status(gmq, GATEWAY) or {}).get("state") == "waiting_for_gateway", 15,
                 message="the gateway's client waiting for gwe's token")
        token = activate(murano, GATEWAY)  # gwe's activation still succeeds: gmq did not take it
        update_gateway_config({"cik": token}, paths.gateway_cfg)
        assert gmq.post("/onep:v1/stack/alias", "v=vms", serial=GATEWAY).status_code == 204
        cik = gmq.post("/onep:v1/stack/alias", "v=cik", headers={"X-Exosite-CIK": token})
        assert cik.status_code == 204, cik.text
        wait_for(lambda: values(murano, GATEWAY, "v") == ["cik", "early", "vms"], 15,
                 message="the gateway's values on the gateway's device")
        status = gmq.status()
        assert [c["client"] for c in status["forwarder"]["clients"]] == [GATEWAY]  # the CIK is the same client
        assert client_status(gmq, GATEWAY)["gateway"] is True
        assert status["alarms"] == []
        log = gmq.log_text()
        assert "activation refused" not in log and "activated %s" % GATEWAY not in log  # gmq never tried
        assert gmq.rows("SELECT upstream_token FROM clients") == [(None,)]  # gwe's token stays in Gateway.cfg
    finally:
        gmq.stop()


def test_a_refused_activation_raises_an_alarm_in_gmq_status_and_engine_report(gwe_home, murano):
    """A serial upstream refuses to activate (not whitelisted): the values stay queued and an alarm
    says so, in gmq status and in the engine_report gwe sends; whitelisted, they are delivered."""
    from gwe.engine_report import engine_report, fetch_gmq_status

    gmq = start_gmq(gwe_home, murano)
    try:
        assert gmq.post("/onep:v1/stack/alias", "v=1", serial="stranger").status_code == 204
        alarms = wait_for(lambda: [a for a in gmq.status()["alarms"] if a["kind"] == "activation_refused"], 15,
                          message="an activation_refused alarm")
        assert len(alarms) == 1 and "stranger" in alarms[0]["detail"], alarms
        report = engine_report(gwe_paths(str(gwe_home)), lambda: [], fetch_gmq_status)
        assert [a["kind"] for a in report["gmq"]["alarms"]] == ["activation_refused"]
        murano.add_device("stranger")
        wait_for(lambda: values(murano, "stranger", "v") == ["1"], 15, message="delivered once whitelisted")
        assert len(gmq.status()["alarms"]) == 1  # retried with backoff, alarmed once
    finally:
        gmq.stop()


def test_cik_and_vms_naming_different_devices_is_a_400(gwe_home, murano):
    murano.add_device("sn-a")
    gmq = start_gmq(gwe_home, murano)
    try:
        token_a = gmq.post("/provision/activate", "id=sn-a").text.strip()
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        for cik, serial in ((token_a, "sn-b"), ("f" * 40, "sn-a")):  # another device's token; one gmq cannot place
            resp = gmq.post("/onep:v1/stack/alias", "v=wrong", headers=dict(form, **{
                "X-Exosite-CIK": cik, "X-Exosite-VMS": "p p %s" % serial}))
            assert resp.status_code == 400, resp.text
            assert "name different devices" in resp.text
        same = gmq.post("/onep:v1/stack/alias", "v=right", headers=dict(form, **{
            "X-Exosite-CIK": token_a, "X-Exosite-VMS": "p p sn-a"}))
        assert same.status_code == 204
        wait_for(lambda: values(murano, "sn-a", "v") == ["right"], 15, message="the consistent request delivered")
        assert [c["client"] for c in gmq.status()["forwarder"]["clients"]] == ["sn-a"]
    finally:
        gmq.stop()


def test_a_rejected_gateway_token_keeps_the_values_queued_with_an_alarm(gwe_home, murano):
    """Upstream answers 401 to gwe's token (gwe must activate again): gmq neither activates the
    gateway's serial nor dead-letters its values; an alarm says so, and gwe's next token delivers them."""
    murano.add_device(GATEWAY)
    paths = gwe_paths(str(gwe_home)).ensure()
    update_gateway_config({"uuid": GATEWAY, "host": murano.url, "cik": "0" * 40}, paths.gateway_cfg)
    gmq = start_gmq(gwe_home, murano)
    try:
        assert gmq.post("/onep:v1/stack/alias", "v=kept", serial=GATEWAY).status_code == 204
        wait_for(lambda: [a for a in gmq.status()["alarms"] if a["kind"] == "gateway_token_refused"], 15,
                 message="a gateway_token_refused alarm")
        status = gmq.status()
        assert status["queue"]["depth"] == 1 and status["queue"]["dead_letter"] == 0
        update_gateway_config({"cik": activate(murano, GATEWAY)}, paths.gateway_cfg)  # gwe activated again
        wait_for(lambda: values(murano, GATEWAY, "v") == ["kept"], 15, message="delivered with gwe's new token")
    finally:
        gmq.stop()
