"""The original app API (GatewayEngine.utils, exo.api, exo.device, exo.handlers) against a real
murano_local, a real gwe and real scripted HTTP servers: the calls and answer shapes of the
reference (§2, §8) and of Exosite's public example apps."""
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from gmq_harness import ScriptedUpstream
from gwe_helpers import PRODUCT, SERIAL, configure_gateway
from harness import free_port, wait_for

from device_client import usage_report
from device_client.device import __version__ as CLIENT_VERSION
from exo.api import ExositeAPI, base_url
from exo.device import Device
from exo.handlers import RecordHandler
from GatewayEngine import utils
from GatewayEngine.utils import gwe_cik, gwe_conf


def write_device_file(path, uuid, host, cik="''", **extra):
    lines = ["[device]", "cik = %s" % cik, "model = %s" % PRODUCT, "vendor = %s" % PRODUCT, "uuid = %s" % uuid,
             "host = %s" % host] + ["%s = %s" % item for item in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_an_app_shares_gwes_identity_through_gwe_conf(murano, gwe_home):
    """``Device(UA, gwe_conf())`` made before gwe has activated answers 401 without sending
    anything, then uses the CIK gwe writes into Gateway.cfg, with no activation of its own."""
    assert gwe_conf() == str(gwe_home / "etc" / "gwe" / "Gateway.cfg")
    configure_gateway(murano)
    assert gwe_cik() == "" and utils.gwe_cik() == ""

    device = Device("BestCoffeeCompany-V1", gwe_conf())
    early = device.http_write("coffee_dataport", "Full")
    assert (early.code, early.success, early.authorized, device.activated()) == (401, False, False, False)
    assert "coffee_dataport" not in murano.state(SERIAL)

    gwe = subprocess.run([sys.executable, "-m", "gwe", "--once"], capture_output=True, text=True, timeout=60)
    assert gwe.returncode == 0, gwe.stderr
    cik = gwe_cik()
    assert len(cik) == 40
    assert device.activated() and device.cik() == cik
    handler = device.http_write("coffee_dataport", "Full")
    assert repr(handler) == "Response code: 204, Response body: '', success: True"
    assert murano.state(SERIAL)["coffee_dataport"]["reported"] == "Full"
    assert (device.vendor(), device.model(), device.uuid(), device.cfg_file()) == (PRODUCT, PRODUCT, SERIAL,
                                                                                 gwe_conf())
    assert json.loads(str(device))["uuid"] == SERIAL and cik not in repr(device) + str(device)
    calls = usage_report()["lo"]["BestCoffeeCompany-V1"]
    assert set(calls) == {"write:['coffee_dataport']"} and calls["write:['coffee_dataport']"]["num"] == 1


def test_a_cik_an_app_obtained_first_is_the_one_gwe_uses(murano, gwe_home):
    configure_gateway(murano)
    device = Device("early-app", gwe_conf())
    device.activate()
    assert device.activated() and gwe_cik() == device.cik()
    gwe = subprocess.run([sys.executable, "-m", "gwe", "--once"], capture_output=True, text=True, timeout=60)
    assert gwe.returncode == 0, gwe.stderr  # no activation of its own, which Murano would refuse (409)
    assert gwe_cik() == device.cik()
    report = json.loads(murano.state(SERIAL)["usage_report"]["reported"])
    assert "actvt:[]" in report["lo"]["early-app"] and "actvt:[]" not in report["lo"].get("gwe", {})


class TempSensor(Device):
    """The reference's subclassing example (with the ``self`` its text left out)."""

    def __init__(self, cfg):
        Device.__init__(self, "temp_sensor_v1", cfg)

    def report_tmp(self, value):
        return self.http_write("device_temp", value)


def test_a_device_file_of_its_own_activates_keeps_its_cik_and_reads(murano, tmp_path):
    cfg = write_device_file(tmp_path / "temp_app.cfg", "AF:14:B9:00:50:2C", murano.url,
                            activation_retry_interval="0.3")
    sensor = TempSensor(cfg)
    started = time.monotonic()
    sensor.activate()  # not whitelisted yet: 404, logged
    assert not sensor.activated()
    murano.add_device("AF:14:B9:00:50:2C")
    while not sensor.activated():  # the reference's loop: paced by activation_retry_interval, not a spin
        sensor.activate()
    assert time.monotonic() - started >= 0.3
    text = open(cfg).read()
    assert "cik = %s\n" % sensor.cik() in text and len(sensor.cik()) == 40
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    assert sensor.report_tmp(21.5).success

    again = TempSensor(cfg)  # a restart: the CIK in the file, no second activation (Murano would say 409)
    assert again.activated() and again.cik() == sensor.cik()
    read = again.http_read(["device_temp"])
    assert (read.code, read.body, read.values, read.success) == (200, "device_temp=21.5", {"device_temp": "21.5"},
                                                                 True)
    assert again.http_read("nothing_here").code == 204
    assert again.http_write_multiple({"a": 1, "msg": "x & y=z"}).success
    both = again.http_read_write(["a", "msg"], {"a": 2})
    assert both.success and both.values == {"a": "2", "msg": "x & y=z"} and both.body == "a=2&msg=x & y=z"
    assert usage_report()["lo"]["temp_sensor_v1"]["actvt:[]"]["num"] == 2  # the 404, then the 200


def test_a_rejected_cik_deactivates_without_touching_the_file(murano, tmp_path):
    murano.add_device("sn-401")
    cfg = write_device_file(tmp_path / "dev.cfg", "sn-401", murano.url, cik="b" * 40)
    device = Device("ua", cfg)
    assert device.activated()
    refused = device.http_write("x", 1)
    assert (refused.code, refused.success, refused.authorized, refused.online) == (401, False, False, True)
    assert not device.activated() and "cik = %s" % ("b" * 40) in open(cfg).read()
    again = device.http_write("x", 1)  # the same rejected CIK is not sent again
    assert again.code == 401 and again.response.body.startswith("not activated")
    device.activate()  # a whitelisted, never activated serial: activates, the new CIK replaces the old
    assert device.activated() and device.http_write("x", 1).success
    assert "b" * 40 not in open(cfg).read()


def test_exosite_api_url_forms_default_host_and_long_poll(murano, gwe_home):
    assert base_url("localhost:8090") == "http://localhost:8090"  # gmq
    assert base_url("127.0.0.1:80") == "http://127.0.0.1:80" and base_url("[::1]:8090") == "http://[::1]:8090"
    assert base_url("192.168.10.242:443") == "https://192.168.10.242:443"  # the reference's example
    assert base_url("localhost:443") == "https://localhost:443" and base_url("example.com") == "https://example.com"
    assert base_url("http://10.0.0.1:8080/") == "http://10.0.0.1:8080"
    for bad in ("", "host:port", "a:1/path"):
        with pytest.raises(ValueError):
            base_url(bad)
    with pytest.raises(ValueError, match="not configured"):
        ExositeAPI(cik="c" * 40)  # no url and no Gateway.cfg host or product id

    configure_gateway(murano)
    from device_client import Device as Client

    with Client(murano.url, serial=SERIAL, usage_db=False) as client:
        cik = client.activate()
    api = ExositeAPI(cik=(cik + "\n").encode())  # as the public apps get it: gwe -C's output, bytes
    assert api.cik() == cik
    resp_handler = api.http_write("hello_dataport", "World")
    assert resp_handler.success and murano.state(SERIAL)["hello_dataport"]["reported"] == "World"

    timed_out = api._http_long_poll("change", 300)
    assert (timed_out.code, timed_out.body, timed_out.success) == (304, "Not modified", False)
    murano.set(SERIAL, "change", "1")
    polled = api.http_long_poll(["change"], 5000, modify_ts=timed_out.last_modified)
    assert (polled.code, polled.body) == (200, "change=1") and polled.last_modified
    assert abs(api.exosite_timestamp() - time.time()) < 5

    recorded = api.http_record({"temp": {"1500000000": 20, 1500000001.5: 21}})
    assert recorded.success and not recorded.conflict
    assert [p["value"] for p in murano.history(SERIAL, "temp")] == ["21", "20"]
    assert ExositeAPI(cik="''", url=murano.url).http_write("a", 1).code == 401  # gwe -C before activation
    with pytest.raises(ValueError):
        api.http_write("a", None)
    assert set(usage_report()["lo"]["ExositeAPI-" + CLIENT_VERSION]) >= {"write:['hello_dataport']", "long_poll:['change']",
                                                            "record:['temp']"}


class Answers(ScriptedUpstream):
    def __init__(self, status, body):
        self.status, self.body = status, body
        super().__init__()

    def answer(self, pairs):
        return self.status, self.body


def test_handlers_for_conflicts_server_errors_and_no_network(gwe_home):
    conflict = Answers(409, "temp=1500000000,1500000001.5")
    failing = Answers(503, "busy")
    try:
        recorded = ExositeAPI(cik="c" * 40, url=conflict.url).http_record({"temp": {1500000000: 1, 1500000001.5: 2}})
        assert isinstance(recorded, RecordHandler) and recorded.conflict and not recorded.success
        assert recorded.get_conflict_timestamps() == [1500000000.0, 1500000001.5]
        written = ExositeAPI(cik="c" * 40, url=failing.url).http_write("a", 1)
        assert (written.code, written.success, written.online) == (503, False, True)
        assert "server" in written.body
    finally:
        conflict.close()
        failing.close()
    down = ExositeAPI(cik="c" * 40, url="127.0.0.1:%d" % free_port()).http_write("a", 1)
    assert (down.code, down.success, down.online) == (0, False, False) and "refused" in down.body


def test_a_one_off_install_sh_heredoc_works(murano, gwe_home, tmp_path):
    """The reference's one-shot app: install.sh feeds ``python`` a heredoc that writes a log tail
    with ``Device('GWE-crash-report', gweu.gwe_conf())``; here run as otau runs installers."""
    from otau.runner import install_environment, run_installer

    configure_gateway(murano)
    gwe = subprocess.run([sys.executable, "-m", "gwe", "--once"], capture_output=True, text=True, timeout=60)
    assert gwe.returncode == 0, gwe.stderr
    (tmp_path / "install.sh").write_text(
        '#!/bin/sh\nCRASH_REPORT="line 1\nline 2"\npython << EOF\nfrom exo.device import Device\n'
        'from GatewayEngine import utils as gweu\n\nD = Device(\'GWE-crash-report\', gweu.gwe_conf())\n'
        'print(D.http_write(\'fetch_status\', """$CRASH_REPORT"""))\nEOF\n')
    env = install_environment("send_some_logs", "1", str(tmp_path), str(gwe_home))
    result = run_installer(["/bin/sh", "install.sh"], str(tmp_path), env, 60, 4096)
    assert result.ok, result.output
    assert "success: True" in result.output
    wait_for(lambda: murano.state(SERIAL)["fetch_status"]["reported"] == "line 1\nline 2", 5)
    assert usage_report()["lo"]["send_some_logs"]["write:['fetch_status']"]["num"] == 1
