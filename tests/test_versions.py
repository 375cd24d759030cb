"""One version: written once (atomic_config/version.py), read by setup.py and reported by every part."""
import os
import re
import subprocess
import sys

import device_client
import device_client.device
import gmq
import gwe
import murano_local
from atomic_config.version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("atomic_config", "device_api", "device_client", "gmq", "otau", "gwe", "murano_local", "GatewayEngine",
            "exo")


def test_every_part_reports_the_one_version():
    for module in (gwe, gmq, murano_local, device_client, device_client.device):
        assert module.__version__ == VERSION, module.__name__


def test_setup_py_reads_it():
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == VERSION


def test_no_other_version_is_written_in_the_code():
    written = []
    for package in PACKAGES:
        for directory, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        if re.search(r"^(__version__|VERSION)\s*=\s*[\"']", f.read(), re.M):
                            written.append(os.path.relpath(path, ROOT))
    assert written == [os.path.join("atomic_config", "version.py")]
