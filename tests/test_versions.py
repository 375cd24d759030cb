import os
import re

import device_client.device
import gmq
import gwe
import murano_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_part_reports_the_distribution_version():
    with open(os.path.join(ROOT, "setup.py")) as f:
        version = re.search(r'version="([^"]+)"', f.read()).group(1)
    for module in (gwe, gmq, murano_local, device_client.device):
        assert module.__version__ == version, module.__name__
