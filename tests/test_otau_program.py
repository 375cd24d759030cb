"""supervisor.conf -> program file: nothing a package writes can reach supervisord but checked values.

A package's supervisor.conf is read by otau, but the program file it becomes is read by supervisord
(often as root) with universal newlines. Each case smuggles a second program or supervisord
settings past the first reader; each must be refused by ``gwe -z`` and ``gwe -I``, and a real
supervisord restarted afterwards must run no injected program and keep its socket private.
"""
from __future__ import annotations

import getpass
import os
import stat
import subprocess
import sys

import pytest

from atomic_config import gwe_paths, set_option
from harness import wait_for
from otau_helpers import INJECTIONS, app_files, write_tarball

import otau
from otau.program import check_program_file


def gwe(*args):
    env = dict(os.environ)
    env.pop("GWE_OTAU_CRASH_AT", None)
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=env, capture_output=True, text=True, timeout=60)


def fast(paths):
    set_option(paths.engine_cfg, "otau", "settle_seconds", "0.3")


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_injected_program_file_is_refused_and_never_runs(supervisord, gwe_home, tmp_path, case):
    paths = gwe_paths(str(gwe_home))
    fast(paths)
    socket_mode = stat.S_IMODE(os.stat(supervisord.socket).st_mode)
    package = write_tarball(str(tmp_path / "inject.v1.tar.gz"),
                            dict(app_files("1"), **{"supervisor.conf": INJECTIONS[case]}))

    checked = gwe("-z", package)
    assert checked.returncode == 1 and checked.stderr.startswith("gwe: [FAIL]"), checked
    assert len(checked.stderr.strip().splitlines()) == 1
    installed = gwe("-I", package)
    assert installed.returncode == 1 and "failed inject 1" in installed.stderr, installed
    assert not os.path.exists(os.path.join(paths.supervisor_include, "inject.conf"))

    supervisord.stop()
    supervisord.start()
    names = {p["name"] for p in supervisord.rpc().supervisor.getAllProcessInfo()}
    assert names == set(), names
    assert stat.S_IMODE(os.stat(supervisord.socket).st_mode) == socket_mode


def test_crlf_conf_installs_and_operator_user_is_written(supervisord, gwe_home, tmp_path):
    """A conf saved with CRLF line ends is an ordinary conf; ``user`` comes from [otau] app_user."""
    paths = gwe_paths(str(gwe_home))
    fast(paths)
    me = getpass.getuser()
    set_option(paths.engine_cfg, "otau", "app_user", me)
    conf = "[supervisord]\r\ncommand = %(ENV_GWE_PYTHON)s app.py\r\nstartsecs = 1\r\n"
    package = write_tarball(str(tmp_path / "crlf.v1.tar.gz"), dict(app_files("1"), **{"supervisor.conf": conf}))
    result = gwe("-I", package)
    assert result.returncode == 0, result
    conf_path = os.path.join(paths.supervisor_include, "crlf.conf")
    with open(conf_path) as f:
        written = f.read()
    assert "\r" not in written and "user = %s\n" % me in written
    assert written.count("[") == 1 and written.startswith("[program:crlf]\n")
    wait_for(lambda: supervisord.state("crlf") == "RUNNING", 10)


def test_program_file_changed_on_disk_is_caught_by_the_read_back(tmp_path):
    """The file is read back with supervisor's parser; a file that holds more than it was written
    with (a CR that a string parser ignored) is refused."""
    conf = "[program:app]\ncommand = sleep 1\n"
    path = tmp_path / "app.conf"
    path.write_text(conf)
    check_program_file("app", str(path), conf)
    path.write_bytes(b"[program:app]\ncommand = sleep 1\r[program:evil]\rcommand = sleep 2\n")
    with pytest.raises(otau.PackageError, match="does not read back"):
        check_program_file("app", str(path), conf)
