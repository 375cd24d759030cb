"""The fleet service layer called directly: tags and the schema migration, fleet rows from the
reports gwe really writes, the rollout state machines, judging a gateway, and the engine's steps
against a real store (device writes made through the service as the Device API would)."""
import json
import sqlite3

import pytest

from murano_local import Murano
from murano_local.fleet import FleetView, summarize, usage_totals
from murano_local.rollout import (Evidence, RolloutEngine, RolloutError, Spec, Target, TransitionError,
                                  amount_of, judge, parse_amount)
from murano_local.service import Invalid
from murano_local.store import NotFound
from murano_local.ui.svg import bar_chart, line_chart

PID = "prod1"
S = 1_000_000  # µs


@pytest.fixture
def murano(tmp_path):
    m = Murano(str(tmp_path / "data"), default_pid=PID)
    yield m
    m.close()


def test_tags_are_added_removed_validated_and_kept_with_the_device(murano, tmp_path):
    murano.add_device(PID, "gw-1")
    murano.add_device(PID, "gw-2")
    assert murano.change_tags(PID, "gw-1", ["north", "canary"]) == ["canary", "north"]
    assert murano.change_tags(PID, "gw-2", ["north"]) == ["north"]
    assert murano.change_tags(PID, "gw-1", [], ["canary", "absent"]) == ["north"]
    assert murano.store.tagged(PID, ["north"]) == ["gw-1", "gw-2"]
    with pytest.raises(Invalid):
        murano.change_tags(PID, "gw-1", ["bad tag"])
    with pytest.raises(NotFound):
        murano.change_tags(PID, "ghost", ["north"])
    with pytest.raises(Invalid, match="at most 64"):
        murano.change_tags(PID, "gw-2", ["t%d" % i for i in range(64)])
    assert murano.store.tags(PID)["gw-2"] == ["north"]  # the refused change changed nothing
    murano.store.remove_device(PID, "gw-2")
    assert murano.store.tagged(PID, ["north"]) == ["gw-1"]
    murano.close()
    again = Murano(str(tmp_path / "data"), default_pid=PID)
    try:
        assert again.store.tags(PID) == {"gw-1": ["north"]}
    finally:
        again.close()


def test_a_version_1_database_is_migrated_keeping_its_data(tmp_path):
    """A database made by the murano_local before fleet management (schema 1) gets the tag and
    rollout tables; its devices and state stay."""
    data = tmp_path / "old"
    data.mkdir()
    conn = sqlite3.connect(str(data / "murano_local.sqlite3"))
    from murano_local.store import _SCHEMA
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO products VALUES ('p', 0, 1)")
    conn.execute("INSERT INTO devices (pid, identity, token, created_us) VALUES ('p', 'gw-old', 'T' , 1)")
    conn.execute("INSERT INTO state VALUES ('p', 'gw-old', 'engine_report', '{}', '{}', 5, 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    m = Murano(str(data), default_pid="p")
    try:
        assert m.store.query("PRAGMA user_version")[0][0] == 2
        assert m.state("p", "gw-old")["engine_report"]["reported"] == "{}"
        assert m.change_tags("p", "gw-old", ["kept"]) == ["kept"]
        assert m.store.query("SELECT count(*) FROM rollouts")[0][0] == 0
    finally:
        m.close()


def _real_reports(gwe_home, apps=(("counter", "RUNNING", "2"),)):
    """device_info and engine_report exactly as gwe makes them on this machine."""
    from atomic_config import gwe_paths
    from gwe.device_info import device_info
    from gwe.engine_report import engine_report

    processes = [{"name": name, "statename": state, "start": 100, "now": 160, "exitstatus": 0}
                 for name, state, _v in apps]
    gmq = {"queue": {"depth": 7}, "counters": {"accepted": 30, "delivered": 23},
           "alarms": [{"kind": "activation_refused", "time": 1, "detail": "409"}]}
    report = engine_report(gwe_paths(str(gwe_home)), lambda: processes, lambda: gmq)
    return device_info(), report


def test_a_fleet_row_is_read_from_the_reports_gwe_writes(gwe_home):
    info, report = _real_reports(gwe_home, apps=(("gwe", "RUNNING", None), ("counter", "BACKOFF", None)))
    fetch = {"package": "counter.v2.tar.gz", "status": "rolled_back", "error": "not RUNNING"}
    row = summarize("gw-1", ["north"], {"engine_report": (json.dumps(report), 10 * S),
                                        "device_info": (json.dumps(info), 12 * S),
                                        "fetch_status": (json.dumps(fetch), 11 * S)})
    assert row["serial"] == "gw-1" and row["tags"] == ["north"] and row["last_seen"] == 12 * S
    assert row["gwe_version"] == report["gwe_version"] and row["link"] is None  # no link state given here
    assert [(a["name"], a["status"]) for a in row["apps"]] == [("counter", "BACKOFF")]
    assert row["suite"][0]["name"] == "gwe"
    assert row["fetch_status"]["status"] == "rolled_back" and row["fetch_status"]["timestamp"] == 11 * S
    assert row["gmq"]["depth"] == 7 and row["gmq"]["alarms"] == ["activation_refused"]
    assert 0 <= row["disk"]["percent"] <= 100 and row["memory"]["percent"] == info["memory"]["percent"]
    assert "counter BACKOFF" in row["problems"] and "gmq alarms: activation_refused" in row["problems"]
    assert any(p.startswith("last install rolled_back") for p in row["problems"])
    garbage = summarize("gw-2", [], {"engine_report": ("not json", 1), "device_info": ('["a list"]', 1)})
    assert garbage["apps"] == [] and garbage["disk"] is None and garbage["problems"] == ["no engine_report yet"]


def test_fleet_view_filters_by_tag_and_rereads_only_new_reports(murano, gwe_home):
    info, report = _real_reports(gwe_home)
    for n in range(3):
        murano.add_device(PID, "gw-%d" % n)
        murano.write(PID, "gw-%d" % n, [("engine_report", json.dumps(report)), ("device_info", json.dumps(info))])
    murano.change_tags(PID, "gw-1", ["south"])
    view = FleetView(murano)
    assert [r["serial"] for r in view.rows(PID)] == ["gw-0", "gw-1", "gw-2"]
    assert [r["serial"] for r in view.rows(PID, ["south"])] == ["gw-1"]
    report["apps"] = [{"counter": {"status": "FATAL", "version": "3", "uptime": 0, "exitstatus": 1}}]
    murano.write(PID, "gw-2", [("engine_report", json.dumps(report))])
    rows = {r["serial"]: r for r in view.rows(PID)}
    assert rows["gw-2"]["apps"][0]["status"] == "FATAL" and rows["gw-0"]["apps"][0]["status"] == "RUNNING"
    assert rows["gw-1"]["tags"] == ["south"]


def test_gateway_page_series_and_usage_come_from_history(murano, gwe_home):
    murano.add_device(PID, "gw-1")
    info, report = _real_reports(gwe_home)
    for depth in (3, 9, 4):
        report["gmq"]["queue"]["depth"] = depth
        usage = {"lo": {"gwe": {"write:['a']": {"num": 2, "type": "post", "tot_rx": 10, "max_rx": 5, "tot_tx": 100,
                                                "max_tx": 50, "rq_time_avg": 0.1, "rq_time_max": 0.2}},
                        "top_consumer": "gwe"}}
        murano.write(PID, "gw-1", [("engine_report", json.dumps(report)), ("device_info", json.dumps(info)),
                                   ("usage_report", json.dumps(usage))])
    page = FleetView(murano).gateway(PID, "gw-1")
    assert [v for _t, v in page["series"]["gmq_depth"]] == [3, 9, 4]
    assert len(page["series"]["memory"]) == 3 and page["apps"][0]["name"] == "counter"
    assert page["usage"] == [{"iface": "lo", "identity": "gwe", "requests": 6, "tx": 300, "rx": 30}]
    assert usage_totals([{"timestamp": 1, "value": "junk"}]) == []
    with pytest.raises(NotFound):
        FleetView(murano).gateway(PID, "ghost")


def test_plots_are_svg_with_escaped_text_and_one_polyline_per_series():
    svg = line_chart("<CPU>", [("a&b", [[1 * S, 5], [2 * S, 50]]), ("b", [[1 * S, 1]])], unit="%", y_max=100)
    assert svg.startswith("<svg") and "&lt;CPU&gt;" in svg and "a&amp;b" in svg and "<CPU>" not in svg
    assert svg.count('class="series"') == 2 and 'data-points="2"' in svg
    assert "no data yet" in line_chart("empty", [("a", [])])
    bars = bar_chart("use", [("gwe lo", [("sent", 300), ("received", 30)])])
    assert bars.count('class="bar"') == 2


@pytest.mark.parametrize("text,total,expected", [("3", 10, 3), ("25%", 10, 3), ("10%", 5, 1), ("100%", 7, 7),
                                                  ("1", 1, 1), ("50%", 1, 1)])
def test_amounts(text, total, expected):
    assert amount_of(parse_amount(text, "x"), total) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "0%", "101%", "abc", ""])
def test_bad_amounts_are_refused(bad):
    with pytest.raises(RolloutError):
        parse_amount(bad, "batch size")


SPEC = Spec(name="r", package="counter.v2.tar.gz", app="counter", version="2", sha256="0" * 64, tags=("t",),
            batch_size="2", max_failures="1", health_window=10.0, fetch_timeout=60.0, report_timeout=30.0)


def _report(status="RUNNING", version="2", uptime=0):
    return {"apps": [{"counter": {"status": status, "version": version, "uptime": uptime, "exitstatus": 0}}]}


@pytest.mark.parametrize("fetch,event", [("installed", "answer"), ("failed", "fail"), ("rolled_back", "fail")])
def test_judge_a_requested_gateway_by_its_fetch_status(fetch, event):
    t = Target("gw", 1, "requested", requested_us=100 * S)
    old = (90 * S, {"package": SPEC.package, "status": "installed"})  # before the request: not an answer
    other = (101 * S, {"package": "other.v1.tar.gz", "status": "failed"})
    verdict = judge(t, SPEC, Evidence([old, other, (102 * S, {"package": SPEC.package, "status": fetch,
                                                              "error": "boom\nmore"})]), 103 * S)
    assert verdict.event == event and verdict.at_us == 102 * S
    if event == "fail":
        assert verdict.detail == "fetch_status %s: boom" % fetch
    assert judge(t, SPEC, Evidence([old, other]), 103 * S) is None


def test_judge_times_out_a_silent_gateway_but_gives_grace_after_a_restart():
    t = Target("gw", 1, "requested", requested_us=100 * S)
    assert judge(t, SPEC, Evidence(), 159 * S) is None
    verdict = judge(t, SPEC, Evidence(), 161 * S)
    assert verdict.event == "fail" and "no fetch_status within 60s" in verdict.detail
    assert judge(t, SPEC, Evidence(), 161 * S, resumed_us=150 * S) is None  # restarted 11 s before: 30 s grace
    assert judge(t, SPEC, Evidence(), 181 * S, resumed_us=150 * S).event == "fail"


def test_judge_an_engine_report_at_the_new_version_as_an_answer_when_fetch_status_was_lost():
    t = Target("gw", 1, "requested", requested_us=100 * S)
    assert judge(t, SPEC, Evidence([], _report(version="1"), 105 * S), 106 * S) is None
    assert judge(t, SPEC, Evidence([], _report(), 99 * S), 106 * S) is None  # older than the request
    assert judge(t, SPEC, Evidence([], _report(), 105 * S), 106 * S).event == "answer"


def test_judge_health_window_from_the_app_uptime():
    t = Target("gw", 1, "installed", requested_us=100 * S, answered_us=110 * S)
    evidence = Evidence([], _report(uptime=2), 112 * S)  # started at 110
    assert judge(t, SPEC, evidence, 119 * S) is None
    assert judge(t, SPEC, evidence, 120 * S).event == "healthy"
    restarted = Evidence([], _report(uptime=1), 125 * S)  # a restart at 124: the window starts again
    assert judge(t, SPEC, restarted, 130 * S) is None
    assert judge(t, SPEC, restarted, 134 * S).event == "healthy"
    assert judge(t, SPEC, Evidence([], _report("FATAL"), 112 * S), 113 * S).event == "fail"
    looping = Evidence([], _report("BACKOFF"), 140 * S)
    assert judge(t, SPEC, looping, 150 * S) is None
    verdict = judge(t, SPEC, looping, 151 * S)  # 10 s window + 30 s report timeout after the answer
    assert verdict.event == "fail" and "last engine_report: counter 2 BACKOFF" in verdict.detail


def test_transitions_are_guarded():
    t = Target("gw", 1)
    with pytest.raises(TransitionError):
        t.move("healthy")
    t.move("request")
    t.move("answer", at_us=5)
    t.move("healthy", at_us=6)
    assert (t.state, t.answered_us, t.finished_us) == ("healthy", 5, 6)
    with pytest.raises(TransitionError, match="cannot fail gateway gw: it is healthy"):
        t.move("fail")


def _gateways(murano, n, tag="t"):
    for i in range(n):
        murano.add_device(PID, "gw-%d" % i)
        murano.change_tags(PID, "gw-%d" % i, [tag])


def _upload(murano, tmp_path, name="counter.v2.tar.gz", data=b"package bytes"):
    path = tmp_path / name
    path.write_bytes(data)
    with open(path, "rb") as f:
        murano.content.put(PID, name, f, len(data), "application/gzip")
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _answer(murano, identity, status, version="2", uptime=0):
    murano.write(PID, identity, [("engine_fetch", "")])
    murano.write(PID, identity, [("fetch_status", json.dumps({"package": "counter.v2.tar.gz", "status": status}))])
    murano.write(PID, identity, [("engine_report", json.dumps(_report(version=version, uptime=uptime)))])


def _asked(murano, identity):
    value = murano.state(PID, identity).get("engine_fetch", {})
    return value.get("set") if value.get("set") else None


def test_engine_asks_batch_by_batch_and_halts_at_the_threshold(murano, tmp_path):
    _gateways(murano, 6)
    sha = _upload(murano, tmp_path)
    engine = RolloutEngine(murano)
    created = engine.create(PID, {"name": "r1", "package": "counter.v2.tar.gz", "tags": ["t"], "batch_size": "2",
                                  "max_failures": "2", "health_window": 0, "sha256": sha})
    assert created["batches"] == 3 and created["threshold"] == 2 and created["counts"]["requested"] == 2
    assert json.loads(_asked(murano, "gw-0")) == {"install": [{"name": "counter.v2.tar.gz", "sha256": sha}]}
    assert _asked(murano, "gw-2") is None
    _answer(murano, "gw-0", "installed")
    engine.step()
    assert _asked(murano, "gw-2") is None  # gw-1 still in flight
    _answer(murano, "gw-1", "installed")
    engine.step()
    status = engine.status(PID, "r1")[0]
    assert [t["state"] for t in status["targets"]] == ["healthy", "healthy", "requested", "requested",
                                                       "pending", "pending"]
    _answer(murano, "gw-2", "rolled_back", version="1")
    _answer(murano, "gw-3", "failed", version="1")
    engine.step()
    status = engine.status(PID, "r1")[0]
    assert status["state"] == "halted" and status["failures"] == 2
    assert "2 of 6 gateways failed (halts at 2)" in status["reason"] and "gw-2: fetch_status rolled_back" in status["reason"]
    assert [t["state"] for t in status["targets"]][4:] == ["skipped", "skipped"]
    assert _asked(murano, "gw-4") is None and _asked(murano, "gw-5") is None
    with pytest.raises(TransitionError):
        engine.act(PID, "r1", "resume")


def test_bad_rollout_requests_get_one_clear_error_and_change_nothing(murano, tmp_path):
    _gateways(murano, 3)
    _upload(murano, tmp_path)
    engine = RolloutEngine(murano)
    good = {"name": "r1", "package": "counter.v2.tar.gz", "tags": ["t"], "batch_size": "1", "max_failures": "1",
            "health_window": 5}
    cases = [(dict(good, tags=["nosuch"]), "no gateway has tag nosuch"),
             (dict(good, package="missing.v1.tar.gz"), "no package missing.v1.tar.gz"),
             (dict(good, package="not-a-package"), "bad package name"),
             (dict(good, batch_size="0"), "batch size"),
             (dict(good, health_window="soon"), "health window"),
             (dict(good, name="bad name"), "rollout name"),
             (dict(good, sha256="1" * 64), "differs from the package given")]
    for body, error in cases:
        with pytest.raises(RolloutError, match=error):
            engine.create(PID, body)
    assert engine.status(PID) == []
    engine.create(PID, good)
    with pytest.raises(RolloutError, match="already exists"):
        engine.create(PID, good)
    with pytest.raises(RolloutError, match=r"rollout r1 \(running\) already rolls counter out to gw-0, gw-1, gw-2"):
        engine.create(PID, dict(good, name="r2"))
    engine.act(PID, "r1", "abort")
    assert engine.create(PID, dict(good, name="r2"))["state"] == "running"  # r1 no longer holds them


def test_pause_resume_abort_and_a_restart_resumes_where_it_was(murano, tmp_path):
    _gateways(murano, 4)
    _upload(murano, tmp_path)
    engine = RolloutEngine(murano)
    engine.create(PID, {"name": "r1", "package": "counter.v2.tar.gz", "tags": ["t"], "batch_size": "1",
                        "max_failures": "1", "health_window": 0})
    assert engine.act(PID, "r1", "pause")["state"] == "paused"
    _answer(murano, "gw-0", "installed")
    engine.step()
    status = engine.status(PID, "r1")[0]
    assert status["counts"]["healthy"] == 1 and _asked(murano, "gw-1") is None  # paused: no next batch
    engine.act(PID, "r1", "resume")
    engine.step()
    assert _asked(murano, "gw-1") is not None
    murano.write(PID, "gw-1", [("engine_fetch", "")])  # taken; the answer is lost with the server
    murano.close()

    again = Murano(str(tmp_path / "data"), default_pid=PID)
    try:
        resumed = RolloutEngine(again).start()
        try:
            assert _asked(again, "gw-1") is not None  # asked once more: its first answer never came
            target = resumed.status(PID, "r1")[0]["targets"][1]
            assert target["state"] == "requested" and target["detail"].startswith("asked again after a restart")
            _answer(again, "gw-1", "installed")
            resumed.step()
            status = resumed.status(PID, "r1")[0]
            assert [t["state"] for t in status["targets"]] == ["healthy", "healthy", "requested", "pending"]
            aborted = resumed.act(PID, "r1", "abort")
            assert aborted["state"] == "aborted" and aborted["counts"] == dict(
                aborted["counts"], healthy=2, cancelled=1, skipped=1)
            with pytest.raises(TransitionError):
                resumed.act(PID, "r1", "pause")
        finally:
            resumed.stop()
    finally:
        again.close()


def test_simulated_gateways_write_what_gwe_writes_and_answer_as_drawn(gwe_home):
    import random

    from murano_local.simulator import SimulatedGateway, SimulationError, draw, parse_mix

    bounds = parse_mix("success=3,rolled_back=1")
    drawn = [draw(bounds, "sim-%05d" % i, 7) for i in range(4000)]
    assert 0.7 < drawn.count("success") / 4000 < 0.8 and set(drawn) == {"success", "rolled_back"}
    assert drawn == [draw(bounds, "sim-%05d" % i, 7) for i in range(4000)]  # the same seed, the same fleet
    with pytest.raises(SimulationError):
        parse_mix("success=0")
    real_info, real_report = _real_reports(gwe_home)
    gw = SimulatedGateway("sim-1", "crash", [("sensor", "1")], random.Random(1))
    info, report = gw.device_info(1000.0), gw.engine_report(1000.0)
    assert set(real_info) <= set(info) and set(real_report) - {"supervisord"} <= set(report)
    row = summarize("sim-1", [], {"engine_report": (json.dumps(report), 1), "device_info": (json.dumps(info), 1)})
    assert row["apps"][0]["name"] == "sensor" and row["disk"]["mount"] == "/" and row["gmq"]["depth"] is not None
    assert row["link"] == "connected" and row["problems"] == []
    status = gw.install("sensor.v2.tar.gz", 1001.0)
    assert status["status"] == "installed" and gw.apps["sensor"] == {"version": "2", "started": 1001.0,
                                                                      "status": "FATAL"}
    again = gw.install("sensor.v2.tar.gz", 1002.0)
    assert again["status"] == "installed" and "already installed; nothing done" in again["output"]
    failing = SimulatedGateway("sim-2", "rolled_back", [("sensor", "1")], random.Random(2))
    assert failing.install("sensor.v2.tar.gz", 5.0)["status"] == "rolled_back" and failing.apps["sensor"][
        "version"] == "1"
