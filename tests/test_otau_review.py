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
