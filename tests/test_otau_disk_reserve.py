"""Installs keep the disk reserve gmq keeps: on a real, small tmpfs holding the whole GWE_HOME.

An install.sh that fills the disk and exits 0 used to be installed, leaving 0 bytes free (gmq
could then only answer 507). Now the install fails, what the package wrote in its directory is
removed, and the free space is back.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from atomic_config import free_disk, gwe_paths, min_free_disk, set_option
from otau_helpers import make_app, write_tarball

import otau

RESERVE = 12 << 20


@pytest.fixture
def small_fs(tmp_path, monkeypatch):
    """A 48 MiB tmpfs as GWE_HOME, with gmq's reserve set to 12 MiB."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("cannot mount a tmpfs (the suite runs as root): %s" % done.stderr.strip())
    try:
        home = mount / "home"
        monkeypatch.setenv("GWE_HOME", str(home))
        paths = gwe_paths(str(home)).ensure()
        set_option(paths.gmq_cfg, "queue", "min_free_disk", str(RESERVE))
        yield paths
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_gmq_and_otau_read_the_same_reserve(small_fs):
    from gmq.config import load

    assert min_free_disk(small_fs) == load(small_fs).limits.min_free_disk == RESERVE


def test_install_sh_that_fills_the_disk_fails_and_its_files_are_removed(small_fs, tmp_path):
    before = free_disk(small_fs.var_lib)
    fill = "#!/bin/sh\ndd if=/dev/zero of=fill bs=1M 2>/dev/null\necho filled; exit 0\n"
    status = otau.install_package(make_app(str(tmp_path), "filler", "1", install_sh=fill, command=None))
    assert status.status == "failed" and status.step == "install", status.to_json()
    assert "left too little disk" in status.error and "min_free_disk" in status.error
    assert status.exit_code == 0 and "filled" in status.output
    assert not os.path.exists(os.path.join(small_fs.apps, "filler"))
    assert abs(free_disk(small_fs.var_lib) - before) < (1 << 20)


def test_install_within_the_reserve_is_installed(small_fs, tmp_path):
    some = "#!/bin/sh\ndd if=/dev/zero of=data bs=1M count=4 2>/dev/null\n"
    status = otau.install_package(make_app(str(tmp_path), "modest", "1", install_sh=some, command=None))
    assert status.ok, status.to_json()
    assert os.path.getsize(os.path.join(small_fs.apps, "modest", "1", "data")) == 4 << 20


def test_package_that_would_unpack_below_the_reserve_is_refused(small_fs, tmp_path):
    before = free_disk(small_fs.var_lib)
    files = {"install.sh": ("#!/bin/sh\n", 0o755), "big.bin": b"\0" * (before - RESERVE + (1 << 20))}
    status = otau.install_package(write_tarball(str(tmp_path / "big.v1.tar.gz"), files))
    assert status.status == "failed" and status.step == "unpack", status.to_json()
    assert "below the disk reserve of %d bytes" % RESERVE in status.error
    assert not os.path.exists(os.path.join(small_fs.apps, "big"))
    assert abs(free_disk(small_fs.var_lib) - before) < (1 << 20)


def test_no_installer_runs_on_a_disk_already_below_the_reserve(small_fs, tmp_path):
    ballast = os.path.join(small_fs.var_lib, "ballast")
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * (free_disk(small_fs.var_lib) - RESERVE + (1 << 20)))
    ran = tmp_path / "ran"
    status = otau.install_package(make_app(str(tmp_path), "late", "1", install_sh="#!/bin/sh\ntouch %s\n" % ran,
                                           command=None))
    assert status.status == "failed" and "below the" in status.error, status.to_json()
    assert not ran.exists()
