"""Network faults between the gateway and its cloud, without netem: murano_local in its own network
namespace behind a veth pair (tests/netns.py) and a userspace fault proxy on the path
(tests/fault_proxy.py). gmq, gwe's long poll and a content download each go through every profile,
back off within their bounds, resume, and deliver everything. A cut after murano_local committed
but before gmq got the answer yields a resend (a duplicate at most), never a loss.
"""
import collections
import hashlib
import os
import threading
import time
import types

import pytest
from fault_proxy import FaultProxy
from gmq_harness import GmqProcess
from harness import wait_for
from lab import FULL, figure, lost_values, produce
from netns import CloudNamespace, NamespacedMurano, namespaces_available

PROFILES = [("latency", {"delay": 0.3}), ("cut_request", {"after": 60}), ("cut_response", {"after": 12}),
            ("blackhole", {}), ("refuse", {}), ("flap", {"period": 0.3}), ("link_down", {})]
HOLD = 3.0 if FULL else 0.8  # seconds each profile lasts
# the long run: every profile 5 times, then a connection lost for good, which only the client's
# own read timeout ends (gwe: 60 s)
SEQUENCE = PROFILES * (5 if FULL else 1) + ([("blackhole_drop", {})] if FULL else [])


class Cloud:
    def __init__(self, murano, proxy, ns):
        self.murano, self.proxy, self.ns = murano, proxy, ns

    def apply(self, profile, options):
        """Put ``profile`` on the path (``link_down``: the veth link itself, or the proxy's
        ``refuse`` on loopback)."""
        if profile == "link_down":
            if self.ns is not None:
                self.ns.link(False)
            else:
                self.proxy.set_profile("refuse")
        else:
            self.proxy.set_profile(profile, **options)

    def heal(self):
        if self.ns is not None:
            self.ns.link(True)
        self.proxy.set_profile("pass")


@pytest.fixture
def cloud(tmp_path):
    ns = CloudNamespace() if namespaces_available() else None
    murano = NamespacedMurano(str(tmp_path / "cloud"), ns)
    proxy = None
    try:
        murano.start()
        proxy = FaultProxy((murano.host, murano.port))
        yield Cloud(murano, proxy, ns)
    finally:
        if proxy is not None:
            proxy.close()
        murano.stop()
        if ns is not None:
            ns.close()


@pytest.mark.slow
def test_gmq_survives_every_network_profile(gwe_home, cloud):
    serials = ["net-%d" % i for i in range(3)]
    for serial in serials:
        cloud.murano.add_device(serial)
    backoff = (0.1, 1.0)
    gmq = GmqProcess(str(gwe_home), upstream={"host": cloud.proxy.url, "batch_size": 50, "timeout": 2,
                                              "backoff_initial": backoff[0], "backoff_max": backoff[1]}).start()
    acked = {s: set() for s in serials}
    next_seq = {s: 0 for s in serials}
    answers = collections.Counter()
    stop = threading.Event()
    threads = [threading.Thread(target=produce, args=(gmq.url, s, stop, acked, next_seq, answers)) for s in serials]
    delays = []
    try:
        for t in threads:
            t.start()
        wait_for(lambda: sum(c["activated"] for c in gmq.status()["forwarder"]["clients"]) == len(serials), 30,
                 message="clients activated upstream")
        for profile, options in SEQUENCE:
            cloud.apply(profile, options)
            time.sleep(HOLD)
            delays += gmq.status()["forwarder"]["recent_delays"]
            cloud.heal()
            time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
        status = wait_for(lambda: (lambda s: s["queue"]["depth"] == 0 and s)(gmq.status()), 60,
                          message="drained after the faults")
        lost = lost_values(cloud.murano, acked)
        duplicated = 0
        for serial in serials:
            values = [p["value"] for p in cloud.murano.history(serial, "v", limit=100000)]
            duplicated += len(values) - len(set(values))
    finally:
        stop.set()
        gmq.stop()
    acked_total = sum(len(v) for v in acked.values())
    figure("network_gmq", profiles=len(SEQUENCE), namespaces=cloud.ns is not None, acknowledged=acked_total,
           lost=lost, duplicated=duplicated, resent=status["counters"]["resent"], proxy_cuts=cloud.proxy.cut,
           max_delay=max(delays or [0]))
    assert acked_total > 100
    assert lost == 0
    assert duplicated == 0  # a resend carries the value's own timestamp: murano_local keeps it once
    assert delays and all(backoff[0] / 2 <= d <= backoff[1] for d in delays), delays


def test_a_cut_after_murano_local_committed_is_resent_never_lost(gwe_home, cloud):
    """Every answer cut after murano_local committed the record: gmq cannot know the values
    arrived, keeps them and sends them again once the path heals. They are in murano_local's
    history before gmq learns it (the duplicate), once each (same timestamps), and none is lost."""
    cloud.murano.add_device("dup-1")
    gmq = GmqProcess(str(gwe_home), upstream={"host": cloud.proxy.url, "batch_size": 50, "timeout": 2,
                                              "backoff_initial": 0.1, "backoff_max": 0.5}).start()
    try:
        acked = {"dup-1": set()}
        resp = gmq.post("/onep:v1/stack/alias", "v=dup-1:0", serial="dup-1")
        assert resp.status_code == 204
        acked["dup-1"].add(0)
        wait_for(lambda: gmq.status()["queue"]["depth"] == 0, 30, message="activated and delivered")
        cloud.proxy.set_profile("cut_response", after=12)
        for seq in range(1, 101):
            assert gmq.post("/onep:v1/stack/alias", "v=dup-1:%d" % seq, serial="dup-1").status_code == 204
            acked["dup-1"].add(seq)
        committed = wait_for(lambda: (lambda h: len(h) > 50 and h)(cloud.murano.history("dup-1", "v", limit=1000)),
                             20, message="murano_local committing records whose answers are cut")
        queued = gmq.status()["queue"]["depth"]
        cloud.heal()
        status = wait_for(lambda: (lambda s: s["queue"]["depth"] == 0 and s)(gmq.status()), 30, message="drained")
        values = [p["value"] for p in cloud.murano.history("dup-1", "v", limit=1000)]
        lost = lost_values(cloud.murano, acked)
    finally:
        gmq.stop()
    figure("network_cut_after_commit", acknowledged=101, committed_before_answer=len(committed) - 1,
           still_queued_at_heal=queued, resent=status["counters"]["resent"], lost=lost,
           kept_twice=len(values) - len(set(values)))
    assert queued > 0, "gmq dropped values whose answer it never got"
    assert status["counters"]["resent"] > 0
    assert lost == 0 and len(values) == len(set(values)) == 101


@pytest.mark.slow
def test_gwe_long_poll_survives_every_network_profile(gwe_home, cloud):
    """gwe waits on update_interval with a long poll through each profile; after each, the
    operator sets a new interval and gwe adopts it within its poll time plus backoff."""
    from gwe_helpers import SERIAL, configure_gateway, start_gwe

    from gwe import config

    configure_gateway(types.SimpleNamespace(url=cloud.proxy.url, mqtt_url=None, add_device=cloud.murano.add_device),
                      update_interval=4)
    gwe = start_gwe(gwe_home)
    adopted = []
    try:
        wait_for(lambda: cloud.murano.state(SERIAL).get("engine_report", {}).get("reported"), 60,
                 message="gwe activated and reporting")
        interval = 4
        for profile, options in SEQUENCE:
            cloud.apply(profile, options)
            time.sleep(HOLD)
            interval = 9 - interval  # 4, 5, 4, 5...: each a change gwe must see
            if profile == "link_down":  # the test reaches murano_local over the same link
                cloud.heal()
            cloud.murano.set(SERIAL, "update_interval", str(interval))  # set while gwe is cut off
            cloud.heal()
            started = time.monotonic()
            wait_for(lambda want=interval: float(config.load_engine_settings()["update_interval"]) == want,
                     45 if profile != "blackhole_drop" else 120,
                     message="gwe to adopt update_interval %s after %s" % (interval, profile))
            adopted.append(round(time.monotonic() - started, 1))
            # gwe adopts, then clears the alias (writes ""): the next phase starts once the clear
            # has landed (a clear still in flight would wipe the next set: see the test below)
            wait_for(lambda: cloud.murano.state(SERIAL)["update_interval"]["set"] == "", 30,
                     message="gwe to clear update_interval")
    finally:
        gwe.terminate()
        gwe.wait(30)
    figure("network_gwe_long_poll", profiles=len(SEQUENCE), namespaces=cloud.ns is not None,
           adopted=len(adopted), max_seconds_to_adopt=max(adopted))


@pytest.mark.slow
def test_content_download_survives_every_network_profile(tmp_path, cloud):
    """A 600 KiB content file downloaded through each profile: a cut transfer keeps its part file
    and the next attempt resumes it with a Range request (so answers cut every 150 KB still get it
    all, before the path heals); the result always has the right sha256."""
    from device_client import Device, errors

    blob = os.urandom(600 << 10)
    digest = hashlib.sha256(blob).hexdigest()
    cloud.murano.add_device("dl-1")
    resp = __import__("requests").put("%s/api:1/service/localproduct/content/item/blob.bin" % cloud.murano.url,
                                      data=blob, headers={"Content-Type": "application/octet-stream"}, timeout=30)
    resp.raise_for_status()
    device = Device(cloud.proxy.url, product_id="localproduct", serial="dl-1", token_file=str(tmp_path / "tok"),
                    usage_db=False, connect_timeout=2, read_timeout=3)
    device.activate()
    results = []
    resumed_under_fault = False
    for profile, options in SEQUENCE:
        dest = str(tmp_path / ("blob-%s-%d" % (profile, len(results))))
        cloud.apply(profile, dict(options, after=150_000) if profile == "cut_response" else options)
        attempts, deadline = 0, time.monotonic() + (HOLD if profile != "cut_response" else 30)
        done = None
        while done is None:
            if time.monotonic() > deadline:
                cloud.heal()
            attempts += 1
            try:
                done = device.download_content("blob.bin", dest, sha256=digest)
            except (errors.NetworkError, errors.RequestError):
                assert attempts < 200, "no progress"
                time.sleep(0.1)
        if profile == "cut_response" and time.monotonic() <= deadline:
            resumed_under_fault = True  # no attempt got more than 150 KB: the part file was resumed
        cloud.heal()
        with open(dest, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
        results.append((profile, attempts))
    figure("network_content_download", profiles=len(results), namespaces=cloud.ns is not None,
           attempts={p: a for p, a in results}, corrupt=0)
    assert resumed_under_fault, "answers cut every 150 KB never completed the download: no resume"


@pytest.mark.slow
def test_a_delayed_clear_does_not_wipe_a_newer_set(gwe_home, cloud):
    from gwe_helpers import SERIAL, configure_gateway, start_gwe

    from gwe import config

    configure_gateway(types.SimpleNamespace(url=cloud.proxy.url, mqtt_url=None, add_device=cloud.murano.add_device),
                      update_interval=4)
    gwe = start_gwe(gwe_home)
    try:
        wait_for(lambda: cloud.murano.state(SERIAL).get("engine_report", {}).get("reported"), 60,
                 message="gwe activated and reporting")
        cloud.proxy.set_profile("latency", delay=1.5)  # a slow link: every chunk 1.5 s late
        cloud.murano.set(SERIAL, "update_interval", "6")
        wait_for(lambda: float(config.load_engine_settings()["update_interval"]) == 6, 30, message="6 adopted")
        cloud.murano.set(SERIAL, "update_interval", "7")  # the operator changes it again at once
        cloud.heal()
        wait_for(lambda: float(config.load_engine_settings()["update_interval"]) == 7, 10,
                 message="the newer update_interval (7) adopted")
    finally:
        gwe.terminate()
        gwe.wait(30)
