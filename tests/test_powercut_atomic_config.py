"""Power cuts under atomic_config writers: after every cut each file parses to a version that was
written, never older than the last write that returned (acknowledged), never a mix."""
import json
import os
import stat
import threading
import time

import pytest
from lab import count, figure, rng

from atomic_config import AtomicConfigParser, RecoveryError, atomic_write, read_config, read_recovering, set_option


def write_json(path, version, r):
    atomic_write(path, json.dumps({"version": version, "pad": "x" * r.randrange(0, 20000)}))


def write_parser(path, version, r):
    cfg = AtomicConfigParser()
    cfg["s"] = {"version": str(version), "pad": "y" * r.randrange(0, 9000)}
    cfg.write(path)


def write_option(path, version, r):
    set_option(path, "s", "version", str(version))


def read_version(path):
    if path.endswith(".json"):
        data = read_recovering(path, json.loads)
        return None if data is None else data["version"]
    if not os.path.exists(path):
        return None
    return int(read_config(path)["s"]["version"])


WRITERS = {"state.json": write_json, "parser.cfg": write_parser, "option.cfg": write_option}


def writer(path, write, progress, r):
    """Write versions until the disk fails under it; ``progress`` = [last returned, last started]."""
    try:
        while True:
            progress[1] += 1
            write(path, progress[1], r)
            progress[0] = progress[1]
    except OSError:
        pass  # the power is gone
    except RecoveryError:
        pass  # set_option found the file damaged (only without fsync): the check after the cut counts it


def run_cuts(disk, r, cuts):
    root = os.path.join(disk.mountpoint, "etc")
    os.mkdir(root)
    disk.sync()
    versions = {name: [0, 0] for name in WRITERS}  # [acknowledged, started]
    acknowledged = bad = 0
    outcomes = {"old": 0, "new": 0}
    for _ in range(cuts):
        threads = []
        for name, write in WRITERS.items():
            progress = versions[name]
            progress[1] = progress[0]
            start_ack = progress[0]
            t = threading.Thread(target=writer, args=(os.path.join(root, name), write, progress, r))
            t.start()
            threads.append((t, start_ack))
        time.sleep(r.uniform(0.0, 0.25))
        keep = r.choice(["none", "prefix"])
        disk.cut(keep=keep, tear=keep == "prefix", seed=r.randrange(1 << 30))
        for t, _ in threads:
            t.join(30)
        disk.mount()
        for name, (_, start_ack) in zip(WRITERS, threads):
            acked, started = versions[name]
            acknowledged += acked - start_ack
            try:
                got = read_version(os.path.join(root, name))
            except (RecoveryError, ValueError, KeyError):  # damaged beyond recovery: counted, not raised
                got = "damaged"
            if got is None and acked == 0:
                continue
            if not isinstance(got, int) or not acked <= got <= started:
                bad += 1
                continue
            outcomes["new" if got == started else "old"] += 1
            versions[name] = [got, got]
    return dict(cuts=cuts, files=len(WRITERS), acknowledged=acknowledged, lost=bad,
                last_write_kept=outcomes["new"], last_write_reverted=outcomes["old"], seed=r.seed_value)


@pytest.mark.slow
def test_atomic_config_writers_survive_power_cuts(powerloss):
    numbers = figure("atomic_config_power_cut", **run_cuts(powerloss(), rng("atomic_config"), count(8, 240)))
    assert numbers["lost"] == 0, "a file read back older than its last acknowledged write, or unparsable"
    assert numbers["acknowledged"] > numbers["cuts"], "the writers hardly wrote"


class _OsWithoutFileFsync:
    """``os`` as atomic_config sees it, except that fsync of a regular file does nothing (the
    directory fsync stays): the one removed fsync the lab must notice."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fsync(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)


def test_the_lab_catches_atomic_write_without_its_file_fsync(powerloss, monkeypatch):
    import atomic_config.files

    monkeypatch.setattr(atomic_config.files, "os", _OsWithoutFileFsync())
    numbers = figure("atomic_config_power_cut_without_file_fsync",
                     **run_cuts(powerloss(), rng("atomic_config_nofsync"), count(4, 20)))
    assert numbers["lost"] > 0, "the lab did not notice atomic_write skipping its fsync: %s" % numbers


def test_a_fresh_gwe_home_survives_a_cut(powerloss):
    """gwe_paths().ensure() on an empty disk, then a config written (acknowledged): after a cut the
    config is there, because the directories holding it were made durable in their parents."""
    from atomic_config import gwe_paths

    disk = powerloss()
    paths = gwe_paths(disk.mountpoint).ensure()
    set_option(paths.gateway_cfg, "device", "uuid", "gw-1")
    disk.cut()
    disk.mount()
    assert read_config(paths.gateway_cfg)["device"]["uuid"] == "gw-1"
