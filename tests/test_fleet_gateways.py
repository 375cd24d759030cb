"""Rollouts on ten real gateways: gwe and gmq under their own supervisord and GWE_HOME each,
against a real murano_local, driven by the murano-local CLI."""
import time

import pytest

from fleet_helpers import RealGateway, cli, fetch_statuses, rollout, stop_all, tag, wait_rollout
from harness import wait_for
from otau_helpers import PYTHON, make_app

NORTH = ["gw-%02d" % i for i in range(1, 7)]
SOUTH = ["gw-%02d" % i for i in range(7, 11)]
HEALTH_WINDOW = 3


@pytest.fixture
def gateways(tmp_path, murano):
    fleet = {}
    try:
        for serial in NORTH + SOUTH:
            murano.add_device(serial)
            fleet[serial] = RealGateway(str(tmp_path / serial), serial, murano).start()
        for serial in NORTH + SOUTH:
            tag(murano, serial, "north" if serial in NORTH else "south")
        wait_for(lambda: all(murano.state(s).get("engine_report", {}).get("reported") for s in fleet), 60,
                 interval=0.3, message="every gateway's first engine_report")
        yield fleet
    finally:
        stop_all(fleet.values())


def _asked_after_the_window(done: dict, fleet: dict, app: str) -> None:
    """Batch n+1 was asked only once every gateway of batch n had run the app for the window
    (start times from each gateway's own supervisord)."""
    by_batch = {}
    for t in done["targets"]:
        by_batch.setdefault(t["batch"], []).append(t)
    for batch in sorted(by_batch)[1:]:
        started = max(fleet[t["serial"]].processes()[app]["start"] for t in by_batch[batch - 1])
        asked = min(t["requested_us"] for t in by_batch[batch]) / 1e6
        assert asked >= started + HEALTH_WINDOW, (batch, asked, started)


@pytest.mark.slow
def test_rollouts_on_ten_real_gateways_in_two_tags(murano, gateways, tmp_path):
    good = make_app(str(tmp_path), "counter", "1")
    created = cli(murano, "rollout", "create", "good", "--package", good, "--tag", "north", "--tag", "south",
                  "--batch-size", "4", "--max-failures", "1", "--health-window", str(HEALTH_WINDOW))
    assert created.returncode == 0, created.stderr

    # murano_local killed (a power cut) while the second batch is in flight, then started again
    wait_for(lambda: rollout(murano, "good")["batch"] >= 2, 60, interval=0.1, message="second batch asked")
    murano.kill()
    time.sleep(0.5)
    murano.start()
    assert rollout(murano, "good")["state"] == "running"
    done = wait_rollout(murano, "good", ("completed", "halted"), 120)
    assert done["state"] == "completed", done
    assert done["counts"]["healthy"] == 10 and done["batches"] == 3
    for serial, gw in gateways.items():
        assert gw.running_version("counter") == "1", serial
        statuses = fetch_statuses(murano, serial, "counter.v1.tar.gz")
        # one install each; a gateway asked again after the restart (its answer not yet delivered
        # when the rollout looked) answered 'already installed'
        installs = [s for s in statuses if "nothing done" not in s["output"]]
        assert len(installs) <= 1 and all(s["status"] == "installed" for s in statuses), (serial, statuses)
    _asked_after_the_window(done, gateways, "counter")

    # a package that crash-loops: the first batch rolls back, the rollout halts, nobody else is asked
    crash = make_app(str(tmp_path), "counter", "2", command=PYTHON + " -c 'raise SystemExit(3)'")
    assert cli(murano, "rollout", "create", "crash", "--package", crash, "--tag", "north", "--batch-size", "2",
               "--max-failures", "2", "--health-window", str(HEALTH_WINDOW)).returncode == 0
    halted = wait_rollout(murano, "crash", ("halted", "completed"), 120)
    assert halted["state"] == "halted" and halted["reason"].startswith("2 of 6 gateways failed (halts at 2)"), halted
    first = [t["serial"] for t in halted["targets"] if t["batch"] == 1]
    assert first == NORTH[:2]
    for t in halted["targets"]:
        if t["batch"] == 1:
            assert t["state"] == "failed" and t["detail"].startswith("fetch_status rolled_back"), t
        else:
            assert t["state"] == "skipped" and t["requested_us"] is None, t
    for serial, gw in gateways.items():
        assert gw.running_version("counter") == "1", serial  # the rest untouched, the failed ones rolled back
        statuses = fetch_statuses(murano, serial, "counter.v2.tar.gz")
        if serial in first:
            assert [s["status"] for s in statuses] == ["rolled_back"], statuses
        else:  # never asked: engine_fetch still as gwe cleared it after the first rollout
            assert statuses == [] and murano.state(serial)["engine_fetch"]["set"] == "", serial
    status = cli(murano, "rollout", "status")
    assert status.stdout.splitlines()[0].startswith("good: completed") and "crash: halted" in status.stdout
