"""gwe defects found in review, each pinned by the test that showed it."""
from __future__ import annotations

import time

from gwe_helpers import SERIAL, configure_gateway, reported, start_gwe
from harness import stop_process, wait_for


def test_activation_retries_pick_up_a_corrected_gateway_cfg(gwe_home, murano):
    """The retry loop kept the Device built from the first Gateway.cfg it read: fixing the
    serial (gwe --set-uuid) while gwe retried activation never took effect."""
    from gwe import config

    configure_gateway(murano)
    config.update_gateway_config({"uuid": "gw-not-whitelisted"})
    gwe = start_gwe(gwe_home)
    try:
        time.sleep(2.5)  # at least one refused activation
        assert gwe.poll() is None
        assert not reported(murano, "engine_report")
        config.update_gateway_config({"uuid": SERIAL})
        wait_for(lambda: reported(murano, "engine_report"), 20, message="activation with the corrected serial")
        assert config.load_gateway_config().cik
    finally:
        stop_process(gwe)


class _InstantMurano:
    """A real HTTP server that activates, accepts writes, and answers every long poll at once
    (304, or 200 carrying only an alias gwe does not watch), as a broken proxy or cloud might."""

    def __init__(self, poll_answer: str) -> None:
        import http.server
        import threading

        self.polls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/provision/activate"):
                    self._answer(200, b"a" * 40)
                else:
                    self._answer(204)

            def do_GET(self):
                outer.polls += 1
                if poll_answer == "304":
                    self._answer(304)
                else:
                    self._answer(200, b"something_else=1")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


import pytest  # noqa: E402


@pytest.mark.parametrize("poll_answer", ["304", "200-unwatched"])
def test_long_poll_answered_at_once_is_not_a_busy_loop(gwe_home, supervisord, poll_answer):
    """Each instant answer was followed by the next poll at once until update_interval ran out."""
    from gwe import config

    server = _InstantMurano(poll_answer)
    config.update_gateway_config({"host": server.url, "vendor": "p", "model": "p", "uuid": "gw-x"})
    config.update_engine_settings({"update_interval": "3600", "activation_retry_interval": "2"})
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: server.polls > 0, 20, message="first long poll")
        first = server.polls
        time.sleep(4.0)
        assert gwe.poll() is None
        assert server.polls - first <= 6, "%d long polls in 4 s" % (server.polls - first)
    finally:
        stop_process(gwe)
        server.close()


@pytest.mark.parametrize("value", ["1e999", "inf"])
def test_infinite_update_interval_is_cleared_and_ignored(gwe_home, supervisord, murano, value):
    """int(float("inf")) raised OverflowError, not ConfigError: the value was never cleared and
    each cycle failed (reports every backoff delay instead of every update_interval)."""
    from gwe import config

    configure_gateway(murano)
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
        murano.set(SERIAL, "update_interval", value)
        wait_for(lambda: murano.state(SERIAL)["update_interval"]["reported"] == "", 10, message="cleared")
        assert config.load_engine_settings()["update_interval"] == "60"
        assert gwe.poll() is None
    finally:
        stop_process(gwe)


def test_cli_refuses_an_infinite_interval_with_a_clear_line(gwe_home):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "gwe", "-t", "inf"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "gwe: update_interval must be a number of seconds, not 'inf'"


def test_deeply_nested_engine_fetch_gets_a_request_fetch_status(gwe_home, supervisord, murano):
    """json.loads raises RecursionError (not ValueError) on deep nesting: the cycle failed and the
    operator got no fetch_status for the request."""
    from gwe_helpers import reported_json

    configure_gateway(murano)
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
        murano.set(SERIAL, "engine_fetch", "[" * 50000)
        status = wait_for(lambda: reported_json(murano, "fetch_status"), 15, message="fetch_status")
        assert status["status"] == "failed" and status["step"] == "request"
        assert murano.state(SERIAL)["engine_fetch"]["reported"] == ""
        assert gwe.poll() is None
    finally:
        stop_process(gwe)


def test_sigterm_during_an_engine_fetch_finishes_the_install_but_starts_no_other(gwe_home, supervisord, murano,
                                                                                  tmp_path):
    """After SIGTERM gwe went on with every remaining package of the request (up to 32), long past
    supervisord's stopwaitsecs, so it was SIGKILLed in the middle of a later install."""
    import json
    import signal

    from gwe_helpers import reported_json, upload
    from otau_helpers import make_app

    configure_gateway(murano)
    marker = tmp_path / "first-started"
    first = make_app(str(tmp_path), "first", "1", command=None,
                     install_sh="#!/bin/sh\ntouch %s\nsleep 2\n" % marker)
    second = make_app(str(tmp_path), "second", "1", command=None)
    upload(murano, first)
    upload(murano, second)
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: reported(murano, "engine_report"), 20, message="gwe running")
        murano.set(SERIAL, "engine_fetch", json.dumps({"install": [{"name": "first.v1.tar.gz"},
                                                                   {"name": "second.v1.tar.gz"}]}))
        wait_for(marker.exists, 20, message="first install.sh running")
        gwe.send_signal(signal.SIGTERM)
        assert gwe.wait(20) == 0
        import otau
        from atomic_config import gwe_paths
        versions = otau.installed_versions(gwe_paths(str(gwe_home)))
        assert versions.get("first") == "1" and "second" not in versions
        status = reported_json(murano, "fetch_status")
        assert status["package"] == "second.v1.tar.gz" and status["status"] == "failed", status
    finally:
        stop_process(gwe)
