"""scripts/release: the suite as signed OTAU packages gwe.v<version> and gmq.v<version>, checked,
then installed with ``gwe -I`` under a real supervisord: each version runs from its own
virtualenv in apps/<name>/<version>/, a broken update rolls back to the previous code, and the
base environment is never modified.

supervisord runs without PYTHONPATH, so what it runs imports only what the package installed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest
import requests

from atomic_config import gwe_paths, read_config, set_option
from atomic_config.version import VERSION
from gwe_helpers import configure_gateway
from harness import Supervisord, free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def setup_py_version() -> str:
    return VERSION


def gwe(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The checkout's gwe (the base environment's), from a shell: no gwe program involved."""
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=dict(os.environ, PYTHONPATH=ROOT), cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    work = tmp_path_factory.mktemp("release")
    key = str(work / "publisher")
    assert gwe("--gen-key", key).returncode == 0
    out = work / "dist"
    done = subprocess.run([os.path.join(ROOT, "scripts", "release"), "--output-dir", str(out), "--sign", key,
                           "--python", sys.executable], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120, env=dict(os.environ, PIP_NO_INDEX="1"))
    assert done.returncode == 0, done.stderr
    version = setup_py_version()
    packages = {name: str(out / ("%s.v%s.tar.gz" % (name, version))) for name in ("gwe", "gmq")}
    assert done.stdout.split() == [packages["gwe"], packages["gmq"]]
    return SimpleNamespace(version=version, key=key, pub=key + ".pub", work=work, **packages)


@pytest.fixture
def gateway(gwe_home, release, monkeypatch):
    """A GWE_HOME trusting the publisher, quick health gate, gmq on a free port, supervisord running."""
    paths = gwe_paths(str(gwe_home)).ensure()
    os.makedirs(paths.trusted_keys, exist_ok=True)
    shutil.copy(release.pub, paths.trusted_keys)
    set_option(paths.engine_cfg, "otau", "settle_seconds", "1")
    set_option(paths.gmq_cfg, "server", "port", str(free_port()))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    sup = Supervisord(str(gwe_home)).start()
    yield SimpleNamespace(paths=paths, sup=sup)
    sup.stop()


def install(package: str) -> dict:
    done = gwe("-I", package, "--json")
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def running_from(sup: Supervisord, name: str) -> str:
    """The directory of the virtualenv whose python the program runs (from /proc/<pid>/cmdline)."""
    pid = sup.rpc().supervisor.getProcessInfo(name)["pid"]
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        interpreter = f.read().split(b"\0")[0].decode()
    return os.path.dirname(os.path.dirname(interpreter))


def site_listing() -> list:
    """What the base environment (the one gwe -I runs in) has installed."""
    code = "import json, site; print(json.dumps(site.getsitepackages()))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    return sorted((d, sorted(os.listdir(d))) for d in json.loads(out) if os.path.isdir(d))


def test_release_packages_are_signed_and_pass_the_checks(release, gwe_home):
    paths = gwe_paths(str(gwe_home)).ensure()
    os.makedirs(paths.trusted_keys)
    shutil.copy(release.pub, paths.trusted_keys)
    for name in ("gwe", "gmq"):
        done = gwe("--check-tarball", getattr(release, name))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("[PASS] %s %s" % (name, release.version)) and "verified" in done.stdout
        with tarfile.open(getattr(release, name)) as tar:
            members = sorted(tar.getnames())
        assert members == sorted(["install.sh", "supervisor.conf", "gwe-manifest.json", "gwe-manifest.sig",
                                  "gateway_engine-%s-py3-none-any.whl" % release.version])


def test_gmq_package_runs_from_its_own_virtualenv_and_rolls_back(release, gateway):
    paths, sup = gateway.paths, gateway.sup
    base_before = site_listing()
    app_dir = os.path.join(paths.apps, "gmq", release.version)
    venv = os.path.join(app_dir, "venv")
    status = install(release.gmq)
    assert status["status"] == "installed", status
    assert "gateway-engine %s installed in %s" % (release.version, venv) in status["output"]
    assert sup.state("gmq") == "RUNNING"
    assert running_from(sup, "gmq") == venv
    port = read_config(paths.gmq_cfg).getint("server", "port")
    # RUNNING is supervisord's startsecs, not gmq's bind: wait for the answer, do not race it
    wait_for(lambda: requests.get("http://127.0.0.1:%d/status" % port, timeout=5).status_code == 200, 20,
             message="gmq answering /status")
    with open(os.path.join(paths.supervisor_include, "gmq.conf")) as f:
        conf = f.read()
    assert "directory = %s\n" % app_dir in conf and "-- venv/bin/gmq" in conf
    where = subprocess.check_output([os.path.join(venv, "bin", "python"), "-c", "import gmq; print(gmq.__file__)"],
                                    cwd=app_dir, text=True)
    assert where.startswith(venv + os.sep)
    assert site_listing() == base_before

    # A broken update (same wheel, a command that fails) is rolled back to the previous virtualenv.
    broken = release.work / "broken"
    broken.mkdir()
    subprocess.run(["tar", "-xzf", release.gmq, "-C", str(broken)], check=True)
    for name in ("gwe-manifest.json", "gwe-manifest.sig"):
        os.unlink(str(broken / name))
    with open(str(broken / "supervisor.conf"), "a") as f:
        f.write("command = venv/bin/gmq --no-such-option\n")
    bad_version = release.version + ".broken"
    (broken / "build.json").write_text(json.dumps({"name": "gmq", "version": bad_version, "includes": ["*"],
                                                   "excludes": ["build.json"]}))
    built = gwe("--build-app", str(broken / "build.json"), "--output-dir", str(broken), "--key", release.key)
    assert built.returncode == 0, built.stderr
    status = install(built.stdout.strip())
    assert status["status"] == "rolled_back", status
    wait_for(lambda: sup.state("gmq") == "RUNNING", 15, message="gmq RUNNING again")
    assert running_from(sup, "gmq") == venv
    assert requests.get("http://127.0.0.1:%d/status" % port, timeout=5).status_code == 200
    assert not os.path.exists(os.path.join(paths.apps, "gmq", bad_version))


def test_gwe_package_installed_from_a_shell_runs_from_its_own_virtualenv(release, gateway, murano):
    paths, sup = gateway.paths, gateway.sup
    configure_gateway(murano)
    status = install(release.gwe)
    assert status["status"] == "installed", status
    app_dir = os.path.join(paths.apps, "gwe", release.version)
    with open(os.path.join(paths.supervisor_include, "gwe.conf")) as f:
        conf = f.read()
    assert "directory = %s\n" % app_dir in conf and "-- venv/bin/gwe" in conf
    assert sup.state("gwe") == "RUNNING"
    assert running_from(sup, "gwe") == os.path.join(app_dir, "venv")

    # That gwe (as its daemon would for an OTAU) installs gmq: gmq's virtualenv gets the same base
    # packages as gwe's own, not gwe's virtualenv (whose .pth would not be followed).
    gwe_venv = os.path.join(app_dir, "venv")
    done = subprocess.run([os.path.join(gwe_venv, "bin", "gwe"), "-I", release.gmq, "--json"], cwd=str(paths.home),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    status = json.loads(done.stdout.splitlines()[-1])
    assert status["status"] == "installed", status
    gmq_venv = os.path.join(paths.apps, "gmq", release.version, "venv")
    assert running_from(sup, "gmq") == gmq_venv

    def base_pth(venv):
        found = subprocess.check_output(["sh", "-c", 'cat "$0"/lib/python*/site-packages/gateway_engine_base.pth',
                                         venv], text=True)
        return found.split()

    assert base_pth(gmq_venv) == base_pth(gwe_venv)
    assert not any(d.startswith(paths.apps) for d in base_pth(gmq_venv))


def test_raising_the_one_version_is_all_a_release_needs(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, str(source), ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "__pycache__",
                                                                       "*.egg-info", ".pytest_cache"))
    version_py = source / "atomic_config" / "version.py"
    version_py.write_text(re.sub(r'^VERSION = "[^"]+"$', 'VERSION = "9.8.7"', version_py.read_text(), flags=re.M))
    out = tmp_path / "dist"
    done = subprocess.run([str(source / "scripts" / "release"), "--output-dir", str(out), "--python", sys.executable],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120,
                          env=dict(os.environ, PIP_NO_INDEX="1", PYTHONPATH=""))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(str(out))) == ["gmq.v9.8.7.tar.gz", "gwe.v9.8.7.tar.gz"]
    with tarfile.open(str(out / "gmq.v9.8.7.tar.gz")) as tar:
        wheels = [m.name for m in tar.getmembers() if m.name.endswith(".whl")]
        assert [os.path.basename(w) for w in wheels] == ["gateway_engine-9.8.7-py3-none-any.whl"]
        tar.extract(wheels[0], str(tmp_path / "x"))
    wheel = str(tmp_path / "x" / wheels[0])
    reported = subprocess.check_output(  # every part, imported from the released wheel alone
        [sys.executable, "-c", "import device_client, gmq, gwe, murano_local; "
         "print(gwe.__version__, gmq.__version__, device_client.__version__, murano_local.__version__)"],
        env=dict(os.environ, PYTHONPATH=wheel), cwd=str(tmp_path), text=True)
    assert reported.split() == ["9.8.7"] * 4
