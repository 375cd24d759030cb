"""Installs through a real supervisord: upgrade, rollback, other apps untouched, one-off apps, retention."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from atomic_config import gwe_paths, set_option
from harness import wait_for
from otau_helpers import app_files, make_app, supervisor_conf, write_tarball

import otau

FAST = otau.OtauSettings(settle_seconds=0.3, health_timeout=10, install_timeout=20)


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def running_version(sup, name):
    """The version directory the RUNNING process of ``name`` actually runs in."""
    info = sup.rpc().supervisor.getProcessInfo(name)
    assert info["statename"] == "RUNNING", info
    return os.path.basename(psutil.Process(info["pid"]).cwd()), info["pid"]


def test_install_upgrade_then_failed_upgrade_rolls_back(supervisord, gwe_home, tmp_path):
    paths = gwe_paths(str(gwe_home))
    st1 = otau.install_package(make_app(str(tmp_path), "counter", "1"), settings=FAST)
    assert st1.status == "installed" and st1.exit_code == 0 and "installing counter 1" in st1.output
    version, pid1 = running_version(supervisord, "counter")
    assert version == "1"

    st2 = otau.install_package(make_app(str(tmp_path), "counter", "2"), settings=FAST)
    assert st2.status == "installed" and st2.previous_version == "1"
    version, pid2 = running_version(supervisord, "counter")
    assert version == "2" and not psutil.pid_exists(pid1)
    assert len([p for p in supervisord.rpc().supervisor.getAllProcessInfo() if p["name"] == "counter"]) == 1
    assert os.readlink(os.path.join(paths.apps, "counter", "current")) == "2"

    st3 = otau.install_package(make_app(str(tmp_path), "counter", "3",
                                        command="/bin/sh -c 'exit 2'"), settings=FAST)
    assert st3.status == "rolled_back", st3.to_json()
    assert st3.running_version == "2" and "rolled back to 2" in st3.error
    assert running_version(supervisord, "counter")[0] == "2"
    assert os.readlink(os.path.join(paths.apps, "counter", "current")) == "2"
    assert visible(os.path.join(paths.apps, "counter")) == ["1", "2", "current", "state.json"]
    with open(os.path.join(paths.supervisor_include, "counter.conf")) as f:
        conf = f.read()
    assert "directory = %s" % os.path.join(paths.apps, "counter", "2") in conf
    saved = {d["name"]: d for d in otau.load_statuses(paths)}
    assert saved["counter"]["status"] == "rolled_back" and saved["counter"]["version"] == "3"


def test_program_file_has_reference_defaults_and_environment(supervisord, gwe_home, tmp_path):
    conf = supervisor_conf("%(ENV_GWE_PYTHON)s app.py", environment='A="1"') + "environment = B=\"2\"\n"
    files = app_files("1", extra={"supervisor.conf": conf,
                                  "app.py": "import os, time\nprint(os.environ['GWE_APP_VERSION'], "
                                            "os.environ['B'], os.environ.get('A'), flush=True)\ntime.sleep(60)\n"})
    status = otau.install_package(write_tarball(str(tmp_path / "envapp.v1.tar.gz"), files), settings=FAST)
    assert status.ok, status.to_json()
    paths = gwe_paths(str(gwe_home))
    with open(os.path.join(paths.supervisor_include, "envapp.conf")) as f:
        conf_text = f.read()
    assert conf_text.startswith("[program:envapp]\ncommand = %(ENV_GWE_PYTHON)s app.py\n")
    for line in ("redirect_stderr = true", "stdout_logfile_maxbytes = 200KB", "stdout_logfile_backups = 1",
                 "stdout_logfile = %s" % os.path.join(paths.log, "envapp.log")):
        assert line in conf_text
    log = os.path.join(paths.log, "envapp.log")
    # duplicate environment keys: the last one wins, as the original tolerated
    wait_for(lambda: os.path.exists(log) and "1 2 None" in open(log).read(), 10, message="app output")


def test_program_can_name_the_suites_interpreter(supervisord, gwe_home, tmp_path):
    """``%(ENV_GWE_PYTHON)s`` in a command runs the suite's interpreter (with its libraries), not the
    python3 first on supervisord's PATH, which on a fresh gateway has none of them."""
    app = "import sys, time, psutil\nprint('suite python', sys.executable, flush=True)\ntime.sleep(60)\n"
    files = app_files("1", command="%(ENV_GWE_PYTHON)s app.py", extra={"app.py": app})
    status = otau.install_package(write_tarball(str(tmp_path / "pyapp.v1.tar.gz"), files), settings=FAST)
    assert status.ok, status.to_json()
    info = supervisord.rpc().supervisor.getProcessInfo("pyapp")
    proc = psutil.Process(info["pid"])
    assert proc.cmdline()[0] == sys.executable and proc.environ()["GWE_PYTHON"] == sys.executable
    log = os.path.join(gwe_paths(str(gwe_home)).log, "pyapp.log")
    wait_for(lambda: "suite python %s" % sys.executable in open(log).read(), 10, message="app output")


def test_other_apps_keep_running(supervisord, gwe_home, tmp_path):
    assert otau.install_package(make_app(str(tmp_path), "other", "1"), settings=FAST).ok
    # a program someone edited on disk but did not apply must not be touched either
    supervisord.add_program("bystander", "sleep 600", startsecs=0)
    wait_for(lambda: supervisord.state("bystander") == "RUNNING", 10)
    with open(os.path.join(supervisord.include, "bystander.conf"), "a") as f:
        f.write("stopwaitsecs = 3\n")
    pids = {p["name"]: p["pid"] for p in supervisord.rpc().supervisor.getAllProcessInfo()}
    assert otau.install_package(make_app(str(tmp_path), "counter", "1"), settings=FAST).ok
    assert otau.install_package(make_app(str(tmp_path), "counter", "2"), settings=FAST).ok
    after = {p["name"]: (p["pid"], p["statename"]) for p in supervisord.rpc().supervisor.getAllProcessInfo()}
    assert after["other"] == (pids["other"], "RUNNING")
    assert after["bystander"] == (pids["bystander"], "RUNNING")


def test_one_off_app_with_top_directory_and_environment(gwe_home, tmp_path):
    script = ("#!/bin/sh\nset -e\necho \"name=$GWE_APP_NAME version=$GWE_APP_VERSION dir=$GWE_APP_DIR "
              "home=$GWE_HOME prev=$GWE_APP_PREVIOUS_VERSION cwd=$(pwd)\"\ntouch \"$GWE_APP_DIR/ran\"\n")
    package = make_app(str(tmp_path), "oneoff", "1.5.RC68", top="oneoff.v1", install_sh=script, command=None)
    status = otau.install_package(package, settings=FAST)
    paths = gwe_paths(str(gwe_home))
    app_dir = os.path.join(paths.apps, "oneoff", "1.5.RC68")
    assert status.ok, status.to_json()
    assert "name=oneoff version=1.5.RC68 dir=%s home=%s prev= cwd=%s" % (app_dir, paths.home, app_dir) in status.output
    assert os.path.exists(os.path.join(app_dir, "ran")) and os.path.exists(os.path.join(app_dir, "install.sh"))
    assert not os.path.exists(os.path.join(paths.supervisor_include, "oneoff.conf"))
    again = otau.install_package(package, settings=FAST)
    assert again.ok and "already installed from this very package" in again.output


def test_setup_py_route(gwe_home, tmp_path):
    files = {"setup.py": "import sys\nassert sys.argv[1:] == ['install'], sys.argv\nprint('setup.py ran')\n"}
    status = otau.install_package(write_tarball(str(tmp_path / "pylib.v2.tar.gz"), files), settings=FAST)
    assert status.ok and "setup.py ran" in status.output


def test_keeps_last_versions_only(gwe_home, tmp_path):
    settings = otau.OtauSettings(keep_versions=2)
    for v in ("1", "2", "3", "4"):
        assert otau.install_package(make_app(str(tmp_path), "tool", v, command=None), settings=settings).ok
    root = os.path.join(gwe_paths(str(gwe_home)).apps, "tool")
    assert visible(root) == ["3", "4", "current", "state.json"]
    with open(os.path.join(root, "state.json")) as f:
        assert json.load(f)["history"] == ["3", "4"]
    assert otau.installed_versions() == {"tool": "4"}


def test_output_is_bounded(gwe_home, tmp_path):
    script = "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' 'x'\necho END\n"
    settings = otau.OtauSettings(output_limit=4096)
    status = otau.install_package(make_app(str(tmp_path), "noisy", "1", install_sh=script, command=None),
                                  settings=settings)
    assert status.ok and status.output.endswith("END\n") and len(status.output) <= 4096


def test_signed_package_and_sha256(gwe_home, tmp_path):
    paths = gwe_paths(str(gwe_home)).ensure()
    key, pub = otau.generate_keypair(str(tmp_path / "pub"))
    os.makedirs(paths.trusted_keys)
    os.rename(pub, os.path.join(paths.trusted_keys, "publisher.pub"))
    set_option(os.path.join(paths.etc, "Engine.config"), "otau", "require_signatures", "true")
    assert otau.load_settings(paths).require_signatures
    tarball = otau.sign_tarball(make_app(str(tmp_path), "secure", "1", command=None, top="secure"), key)
    digest = otau.verify.sha256_file(tarball)
    status = otau.install_package(tarball, sha256=digest.upper())
    assert status.ok, status.to_json()
    assert status.signature.startswith("verified (key ") and status.sha256 == digest


def test_concurrent_cli_installs_are_serialised(gwe_home, tmp_path):
    """Two gwe -I at once: the install lock makes them take turns; both succeed."""
    a = make_app(str(tmp_path), "alpha", "1", command=None, install_sh="#!/bin/sh\nsleep 0.5\necho alpha\n")
    b = make_app(str(tmp_path), "beta", "1", command=None, install_sh="#!/bin/sh\nsleep 0.5\necho beta\n")
    procs = [subprocess.Popen([sys.executable, "-m", "gwe", "-I", t, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for t in (a, b)]
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        docs.append(json.loads(out))
    assert sorted(d["name"] for d in docs) == ["alpha", "beta"]
    assert all(d["status"] == "installed" for d in docs)


@pytest.mark.parametrize("flag", ["-I", "--install-apps"])
def test_cli_install_failure_is_one_line(gwe_home, tmp_path, flag):
    good = make_app(str(tmp_path), "tool", "1", command=None)
    bad = write_tarball(str(tmp_path / "broken.v1.tar.gz"), {"readme": "no installer"})
    proc = subprocess.run([sys.executable, "-m", "gwe", flag, good, bad], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.startswith("installed tool 1")
    assert proc.stderr.count("\n") == 1 and "failed broken 1: no install.sh or setup.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_or_unreadable_package_is_a_clear_failure(gwe_home, tmp_path):
    status = otau.install_package(str(tmp_path / "ghost.v1.tar.gz"))
    assert status.status == "failed" and "I/O error" in status.error and "No such file" in status.error


def test_damaged_journal_is_moved_aside(gwe_home):
    from otau.journal import journal_path

    paths = gwe_paths(str(gwe_home)).ensure()
    path = journal_path(paths)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('{"name": "x", "vers')
    assert otau.recover(paths) == []
    assert not os.path.exists(path)
    assert [n for n in os.listdir(os.path.dirname(path)) if n.startswith("journal.json.damaged-")]


def test_cli_json_is_one_fetch_status_per_line(gwe_home, tmp_path):
    good = make_app(str(tmp_path), "tool", "1", command=None)
    bad = write_tarball(str(tmp_path / "broken.v1.tar.gz"), {"readme": "no installer"})
    proc = subprocess.run([sys.executable, "-m", "gwe", "-I", good, bad, "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(d["name"], d["status"]) for d in docs] == [("tool", "installed"), ("broken", "failed")]
