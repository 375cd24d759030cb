"""gwe end to end: a real gwe process, real supervisord running the apps, real murano_local."""
import json
import signal
import time

import psutil
import pytest
from gwe_helpers import SERIAL, configure_gateway, reported, reported_json, start_gwe, upload, wait_fetch_status
from atomic_config import set_option
from gwe.report_trigger import BURST
from harness import MuranoLocal, stop_process, wait_for
from otau_helpers import make_app, supervisor_conf


@pytest.fixture
def gateway(gwe_home, supervisord, murano):
    configure_gateway(murano)
    procs = []

    def start(*args):
        proc = start_gwe(gwe_home, *args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def _running_version(supervisord, name):
    info = supervisord.rpc().supervisor.getProcessInfo(name)
    if info["statename"] != "RUNNING":
        return None
    with open("/proc/%d/environ" % info["pid"], "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return env.get(b"GWE_APP_VERSION", b"").decode()


def test_first_reports_have_the_design_shapes(gateway, murano, gwe_home):
    gwe = gateway()
    wait_for(lambda: reported(murano, "usage_report"), 20, message="first reports")
    info = reported_json(murano, "device_info")
    for key in ("uname", "df", "free", "date"):
        assert isinstance(info[key], str) and info[key]
    assert "Filesystem" in info["df"] and "Mem:" in info["free"]
    assert "127.0.0.1" in info["ipaddrs"]["lo"]
    assert info["memory"]["total"] > 0 and info["uptime_s"] > 0
    report = reported_json(murano, "engine_report")
    assert isinstance(report["apps"], list)
    assert report["gwe_version"] and report["build_id"] and "gmq" in report
    usage = reported_json(murano, "usage_report")
    entry = usage["lo"]["gwe"]["actvt:[]"]
    assert entry["num"] == 1 and entry["type"] == "post" and entry["tot_tx"] > 0 and entry["tot_rx"] > 0
    assert set(entry) == {"num", "type", "tot_rx", "max_rx", "tot_tx", "max_tx", "rq_time_avg", "rq_time_max"}
    assert usage["lo"]["top_consumer"] == "gwe"
    cfg = open(gwe_home / "etc" / "gwe" / "Gateway.cfg").read()
    cik = [line for line in cfg.splitlines() if line.startswith("cik = ")][0][len("cik = "):]
    assert len(cik) == 40 and cik.isalnum()
    assert gwe.poll() is None


def otau_upgrade_and_rollback(murano, supervisord, tmp_path):
    """v1 installed within seconds of the operator's write, v2 upgrade, failing v3 rolled back."""
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    v1 = make_app(str(tmp_path), "counter", "1")
    v2 = make_app(str(tmp_path), "counter", "2")
    v3 = make_app(str(tmp_path), "counter", "3", command="/bin/sh -c 'exit 3'")
    for pkg in (v1, v2, v3):
        upload(murano, pkg)

    asked = time.monotonic()
    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "counter.v1.tar.gz"}]}))
    wait_for(lambda: _running_version(supervisord, "counter") == "1", 15, message="v1 RUNNING")
    assert time.monotonic() - asked < 5  # acted on at once, not after update_interval (60 s here)
    status = wait_fetch_status(murano, "counter.v1.tar.gz")
    assert status["status"] == "installed" and status["version"] == "1" and status["exit_code"] == 0
    assert murano.state(SERIAL)["engine_fetch"]["reported"] == ""  # taken and cleared

    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "counter.v2.tar.gz"}]}))
    assert wait_fetch_status(murano, "counter.v2.tar.gz")["status"] == "installed"
    assert _running_version(supervisord, "counter") == "2"

    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "counter.v3.tar.gz"}]}))
    status = wait_fetch_status(murano, "counter.v3.tar.gz")
    assert status["status"] == "rolled_back" and status["running_version"] == "2"
    assert _running_version(supervisord, "counter") == "2"

    def app_in_report():
        report = reported_json(murano, "engine_report")
        apps = {k: v for entry in report["apps"] for k, v in entry.items()}
        return apps.get("counter") if apps.get("counter", {}).get("version") == "2" else None
    murano.set(SERIAL, "update_interval", "1")
    counter = wait_for(app_in_report, 15, message="engine_report with counter v2")
    assert counter["status"] == "RUNNING" and counter["uptime"] >= 0 and "exitstatus" in counter


def test_otau_upgrade_and_rollback_through_engine_fetch(gateway, murano, supervisord, tmp_path):
    gateway()
    otau_upgrade_and_rollback(murano, supervisord, tmp_path)


def test_otau_over_mqtt(gwe_home, supervisord, tmp_path):
    murano = MuranoLocal(str(tmp_path / "murano_mqtt"), mqtt_port=True).start()
    gwe = None
    try:
        configure_gateway(murano, transport="mqtt")
        gwe = start_gwe(gwe_home)
        otau_upgrade_and_rollback(murano, supervisord, tmp_path)
        # over MQTT each alias is its own $resource publish; over HTTP the three reports are one POST.
        # (engine_report alone goes out after each install: the usage of full reports shows a cycle later)
        calls = wait_for(lambda: (lambda c: c if "write:['device_info']" in c else None)(
            reported_json(murano, "usage_report")["lo"]["gwe"]), 20, message="a full report's usage reported")
        assert "write:['usage_report']" in calls and "write:['engine_report']" in calls, sorted(calls)
    finally:
        if gwe is not None:
            stop_process(gwe)
        murano.stop()


def test_bad_engine_fetch_and_missing_package_get_fetch_status(gateway, murano):
    gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    murano.set(SERIAL, "engine_fetch", '{"install": [{"name": "../../etc/passwd"}]}')
    status = wait_for(lambda: reported_json(murano, "fetch_status"), 15, message="fetch_status")
    assert status["status"] == "failed" and status["step"] == "request"
    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "ghost.v1.tar.gz"}]}))
    status = wait_fetch_status(murano, "ghost.v1.tar.gz")
    assert status["status"] == "failed" and status["step"] == "download"
    assert murano.state(SERIAL)["engine_fetch"]["reported"] == ""


def test_update_interval_adopted_and_cleared(gateway, murano, gwe_home):
    gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    murano.set(SERIAL, "update_interval", "7")
    wait_for(lambda: "update_interval = 7" in open(gwe_home / "etc" / "gwe" / "Engine.config").read(), 10,
             message="update_interval adopted")
    wait_for(lambda: murano.state(SERIAL)["update_interval"]["reported"] == "", 10, message="cleared")


def test_outage_at_start_and_mid_loop_recovers_without_busy_loop(gateway, murano, gwe_home):
    murano.stop()
    gwe = gateway()
    proc = psutil.Process(gwe.pid)
    # measure the outage, not the interpreter's start (seconds of imports on a loaded machine)
    wait_for(lambda: "activation failed" in (gwe_home / "gwe.log").read_text(errors="replace"), 30,
             message="gwe's first failed activation")
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(4.0)
    busy = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
    assert busy < 0.05, "gwe used %.0f%% CPU while murano was down" % (busy * 100)
    murano.start()
    wait_for(lambda: reported(murano, "engine_report"), 30, message="reports after the outage")
    murano.stop()
    time.sleep(2.0)
    murano.start()
    murano.set(SERIAL, "update_interval", "3")
    wait_for(lambda: murano.state(SERIAL)["update_interval"]["reported"] == "", 40,
             message="gwe back on the long poll after a mid-loop outage")
    assert gwe.poll() is None


def test_a_failure_after_the_link_proved_itself_backs_off_from_the_start(gateway, murano, gwe_home):
    """Outages separated by working long polls each wait the first backoff step. The backoff used to
    reset only when a whole cycle (update_interval, 60 s here; hours on a gateway) went without a
    failure, so failures far apart waited 1, 2, 4 ... up to 60 s each (the lab's network run: 47 s)."""
    import re

    from gwe.daemon import ERROR_BACKOFF

    gateway()
    wait_for(lambda: reported(murano, "engine_report"), 30, message="gwe reporting")
    log = gwe_home / "gwe.log"

    def since(offset):
        return log.read_text(errors="replace")[offset:]

    first_delays = []
    for interval in (7, 8, 9):
        seen = len(since(0))
        murano.stop()
        failed = wait_for(lambda at=seen: re.search(r"cycle failed .*; retrying in ([\d.]+)s", since(at)), 30,
                          message="a failed cycle")
        first_delays.append(float(failed.group(1)))
        murano.start()
        murano.set(SERIAL, "update_interval", str(interval))
        wait_for(lambda at=seen, want=interval: "update_interval is now %d s" % want in since(at), 30,
                 message="update_interval %d adopted after the outage" % interval)
    assert max(first_delays) <= ERROR_BACKOFF[0], first_delays


def test_sigterm_stops_cleanly_during_a_long_poll(gateway, murano):
    gwe = gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    time.sleep(0.5)
    started = time.monotonic()
    gwe.send_signal(signal.SIGTERM)
    assert gwe.wait(10) == 0
    assert time.monotonic() - started < 3


def test_sigterm_while_activating_keeps_the_token(gwe_home, murano, tmp_path, monkeypatch):
    """SIGTERM arrives after Murano handed out the token and before Gateway.cfg holds it (held there by
    the test hook). Murano hands a token out once: it used to be lost with the exception the signal
    handler raised, leaving a gateway that could never activate again (409)."""
    import requests

    from gwe import config

    configure_gateway(murano)
    monkeypatch.setenv("GWE_TEST_HOLD_AT", "activated")
    monkeypatch.setenv("GWE_TEST_HOLD_DIR", str(tmp_path))
    gwe = start_gwe(gwe_home)
    try:
        wait_for((tmp_path / "activated.reached").exists, 20, message="gwe holding with its new token")
        gwe.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the handler has run while activation is held
        (tmp_path / "activated.release").touch()
        assert gwe.wait(10) == 0
    finally:
        stop_process(gwe)
    token = config.load_gateway_config().cik
    assert len(token) == 40, "the token was lost"
    answer = requests.post(murano.url + "/onep:v1/stack/alias", data={"probe": "1"},
                           headers={"X-Exosite-CIK": token}, timeout=10)
    assert answer.status_code == 204, answer.text
    monkeypatch.delenv("GWE_TEST_HOLD_AT")
    assert start_gwe(gwe_home, "--once").wait(30) == 0  # and the next gwe runs with it


def test_once_runs_one_cycle_and_exits(gwe_home, supervisord, murano):
    configure_gateway(murano)
    gwe = start_gwe(gwe_home, "--once")
    assert gwe.wait(30) == 0
    assert reported_json(murano, "device_info")["uname"]


def _report_apps(murano):
    report = reported_json(murano, "engine_report") or {"apps": []}
    return {k: v for entry in report["apps"] for k, v in entry.items()}


def test_engine_report_follows_installs_and_crashes_at_once(gateway, murano, supervisord, tmp_path):
    """update_interval is 60 s here: the reports below come from the install and from the state change."""
    gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    trigger = tmp_path / "crash-now"
    app = ("import os, sys, time\nwhile not os.path.exists(%r):\n    time.sleep(0.1)\nsys.exit(3)\n" % str(trigger))
    conf = supervisor_conf("%(ENV_GWE_PYTHON)s app.py", autorestart="false")
    pkg = make_app(str(tmp_path), "watched", "1", extra={"app.py": app, "supervisor.conf": conf})
    upload(murano, pkg)
    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "watched.v1.tar.gz"}]}))
    assert wait_fetch_status(murano, "watched.v1.tar.gz")["status"] == "installed"
    installed = time.monotonic()
    wait_for(lambda: _report_apps(murano).get("watched", {}).get("status") == "RUNNING", 5, interval=0.1,
             message="new app RUNNING in engine_report")
    assert time.monotonic() - installed < 5

    trigger.touch()
    crashed = time.monotonic()
    wait_for(lambda: _report_apps(murano).get("watched", {}).get("exitstatus") == 3, 5, interval=0.1,
             message="the crash in engine_report")
    assert time.monotonic() - crashed < 5
    assert _report_apps(murano)["watched"]["status"] == "EXITED"


@pytest.mark.slow
def test_a_crash_loop_does_not_flood_the_uplink(gateway, murano, supervisord, tmp_path):
    # added before gwe starts: gwe's state watch looks when a process it knows of exits (a program
    # added behind its back shows at its next periodic look)
    supervisord.add_program("looper", "/bin/sh -c 'sleep 0.3; exit 1'", startsecs=0, autorestart="true",
                            startretries=1000)
    gateway()
    wait_for(lambda: "looper" in _report_apps(murano), 20, message="the loop reported")
    time.sleep(15)
    written = len(murano.history(SERIAL, "engine_report"))
    # the loop changes state every ~0.4 s (the watch sees each exit: ~40 changes in 15 s); reports: the
    # first cycle's, the bucket's burst, at most one refill, and at least one on change
    assert 2 <= written <= 1 + BURST + 1, written
    supervisord.rpc().supervisor.stopProcessGroup("looper", False)


def test_a_download_cut_by_a_cloud_restart_resumes_and_installs(gateway, murano, supervisord, tmp_path):
    """murano_local goes away just before a package's download and is back 3 s later: the download
    resumes and the package installs (a failed fetch_status here halted a rollout of ten gateways
    whose cloud restarted)."""
    reached, release = tmp_path / "install.reached", tmp_path / "install.release"
    slow = make_app(str(tmp_path), "slow", "1", install_sh="#!/bin/sh\ntouch %s\nwhile [ ! -e %s ]; do sleep 0.1;"
                    " done\n" % (reached, release))
    upload(murano, slow)
    upload(murano, make_app(str(tmp_path), "quick", "1"))
    gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "slow.v1.tar.gz"},
                                                               {"name": "quick.v1.tar.gz"}]}))
    wait_for(reached.exists, 30, message="slow's install.sh running")
    murano.stop()
    release.touch()  # slow installs; quick's download finds no server
    time.sleep(3)
    murano.start()
    assert wait_fetch_status(murano, "quick.v1.tar.gz")["status"] == "installed"
    wait_for(lambda: supervisord.rpc().supervisor.getProcessInfo("quick")["statename"] == "RUNNING", 10)


def _outbox(gwe_home):
    try:
        with open(gwe_home / "var" / "lib" / "gwe" / "fetch_status.outbox") as f:
            return [json.loads(entry) for entry in json.load(f)]
    except FileNotFoundError:
        return []


def test_fetch_status_of_installs_during_an_outage_arrives_in_order_once(gateway, murano, supervisord,
                                                                         gwe_home, tmp_path):
    """murano_local stops while an install runs: the install finishes (installed), the request's next
    package cannot be downloaded (failed); both statuses wait on disk through a SIGKILL of gwe and
    reach the restarted murano_local in order, once each (they used to be lost)."""
    reached, release = tmp_path / "install.reached", tmp_path / "install.release"
    slow = make_app(str(tmp_path), "slow", "1", install_sh="#!/bin/sh\ntouch %s\nwhile [ ! -e %s ]; do sleep 0.1;"
                    " done\necho installed slow\n" % (reached, release))
    upload(murano, slow)
    upload(murano, make_app(str(tmp_path), "quick", "1"))
    set_option(str(gwe_home / "etc" / "gwe" / "Engine.config"), "otau", "download_retry", "0")  # fail at once
    gwe = gateway()
    wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
    murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "slow.v1.tar.gz"},
                                                               {"name": "quick.v1.tar.gz"}]}))
    wait_for(reached.exists, 30, message="slow's install.sh running")
    murano.stop()
    release.touch()
    kept = wait_for(lambda: (lambda k: k if len(k) == 2 else None)(_outbox(gwe_home)), 60,
                    message="both statuses kept on disk")
    assert [(s["package"], s["status"]) for s in kept] == [("slow.v1.tar.gz", "installed"),
                                                           ("quick.v1.tar.gz", "failed")]
    gwe.kill()  # as a power cut would: only what is on disk survives
    gwe.wait(10)
    gateway()
    time.sleep(1.0)  # the new gwe finds the cloud down too
    murano.start()

    def delivered():
        history = [json.loads(p["value"]) for p in reversed(murano.history(SERIAL, "fetch_status")) if p["value"]]
        return history if history and history[-1]["package"] == "quick.v1.tar.gz" else None
    history = wait_for(delivered, 60, message="the kept statuses delivered")
    assert [(s["package"], s["status"]) for s in history] == [("slow.v1.tar.gz", "installed"),
                                                              ("quick.v1.tar.gz", "failed")]
    assert history == kept
    assert history[1]["step"] == "download"
    wait_for(lambda: _outbox(gwe_home) == [], 10, message="the outbox emptied")
    assert supervisord.rpc().supervisor.getProcessInfo("slow")["statename"] == "RUNNING"
