"""Defects found in review, each pinned by the test that showed it."""
from __future__ import annotations

import os

import pytest

from atomic_config import gwe_paths
from otau_helpers import make_app

import otau


@pytest.mark.parametrize("version", ["current", "state.json", "state.json.prev"])
def test_version_colliding_with_store_files_is_refused_cleanly(gwe_home, tmp_path, version):
    """``app.vcurrent.tar.gz`` unpacked into apps/app/current, then the link switch raised
    IsADirectoryError out of install_package and out of every later recover()."""
    package = make_app(str(tmp_path), "oneoff", version, command=None)
    status = otau.install_package(package)
    assert status.status == "failed" and status.step == "package", status.to_json()
    assert otau.recover(gwe_paths(str(gwe_home))) == []
    assert not os.path.exists(os.path.join(gwe_paths(str(gwe_home)).apps, "oneoff"))
    report = otau.check_tarball(package)
    assert not report.ok


def test_manifest_with_a_non_object_entry_is_a_failed_status_not_an_exception(gwe_home, tmp_path):
    """check_manifest called .get() on each entry: a string entry raised AttributeError out of
    install_package (the daemon then reported no fetch_status at all)."""
    import json

    from otau_helpers import app_files, write_tarball

    files = app_files("1", command=None)
    files["gwe-manifest.json"] = json.dumps({"format": 1, "name": "odd", "version": "1",
                                             "files": {name: "x" for name in files}})
    package = write_tarball(str(tmp_path / "odd.v1.tar.gz"), files)
    status = otau.install_package(package)
    assert status.status == "failed" and status.step == "verify", status.to_json()
    assert "manifest" in status.error
    assert not os.path.exists(os.path.join(gwe_paths(str(gwe_home)).apps, "odd"))
    assert not otau.check_tarball(package).ok


def test_signature_file_that_is_not_an_object_is_a_failed_status_not_an_exception(gwe_home, tmp_path):
    """check_signature called .get() on the parsed gwe-manifest.sig: ``[]`` raised AttributeError."""
    from otau_helpers import app_files, write_tarball

    package = write_tarball(str(tmp_path / "odd.v1.tar.gz"), dict(app_files("1", command=None)))
    signed = str(tmp_path / "signed" / "odd.v1.tar.gz")
    os.makedirs(os.path.dirname(signed))
    key = str(tmp_path / "k")
    otau.generate_keypair(key)
    otau.sign_tarball(package, key)
    import tarfile
    with tarfile.open(package) as src, tarfile.open(signed, "w:gz") as dst:
        for member in src.getmembers():
            if member.name.endswith("gwe-manifest.sig"):
                member.size = 3
                dst.addfile(member, __import__("io").BytesIO(b"[]\n"))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    status = otau.install_package(signed)
    assert status.status == "failed" and status.step == "verify", status.to_json()
    assert "gwe-manifest.sig" in status.error


def test_recover_kills_an_installer_left_running_by_a_killed_gwe(gwe_home, tmp_path):
    """install.sh runs in its own session, so SIGKILL of ``gwe -I`` left it running; recover()
    then deleted its directory under it, and a new install of the same version could run
    beside the orphan."""
    import signal
    import subprocess
    import sys

    import psutil

    from harness import wait_for

    pid_file = tmp_path / "installer.pid"
    install_sh = "#!/bin/sh\necho $$ > %s\nsleep 60\n" % pid_file
    package = make_app(str(tmp_path), "slow", "1", install_sh=install_sh, command=None)
    gwe = subprocess.Popen([sys.executable, "-m", "gwe", "-I", package], env=dict(os.environ, GWE_HOME=str(gwe_home)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, message="install.sh started")
        journal = os.path.join(gwe_paths(str(gwe_home)).var_lib, "otau", "journal.json")
        wait_for(lambda: '"pgid"' in open(journal).read(), 10, message="installer in the journal")
        installer = psutil.Process(int(pid_file.read_text()))
        gwe.send_signal(signal.SIGKILL)
        gwe.wait(10)
        assert installer.is_running()
        statuses = otau.recover(gwe_paths(str(gwe_home)))
        assert [s.status for s in statuses] == ["failed"]
        wait_for(lambda: not installer.is_running() or installer.status() == psutil.STATUS_ZOMBIE, 5,
                 message="orphaned install.sh killed")
    finally:
        gwe.kill()
        gwe.wait()
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
