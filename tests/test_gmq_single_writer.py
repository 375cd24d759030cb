"""gmq.db has one owner and one writer turn, and gmq's event loop never waits for that turn.

A real gmq (in this process, on a real socket and a real sqlite file) while another thread holds
the writer's turn for seconds, as the forwarder does during a commit on a slow disk (an SD card's
fsync can take that long): the loop goes on answering what needs no commit, and the writes
gathered meanwhile are committed and answered as soon as the turn comes back.
"""
import os
import threading
import time

import requests

from atomic_config import gwe_paths
from gmq.server import Gmq
from harness import free_port, wait_for

HOLD_S = 3.0


def open_files(path):
    """Descriptors of this process open on ``path`` (one per sqlite connection, and the queue's probe)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink("/proc/self/fd/" + fd) == path
        except OSError:
            continue
    return found


def test_the_loop_answers_while_the_forwarder_holds_the_writer_turn(gwe_home):
    paths = gwe_paths(str(gwe_home)).ensure()
    gmq = Gmq(paths, port=free_port())
    url = "http://%s" % gmq.address
    gmq.forwarder.start()  # no upstream configured: it idles
    loop = threading.Thread(target=gmq.httpd.serve_forever, daemon=True)
    loop.start()
    held, release = threading.Event(), threading.Event()
    answers = {}

    def post(key, path, body, headers):
        started = time.monotonic()
        resp = requests.post(url + path, data=body, headers=headers, timeout=30)
        answers[key] = (resp.status_code, resp.text, time.monotonic() - started)

    def forwarder_commit():
        with gmq.queue._transaction():  # what mark_sent/ack do, here made as slow as a slow disk's fsync
            held.set()
            release.wait(HOLD_S)

    try:
        # the queue's writer and reader, the only connections to gmq.db, and the descriptor of its journal probe
        assert open_files(paths.gmq_db) == 3
        vms = {"X-Exosite-VMS": "p p sn1"}
        assert requests.post(url + "/onep:v1/stack/alias", data="warm=1", headers=vms, timeout=10).status_code == 204
        holder = threading.Thread(target=forwarder_commit)
        holder.start()
        assert held.wait(10)
        writers = [threading.Thread(target=post, args=("write", "/onep:v1/stack/alias", "during=1", vms)),
                   threading.Thread(target=post, args=("activate", "/provision/activate", "id=newcomer", {}))]
        for t in writers:
            t.start()
        wait_for(lambda: gmq.httpd.open_connections >= 2, 5, message="both writes received")
        time.sleep(0.2)  # both are gathered and waiting for the turn
        started = time.monotonic()
        status = requests.get(url + "/status", timeout=30)
        took = time.monotonic() - started
        assert status.status_code == 200 and took < HOLD_S / 2, "status took %.2fs behind the writer turn" % took
        assert "write" not in answers and "activate" not in answers  # not answered before they are on disk
        release.set()
        holder.join()
        for t in writers:
            t.join(30)
        assert answers["write"][0] == 204
        assert answers["activate"][0] == 200 and len(answers["activate"][1]) == 40
        assert [c["client"] for c in gmq.status()["forwarder"]["clients"]] == ["sn1", "newcomer"]
        assert gmq.queue.depth == 2
    finally:
        release.set()
        gmq.httpd.shutdown()
        loop.join(10)
        gmq.close()
    assert open_files(paths.gmq_db) == 0
