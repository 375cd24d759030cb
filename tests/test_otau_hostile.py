"""A corpus of broken and hostile packages against a gateway running v1 of an app under a real supervisord.

Each must be refused (``failed``) or ``rolled_back`` with a clear fetch_status, write nothing
outside the app's directory (the whole test tree is compared before and after), and leave
v1 RUNNING (refused ones without even restarting it).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import psutil
import pytest

from atomic_config import gwe_paths
from harness import Supervisord, wait_for
from otau_helpers import INJECTIONS, add_file, add_special, app_files, supervisor_conf, tree_snapshot, write_tarball

import otau

NAME = "victim"


@dataclass
class Gateway:
    root: str
    pkgs: str
    outside: str
    paths: object
    settings: otau.OtauSettings
    sup: Supervisord
    key: str          # trusted private key
    rogue_key: str    # a key the gateway does not trust


def _new_gateway(tmp_path_factory) -> Gateway:
    root = str(tmp_path_factory.mktemp("otau_corpus"))
    home = os.path.join(root, "home")
    pkgs = os.path.join(root, "pkgs")
    outside = os.path.join(root, "outside")
    keys = os.path.join(root, "keys")
    for d in (home, pkgs, outside, keys):
        os.makedirs(d)
    paths = gwe_paths(home).ensure()
    key, pub = otau.generate_keypair(os.path.join(keys, "publisher"))
    rogue, _ = otau.generate_keypair(os.path.join(keys, "rogue"))
    os.makedirs(paths.trusted_keys)
    with open(pub, "rb") as src, open(os.path.join(paths.trusted_keys, "publisher.pub"), "wb") as dst:
        dst.write(src.read())
    # signatures optional here (the cases that test the policy say so), so that the unpack and
    # program-file defences are reached by unsigned packages
    settings = otau.OtauSettings(require_signatures="false", settle_seconds=0.3, health_timeout=10,
                                 install_timeout=1.5,
                                 max_unpacked_bytes=1 << 20, max_members=200, max_package_bytes=1 << 20)
    sup = Supervisord(home).start()
    status = otau.install_package(write_tarball(os.path.join(pkgs, NAME + ".v1.tar.gz"), app_files("1")),
                                  paths=paths, settings=settings)
    assert status.ok, status.to_json()
    return Gateway(root, pkgs, outside, paths, settings, sup, key, rogue)


def _v1_running(gw: Gateway) -> bool:
    """What every case assumes: v1 current and RUNNING from its own directory, nothing half-done."""
    try:
        info = gw.sup.rpc().supervisor.getProcessInfo(NAME)
        app_root = os.path.join(gw.paths.apps, NAME)
        return (info["statename"] == "RUNNING" and psutil.Process(info["pid"]).cwd() == os.path.join(app_root, "1")
                and os.readlink(os.path.join(app_root, "current")) == "1"
                and not os.path.exists(os.path.join(gw.paths.var_lib, "otau", "journal.json")))
    except Exception:  # supervisord gone, process gone, link missing: not the assumed state
        return False


@pytest.fixture(scope="module")
def corpus_gateways(tmp_path_factory):
    """One gateway shared by the module's cases (a list, so a broken one can be replaced)."""
    gateways = [_new_gateway(tmp_path_factory)]
    yield gateways
    gateways[-1].sup.stop()


@pytest.fixture
def gateway(corpus_gateways, tmp_path_factory):
    """The shared gateway in the state every case assumes; a case that broke it is not inherited:
    the next one gets a fresh gateway instead of failing with it."""
    gw = corpus_gateways[-1]
    if not _v1_running(gw):
        gw.sup.stop()
        corpus_gateways.append(_new_gateway(tmp_path_factory))
    return corpus_gateways[-1]


def _pkg(gw: Gateway, files: Dict, extra: Optional[Callable] = None, name: str = NAME + ".v2.tar.gz") -> str:
    return write_tarball(os.path.join(gw.pkgs, name), files, extra)


def good_files() -> Dict:
    return app_files("2")


def _rewrite(path: str, change: Callable[[str, bytes], bytes]) -> str:
    """Rebuild a package with member contents passed through ``change(name, data)``."""
    members = []
    with tarfile.open(path, "r:gz") as tf:
        for m in tf.getmembers():
            members.append((m, tf.extractfile(m).read() if m.isreg() else None))
    with tarfile.open(path, "w:gz") as tf:
        for m, data in members:
            if data is not None:
                data = change(m.name, data)
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
            else:
                tf.addfile(m)
    return path


def signed(gw: Gateway, files: Dict, key: Optional[str] = None) -> str:
    return otau.sign_tarball(_pkg(gw, files), key or gw.key)


# --- the corpus: id -> (build(gw) -> (tarball, sha256 or None), expected status, error fragment, settings) ---

def traversal(gw):
    return _pkg(gw, dict(good_files(), **{"../../outside/evil": "x"}))


def traversal_nested(gw):
    return _pkg(gw, dict(good_files(), **{"sub/../../../outside/evil": "x"}))


def absolute_path(gw):
    return _pkg(gw, dict(good_files(), **{os.path.join(gw.outside, "evil"): "x"}))


def symlink_escape(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "escape", tarfile.SYMTYPE, "../../../../outside"))


def symlink_absolute(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "passwd", tarfile.SYMTYPE, "/etc/passwd"))


def symlink_write_through(gw):
    def extra(tf):
        add_special(tf, "sub", tarfile.DIRTYPE)
        add_special(tf, "d", tarfile.SYMTYPE, "sub")
        add_file(tf, "d/evil", "x")
    return _pkg(gw, good_files(), extra)


def symlink_chain_escape(gw):
    def extra(tf):
        add_special(tf, "here", tarfile.SYMTYPE, ".")
        add_special(tf, "up", tarfile.SYMTYPE, "here/..")
    return _pkg(gw, good_files(), extra)


def hardlink_escape(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "hl", tarfile.LNKTYPE, "../../outside/evil"))


def hardlink_absolute(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "hl", tarfile.LNKTYPE, "/etc/passwd"))


def hardlink_dangling(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "hl", tarfile.LNKTYPE, "not-there"))


def device_file(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "null", tarfile.CHRTYPE))


def block_device(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "sda", tarfile.BLKTYPE))


def fifo(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "pipe", tarfile.FIFOTYPE))


def tar_bomb(gw):
    return _pkg(gw, dict(good_files(), **{"zeros.bin": b"\0" * (8 << 20)}))


def too_many_members(gw):
    return _pkg(gw, dict(good_files(), **{"f/%d" % i: "x" for i in range(300)}))


def oversized_package(gw):
    return _pkg(gw, dict(good_files(), **{"noise.bin": os.urandom(3 << 19)}))


def duplicate_member(gw):
    return _pkg(gw, good_files(), lambda tf: add_file(tf, "app.py", "print('again')"))


def pax_header_bomb(gw):
    def extra(tf):
        info = tarfile.TarInfo("notes.txt")
        info.pax_headers = {"comment": "x" * (3 << 20)}
        tf.addfile(info, io.BytesIO(b""))
    return _pkg(gw, good_files(), extra)


def directory_over_file(gw):
    return _pkg(gw, good_files(), lambda tf: add_special(tf, "app.py", tarfile.DIRTYPE))


def wrong_name(gw):
    return _pkg(gw, good_files(), name="victim-2.tgz")


def bad_app_name(gw):
    return _pkg(gw, good_files(), name="vic tim.v2.tar.gz")


def bad_version(gw):
    return _pkg(gw, good_files(), name="victim.v..tar.gz")


def missing_install_sh(gw):
    files = good_files()
    del files["install.sh"]
    return _pkg(gw, files)


def two_top_directories(gw):
    return _pkg(gw, {"a/install.sh": ("#!/bin/sh\n", 0o755), "b/app.py": "x"})


def non_executable_install_sh(gw):
    return _pkg(gw, dict(good_files(), **{"install.sh": ("#!/bin/sh\necho hi\n", 0o644)}))


def failing_install_sh(gw):
    return _pkg(gw, dict(good_files(), **{"install.sh": ("#!/bin/sh\necho about to fail\nexit 3\n", 0o755)}))


def hanging_install_sh(gw, seconds="61.25"):
    return _pkg(gw, dict(good_files(), **{"install.sh": ("#!/bin/sh\necho hanging\nsleep %s\n" % seconds, 0o755)}))


def bad_sha256(gw):
    return _pkg(gw, good_files()), "0" * 64


def bad_signature(gw):
    path = signed(gw, good_files())

    def change(name, data):
        if name.endswith("gwe-manifest.json"):
            doc = json.loads(data)
            doc["files"]["app.py"]["size"] += 0
            doc["files"]["app.py"]["sha256"] = "f" * 64
            return json.dumps(doc).encode()
        return data
    return _rewrite(path, change)


def tampered_after_signing(gw):
    path = signed(gw, good_files())
    return _rewrite(path, lambda name, data: data + b"\nimport os; os.system('evil')\n" if name == "app.py" else data)


def unsigned_when_required(gw):
    return _pkg(gw, good_files())


def untrusted_key_when_required(gw):
    return signed(gw, good_files(), key=gw.rogue_key)


def renamed_signed_package(gw):
    """A genuinely signed v9 shipped under the name v2."""
    path = otau.sign_tarball(_pkg(gw, app_files("9"), name=NAME + ".v9.tar.gz"), gw.key)
    renamed = os.path.join(gw.pkgs, NAME + ".v2.tar.gz")
    os.replace(path, renamed)
    return renamed


def truncated_gzip(gw):
    path = _pkg(gw, dict(good_files(), **{"data.bin": os.urandom(50000)}))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    return path


def not_gzip(gw):
    path = os.path.join(gw.pkgs, NAME + ".v2.tar.gz")
    with open(path, "wb") as f:
        f.write(b"this is not a tarball\n" * 10)
    return path


def empty_file(gw):
    path = os.path.join(gw.pkgs, NAME + ".v2.tar.gz")
    open(path, "wb").close()
    return path


def conf_unparsable_command(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": supervisor_conf("%(ENV_GWE_PYTHON)s 'unbalanced")}))


def conf_no_command(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": "[supervisord]\nstartsecs = 1\n"}))


def conf_wrong_section(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": "[program:victim]\ncommand = sleep 10\n"}))


def conf_bad_value(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": supervisor_conf("sleep 10", autorestart="sometimes")}))


def conf_missing_binary(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": supervisor_conf("/nonexistent/bin/victim")}))


def conf_injection(case):
    def build(gw):
        return _pkg(gw, dict(good_files(), **{"supervisor.conf": INJECTIONS[case]}))
    build.__name__ = case
    return build


def conf_continuation_environment(gw):
    conf = supervisor_conf("sleep 3600") + 'environment = A="1"\n  [program:evil]\n  command=/bin/sleep 3600\n'
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": conf}))


def crash_loop(gw):
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": supervisor_conf(
        "/bin/sh -c 'exit 1'")}))


def dies_after_start(gw):
    """Reaches RUNNING (startsecs 1), then exits 2.5 s after it started: seconds inside the 6 s health
    window of its case, whatever the machine's load does to the start."""
    return _pkg(gw, dict(good_files(), **{"supervisor.conf": supervisor_conf(
        "%(ENV_GWE_PYTHON)s -c 'import time; time.sleep(2.5)'")}))


def manifest_after_files(gw):
    """A signed package rebuilt with its manifest and signature last: they must lead."""
    path = signed(gw, good_files())
    with tarfile.open(path, "r:gz") as tf:
        members = [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]
    members.sort(key=lambda item: item[0].name.startswith("gwe-manifest"))
    with tarfile.open(path, "w:gz") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return path


REFUSED = "failed"
CORPUS = {
    "traversal": (traversal, REFUSED, "path traversal", {}),
    "traversal_nested": (traversal_nested, REFUSED, "path traversal", {}),
    "absolute_path": (absolute_path, REFUSED, "absolute path", {}),
    "symlink_escape": (symlink_escape, REFUSED, "points outside the package", {}),
    "symlink_absolute": (symlink_absolute, REFUSED, "absolute path", {}),
    "symlink_write_through": (symlink_write_through, REFUSED, "written through the symlink", {}),
    "symlink_chain_escape": (symlink_chain_escape, REFUSED, "resolves outside the package", {}),
    "hardlink_escape": (hardlink_escape, REFUSED, "path traversal", {}),
    "hardlink_absolute": (hardlink_absolute, REFUSED, "absolute path", {}),
    "hardlink_dangling": (hardlink_dangling, REFUSED, "hard link", {}),
    "device_file": (device_file, REFUSED, "device file", {}),
    "block_device": (block_device, REFUSED, "device file", {}),
    "fifo": (fifo, REFUSED, "fifo", {}),
    "tar_bomb": (tar_bomb, REFUSED, "unpacks to more than", {}),
    "too_many_members": (too_many_members, REFUSED, "more than 200 members", {}),
    "oversized_package": (oversized_package, REFUSED, "over the", {}),
    "duplicate_member": (duplicate_member, REFUSED, "duplicate member", {}),
    "pax_header_bomb": (pax_header_bomb, REFUSED, "metadata header", {}),
    "directory_over_file": (directory_over_file, REFUSED, "duplicate member", {}),
    "wrong_name": (wrong_name, REFUSED, "bad package name", {}),
    "bad_app_name": (bad_app_name, REFUSED, "bad app name", {}),
    "bad_version": (bad_version, REFUSED, "bad version", {}),
    "missing_install_sh": (missing_install_sh, REFUSED, "no install.sh or setup.py", {}),
    "two_top_directories": (two_top_directories, REFUSED, "no install.sh or setup.py", {}),
    "non_executable_install_sh": (non_executable_install_sh, REFUSED, "not executable", {}),
    "failing_install_sh": (failing_install_sh, REFUSED, "exited with status 3", {}),
    "hanging_install_sh": (hanging_install_sh, REFUSED, "timed out", {}),
    "bad_sha256": (bad_sha256, REFUSED, "sha256 mismatch", {}),
    "bad_signature": (bad_signature, REFUSED, "bad signature", {"require_signatures": True}),
    "tampered_after_signing": (tampered_after_signing, REFUSED, "does not match its sha256", {}),
    "unsigned_when_required": (unsigned_when_required, REFUSED, "not signed", {"require_signatures": True}),
    "untrusted_key_when_required": (untrusted_key_when_required, REFUSED, "not trusted",
                                    {"require_signatures": True}),
    "unsigned_with_a_trusted_key": (unsigned_when_required, REFUSED, "a trusted key is configured",
                                    {"require_signatures": "auto"}),
    "untrusted_key_with_a_trusted_key": (untrusted_key_when_required, REFUSED, "not trusted",
                                         {"require_signatures": "auto"}),
    "manifest_after_files": (manifest_after_files, REFUSED, "must lead the archive", {}),
    "renamed_signed_package": (renamed_signed_package, REFUSED, "manifest is for victim 9", {}),
    "truncated_gzip": (truncated_gzip, REFUSED, "corrupt archive", {}),
    "not_gzip": (not_gzip, REFUSED, "corrupt archive", {}),
    "empty_file": (empty_file, REFUSED, "empty", {}),
    "conf_unparsable_command": (conf_unparsable_command, REFUSED, "bad command", {}),
    "conf_no_command": (conf_no_command, REFUSED, "has no command", {}),
    "conf_wrong_section": (conf_wrong_section, REFUSED, "[supervisord]", {}),
    "conf_bad_value": (conf_bad_value, REFUSED, "bad autorestart", {}),
    "conf_bare_cr_program": (conf_injection("bare_cr_program"), REFUSED, "bare CR", {}),
    "conf_bare_cr_unix_http_server": (conf_injection("bare_cr_unix_http_server"), REFUSED, "bare CR", {}),
    "conf_continuation_command": (conf_injection("continuation_command"), REFUSED, "continuation", {}),
    "conf_continuation_environment": (conf_continuation_environment, REFUSED, "continuation", {}),
    "conf_user_root": (conf_injection("user_root"), REFUSED, "[otau] app_user", {}),
    "conf_logfile_elsewhere": (conf_injection("logfile_elsewhere"), REFUSED, "log files are placed by otau", {}),
    "conf_default_section": (conf_injection("default_section"), REFUSED, "[DEFAULT]", {}),
    "conf_vertical_tab": (conf_injection("vertical_tab"), REFUSED, "control character", {}),
    "conf_unknown_key": (conf_injection("unknown_key"), REFUSED, "not allowed in a package", {}),
    "conf_missing_binary": (conf_missing_binary, "rolled_back", "rolled back to 1", {}),
    "crash_loop": (crash_loop, "rolled_back", "rolled back to 1", {}),
    "dies_after_start": (dies_after_start, "rolled_back", "rolled back to 1", {"settle_seconds": 5}),
}


def _victim(gw: Gateway) -> Dict:
    return gw.sup.rpc().supervisor.getProcessInfo(NAME)


def _snapshot(gw: Gateway) -> Dict:
    home = os.path.relpath(gw.paths.home, gw.root)
    skip = [os.path.join(home, "var", "log"), os.path.join(home, "run"),
            os.path.join(home, "var", "lib", "gwe", "otau"), "pkgs"]
    return tree_snapshot(gw.root, skip)


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_package(gateway, case):
    build, expected, fragment, overrides = CORPUS[case]
    settings = dataclasses.replace(gateway.settings, **overrides)
    before_info = _victim(gateway)
    assert before_info["statename"] == "RUNNING"
    built = build(gateway)
    tarball, sha = built if isinstance(built, tuple) else (built, None)
    before = _snapshot(gateway)

    status = otau.install_package(tarball, sha256=sha, paths=gateway.paths, settings=settings)

    doc = json.loads(status.to_json())
    assert doc["status"] == expected, doc
    assert fragment in doc["error"], doc
    assert doc["running_version"] in ("1", None) and doc["step"]
    assert _snapshot(gateway) == before, "files changed outside the app's own bookkeeping"
    assert os.listdir(gateway.outside) == []
    info = wait_for(lambda: _victim(gateway)["statename"] == "RUNNING" and _victim(gateway), 10)
    assert psutil.Process(info["pid"]).cwd() == os.path.join(gateway.paths.apps, NAME, "1")
    if expected == REFUSED:
        assert info["pid"] == before_info["pid"], "v1 was restarted by a refused package"


def test_hanging_install_sh_group_is_killed(gateway):
    """The hang case leaves no process behind (the installer's whole process group is killed).
    Its sleep is its own: the corpus's hanging case may run beside it on another worker."""
    status = otau.install_package(hanging_install_sh(gateway, "62.75"), paths=gateway.paths, settings=gateway.settings)
    assert status.status == "failed" and status.exit_code is None
    assert "hanging" in status.output
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "62.75"]]
    assert leftovers == []


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20
