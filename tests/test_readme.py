"""The README's "Using it" block, read from README.md at run time and run from top to bottom in
one shell exactly as written, but on free ports and in this test's directories: the only
substitutions are the ports (through the options the README names) and the directories."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from typing import Dict, List

import pytest
from harness import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "@@readme-line "


def using_it_lines() -> List[str]:
    """The commands of the first ```sh block under "## Using it" (continuation lines joined)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _alive(pid_file: str) -> bool:
    try:
        with open(pid_file) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _stop(pid_file: str) -> None:
    try:
        with open(pid_file) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


@pytest.mark.slow
def test_the_readme_using_it_block_runs_as_written(tmp_path):
    substitutions: Dict[str, str] = {
        "8080": str(free_port()), "8090": str(free_port()),  # murano-local's and gmq's ports
        "$PWD/.venv/bin": os.path.dirname(sys.executable),   # this suite's commands
        "/tmp/gw": str(tmp_path / "gw"), "/tmp/ml": str(tmp_path / "ml"), "/tmp/pkg": str(tmp_path / "pkg"),
    }
    lines = using_it_lines()
    for old in substitutions:  # what the test must move off the machine's defaults
        assert any(old in line for line in lines), "the README's block no longer names %s: update this test" % old
    script = ["set -e"]
    for number, line in enumerate(lines):
        for old, new in substitutions.items():
            line = re.sub(r"(?<![\w/])%s(?![\w])" % re.escape(old), lambda _m, new=new: new, line)
        script += ["echo '%s%d'" % (MARK, number), line]
    script.append("echo '%sdone'" % MARK)
    text = "\n".join(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GWE_", "GDC_", "MURANO_LOCAL_"))}
    home, data = substitutions["/tmp/gw"], substitutions["/tmp/ml"]
    supervisord_pid = os.path.join(home, "run", "gwe", "supervisord.pid")
    before = set(os.listdir(ROOT))
    try:
        result = subprocess.run(["bash", "-c", text], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=240, stdin=subprocess.DEVNULL)
        # the block shut down what it started
        wait_for(lambda: not _alive(supervisord_pid) and not _alive(os.path.join(data, "murano-local.pid")), 30,
                 message="supervisord and murano-local to stop")
    finally:
        _stop(supervisord_pid)
        _stop(os.path.join(data, "murano-local.pid"))
    outputs = dict(re.findall(r"^%s(\S+)\n(.*?)(?=^%s|\Z)" % (MARK, MARK), result.stdout, re.S | re.M))
    ran = [int(k) for k in outputs if k != "done"]
    failed = lines[max(ran)] if ran else "(none)"
    assert result.returncode == 0 and "done" in outputs, "stopped at: %s\nstdout:\n%s\nstderr:\n%s" % (
        failed, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr

    def output_of(prefix: str) -> str:
        return next(outputs[str(n)] for n, line in enumerate(lines) if line.startswith(prefix))

    status = output_of("gwe status")
    assert any(row.split()[:3] == ["sample_sensor", "1.0", "RUNNING"] for row in status.splitlines()), status
    seen = json.loads(output_of("murano-local device read"))
    assert seen["fetch_status"]["reported"]["status"] == "installed", seen["fetch_status"]
    assert seen["fetch_status"]["reported"]["package"] == "sample_sensor.v1.0.tar.gz"
    assert {"gwe", "gmq"} <= {name for app in seen["engine_report"]["reported"]["apps"] for name in app}
    history = json.loads(output_of("murano-local device history"))
    assert 1 <= len(history) <= 3 and all(float(point["value"]) for point in history), history
    assert set(os.listdir(ROOT)) == before, "the block left files in the checkout"
