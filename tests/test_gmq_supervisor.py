"""supervisor/gmq.conf under a real supervisord: gmq runs, serves, and stops cleanly on TERM."""
import os
import sys

import requests

from atomic_config import AtomicConfigParser, gwe_paths, set_option
from harness import free_port, port_open, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_program_file_runs_gmq_under_supervisord(supervisord, gwe_home):
    conf = AtomicConfigParser()
    conf.read(os.path.join(ROOT, "supervisor", "gmq.conf"))
    options = dict(conf.items("program:gmq"))
    assert options["command"].endswith("/gmq") and "MALLOC_ARENA_MAX" in options["environment"]
    port = free_port()
    set_option(gwe_paths(str(gwe_home)).ensure().gmq_cfg, "server", "port", str(port))
    options["environment"] = options["environment"].replace('GWE_HOME="/"', 'GWE_HOME="%s"' % gwe_home)
    options["environment"] += ',PYTHONPATH="%s"' % ROOT
    options["stdout_logfile"] = os.path.join(str(gwe_home), "gmq.log")
    del options["command"]  # this checkout instead of the installed venv:
    supervisord.add_program("gmq", "%s -m gmq" % sys.executable, **options)
    wait_for(lambda: supervisord.state("gmq") == "RUNNING" and port_open(port), 20, message="gmq RUNNING")
    headers = {"X-Exosite-VMS": "p p s1"}
    assert requests.post("http://127.0.0.1:%d/onep:v1/stack/alias" % port, data="a=1", headers=headers,
                         timeout=10).status_code == 204
    supervisord.rpc().supervisor.stopProcess("gmq")
    info = supervisord.rpc().supervisor.getProcessInfo("gmq")
    assert info["statename"] == "STOPPED" and info["exitstatus"] == 0  # TERM: a clean exit, not a kill
