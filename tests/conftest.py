import os

import pytest

from harness import Mosquitto, MuranoLocal, Supervisord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses started by tests import the checkout under test, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True)
def gwe_home(tmp_path, monkeypatch):
    """A fresh GWE_HOME for every test, exported to the environment (and so to subprocesses)."""
    home = tmp_path / "gwe_home"
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
