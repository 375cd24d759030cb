"""Tags, fleet status and rollouts through the murano-local CLI against a real server, with a
simulated fleet (murano_local.simulator: gateways talking HTTP through device_client)."""
import json
import threading
import time

import pytest
import requests
from fleet_helpers import cli, fetch_statuses, fleet_url, rollout, wait_rollout
from harness import wait_for
from otau_helpers import make_app

from murano_local.simulator import Simulator, draw, parse_mix


@pytest.fixture
def fleet(murano):
    """Start simulated gateways: ``fleet(count, mix=..., tags=...)``; all stopped afterwards."""
    sims = []

    def start(count, **kwargs):
        kwargs.setdefault("report_interval", 2.0)
        kwargs.setdefault("poll_interval", 0.3)
        kwargs.setdefault("install_seconds", 0.3)
        kwargs.setdefault("threads", 4)
        sim = Simulator(murano.url, "localproduct", count, **kwargs)
        sim.setup()
        sim.start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


def test_tag_untag_and_fleet_status(murano, fleet):
    fleet(3, prefix="gw-")
    assert cli(murano, "device", "tag", "gw-00001", "north", "canary").stdout.strip() == "gw-00001: canary, north"
    assert cli(murano, "device", "tag", "gw-00002", "north").returncode == 0
    untag = cli(murano, "device", "untag", "gw-00001", "canary")
    assert untag.returncode == 0 and untag.stdout.strip() == "gw-00001: north"
    wait_for(lambda: all(r["gwe_version"] for r in requests.get(fleet_url(murano, "/gateways"), timeout=10)
                         .json()["gateways"]), 20, message="every gateway's first report")

    done = cli(murano, "fleet", "status", "--tag", "north", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["serial"] for r in rows] == ["gw-00001", "gw-00002"]
    assert rows[0]["tags"] == ["north"] and rows[0]["gwe_version"] == "0.1.0"
    assert rows[0]["apps"][0]["name"] == "sensor" and rows[0]["apps"][0]["status"] == "RUNNING"
    assert rows[0]["memory"]["percent"] > 0 and rows[0]["disk"]["mount"] == "/"
    assert rows[0]["gmq"]["depth"] is not None and rows[0]["last_seen"] > (time.time() - 60) * 1e6
    human = cli(murano, "fleet", "status").stdout.splitlines()
    assert human[0].split()[:3] == ["SERIAL", "TAGS", "LAST"] and len(human) == 4
    assert "gw-00003" in human[3] and "sensor 1 RUNNING" in human[3]

    for args, error in ((("fleet", "status", "--tag", "nosuch"), "no gateway has tag nosuch"),
                        (("device", "tag", "ghost", "north"), "no such device"),
                        (("device", "tag", "gw-00001", "bad tag"), "invalid tag")):
        bad = cli(murano, *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("murano-local: error: " + error), lines


def test_rollout_cli_refuses_bad_input_with_one_line(murano, fleet, tmp_path):
    fleet(4, prefix="gw-", tags=("all",))
    package = make_app(str(tmp_path), "sensor", "2")
    started = cli(murano, "rollout", "create", "r1", "--package", package, "--tag", "all", "--batch-size", "2",
                  "--health-window", "30")
    assert started.returncode == 0, started.stderr
    assert "uploaded sensor.v2.tar.gz" in started.stderr and started.stdout.startswith("r1: running")
    (tmp_path / "other").mkdir()
    other = make_app(str(tmp_path / "other"), "sensor", "2", install_sh="#!/bin/sh\necho different\n")
    cases = [
        (("rollout", "create", "r2", "--package", package, "--tag", "nosuch"), "no gateway has tag nosuch"),
        (("rollout", "create", "r2", "--package", str(tmp_path / "gone.v1.tar.gz"), "--tag", "all"),
         "cannot read package"),
        (("rollout", "create", "r2", "--package", package, "--tag", "all"),
         "rollout r1 (running) already rolls sensor out to"),
        (("rollout", "create", "r1", "--package", package, "--tag", "all"), "rollout r1 already exists"),
        (("rollout", "create", "r2", "--package", other, "--tag", "all"), "content sensor.v2.tar.gz differs"),
        (("rollout", "create", "r2", "--package", package, "--tag", "all", "--batch-size", "0"), "batch size"),
        (("rollout", "pause", "nosuch"), "no rollout nosuch"),
    ]
    for args, error in cases:
        bad = cli(murano, *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and error in lines[0], (args, bad.stderr)
    listed = json.loads(cli(murano, "rollout", "status", "--json").stdout)
    assert [r["name"] for r in listed] == ["r1"]
    paused = cli(murano, "rollout", "pause", "r1")
    assert paused.returncode == 0 and paused.stdout.startswith("r1: paused")
    again = cli(murano, "rollout", "pause", "r1")
    assert again.returncode == 1 and again.stderr.strip() == "murano-local: error: cannot pause rollout r1: it is paused"
    assert cli(murano, "rollout", "abort", "r1").stdout.startswith("r1: aborted")


def test_simulated_rollout_halts_at_the_threshold_and_leaves_the_rest_untouched(murano, fleet, tmp_path):
    mix = "success=0.6,rolled_back=0.2,failed=0.2"
    sim = fleet(20, prefix="gw-", tags=("all",), mix=mix)
    package = make_app(str(tmp_path), "sensor", "2")
    assert cli(murano, "rollout", "create", "r1", "--package", package, "--tag", "all", "--batch-size", "4",
               "--max-failures", "3", "--health-window", "1").returncode == 0
    halted = wait_rollout(murano, "r1", ("halted", "completed"), 60)
    assert halted["state"] == "halted", halted
    failed = [t for t in halted["targets"] if t["state"] == "failed"]
    halted_at = int(halted["reason"].split(" of 20 gateways failed (halts at 3): ")[0])
    assert 3 <= halted_at <= len(failed)  # the gateways in flight at the halt are still judged
    outcome = {g.serial: g.outcome for g in sim.gateways}
    for t in failed:
        assert outcome[t["serial"]] in ("rolled_back", "failed") and t["detail"].startswith(
            "fetch_status " + outcome[t["serial"]])
    for t in halted["targets"]:
        if t["state"] == "healthy":
            assert outcome[t["serial"]] == "success"
            assert t["finished_us"] - t["answered_us"] >= 1e6  # the window, from the report's uptime
    untouched = [t for t in halted["targets"] if t["state"] == "skipped"]
    assert untouched and all(t["requested_us"] is None for t in untouched)
    for t in untouched:  # never asked: no engine_fetch set, no install, the old version reported
        state = murano.state(t["serial"])
        assert "engine_fetch" not in state and fetch_statuses(murano, t["serial"]) == []
        report = json.loads(state["engine_report"]["reported"])
        assert {"sensor": "1"} == {k: v["version"] for a in report["apps"] for k, v in a.items() if k == "sensor"}
    batches = sorted({t["batch"] for t in halted["targets"] if t["requested_us"]})
    assert batches == list(range(1, len(batches) + 1))
    firsts = {b: min(t["requested_us"] for t in halted["targets"] if t["batch"] == b) for b in batches}
    for b in batches[1:]:  # a batch is asked only after every gateway of the one before finished
        assert firsts[b] >= max(t["finished_us"] for t in halted["targets"] if t["batch"] == b - 1)


def test_health_window_catches_a_crash_and_a_silent_gateway_times_out(murano, fleet, tmp_path):
    bounds = parse_mix("crash=1,silent=1")
    serials = ["gw-%05d" % i for i in range(1, 5)]
    assert {draw(bounds, s, 1) for s in serials} == {"crash", "silent"}  # the seed gives both
    fleet(4, prefix="gw-", tags=("all",), mix="crash=1,silent=1")
    package = make_app(str(tmp_path), "sensor", "2")
    created = requests.post(fleet_url(murano, "/rollouts"), timeout=10, json={
        "name": "r1", "package": "sensor.v2.tar.gz", "tags": ["all"], "batch_size": "100%", "max_failures": "100%",
        "health_window": 1, "fetch_timeout": 3, "report_timeout": 2})
    assert created.status_code == 404 and "no package sensor.v2.tar.gz" in created.text
    assert cli(murano, "rollout", "create", "r1", "--package", package, "--tag", "all", "--batch-size", "100%",
               "--max-failures", "100%", "--health-window", "1", "--fetch-timeout", "3",
               "--report-timeout", "2").returncode == 0
    done = wait_rollout(murano, "r1", ("halted",), 30)
    details = {t["serial"]: t["detail"] for t in done["targets"]}
    for s in serials:
        if draw(bounds, s, 1) == "crash":
            assert details[s] == "sensor 2 FATAL after the install"
        else:
            assert details[s] == "no fetch_status within 3s of the request"
    assert rollout(murano, "r1")["failures"] == 4


@pytest.mark.slow
def test_a_restart_mid_rollout_resumes_and_installs_each_gateway_once(murano, fleet, tmp_path):
    fleet(12, prefix="gw-", tags=("all",))
    package = make_app(str(tmp_path), "sensor", "2")
    assert cli(murano, "rollout", "create", "r1", "--package", package, "--tag", "all", "--batch-size", "3",
               "--health-window", "1").returncode == 0
    wait_for(lambda: rollout(murano, "r1")["batch"] >= 2, 30, interval=0.05, message="second batch asked")
    murano.kill()
    murano.start()
    before = rollout(murano, "r1")
    assert before["state"] == "running" and before["batch"] >= 2
    done = wait_rollout(murano, "r1", ("completed",), 60)
    assert done["counts"]["healthy"] == 12 and done["reason"] == "every gateway answered"
    for t in done["targets"]:
        statuses = fetch_statuses(murano, t["serial"], "sensor.v2.tar.gz")
        # one install each: a gateway whose answer was lost with the server (as gwe loses it) was asked
        # again after the restart and answered 'already installed'
        installs = [s for s in statuses if "nothing done" not in s["output"]]
        assert len(installs) <= 1 and all(s["status"] == "installed" for s in statuses), (t["serial"], statuses)


def test_fleet_api_and_page_refuse_bad_requests_and_the_change_feed_wakes(murano):
    murano.add_device("gw-1")
    for method, path, kwargs, status in (
            ("POST", "/gateways/gw-1/tags", {"data": b"{not json"}, 400),
            ("POST", "/gateways/gw-1/tags", {"json": {"add": "north"}}, 400),
            ("POST", "/gateways/ghost/tags", {"json": {"add": ["north"]}}, 404),
            ("GET", "/gateways/ghost", {}, 404),
            ("DELETE", "/gateways", {}, 405),
            ("POST", "/rollouts", {"json": ["a list"]}, 400),
            ("POST", "/rollouts/nosuch/abort", {}, 404),
            ("POST", "/rollouts/nosuch/explode", {}, 404),
            ("GET", "/changes?since=soon", {}, 400),
            ("GET", "/nothing", {}, 404)):
        resp = requests.request(method, fleet_url(murano, path), timeout=10, **kwargs)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        assert "\n" not in resp.text.strip() and "Traceback" not in resp.text
    for method, path, status in (("GET", "/ui/static/nope.js", 404), ("GET", "/ui/static/../cli.py", 404),
                                 ("POST", "/ui/", 405), ("GET", "/ui/plots/localproduct/ghost", 404),
                                 ("GET", "/ui", 302)):
        resp = requests.request(method, murano.url + path, timeout=10, allow_redirects=False)
        assert resp.status_code == status, (method, path, resp.status_code)
    page = requests.get(murano.url + "/ui/", timeout=10)
    assert page.status_code == 200 and "/ui/static/app.js" in page.text
    assert 'src="http' not in page.text and 'href="http' not in page.text  # nothing loaded from elsewhere
    for asset in ("app.js", "style.css"):
        body = requests.get(murano.url + "/ui/static/" + asset, timeout=10).text
        assert "https://" not in body and "http://" not in body  # works offline: no CDN

    version = requests.get(fleet_url(murano, "/changes?since=-1&timeout=0"), timeout=10).json()["version"]
    idle = time.monotonic()
    assert requests.get(fleet_url(murano, "/changes?since=%d&timeout=1" % version), timeout=10).json() == {
        "version": version}
    assert time.monotonic() - idle >= 0.9

    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(requests.get(
        fleet_url(murano, "/changes?since=%d&timeout=30" % version), timeout=40).json()))
    waiter.start()
    time.sleep(0.5)
    woke = time.monotonic()
    requests.post(fleet_url(murano, "/gateways/gw-1/tags"), json={"add": ["north"]}, timeout=10).raise_for_status()
    waiter.join(40)
    assert answer["version"] != version and time.monotonic() - woke < 5


def test_simulate_refuses_bad_options_with_one_line(murano):
    for args, error in ((("--gateways", "2", "--mix", "bogus=1"), "unknown outcome 'bogus'"),
                        (("--gateways", "2", "--mix", "success=-1"), "must not be negative"),
                        (("--gateways", "2", "--app", "noversion"), "--app must look like NAME.vVERSION"),
                        (("--gateways", "2", "--tag", "canary=lots"), "tag share")):
        bad = cli(murano, "simulate", *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and error in lines[0], (args, bad.stderr)
