"""gwe's outbox of undelivered fetch_status (gwe/status_outbox.py) against a real murano_local."""
import json

from device_client import Device, NetworkError
from gwe.status_outbox import MAX_KEPT, StatusOutbox


def _status(n):
    return json.dumps({"package": "app.v%d.tar.gz" % n, "status": "installed", "started_at": 1700000000.0 + n})


def _device(murano, tmp_path, url=None):
    murano.add_device("gw1")
    device = Device(url or murano.url, serial="gw1", token_file=str(tmp_path / "token"), usage_db=False,
                    connect_timeout=1, read_timeout=2)
    device.activate()
    return device


def test_a_status_that_arrived_before_a_crash_is_not_sent_again(murano, tmp_path):
    """The write of the oldest status got through, then gwe died before saving its removal: the next
    gwe finds the cloud holding exactly that text and sends only the rest, in order."""
    path = str(tmp_path / "outbox")
    with _device(murano, tmp_path) as device:
        kept = StatusOutbox(path)
        for n in (1, 2, 3):
            kept.add(_status(n))
        device.write({"fetch_status": _status(1)})  # delivered; the outbox on disk still says waiting
        StatusOutbox(path).deliver(device)
    sent = [p["value"] for p in reversed(murano.history("gw1", "fetch_status"))]
    assert sent == [_status(1), _status(2), _status(3)]
    assert len(StatusOutbox(path)) == 0


def test_a_failed_delivery_keeps_the_rest_in_order(murano, tmp_path):
    path = str(tmp_path / "outbox")
    outbox = StatusOutbox(path)
    with _device(murano, tmp_path) as device:
        outbox.add(_status(1))
        outbox.add(_status(2))
        murano.stop()
        try:
            outbox.deliver(device)
            raise AssertionError("delivered with the cloud down")
        except NetworkError:
            pass
        assert len(StatusOutbox(path)) == 2  # on disk, as a restarted gwe would find it
        murano.start()
        outbox.deliver(device)
    assert [p["value"] for p in reversed(murano.history("gw1", "fetch_status"))] == [_status(1), _status(2)]


def test_the_outbox_is_bounded(tmp_path):
    path = str(tmp_path / "outbox")
    outbox = StatusOutbox(path)
    for n in range(MAX_KEPT + 3):
        outbox.add(_status(n))
    with open(path) as f:
        assert json.load(f) == [_status(n) for n in range(3, MAX_KEPT + 3)]
