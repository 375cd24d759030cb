"""Acceptance for the drop-in promise: an app written against the original GWE API, packaged as
the original's docs show (``command = python -u app.py``, gmq-sine-demo's two ``environment``
lines, an install.sh calling ``python``), installed with ``gwe -I`` under a real supervisord,
posting through a real gmq and directly to a real murano_local, reported by a real gwe."""
import json
import os
import subprocess
import sys

import psutil

from gmq_harness import GmqProcess
from gwe_helpers import SERIAL, configure_gateway, reported_json, start_gwe
from harness import stop_process, wait_for
from otau_helpers import write_tarball

from GatewayEngine.utils import gwe_cik

APP = '''\
import sys, time
from GatewayEngine.utils import gwe_cik, gwe_conf
from exo.api import ExositeAPI
from exo.device import Device


class Sensor(Device):
    def __init__(self):
        Device.__init__(self, "legacy-sensor-v1", gwe_conf())

    def report(self, value):
        return self.http_write("direct_temp", value)


while gwe_cik() == "":  # wait for gwe to activate, as Exosite's apps did
    time.sleep(1)
queue = ExositeAPI(cik=gwe_cik(), url="127.0.0.1:" + sys.argv[1])
sensor = Sensor()
while not sensor.activated():
    sensor.activate()
n = 0
while True:
    print(queue.http_write("gmq_temp", n))
    print(sensor.report(n))
    n += 1
    time.sleep(0.5)
'''

INSTALL_SH = '''#!/bin/sh
echo "Installing legacy_sensor..."
python -c "from GatewayEngine.utils import gwe_conf; print('device file: ' + gwe_conf())"
'''

SUPERVISOR_CONF = '''[supervisord]
command = python -u app.py %d
environment = PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
redirect_stderr = true
stdout_logfile_maxbytes = 200KB
stdout_logfile_backups = 1
environment = PYTHONUNBUFFERED=NONEMPTYSTRING
'''


def test_a_legacy_app_runs_unchanged_and_is_reported(gwe_home, supervisord, murano, tmp_path):
    configure_gateway(murano, update_interval=2)
    gmq = GmqProcess(gwe_home).start()
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: len(gwe_cik()) == 40, 30, message="gwe activated")
        package = write_tarball(str(tmp_path / "legacy_sensor.v1.tar.gz"), {
            "install.sh": (INSTALL_SH, 0o755), "app.py": APP, "supervisor.conf": SUPERVISOR_CONF % gmq.port})
        done = subprocess.run([sys.executable, "-m", "gwe", "-I", package, "--json"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(done.stdout)
        assert status["status"] == "installed", status
        assert "device file: %s" % (gwe_home / "etc" / "gwe" / "Gateway.cfg") in status["output"]

        info = supervisord.rpc().supervisor.getProcessInfo("legacy_sensor")
        assert info["statename"] == "RUNNING"
        app = psutil.Process(info["pid"])
        assert app.cmdline()[:2] == ["python", "-u"]
        assert app.exe() == os.path.realpath(sys.executable)  # `python` on its PATH is the suite's

        def arrived(alias):
            return len(murano.history(SERIAL, alias)) >= 3
        wait_for(lambda: arrived("direct_temp"), 30, message="direct writes in murano_local")
        wait_for(lambda: arrived("gmq_temp"), 30, message="writes through gmq in murano_local")
        for alias in ("direct_temp", "gmq_temp"):
            values = [int(p["value"]) for p in reversed(murano.history(SERIAL, alias))]
            assert values == list(range(len(values))), (alias, values)  # in order, none lost

        def app_usage():
            report = reported_json(murano, "usage_report") or {}
            calls = report.get("lo", {}).get("legacy_sensor", {})
            return calls if {"write:['direct_temp']", "write:['gmq_temp']"} <= set(calls) else None
        calls = wait_for(app_usage, 30, message="the app's requests in usage_report")
        for call in calls.values():
            assert call["num"] >= 1 and call["tot_tx"] > 0 and call["type"] == "post"
        log = open(gwe_home / "var" / "log" / "gwe" / "legacy_sensor.log").read()
        assert "Response code: 204, Response body: '', success: True" in log
    finally:
        stop_process(gwe)
        gmq.stop()
