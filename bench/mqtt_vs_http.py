"""MQTT against HTTP for the same workload: values/s and bytes on the wire per value.

Starts a real murano_local (HTTP and MQTT on free loopback ports) and runs, interleaved
round by round so that the machine's drift hits both alike:

- ``write``: one alias value per call, each confirmed (HTTP 204 / MQTT PUBACK);
- ``record``: batches of ``--batch`` timestamped values (HTTP stack/record / MQTT $resource.batch).

Bytes on the wire are counted by a byte-counting TCP relay between the Device and the
server (TCP payload both ways, connection set-up included, no TLS), in a separate pass
so the relay does not slow the rate figures. The rate ratio MQTT/HTTP of each round is
the figure to compare across runs (medians of per-round ratios).

    python3 bench/mqtt_vs_http.py [--seconds 2] [--runs 5] [--batch 50] [--json out.json] [--baseline old.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from device_client import Device  # noqa: E402
from harness import CountingRelay, MuranoLocal  # noqa: E402

SERIAL = "bench1"





def make_device(kind: str, url: str, mqtt_port: int, token: str) -> Device:
    if kind == "http":
        return Device(url, token=token, usage_db=False)
    return Device(url, token=token, transport="mqtt", mqtt_url="mqtt://127.0.0.1:%d" % mqtt_port, usage_db=False)


def run_workload(dev: Device, workload: str, batch: int, seconds: float = 0.0, count: int = 0) -> int:
    """Values sent (all confirmed) within ``seconds`` or, if ``count``, exactly ``count`` calls."""
    values = calls = 0
    deadline = time.monotonic() + seconds
    base = time.time()
    while (calls < count) if count else (time.monotonic() < deadline):
        if workload == "write":
            dev.write("temp", "%.1f" % (20 + calls % 100 / 10))
            values += 1
        else:
            dev.record({"temp": [(base + (calls * batch + i) / 1000.0, "%d" % i) for i in range(batch)]})
            values += batch
        calls += 1
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50, help="values per record call")
    parser.add_argument("--json", dest="json_out", help="write the results to this file")
    parser.add_argument("--baseline", help="compare with results written earlier by --json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        server = MuranoLocal(workdir, mqtt_port=True).start()  # needs amqtt: pip install .[mqtt-server]
        try:
            server.add_device(SERIAL)
            token = Device(server.url, serial=SERIAL, usage_db=False).activate()
            results = measure(server.url, server.mqtt_port, token, args)
        finally:
            server.stop()

    for key in sorted(results):
        print("%-34s %12.2f" % (key, results[key]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
        print("\nagainst %s:" % args.baseline)
        for key in sorted(results):
            if key in baseline and baseline[key]:
                print("%-34s now %10.2f  baseline %10.2f  (x%.2f)" % (key, results[key], baseline[key],
                                                                     results[key] / baseline[key]))


def measure(url: str, mqtt_port: int, token: str, args) -> dict:
    results = {}
    for workload in ("write", "record"):
        devices = {kind: make_device(kind, url, mqtt_port, token) for kind in ("http", "mqtt")}
        for dev in devices.values():
            run_workload(dev, workload, args.batch, count=20)  # connect and warm up
        rates = {"http": [], "mqtt": []}
        ratios = []
        for _ in range(args.runs):
            round_rates = {}
            for kind, dev in devices.items():
                started = time.monotonic()
                sent = run_workload(dev, workload, args.batch, seconds=args.seconds)
                round_rates[kind] = sent / (time.monotonic() - started)
                rates[kind].append(round_rates[kind])
            ratios.append(round_rates["mqtt"] / round_rates["http"])
        for dev in devices.values():
            dev.close()
        for kind in ("http", "mqtt"):
            results["%s.%s.values_per_s" % (workload, kind)] = statistics.median(rates[kind])
        results["%s.mqtt_over_http.rate_ratio" % workload] = statistics.median(ratios)

        calls = 200 if workload == "write" else 20
        for kind in ("http", "mqtt"):
            relay = CountingRelay(mqtt_port if kind == "mqtt" else int(url.rsplit(":", 1)[1]))
            relayed_url = "http://127.0.0.1:%d" % relay.port if kind == "http" else url
            dev = make_device(kind, relayed_url, relay.port if kind == "mqtt" else mqtt_port, token)
            sent = run_workload(dev, workload, args.batch, count=calls)  # includes connecting
            dev.close()
            time.sleep(0.2)  # let the relay see the close
            results["%s.%s.bytes_per_value" % (workload, kind)] = relay.take() / sent
            relay.close()
        results["%s.mqtt_over_http.bytes_ratio" % workload] = (
            results["%s.mqtt.bytes_per_value" % workload] / results["%s.http.bytes_per_value" % workload])
    return results


if __name__ == "__main__":
    main()
