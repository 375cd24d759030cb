"""murano_local's semantics called directly: set/reported, pending values, record, products, parsing."""
import threading
import time

import pytest
import requests

from harness import MuranoLocal, wait_for
from murano_local import Murano, serve
from murano_local.events import Change
from murano_local.http_api import parse_if_modified_since, parse_range
from murano_local.service import Unauthorized
from murano_local.store import Conflict, NotFound, ceil_second_us
from murano_local.wire import HttpError


@pytest.fixture
def murano(tmp_path):
    m = Murano(str(tmp_path / "data"), default_pid="prod1")
    yield m
    m.close()


def test_device_write_sets_both_operator_set_only_set_and_notifies(murano):
    changes = []
    murano.hub.subscribe(changes.append)
    murano.add_device("prod1", "d")
    murano.activate("prod1", "d")
    murano.write("prod1", "d", [("cfg", "a")])
    murano.operator_set("prod1", "d", [("cfg", "b")])
    state = murano.state("prod1", "d")["cfg"]
    assert (state["reported"], state["set"]) == ("a", "b")
    assert [(c.kind, c.values) for c in changes] == [("write", (("cfg", "a"),)), ("set", (("cfg", "b"),))]
    assert isinstance(changes[1], Change) and changes[1].timestamp == state["timestamp"]
    assert murano.read("prod1", "d", ["cfg"]) == [("cfg", "b")]


def test_a_restart_stamps_changes_after_the_last_modified_it_handed_out(tmp_path):
    wait_for(lambda: time.time() % 1 < 0.5, message="the start of a second")
    first = Murano(str(tmp_path / "data"), default_pid="prod1")
    first.add_device("prod1", "d")
    first.operator_set("prod1", "d", [("cfg", "v1")])
    (_alias, _value, ts), = first.long_poll("prod1", "d", ["cfg"], 0, None)
    last_modified = ceil_second_us(ts)  # what the HTTP answer said, to the second
    first.close()
    again = Murano(str(tmp_path / "data"), default_pid="prod1")  # restarted within the same second
    try:
        again.operator_set("prod1", "d", [("cfg", "v2")])
        assert again.long_poll("prod1", "d", ["cfg"], 0, last_modified)[0][:2] == ("cfg", "v2")
    finally:
        again.close()
    # a point recorded with a timestamp far in the future does not drag the clock there
    again = Murano(str(tmp_path / "data"), default_pid="prod1")
    again.record("prod1", "d", [("cfg", 4102444800_000_000, "2100")])
    again.close()
    again = Murano(str(tmp_path / "data"), default_pid="prod1")
    try:
        assert again.operator_set("prod1", "d", [("cfg", "v3")]) < (time.time() + 5) * 1_000_000
    finally:
        again.close()


def test_pending_value_answers_until_written_back(murano):
    murano.add_device("prod1", "d")
    murano.operator_set("prod1", "d", [("cfg", "same")])
    ts = murano.state("prod1", "d")["cfg"]["timestamp"]
    assert murano.long_poll("prod1", "d", ["x", "cfg"], 0, None) == [("cfg", "same", ts)]
    assert murano.long_poll("prod1", "d", ["cfg"], 0, ts) == []  # not newer than If-Modified-Since
    murano.write("prod1", "d", [("cfg", "same")])
    assert murano.long_poll("prod1", "d", ["cfg"], 0, None) == []
    murano.operator_set("prod1", "d", [("cfg", "same")])  # the same value again is news again
    assert [a for a, _v, _t in murano.long_poll("prod1", "d", ["cfg"], 0, None)] == ["cfg"]


def test_long_poll_wakes_on_a_set_to_its_device_only(murano):
    for d in ("a", "b"):
        murano.add_device("prod1", d)
    got = []
    waiter = threading.Thread(target=lambda: got.append(murano.long_poll("prod1", "a", ["cmd"], 20000, None)))
    waiter.start()
    while murano.hub.waiting == 0:
        threading.Event().wait(0.01)
    murano.operator_set("prod1", "b", [("cmd", "other")])
    waiter.join(0.2)
    assert waiter.is_alive()
    murano.operator_set("prod1", "a", [("cmd", "go")])
    waiter.join(5)
    assert got and got[0][0][:2] == ("cmd", "go")


def test_record_keeps_history_and_only_newer_points_become_state(murano):
    murano.add_device("prod1", "d")
    murano.write("prod1", "d", [("t", "now")])
    murano.record("prod1", "d", [("t", 1_000_000, "old"), ("t", 2_000_000, "older-but-later")])
    assert murano.state("prod1", "d")["t"]["reported"] == "now"
    murano.record("prod1", "d", [("t", 2_000_000, "replaced")])
    values = [p["value"] for p in murano.history("prod1", "d", "t", 10)]
    assert values == ["now", "replaced", "old"]
    future = murano.state("prod1", "d")["t"]["timestamp"] + 10
    murano.record("prod1", "d", [("t", future, "newest")])
    assert murano.state("prod1", "d")["t"] == {"reported": "newest", "set": "newest", "timestamp": future}


def test_activation_rules_self_registration_and_reprovision(tmp_path):
    m = Murano(str(tmp_path / "d"), default_pid="p", allow_self_register=False)
    try:
        with pytest.raises(NotFound):
            m.activate("p", "stranger")
        m.set_self_register("p", True)
        token = m.activate("p", "stranger")
        assert len(token) == 40 and token.isalnum()
        with pytest.raises(Conflict):
            m.activate("p", "stranger")
        assert m.authenticate("p", token) == "stranger"
        with pytest.raises(Unauthorized):
            m.authenticate("other", token)
        m.store.set_reprovision("p", "stranger", True)
        new = m.activate("p", "stranger")
        assert new != token and m.authenticate("p", new) == "stranger"
        with pytest.raises(Unauthorized):
            m.authenticate("p", token)
    finally:
        m.close()


def test_products_by_host(murano):
    assert murano.product_for_host("abc123.m2.exosite.io") == "abc123"
    assert murano.product_for_host("aVendor.m2.exosite.com") == "avendor"
    assert murano.product_for_host("x1.devmode-m2.exosite.io") == "x1"
    assert murano.product_for_host("127.0.0.1:8080") == "prod1"
    assert murano.product_for_host(None) == "prod1"


def test_self_registration_flag_through_the_admin_api(murano_server_self_register):
    server = murano_server_self_register
    assert requests.post(server.url + "/provision/activate", data={"id": "new-gw"}).status_code == 200
    base = server.url + "/api:1/service/localproduct/device2"
    assert requests.get(base).json()["provisioning"]["presenter_identity"] is True
    assert requests.patch(base, json={"provisioning": {"presenter_identity": False}}).status_code == 204
    assert requests.post(server.url + "/provision/activate", data={"id": "newer-gw"}).status_code == 404
    assert requests.patch(base, json={"provisioning": "yes"}).status_code == 400


@pytest.fixture
def murano_server_self_register(tmp_path):
    server = MuranoLocal(str(tmp_path / "ml"), allow_self_register=True).start()
    yield server
    server.stop()


def test_if_modified_since_forms():
    assert parse_if_modified_since(None) is None
    assert parse_if_modified_since("10") == 10_000_000
    assert parse_if_modified_since("10.5") == 10_500_000
    assert parse_if_modified_since("Fri, 15 Jun 2018 19:04:13 GMT") == 1529089453_000_000
    for bad in ("soon", "-5", "Fri, 99 Foo 2018"):
        with pytest.raises(HttpError):
            parse_if_modified_since(bad)


@pytest.mark.parametrize("header,result", [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=90-", (90, 99)), ("bytes=-5", (95, 99)),
    ("bytes=95-500", (95, 99)), ("bytes=100-", "unsatisfiable"), ("bytes=-0", "unsatisfiable"),
    ("bytes=5-1", None), ("items=0-1", None), ("bytes=0-1,3-4", None), ("bytes=a-b", None),
])
def test_ranges(header, result):
    assert parse_range(header, 100) == result


def test_embedded_in_a_thread_and_shut_down(tmp_path):
    ready = []
    m = Murano(str(tmp_path / "emb"))
    thread = threading.Thread(target=serve, args=(m, "127.0.0.1", 0), kwargs={"ready": ready.append}, daemon=True)
    thread.start()
    server = wait_for(lambda: ready and ready[0], 10)
    url = "http://127.0.0.1:%d" % server.server_address[1]
    assert requests.get(url + "/timestamp").status_code == 200
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive()


def test_history_is_trimmed_to_the_limit_keeping_the_newest(tmp_path):
    m = Murano(str(tmp_path / "h"), default_pid="p", history_limit=10)
    try:
        m.add_device("p", "d")
        for i in range(25):
            m.write("p", "d", [("n", str(i))])
        m.record("p", "d", [("other", 1_000_000, "kept")])
        values = [p["value"] for p in m.history("p", "d", "n", 1000)]
        assert 10 <= len(values) <= 11 and values[:10] == [str(i) for i in range(24, 14, -1)]
        assert [p["value"] for p in m.history("p", "d", "other", 10)] == ["kept"]
    finally:
        m.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    import sqlite3
    Murano(str(tmp_path / "v")).close()
    conn = sqlite3.connect(str(tmp_path / "v" / "murano_local.sqlite3"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        Murano(str(tmp_path / "v"))


def test_group_commit_isolates_a_failing_work_from_its_batch(murano):
    murano.add_device("prod1", "d")
    errors, done = [], []

    def worker(n):
        for i in range(50):
            try:
                if i % 5 == 0:
                    murano.operator_set("prod1", "ghost", [("x", "1")])  # NotFound inside the batch
                else:
                    murano.write("prod1", "d", [("w%d" % n, str(i))])
                    done.append((n, i))
            except NotFound:
                errors.append((n, i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 8 * 10 and len(done) == 8 * 40
    for n in range(8):
        assert len(murano.history("prod1", "d", "w%d" % n, 1000)) == 40
    assert murano.store.device("prod1", "ghost") is None
