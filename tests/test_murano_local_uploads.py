"""murano_local's device upload extension (PUT /provision/upload): pieces, resume, sha256, per-device lists."""
import hashlib
import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
import requests

from device_client import Device, errors
from harness import wait_for

SN = "gw-up-1"
OTHER = "gw-up-2"


def _device(murano, serial=SN):
    murano.add_device(serial)
    dev = Device(murano.url, serial=serial, usage_db=False)
    dev.activate()
    return dev


def _piece(murano, token, name, data, first, total, sha, **headers):
    rng = "bytes */%d" % total if first is None else "bytes %d-%d/%d" % (first, first + len(data) - 1, total)
    h = {"X-Exosite-CIK": token, "Content-Range": rng, "X-Upload-SHA256": sha,
         "Content-Type": "application/gzip"}
    h.update(headers)
    return requests.put(murano.url + "/provision/upload", params={"id": name}, data=data, headers=h, timeout=10)


def _listed(murano, serial):
    r = requests.get(murano.url + "/api:1/service/localproduct/content/item/", params={"device": serial}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_an_upload_in_pieces_lands_in_the_content_area_with_its_sha256(murano, tmp_path):
    data = os.urandom(300_000)
    path = tmp_path / "logs.tar.gz"
    path.write_bytes(data)
    seen = []
    with _device(murano) as dev:
        up = dev.upload_content("logs.tar.gz", str(path), content_type="application/gzip", piece_bytes=64 * 1024,
                                progress=lambda done, total: seen.append(done))
        assert (up.size, up.sha256, up.resumed_from) == (len(data), hashlib.sha256(data).hexdigest(), 0)
        assert seen[0] == 0 and seen[-1] == len(data) and len(seen) >= 5  # acknowledged piece by piece
        got = dev.download_content("upload/%s/logs.tar.gz" % SN, str(tmp_path / "back"), sha256=up.sha256)
        assert got.size == len(data)

    [item] = _listed(murano, SN)
    assert item["id"] == "upload/%s/logs.tar.gz" % SN and item["sha256"] == up.sha256
    assert item["length"] == len(data) and item["device"] == SN and item["type"] == "application/gzip"
    assert _listed(murano, OTHER) == []
    out = subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "list",
                          "--device", SN], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == [item["id"], str(len(data)), "application/gzip", up.sha256]
    listed = json.loads(subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "list",
                                        "--json"], capture_output=True, text=True, timeout=30).stdout)
    assert [i["id"] for i in listed] == [item["id"]]  # the operator sees every device's uploads


def test_a_device_sees_only_its_own_uploads(murano, tmp_path):
    path = tmp_path / "secret.log"
    path.write_bytes(b"password=hunter2\n")
    with _device(murano) as dev:
        dev.upload_content("secret.log", str(path))
        assert dev.list_content() == ["upload/%s/secret.log" % SN]
    with _device(murano, OTHER) as other:
        assert other.list_content() == []
        with pytest.raises(errors.NotFound):
            other.content_info("upload/%s/secret.log" % SN)
        with pytest.raises(errors.NotFound):
            other.download_content("upload/%s/secret.log" % SN, str(tmp_path / "stolen"))
    assert not (tmp_path / "stolen").exists()


def test_a_killed_server_keeps_every_acknowledged_byte_and_the_upload_resumes(murano, tmp_path):
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    dev = _device(murano)
    r = _piece(murano, dev.token, "big.bin", data[:50_000], 0, len(data), sha)
    assert r.status_code == 202 and r.headers["Upload-Offset"] == "50000"
    r = _piece(murano, dev.token, "big.bin", data[50_000:120_000], 50_000, len(data), sha)
    assert r.status_code == 202 and r.json() == {"offset": 120_000, "size": len(data)}
    murano.kill()  # SIGKILL: only what was fsynced before each 202 counts
    murano.start()
    r = _piece(murano, dev.token, "big.bin", b"", None, len(data), sha)
    assert r.status_code == 202 and r.headers["Upload-Offset"] == "120000"
    dev.close()
    with Device(murano.url, serial=SN, token=dev.token, usage_db=False) as again:
        up = again.upload_content("big.bin", str(path), piece_bytes=30_000)
    assert up.resumed_from == 120_000 and up.sha256 == sha
    assert _listed(murano, SN)[0]["sha256"] == sha
    # a repeat of the finished upload is answered as done, and stores nothing new
    r = _piece(murano, dev.token, "big.bin", b"", None, len(data), sha)
    assert r.status_code == 200 and r.json()["sha256"] == sha
    assert os.listdir(os.path.join(murano.data, "uploads")) == []


def test_bad_pieces_are_refused_and_change_nothing(murano):
    dev = _device(murano)
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert _piece(murano, dev.token, "a.log", data[:400], 0, 1000, sha).status_code == 202
    wrong_start = _piece(murano, dev.token, "a.log", data[500:], 500, 1000, sha)
    assert wrong_start.status_code == 409 and wrong_start.headers["Upload-Offset"] == "400"
    cases = [
        (dict(first=400, data=data[400:], total=1000, sha="nothex"), 400),
        (dict(first=400, data=data[400:], total=1000, sha=sha, **{"Content-Range": "bytes 400-/1000"}), 400),
        (dict(first=400, data=data[400:900], total=1000, sha=sha, **{"Content-Range": "bytes 400-999/1000"}), 400),
        (dict(first=None, data=b"", total=3 * 1024 ** 3, sha=sha), 413),
        (dict(first=400, data=data[400:], total=1000, sha=sha, **{"Content-Type": "a,b"}), 400),
        (dict(first=400, data=data[400:], total=1000, sha=sha, **{"X-Exosite-CIK": "0" * 40}), 401),
    ]
    for kwargs, status in cases:
        r = _piece(murano, dev.token, kwargs.pop("name", "a.log"), kwargs.pop("data"), kwargs.pop("first"),
                   kwargs.pop("total"), kwargs.pop("sha"), **kwargs)
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        assert r.text.strip() and "\n" not in r.text.strip()
    for bad_name in ("", "a/b", "a,b", "x" * 300):
        assert _piece(murano, dev.token, bad_name, data, 0, 1000, sha).status_code == 400
    assert requests.get(murano.url + "/provision/upload?id=a.log", headers={"X-Exosite-CIK": dev.token},
                        timeout=10).status_code == 405
    assert _piece(murano, dev.token, "a.log", b"", None, 1000, sha).headers["Upload-Offset"] == "400"

    # the whole file's sha256 must match: a mismatch drops the partial file and stores nothing
    liar = hashlib.sha256(b"something else").hexdigest()
    assert _piece(murano, dev.token, "b.log", data, 0, 1000, liar).status_code == 422
    assert _piece(murano, dev.token, "b.log", b"", None, 1000, liar).headers["Upload-Offset"] == "0"
    assert _listed(murano, SN) == []
    # another file under the same name starts over
    other = hashlib.sha256(b"y" * 10).hexdigest()
    assert _piece(murano, dev.token, "a.log", b"", None, 10, other).headers["Upload-Offset"] == "0"
    dev.close()


def _uploaded(murano, tmp_path, name, size, status=None):
    """A file of ``size`` random bytes uploaded by SN as ``name`` (and ``status`` written): (bytes, Upload)."""
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    with _device(murano) as dev:
        up = dev.upload_content(name, str(path))
        if status is not None:
            dev.write("upload_status", json.dumps(dict(status, name=up.name, size=up.size, sha256=up.sha256)))
    return data, up


def test_the_operator_downloads_an_upload_with_its_sha256_checked(murano, tmp_path):
    data, up = _uploaded(murano, tmp_path, "diag.tar.gz", 70_000)
    r = requests.get(murano.url + "/api:1/service/localproduct/content/item/%s" % quote(up.name, safe=""),
                     params={"download": "true"}, timeout=10)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Disposition"] == 'attachment; filename="diag.tar.gz"'
    out = subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "download", up.name,
                          str(tmp_path / "saved.tgz")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and up.sha256 in out.stdout
    assert (tmp_path / "saved.tgz").read_bytes() == data
    missing = subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "download",
                              "upload/nobody/x", str(tmp_path / "none")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and not (tmp_path / "none").exists()


def test_the_dashboard_shows_a_gateways_uploads_and_links_the_file(murano, tmp_path):
    from fleet_helpers import chromium

    data, up = _uploaded(murano, tmp_path, "logs.tar.gz", 50_000,
                         {"id": "r-7", "state": "done", "bytes_done": 50_000, "error": None})
    page = requests.get(murano.url + "/api:1/service/localproduct/fleet/gateways/" + SN, timeout=10).json()
    assert page["uploads"] == [{"id": up.name, "size": len(data), "sha256": up.sha256,
                                "updated": page["uploads"][0]["updated"]}]
    assert page["upload_history"][0]["id"] == "r-7" and page["upload_history"][0]["state"] == "done"
    browser = chromium(str(tmp_path / "profile"))
    try:
        browser.set_page_load_timeout(30)
        browser.get(murano.url + "/ui/#/gateway/" + SN)

        def link():
            found = browser.find_elements("css selector", "#uploads-table a.upload-link")
            return found[0] if found else None
        a = wait_for(link, 20, message="the uploads table on the gateway page")
        assert a.text == up.name
        states = [td.text for td in browser.find_elements("css selector", "#upload-status-table tbody td")]
        assert "r-7" in states and "done" in states
        got = requests.get(a.get_attribute("href"), timeout=10)
        assert hashlib.sha256(got.content).hexdigest() == up.sha256
    finally:
        browser.quit()
