"""The dashboard page at /ui/ in a real headless Chromium, over two real gateways (gwe + gmq under
their own supervisord): the fleet table, a gateway's plots drawn from its real reports, and a
rollout started from the form that progresses on the page without a reload. Screenshots are
saved in the test's tmp directory, or in $GWE_TEST_ARTIFACTS when set (kept after a passing run);
their paths are printed."""
import os

import pytest
from fleet_helpers import RealGateway, chromium, stop_all, tag
from harness import wait_for
from otau_helpers import make_app

SERIALS = ("gw-a", "gw-b")


@pytest.fixture
def gateways(tmp_path, murano):
    fleet = {}
    try:
        for serial in SERIALS:
            murano.add_device(serial)
            fleet[serial] = RealGateway(str(tmp_path / serial), serial, murano, update_interval=2).start()
        tag(murano, "gw-a", "north", "all")
        tag(murano, "gw-b", "south", "all")
        yield fleet
    finally:
        stop_all(fleet.values())


@pytest.fixture
def browser(tmp_path):
    driver = chromium(str(tmp_path / "chromium-profile"))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(browser, tmp_path, name):
    directory = os.environ.get("GWE_TEST_ARTIFACTS") or str(tmp_path)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + ".png")
    browser.save_screenshot(path)
    print("screenshot:", path)
    return path


def _js(browser, script, *args):
    return browser.execute_script(script, *args)


def _click(browser, css):
    """Click in one script: the page redraws its tables as reports arrive, so an element found in
    one call may be gone by the next (selenium's stale element)."""
    wait_for(lambda: _js(browser, "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
                         css), 10, message="%s to click" % css)


def _choose(browser, css, value):
    wait_for(lambda: _js(browser, "const e = document.querySelector(arguments[0]); if (!e) return false;"
                                  "e.value = arguments[1]; e.dispatchEvent(new Event('change')); return true;",
                         css, value), 10, message="%s to choose %s" % (css, value))


@pytest.mark.slow
def test_dashboard_page_in_headless_chromium(murano, gateways, browser, tmp_path):
    wait_for(lambda: all(len(murano.history(s, "device_info")) >= 2 for s in SERIALS), 60, interval=0.3,
             message="two device_info reports from each gateway")
    browser.get(murano.url + "/ui/")
    load_id = _js(browser, "return window.dashboardLoadId")
    assert load_id

    # the fleet table lists the gateways, sorts and filters by tag
    def serials():
        return _js(browser, "return Array.from(document.querySelectorAll('#fleet-table tbody tr'))"
                            ".map(r => r.dataset.serial)")
    wait_for(lambda: serials() == list(SERIALS), 20, message="fleet table with both gateways")
    cells = _js(browser, "return Array.from(document.querySelectorAll('#fleet-table tbody tr:first-child td'))"
                         ".map(c => c.textContent)")
    assert cells[0] == "gw-a" and cells[1] == "all, north" and cells[3]  # serial, tags, gwe version
    assert cells[4] == "connected"  # gwe's link, from its engine_report
    _shot(browser, tmp_path, "fleet")
    _click(browser, "#fleet-table th[data-key=serial]")
    wait_for(lambda: serials() == list(reversed(SERIALS)), 10, message="table sorted by serial, descending")
    _choose(browser, "#tag-filter", "south")
    wait_for(lambda: serials() == ["gw-b"], 10, message="only the south gateway")
    _choose(browser, "#tag-filter", "")
    wait_for(lambda: len(serials()) == 2, 10, message="all gateways again")

    # a gateway page draws its plots from the real reports
    _click(browser, "#fleet-table a[href='#/gateway/gw-a']")

    def points(plot, series):
        return _js(browser, "const p = document.querySelector('#plot-%s polyline[data-series=%s]');"
                            "return p ? Number(p.dataset.points) : 0" % (plot, series))
    wait_for(lambda: points("system", "memory") >= 2 and points("system", "cpu") >= 2, 20,
             message="CPU and memory plotted from two device_info reports")
    assert points("system", "disk") >= 2 and points("gmq_depth", "queued") >= 2
    assert points("gmq_counters", "delivered") >= 2
    apps = _js(browser, "return Array.from(document.querySelectorAll('#apps-table tbody tr'))"
                        ".map(r => r.cells[0].textContent + ' ' + r.cells[2].textContent)")
    assert "gwe RUNNING" in apps and "gmq RUNNING" in apps
    assert _js(browser, "return document.querySelectorAll('#plot-usage rect.bar').length") >= 1
    _shot(browser, tmp_path, "gateway")

    # a rollout started from the form (uploading the package) progresses without a reload
    package = make_app(str(tmp_path), "counter", "1")
    _click(browser, "#nav-rollouts")
    wait_for(lambda: browser.find_elements("css selector", "#rollout-form"), 10, message="rollout form")
    browser.find_element("css selector", "#rf-name").send_keys("from-page")
    browser.find_element("css selector", "#rf-file").send_keys(package)
    browser.find_element("css selector", "#rf-tags option[value=all]").click()
    for field, value in (("#rf-batch", "1"), ("#rf-window", "2")):
        box = browser.find_element("css selector", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("css selector", "#rf-start").click()

    def row_state():
        return _js(browser, "const r = document.querySelector('#rollout-table tr[data-rollout=\"from-page\"]');"
                            "return r ? [r.cells[1].textContent, r.querySelector('.done').textContent] : null")
    seen = set()

    def completed():
        state = row_state()
        if state:
            seen.add(tuple(state))
        return state and state[0] == "completed"
    wait_for(lambda: row_state() and row_state()[0] == "running", 15, message="rollout shown running")
    _shot(browser, tmp_path, "rollout-running")
    wait_for(completed, 90, interval=0.1, message="rollout shown completed on the page")
    assert ("completed", "2/2 healthy, batch 2 of 2") in seen
    assert any(s[0] == "running" for s in seen) and len(seen) >= 3  # it moved on the page, step by step
    assert _js(browser, "return window.dashboardLoadId") == load_id  # never reloaded
    targets = _js(browser, "return Array.from(document.querySelectorAll('#rollout-targets tbody tr'))"
                           ".map(r => r.cells[0].textContent + ' ' + r.cells[2].textContent)")
    assert targets == ["gw-a healthy", "gw-b healthy"]
    _shot(browser, tmp_path, "rollout-completed")
    for gw in gateways.values():
        assert gw.running_version("counter") == "1"

    # a big fleet is drawn a page at a time (here one row a page)
    browser.get(murano.url + "/ui/?rows=1")
    wait_for(lambda: serials() == ["gw-a"], 20, message="first page")
    assert _js(browser, "return document.getElementById('fleet-count').textContent") == "2 gateways"
    _click(browser, "#page-next")
    wait_for(lambda: serials() == ["gw-b"], 10, message="second page")
