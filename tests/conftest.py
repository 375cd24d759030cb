import os
import shutil
import subprocess
import tempfile

import pytest
from harness import Mosquitto, MuranoLocal, Supervisord
from powerloss_fs import PowerLossMount, fuse_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses started by tests import the checkout under test, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


SHORT_BASETEMP = pytest.StashKey[str]()
RUN_PASSED = pytest.StashKey[bool]()


def pytest_configure(config):
    """A short base directory for tmp_path, unique to this run: supervisord's unix socket lives under
    each test's GWE_HOME and must fit sun_path (pytest's default base plus xdist's per-worker
    directory does not). Removed when the run passed, kept for a look when it failed."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        base = tempfile.gettempdir()
        config.option.basetemp = config.stash[SHORT_BASETEMP] = tempfile.mkdtemp(
            prefix="g", dir=base if len(base) <= 16 else "/tmp")


def pytest_collection_modifyitems(items):
    """The slow tests first: spread over the workers from the start, they no longer make the tail
    of a parallel run (one 30 s test started last kept a run going on one worker)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise as collected


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[RUN_PASSED] = exitstatus == 0


def pytest_unconfigure(config):
    if config.stash.get(RUN_PASSED, False) and SHORT_BASETEMP in config.stash:
        shutil.rmtree(config.stash[SHORT_BASETEMP], ignore_errors=True)


@pytest.fixture(autouse=True)
def gwe_home(tmp_path, monkeypatch):
    """A fresh GWE_HOME for every test, exported to the environment (and so to subprocesses)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("GWE_HOME", str(home))
    return home


@pytest.fixture
def supervisord(gwe_home):
    sup = Supervisord(str(gwe_home))
    sup.start()
    yield sup
    sup.stop()


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(str(tmp_path / "mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def murano(tmp_path):
    """A started murano_local server (default product ``localproduct``), stopped afterwards."""
    server = MuranoLocal(str(tmp_path / "murano_local"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def powerloss(tmp_path):
    """A factory of power-loss filesystems (tests/powerloss_fs.py) mounted under this test's
    tmp_path: ``powerloss("name")`` mounts one; all are unmounted afterwards."""
    reason = fuse_available()
    if reason:
        pytest.fail("the power-loss filesystem needs FUSE (scripts/test installs fuse3): %s" % reason)
    mounts = []

    def make(name: str = "disk") -> PowerLossMount:
        m = PowerLossMount(str(tmp_path / (name + ".backing")), str(tmp_path / name))
        mounts.append(m)
        return m.mount()

    yield make
    for m in mounts:
        m.unmount()
    with open("/proc/self/mounts") as f:  # a layer left by a daemon that died mid-cut: detach it too
        stale = [line.split()[1] for line in f if line.split()[1].startswith(str(tmp_path) + os.sep)]
    for path in stale:
        subprocess.run(["umount", "-l", path], check=False, stderr=subprocess.DEVNULL)
    errors = [e for m in mounts for e in m.internal_errors()]
    assert not errors, "the power-loss filesystem failed inside (see its .log): %s" % errors[:3]
