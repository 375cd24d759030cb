"""Signatures are checked before anything is extracted, and the policy follows the configured keys.

- ``auto`` (default): as soon as a trusted key is configured, unsigned packages and unknown keys
  are refused; without keys, unsigned packages install.
- Gateway Engine's own packages (gwe, gmq, device_client) need a valid signature whenever a key
  is configured, even with ``require_signatures = false``.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from otau_helpers import add_file, app_files, make_app, write_tarball

import otau
from atomic_config import gwe_paths, set_option
from otau.unpack import unpack_package


def gwe(*args):
    env = dict(os.environ)
    env.pop("GWE_OTAU_CRASH_AT", None)
    return subprocess.run([sys.executable, "-m", "gwe", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def keys(gwe_home, tmp_path):
    """A trusted publisher key installed on the gateway, and a rogue key it does not know."""
    paths = gwe_paths(str(gwe_home)).ensure()
    key, pub = otau.generate_keypair(str(tmp_path / "publisher"))
    rogue, _ = otau.generate_keypair(str(tmp_path / "rogue"))
    os.makedirs(paths.trusted_keys)
    shutil.copy(pub, os.path.join(paths.trusted_keys, "publisher.pub"))
    return paths, key, rogue


def oneoff(directory, name, version, extra=None):
    return write_tarball(os.path.join(str(directory), "%s.v%s.tar.gz" % (name, version)),
                         app_files(version, command=None, extra=extra))


def test_head_is_decided_before_anything_is_written(tmp_path, keys):
    """The head check sees an empty staging directory: not even the top directory exists yet."""
    _, key, _ = keys
    top = {"app.v1/" + k: v for k, v in app_files("1", command=None, extra={"sub/data": "x"}).items()}

    def with_dirs(tf):
        for d in ("app.v1", "app.v1/sub"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)

    package = otau.sign_tarball(write_tarball(str(tmp_path / "app.v1.tar.gz"), top, with_dirs), key)
    with tarfile.open(package) as tf:  # as `tar czf` would have it: the directories first
        members = [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]
    with tarfile.open(package, "w:gz") as tf:
        for m, data in sorted(members, key=lambda item: not item[0].isdir()):
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    seen = []
    staging, target = str(tmp_path / "staging"), str(tmp_path / "target")

    def head_check(manifest, signature):
        seen.append([os.path.join(d, n) for d, ds, fs in os.walk(staging) for n in ds + fs])
        assert manifest is not None and signature is not None
        raise otau.VerifyError("refused")

    with pytest.raises(otau.VerifyError, match="refused"):
        unpack_package(package, staging, target, 1 << 20, 100, head_check)
    assert seen == [[]]
    assert not os.path.exists(staging) and not os.path.exists(target)


def hostile_after_head(directory, key):
    """Signed by ``key``, then a traversal member and a gzip bomb that only extraction would meet."""
    package = otau.sign_tarball(oneoff(directory, "app", "1"), key)
    with tarfile.open(package) as tf:
        members = [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]
    with tarfile.open(package, "w:gz") as tf:
        for m, data in members:
            add_file(tf, m.name, data, m.mode)
        add_file(tf, "../../escape", "x")
        add_file(tf, "zeros.bin", b"\0" * (8 << 20))
    return package


def test_an_untrusted_signature_is_refused_before_extraction_meets_anything(keys, tmp_path):
    paths, _, rogue = keys
    set_option(paths.engine_cfg, "otau", "max_unpacked_bytes", str(1 << 20))
    package = hostile_after_head(tmp_path, rogue)
    for args in (("-z", package), ("-I", package)):
        result = gwe(*args)
        assert result.returncode == 1 and "not trusted (a trusted key is configured)" in result.stderr, result
        assert "traversal" not in result.stderr and "unpacks to more" not in result.stderr
    assert not os.path.exists(os.path.join(paths.apps, "app"))


def test_unsigned_package_is_refused_as_soon_as_a_key_is_configured(gwe_home, tmp_path):
    package = oneoff(tmp_path, "plain", "1")
    assert gwe("-z", package).returncode == 0  # no key: unsigned is fine
    paths = gwe_paths(str(gwe_home))
    key, pub = otau.generate_keypair(str(tmp_path / "k"))
    os.makedirs(paths.trusted_keys)
    shutil.copy(pub, os.path.join(paths.trusted_keys, "k.pub"))
    for args in (("-z", package), ("-I", package)):
        result = gwe(*args)
        assert result.returncode == 1 and "not signed" in result.stderr and "trusted key is configured" \
            in result.stderr, result
    assert not os.path.exists(os.path.join(paths.apps, "plain"))
    otau.sign_tarball(package, key)
    assert gwe("-I", package).returncode == 0
    set_option(paths.engine_cfg, "otau", "require_signatures", "false")  # the operator's explicit opt-out
    os.makedirs(tmp_path / "v2")
    assert gwe("-I", oneoff(tmp_path / "v2", "plain", "2")).returncode == 0


@pytest.mark.slow
def test_own_packages_need_a_signature_whenever_a_key_is_configured(keys, tmp_path):
    paths, key, rogue = keys
    set_option(paths.engine_cfg, "otau", "require_signatures", "false")
    for name in ("gwe", "gmq"):
        package = make_app(str(tmp_path), name, "1", command=None)
        result = gwe("-I", package)
        assert result.returncode == 1 and "Gateway Engine's own packages must be signed" in result.stderr, result
        otau.sign_tarball(package, rogue)
        assert "not trusted" in gwe("-I", package).stderr
        otau.sign_tarball(package, key)
        assert gwe("-I", package).returncode == 0
        assert os.readlink(os.path.join(paths.apps, name, "current")) == "1"
