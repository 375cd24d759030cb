"""Storage faults under gmq: a disk filling up, a disk turned read-only, a database damaged while
gmq is stopped. Each has its documented outcome (docs/gmq.md) and loses no acknowledged value
beyond what the damage itself destroyed.

"""
import collections
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests

from fault_proxy import FaultProxy
from gmq_harness import GmqProcess
from harness import wait_for
from lab import LoopExt4, Tmpfs, count, figure, lost_values, produce, rng

PRODUCERS = 3
BASE_TS = 1700000000


class Plant:
    """gmq with its var/lib/gwe on a small disk of the test's choosing, murano_local behind a fault
    proxy (so the test decides when upstream is reachable), and producers counting 204s."""

    def __init__(self, home, murano, name, **queue):
        self.murano = murano
        self.serials = ["%s-%d" % (name, i) for i in range(PRODUCERS)]
        for serial in self.serials:
            murano.add_device(serial)
        self.proxy = FaultProxy(("127.0.0.1", murano.port))
        self.gmq = GmqProcess(str(home), queue=queue, upstream={"host": self.proxy.url, "backoff_initial": 0.05,
                                                                "backoff_max": 0.5})
        self.acked = {s: set() for s in self.serials}
        self.next_seq = {s: 0 for s in self.serials}
        self.answers = collections.Counter()
        self.threads, self.stop = [], threading.Event()

    def start(self):
        self.gmq.start()
        return self

    def activated(self):
        """Wait until every producer's client is provisioned upstream (call after ``produce``)."""
        wait_for(lambda: sum(c["activated"] for c in self.gmq.status()["forwarder"]["clients"]) >= len(self.serials),
                 30, message="clients activated upstream")

    def produce(self):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=produce, args=(self.gmq.url, s, self.stop, self.acked, self.next_seq,
                                                               self.answers)) for s in self.serials]
        for t in self.threads:
            t.start()

    def backlog(self, per_client, batch=100):
        """Queue ``per_client`` values for each client quickly: records of ``batch`` values a request."""
        session = requests.Session()
        for serial in self.serials:
            headers = {"X-Exosite-VMS": "p p %s" % serial, "Content-Type": "application/x-www-form-urlencoded"}
            for _ in range(per_client // batch):
                seqs = range(self.next_seq[serial], self.next_seq[serial] + batch)
                self.next_seq[serial] += batch
                body = "&".join("%.3f=%s:%d" % (BASE_TS + seq / 1000.0, serial, seq) for seq in seqs)
                resp = session.post(self.gmq.url + "/onep:v1/stack/alias/v", data=body, headers=headers, timeout=10)
                assert resp.status_code == 204, resp.text
                self.acked[serial].update(seqs)
        session.close()

    def halt(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def drain(self, timeout=120):
        self.proxy.set_profile("pass")
        return wait_for(lambda: (lambda s: s["queue"]["depth"] == 0 and s)(self.gmq.status()), timeout,
                        message="queue drained")

    def close(self):
        self.halt()
        self.gmq.stop()
        self.proxy.close()


@pytest.fixture
def small_disk(gwe_home):
    # room for gmq's 4.25 MiB reserve, a WAL at its checkpoint size (4 MiB) and the 1 MiB beside the
    # reserve gmq wants free before it takes the reserve back
    disk = Tmpfs(str(gwe_home / "var" / "lib" / "gwe"), "16m")
    yield disk
    disk.close()


def test_a_filling_disk_answers_507_and_loses_nothing(gwe_home, murano, small_disk):
    """The disk fills to a random level (down to nothing) again and again under load, with a
    SIGKILL of gmq while full now and then: only 204 or 507 is answered, gmq stays up, and
    everything acknowledged is delivered once there is room again."""
    r = rng("enospc")
    steps = count(4, 60)
    plant = Plant(gwe_home, murano, "full", min_free_disk=0).start()
    kills = 0
    try:
        plant.produce()
        plant.activated()
        plant.proxy.set_profile("refuse")  # an upstream outage: the queue grows on the small disk
        for step in range(steps):
            small_disk.fill(r.choice([0, r.randrange(0, 64 << 10), r.randrange(0, 512 << 10)]))
            time.sleep(r.uniform(0.2, 0.6))
            assert plant.gmq.proc.poll() is None, "gmq exited on a full disk: %s" % plant.gmq.log_text()[-2000:]
            if step % 3 == 2:
                plant.gmq.kill()
                plant.gmq.start()
                kills += 1
            small_disk.unfill()
            if step % 2:
                plant.proxy.set_profile("pass")  # let some drain, so the disk frees and fills again
                time.sleep(0.3)
                plant.proxy.set_profile("refuse")
        plant.halt()
        status = plant.drain()
        lost = lost_values(murano, plant.acked)
    finally:
        plant.close()
    acked = sum(len(v) for v in plant.acked.values())
    figure("gmq_disk_full", steps=steps, kills=kills, acknowledged=acked, lost=lost,
           answered_507=plant.answers[507], other_answers={str(k): v for k, v in plant.answers.items()
                                                           if k not in (204, 507)},
           rejected=status["counters"]["rejected"], seed=r.seed_value)
    assert plant.answers[507] > 0, "the disk never filled"
    assert set(plant.answers) <= {204, 507, "error"}, plant.answers  # "error": gmq killed mid-request
    assert lost == 0


@pytest.mark.parametrize("when", ["at_start", "while_running"])
def test_a_completely_full_disk_still_drains(gwe_home, murano, small_disk, when):
    """The disk filled to the last byte with a backlog queued in an outage, on a gateway that
    rebooted onto it (gmq stopped, the disk filled, gmq started) or under a running gmq: once
    upstream is back the queue drains on the room gmq kept for it, with nothing lost, while new
    values get 507; once there is room again they are accepted. No traceback, logged once."""
    plant = Plant(gwe_home, murano, "drain", min_free_disk=0).start()
    try:
        stop_with_backlog(plant, values=1500)
        if when == "at_start":
            checkpointed_stop(plant)
        assert small_disk.fill(0) == 0
        if when == "at_start":
            plant.gmq.start()
        assert post_one(plant) == 507
        plant.drain(timeout=20)
        assert lost_values(murano, plant.acked) == 0
        assert post_one(plant) == 507  # the room kept for deliveries is not for new values
        small_disk.unfill()
        wait_for(lambda: post_one(plant) == 204, 10, message="new values accepted once there is room")
    finally:
        plant.close()
    assert_full_disk_logged_once(plant.gmq.log_text())


def test_a_start_on_a_full_disk_without_room_moves_nothing(gwe_home, murano, small_disk):
    """gmq started on a 100 % full disk with no room kept (its reserve gone, as a gmq of an older
    version leaves it): the failed open is not taken for damage; gmq exits with one line, the
    database is left as it is, and the next start with room delivers everything."""
    plant = Plant(gwe_home, murano, "noroom", min_free_disk=0).start()
    try:
        stop_with_backlog(plant, values=300)
        checkpointed_stop(plant)
        db = plant.gmq.paths.gmq_db
        if os.path.exists(db + ".reserve"):
            os.unlink(db + ".reserve")
        before = open(db, "rb").read()
        assert small_disk.fill(0) == 0
        done = subprocess.run([sys.executable, "-m", "gmq", "serve"], env=dict(os.environ, GWE_HOME=str(gwe_home)),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("gmq: cannot open %s" % db), done.stderr
        assert open(db, "rb").read() == before
        assert not [n for n in os.listdir(os.path.dirname(db)) if ".corrupt-" in n or ".salvage" in n]
        small_disk.unfill()
        plant.gmq.start()
        plant.drain(timeout=10)
        assert lost_values(murano, plant.acked) == 0
    finally:
        plant.close()


def post_one(plant):
    return plant.gmq.post("/onep:v1/stack/alias", "late=1", serial=plant.serials[0]).status_code


def assert_full_disk_logged_once(log):
    assert "Traceback" not in log, log[-3000:]
    assert log.count("disk full: released") == 1, log[-3000:]
    assert log.count("new values refused") <= 2, log[-3000:]  # when it begins and when it ends


def test_a_disk_turned_read_only_under_load(gwe_home, murano):
    """ext4 with errors=remount-ro hits an error under load (a dying SD card): gmq answers no 204
    it cannot keep, stays up; after the reboot (e2fsck, mount, gmq start) every acknowledged value
    is there and is delivered."""
    disk = LoopExt4(str(gwe_home / "var" / "lib" / "gwe"))
    plant = Plant(gwe_home, murano, "ro").start()
    try:
        plant.produce()
        plant.activated()
        plant.proxy.set_profile("refuse")
        time.sleep(0.5)
        disk.fail()
        before = sum(len(v) for v in plant.acked.values())
        time.sleep(1.0)
        after = sum(len(v) for v in plant.acked.values())
        alive = plant.gmq.proc.poll() is None
        plant.halt()
        plant.gmq.kill()
        fsck = disk.reboot()
        plant.gmq.start()
        plant.drain()
        lost = lost_values(murano, plant.acked)
    finally:
        plant.close()
        disk.close()
    figure("gmq_disk_read_only", acknowledged=after, acknowledged_while_read_only=after - before, lost=lost,
           gmq_stayed_up=alive, e2fsck_exit=fsck, answers={str(k): v for k, v in plant.answers.items()})
    assert lost == 0
    assert after - before <= 4 * PRODUCERS  # at most what was in flight when the disk failed
    assert alive, "gmq exited when its disk turned read-only"


class SlowWrites:
    """gmq's own writes to ``disk`` throttled to ``iops`` a second (a blkio cgroup): a slow SD card,
    on which a commit's fdatasync spends its time waiting for its data pages, while ext4's journal
    thread (not throttled) is as fast as ever."""

    def __init__(self, disk, pid, iops=10):
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", disk.path], check=True, capture_output=True,
                                text=True).stdout.strip()
        rdev = os.stat(source).st_rdev
        self.device = "%d:%d" % (os.major(rdev), os.minor(rdev))
        self.pid = pid
        self.cgroup = "/sys/fs/cgroup/blkio/gwe-test-%d" % pid
        os.makedirs(self.cgroup)
        self.limit(iops)
        with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def limit(self, iops):
        """Throttle the cgroup's writes to ``iops`` a second (0: no limit)."""
        with open(os.path.join(self.cgroup, "blkio.throttle.write_iops_device"), "w") as f:
            f.write("%s %d\n" % (self.device, iops))

    def committing(self):
        """Whether gmq's event loop (its main thread, which commits what apps post) is inside
        fdatasync(2), waiting for the data pages of a commit (its kernel stack says so)."""
        try:
            with open("/proc/%d/stack" % self.pid) as f:
                return "file_write_and_wait_range" in f.read()
        except OSError:
            return False

    def close(self):
        self.limit(0)  # the writes still queued go at once: the filesystem can then be released
        with open(os.path.join(self.cgroup, "cgroup.procs")) as f:
            stray = f.read().split()
        with open("/sys/fs/cgroup/blkio/cgroup.procs", "w") as f:
            for pid in stray:
                f.write(pid)
        os.rmdir(self.cgroup)


def test_a_commit_the_failing_disk_did_not_keep_is_not_acknowledged(gwe_home, murano):
    """ext4 aborts its journal (errors=remount-ro) while gmq's fdatasync waits for a commit's pages on a
    slow disk: Linux then returns success from that fdatasync although the aborted journal never
    recorded the file's growth, and the commit is gone after the reboot. gmq answers no 204 for it:
    after each commit it checks that the filesystem still takes a journal transaction."""
    disk = LoopExt4(str(gwe_home / "var" / "lib" / "gwe"))
    plant = Plant(gwe_home, murano, "slow").start()
    slow = None
    try:
        plant.produce()
        plant.activated()
        plant.proxy.set_profile("refuse")
        slow = SlowWrites(disk, plant.gmq.proc.pid)
        wait_for(slow.committing, 10, interval=0.002, message="a commit waiting in fdatasync for its pages")
        disk.fail()  # the commit's pages are still on their way: the exact step
        time.sleep(1.0)
        plant.halt()
        plant.gmq.kill()
        slow.close()
        slow = None
        disk.reboot()
        plant.gmq.start()
        plant.drain()
        lost = lost_values(murano, plant.acked)
    finally:
        if slow is not None:
            plant.gmq.kill()
            slow.close()
        plant.close()
        disk.close()
    assert lost == 0, "%d acknowledged values lost with the commit the aborted journal dropped" % lost


def stop_with_backlog(plant, values=1500):
    """Clients activated upstream, then an outage and a backlog of ``values`` values, then gmq
    stopped cleanly with the queue checkpointed into gmq.db (no -wal, no -shm left)."""
    plant.produce()
    plant.activated()
    plant.halt()
    plant.proxy.set_profile("refuse")
    plant.backlog(values // PRODUCERS)


def checkpointed_stop(plant):
    """Stop gmq; then its rows are all in gmq.db itself and no -wal or -shm is left (the last
    connection to close checkpoints and removes them)."""
    plant.gmq.stop()
    db = plant.gmq.paths.gmq_db
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not os.path.exists(db + "-wal") and not os.path.exists(db + "-shm")


def leaf_pages(db, table="queue"):
    """{page number: rows on it} for the leaf pages of ``table`` (sqlite's dbstat)."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,)))
    finally:
        conn.close()


@pytest.mark.parametrize("damage", ["truncated", "scribbled_page"])
def test_a_database_damaged_while_stopped_is_salvaged(gwe_home, murano, damage):
    """gmq stopped with a backlog, its database damaged (the last quarter cut off, or one leaf page
    of the queue overwritten): gmq starts, raises db_corrupt, keeps the damaged file, and delivers
    every acknowledged value except those on the destroyed pages."""
    r = rng("damage-" + damage)
    plant = Plant(gwe_home, murano, damage[:4]).start()
    try:
        stop_with_backlog(plant)
        checkpointed_stop(plant)
        db = plant.gmq.paths.gmq_db
        pages = leaf_pages(db)
        size = os.path.getsize(db)
        page_size = 4096
        if damage == "truncated":
            keep = (size // page_size) * 3 // 4
            destroyed = [p for p in pages if p > keep]
            with open(db, "r+b") as f:
                f.truncate(keep * page_size)
        else:
            victim = r.choice(sorted(pages)[1:-1])
            destroyed = [victim]
            with open(db, "r+b") as f:
                f.seek((victim - 1) * page_size + 8)  # past the page header: cells, not the btree shape
                f.write(r.randbytes(page_size - 8))  # from the seed, so a failing run can be repeated
        bound = sum(pages[p] for p in destroyed)  # the rows that were on the destroyed pages
        plant.gmq.start()
        status = plant.gmq.status()
        alarms = [a["kind"] for a in status["alarms"]]
        plant.drain()
        lost = lost_values(murano, plant.acked)
        kept_aside = [n for n in os.listdir(os.path.dirname(db)) if ".corrupt-" in n]
    finally:
        plant.close()
    figure("gmq_db_damaged_" + damage, acknowledged=sum(len(v) for v in plant.acked.values()), lost=lost,
           pages_destroyed=len(destroyed), loss_bound=bound, alarm="db_corrupt" in alarms, seed=r.seed_value)
    assert "db_corrupt" in alarms
    assert kept_aside, "the damaged database was not kept"
    assert lost <= bound, "lost %d acknowledged values, the damage destroyed at most %d" % (lost, bound)


def test_a_damaged_wal_raises_an_alarm_and_is_kept(gwe_home, murano):
    """gmq SIGKILLed with its newest values only in the WAL, 512 bytes in the middle of the WAL
    scribbled: sqlite alone would drop every commit after the damaged frame without a word. gmq
    raises db_corrupt, keeps the damaged WAL beside the database, and delivers every acknowledged
    value but those on the damaged frames (a frame is one page; 512 bytes spoil at most two, and
    the frame after a spoilt header cannot be checked)."""
    plant = Plant(gwe_home, murano, "wal").start()
    try:
        stop_with_backlog(plant, values=1500)
        plant.gmq.kill()  # no checkpoint: the newest rows are only in the WAL
        wal = plant.gmq.paths.gmq_db + "-wal"
        per_page = rows_per_leaf(plant.gmq.paths.gmq_db)
        size = os.path.getsize(wal)
        with open(wal, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(512))
        plant.gmq.start()
        alarms = plant.gmq.status()["alarms"]
        kept = [n for n in os.listdir(os.path.dirname(wal)) if "wal" in n and n != "gmq.db-wal"]
        assert alarms, "acknowledged values in a damaged WAL were dropped without an alarm"
        assert "WAL damaged" in alarms[0]["detail"]
        assert kept, "the damaged WAL was not kept for salvage"
        plant.drain()
        lost = lost_values(murano, plant.acked)
    finally:
        plant.close()
    figure("gmq_wal_damaged", acknowledged=sum(len(v) for v in plant.acked.values()), lost=lost,
           loss_bound=3 * per_page)
    assert lost <= 3 * per_page


def rows_per_leaf(db):
    """The most rows one leaf page of the queue holds, read from a copy (opening the database
    itself would checkpoint its WAL)."""
    copy = db + ".count"
    for suffix in ("", "-wal"):
        shutil.copy(db + suffix, copy + suffix)
    try:
        return max(leaf_pages(copy).values())
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(copy + suffix):
                os.unlink(copy + suffix)
