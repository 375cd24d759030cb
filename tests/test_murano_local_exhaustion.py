"""murano_local under hostile load: requests with huge numbers of values, slow clients."""
import threading
import time

import psutil
import requests

from device_api import MAX_READ_ALIASES, MAX_VALUES_PER_REQUEST


def activate(murano, identity):
    murano.add_device(identity)
    return {"X-Exosite-CIK": requests.post(murano.url + "/provision/activate", data={"id": identity}).text}


def test_a_request_with_millions_of_aliases_is_refused_without_stalling_others(murano):
    hostile, polite = activate(murano, "hostile"), activate(murano, "polite")
    body = b"&".join(b"a%d=1" % (i % 10) for i in range(2_000_000))[:8 * 1024 * 1024]  # 8 MiB, ~2M fields
    server = psutil.Process(murano.proc.pid)
    rss_before = server.memory_info().rss
    answers = []

    def flood():
        answers.append(requests.post(murano.url + "/onep:v1/stack/alias", data=body, headers=hostile, timeout=120))

    thread = threading.Thread(target=flood)
    thread.start()
    slowest = 0.0
    while thread.is_alive():  # another device is served all along
        started = time.monotonic()
        assert requests.post(murano.url + "/onep:v1/stack/alias", data="t=1", headers=polite,
                             timeout=30).status_code == 204
        slowest = max(slowest, time.monotonic() - started)
    thread.join()
    assert answers[0].status_code == 413 and str(MAX_VALUES_PER_REQUEST * 2) in answers[0].text
    assert slowest < 3.0
    assert server.memory_info().rss - rss_before < 80 * 2 ** 20
    assert "a0" not in murano.state("hostile")


def test_the_bounds_on_values_and_aliases_per_request(murano):
    auth = activate(murano, "many")
    url = murano.url + "/onep:v1/stack/alias"
    most = "&".join("a%d=%d" % (i, i) for i in range(MAX_VALUES_PER_REQUEST))
    assert requests.post(url, data=most, headers=auth).status_code == 204
    assert len(murano.state("many")) == MAX_VALUES_PER_REQUEST
    r = requests.post(url, data=most + "&one=more", headers=auth)
    assert r.status_code == 413 and "one" not in murano.state("many")
    points = "alias=p&" + "&".join("%d=x" % (1_600_000_000 + i) for i in range(MAX_VALUES_PER_REQUEST + 1))
    r = requests.post(murano.url + "/onep:v1/stack/record", data=points, headers=auth)
    assert r.status_code == 413 and murano.history("many", "p") == []
    names = "&".join("a%d" % i for i in range(MAX_READ_ALIASES + 1))
    assert requests.get(url + "?" + names, headers=auth).status_code == 413
    r = requests.get(url + "?" + names.rsplit("&", 1)[0], headers=auth)
    assert r.status_code == 200 and r.text.count("=") == MAX_READ_ALIASES
