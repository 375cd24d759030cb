import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    tmp_path = tmp_path / "t"  # a long TMPDIR: the demo must still fit supervisord's AF_UNIX socket path
    tmp_path.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("GWE_HOME", None)
    bin_dir = os.path.dirname(sys.executable)
    gwe = os.path.join(bin_dir, "gwe")
    argv = [gwe, "demo"] if os.path.exists(gwe) else [sys.executable, "-m", "gwe", "demo"]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "sample_sensor RUNNING under supervisord" in out
    assert "fetch_status: installed" in out
    assert out.count("temperature = ") >= 3
    for report in ("engine_report", "device_info", "usage_report", "fetch_status"):
        assert "--- " + report in out
    home = [line for line in out.splitlines() if "GWE_HOME=" in line][0].split("GWE_HOME=")[1].strip()
    assert not os.path.exists(home)  # the temporary GWE_HOME is gone
