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
