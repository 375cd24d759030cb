"""The long-running daemons import only what their first cycle needs (issue 16: footprint)."""
import subprocess
import sys

import pytest

CHECK = "import sys\n%s\nprint(' '.join(sorted(m for m in %r if m in sys.modules)))"
FIRST_CYCLE = """
import os, tempfile
os.environ["GWE_HOME"] = tempfile.mkdtemp()
import gwe.cli, gwe.daemon_cli, gwe.daemon, gwe.engine_report, gmq, otau
from atomic_config import gwe_paths
from otau.supervisord import Supervisor, SupervisorError
assert otau.recover(gwe_paths().ensure()) == [] and otau.installed_versions() == {}
gmq.local_url("/status")
try:
    Supervisor(os.path.join(os.environ["GWE_HOME"], "no-socket")).check()
except SupervisorError:
    pass
"""


@pytest.mark.parametrize("imports, absent", [
    # bare gwe (what supervisord runs): the daemon without click or the package builder
    ("import gwe.cli, gwe.daemon_cli, gwe.daemon\nimport otau; otau.recover, otau.FetchStatus",
     ("click", "otau.build", "gwe.commands_cli")),
    # gwe's first cycle on a gateway with nothing to recover: it reads gmq.cfg and asks supervisord
    # without loading gmq's queue, supervisord's own HTTP server or the install pipeline
    (FIRST_CYCLE, ("supervisor.xmlrpc", "gmq.queue", "otau.install", "otau.runner", "otau.unpack", "otau.check")),
    # bare gmq: the server without click; requests only once the forwarder has an upstream
    ("import gmq.cli, gmq.serve_cli, gmq.server", ("click", "requests", "gmq.commands_cli")),
])
def test_daemon_start_up_leaves_out_what_it_does_not_run(imports, absent):
    out = subprocess.run([sys.executable, "-c", CHECK % (imports, absent)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
