import os

from atomic_config import gwe_paths
from gwe.supervisor_conf import DEFAULT_BIN_DIR, suite_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_repository_supervisor_files_are_the_generated_ones():
    for rel, content in suite_configs(gwe_paths("/"), DEFAULT_BIN_DIR).items():
        with open(os.path.join(ROOT, "supervisor", os.path.basename(rel))) as f:
            assert f.read() == content, "supervisor/%s is stale: regenerate it" % os.path.basename(rel)


def test_supervisor_dir_is_not_a_package():
    assert not os.path.exists(os.path.join(ROOT, "supervisor", "__init__.py"))


def test_generated_supervisord_serves_a_private_socket(supervisord):
    mode = os.stat(supervisord.socket).st_mode & 0o777
    assert mode == 0o700
    assert supervisord.rpc().supervisor.getState()["statename"] == "RUNNING"
