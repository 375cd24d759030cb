"""A power cut leaves a hand-edited gmq.cfg or Gateway.cfg empty, with no previous generation:
gmq still starts, on its defaults (or without upstream), with an alarm naming the file."""
import json
import subprocess
import sys
import threading

import requests

from atomic_config import gwe_paths
from gmq.server import Gmq
from gmq_harness import GmqProcess
from harness import free_port


def test_an_empty_gmq_cfg_runs_on_defaults_with_an_alarm(gwe_home):
    paths = gwe_paths(str(gwe_home)).ensure()
    open(paths.gmq_cfg, "w").close()  # zero length, never written through atomic_config: no previous generation
    gmq = Gmq(paths, port=free_port())  # the port is the one thing a test must choose
    loop = threading.Thread(target=gmq.httpd.serve_forever, daemon=True)
    gmq.forwarder.start()
    loop.start()
    try:
        url = "http://%s" % gmq.address
        assert requests.post(url + "/onep:v1/stack/alias", data="a=1", headers={"X-Exosite-VMS": "p p s"},
                             timeout=10).status_code == 204
        status = requests.get(url + "/status", timeout=10).json()
        assert [a["kind"] for a in status["alarms"]] == ["config_damaged"]
        assert "gmq.cfg" in status["alarms"][0]["detail"] and "defaults" in status["alarms"][0]["detail"]
        assert status["queue"]["max_bytes"] == 64 * 1024 * 1024  # the default
    finally:
        gmq.httpd.shutdown()
        loop.join(10)
        gmq.close()
    again = Gmq(paths, port=free_port())  # restarted still damaged: the same alarm, not a second one
    try:
        assert [a["kind"] for a in again.queue.stats()["alarms"]] == ["config_damaged"]
    finally:
        again.forwarder.stop()
        again.httpd.server_close()
        again.queue.close()


def test_an_empty_gateway_cfg_starts_gmq_without_upstream_and_with_an_alarm(gwe_home):
    gmq = GmqProcess(str(gwe_home))
    open(gmq.paths.gateway_cfg, "w").close()
    gmq.start()
    try:
        status = gmq.status()
        assert status["forwarder"]["upstream"] is None
        assert [a["kind"] for a in status["alarms"]] == ["config_damaged"]
        assert "Gateway.cfg" in status["alarms"][0]["detail"]
        assert gmq.post("/onep:v1/stack/alias", "kept=1").status_code == 204  # queued for when it is repaired
        cli = subprocess.run([sys.executable, "-m", "gmq", "status"], capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0 and json.loads(cli.stdout)["queue"]["depth"] == 1
        assert "Traceback" not in gmq.log_text()
    finally:
        gmq.stop()
