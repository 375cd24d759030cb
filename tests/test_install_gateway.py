"""scripts/install-gateway into a temporary prefix and GWE_HOME (``--no-systemd``): the files it
writes, a real supervisord on the generated configuration running gwe (against murano_local)
and gmq, and a second run that upgrades in place and keeps the configuration, queue and apps.

Tests have no network: the prefix's virtualenv is made beforehand and sees this interpreter's
packages (the dependencies, pip, setuptools, wheel) through a .pth file, so install-gateway's
pip finds everything installed (``PIP_NO_INDEX=1``). install-gateway keeps an existing virtualenv.
"""
import hashlib
import os
import subprocess
import sys

import pytest
import requests

from atomic_config import gwe_paths, set_option
from harness import free_port, stop_process, supervisor_proxy, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "install-gateway")
SERIAL = "gw-install-1"

pytestmark = pytest.mark.slow


def offline_venv(venv: str) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = subprocess.check_output(
        [os.path.join(venv, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip()
    ours = subprocess.check_output([sys.executable, "-c", "import site; print('\\n'.join(site.getsitepackages()))"],
                                   text=True)
    with open(os.path.join(purelib, "test-offline-deps.pth"), "w") as f:
        f.write(ours)


def clean_env(home: str) -> dict:
    """No PYTHONPATH (and commands run outside the checkout): what runs comes from the virtualenv."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GWE_HOME=home, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def install(prefix: str, home: str) -> str:
    done = subprocess.run([SCRIPT, "--prefix", prefix, "--gwe-home", home, "--no-systemd"],
                          env=clean_env(home), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=180)
    assert done.returncode == 0, done.stdout
    return done.stdout


def tree_digest(top: str) -> dict:
    digest = {}
    for base, _, files in os.walk(top):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def test_install_gateway_runs_gwe_and_gmq_and_reinstalls_in_place(tmp_path, murano):
    prefix, home = str(tmp_path / "opt"), str(tmp_path / "home")
    venv = os.path.join(prefix, "venv")
    paths = gwe_paths(home)
    offline_venv(venv)

    out = install(prefix, home)

    bin_dir = os.path.join(venv, "bin")
    for command in ("gwe", "gmq", "gdc"):
        assert os.access(os.path.join(bin_dir, command), os.X_OK)
    where = subprocess.check_output([os.path.join(bin_dir, "python"), "-c", "import gwe; print(gwe.__file__)"],
                                    env=clean_env(home), text=True, cwd=home).strip()
    assert where.startswith(venv + os.sep)
    legacy = subprocess.check_output([os.path.join(bin_dir, "python"), "-c", "import GatewayEngine.utils, exo.device; "
                                      "print(exo.device.__file__)"], env=clean_env(home), text=True, cwd=home).strip()
    assert legacy.startswith(venv + os.sep)  # the original app API is installed with the suite
    for directory in (paths.etc, paths.supervisor_include, paths.var_lib, paths.apps, paths.log, paths.run):
        assert os.path.isdir(directory)
    for name in ("gwe", "gmq"):
        with open(os.path.join(paths.supervisor_include, name + ".conf")) as f:
            conf = f.read()
        assert "command = %s\n" % os.path.join(bin_dir, name) in conf
        assert 'GWE_HOME="%s"' % home in conf
    start = [os.path.join(bin_dir, "python"), "-m", "supervisor.supervisord", "-n", "-c", paths.supervisord_conf]
    assert " ".join(start) in out
    assert "gwe --set-product-id" in out and "gwe --set-iface eth0" in out

    # Configure the gateway with the installed commands, against murano_local.
    gwe = os.path.join(bin_dir, "gwe")
    subprocess.run([gwe, "--set-host", murano.url, "--set-product-id", murano.product_id, "--set-uuid", SERIAL],
                   env=clean_env(home), cwd=home, check=True, stdout=subprocess.DEVNULL)
    murano.add_device(SERIAL)
    gmq_port = free_port()
    set_option(paths.gmq_cfg, "server", "port", str(gmq_port))

    supervisord = subprocess.Popen(start, env=clean_env(home), cwd=home, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        def info(name):
            return supervisor_proxy(paths.supervisor_socket).supervisor.getProcessInfo(name)

        for name in ("gmq", "gwe"):
            wait_for(lambda n=name: info(n)["statename"] == "RUNNING", 30, message="%s RUNNING" % name)
        assert requests.get("http://127.0.0.1:%d/status" % gmq_port, timeout=5).status_code == 200
        wait_for(lambda: murano.state(SERIAL).get("engine_report", {}).get("reported"), 30,
                 message="gwe's engine_report on murano_local")
        gwe_pid = info("gwe")["pid"]
        with open("/proc/%d/cmdline" % gwe_pid, "rb") as f:
            assert f.read().split(b"\0")[1] == os.path.join(bin_dir, "gwe").encode()
        # a re-run under the running supervisord says that what runs keeps the old code
        out = install(prefix, home)
        assert ("== supervisord (pid %d) is running: it and the gwe and gmq it started still run the old code\n"
                "until they restart: %s -m supervisor.supervisorctl -c %s restart gwe gmq\n"
                % (supervisord.pid, os.path.join(bin_dir, "python"), paths.supervisord_conf)) in out, out
        assert info("gwe")["pid"] == gwe_pid
    finally:
        stop_process(supervisord, timeout=60)

    # Second run: an upgrade in place keeps Gateway.cfg, gmq.cfg, the queue and the apps, and the
    # program file of a gmq updated over the air (otau's state.json says so); a foreign
    # supervisord.conf is replaced but kept aside.
    os.makedirs(os.path.join(paths.apps, "sample", "1"))
    with open(os.path.join(paths.apps, "sample", "1", "app.py"), "w") as f:
        f.write("print('sample')\n")
    os.makedirs(os.path.join(paths.apps, "gmq"))
    with open(os.path.join(paths.apps, "gmq", "state.json"), "w") as f:
        f.write('{"current": "2"}')
    ota_conf = "[program:gmq]\ncommand = venv/bin/gmq\ndirectory = %s\n" % os.path.join(paths.apps, "gmq", "2")
    with open(os.path.join(paths.supervisor_include, "gmq.conf"), "w") as f:
        f.write(ota_conf)
    with open(paths.supervisord_conf, "w") as f:
        f.write("; a distribution's supervisord.conf\n")
    etc_before, lib_before = tree_digest(paths.etc), tree_digest(paths.var_lib)
    assert "gmq.db" in lib_before
    out = install(prefix, home)
    assert "program files kept" in out
    assert "is running" not in out  # supervisord is stopped: nothing to say
    assert tree_digest(paths.etc) == etc_before
    assert tree_digest(paths.var_lib) == lib_before
    with open(os.path.join(paths.supervisor_include, "gmq.conf")) as f:
        assert f.read() == ota_conf
    with open(paths.supervisord_conf + ".before-gateway-engine") as f:
        assert f.read() == "; a distribution's supervisord.conf\n"
    with open(paths.supervisord_conf) as f:
        assert "generated by `gwe supervisor-config`" in f.read()
    assert "warning: %s was someone else's" % paths.supervisord_conf in out
