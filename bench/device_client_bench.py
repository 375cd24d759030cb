"""device_client benchmark: usage-logger overhead per request, write/read requests/s on loopback.

Starts a real murano_local on a free loopback port and measures, interleaved, for each
operation (write, read):

- ``device``: ``Device`` with the usage log on (what every process on the gateway runs);
- ``nolog``: ``Device(usage_db=False)`` (metered transport, nothing logged);
- ``plain``: a bare ``requests.Session`` making the same HTTP request: the anchor,
  re-measured in the same run, because this machine drifts.

The logger overhead is timed directly around the logging step of every ``device``
request (interface lookup + sqlite insert + periodic cap check), median and p99.

    python3 bench/device_client_bench.py [--seconds 2] [--runs 5] [--json out.json] [--baseline old.json]

The device/nolog req/s ratio moves by +-30% between runs on this machine (the server's
fsyncs share the disk with the usage log); the directly timed logging step is the
figure to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from device_client import Device, UsageLog  # noqa: E402
from harness import MuranoLocal  # noqa: E402
from device_api import FORM_CONTENT_TYPE as FORM  # noqa: E402
from device_client.transport_http import HttpTransport  # noqa: E402



class LogTimer:
    """Times HttpTransport._log (the whole logging step of a request)."""

    def __init__(self) -> None:
        self.samples = []
        self._original = HttpTransport._log
        timer = self

        def timed(transport, exchange):
            started = time.perf_counter()
            timer._original(transport, exchange)
            if transport.usage is not None:
                timer.samples.append(time.perf_counter() - started)

        HttpTransport._log = timed


def rate(call, seconds: float) -> float:
    call()  # warm the connection
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        call()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def percentile(samples, fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def isolated_record_cost(path: str, count: int = 5000) -> list:
    """The logging step alone, in a tight loop: no server competing for the CPU."""
    usage = UsageLog(path)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        usage.record("lo", "bench", "write", "post", ["temp"], 300, 111, 0.002, 204)
        samples.append(time.perf_counter() - started)
    usage.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", dest="json_out", help="write the results to this file")
    parser.add_argument("--baseline", help="compare with results written earlier by --json")
    parser.add_argument("--usage-dir", help="directory for the usage database (default: beside the server data)")
    args = parser.parse_args()

    timer = LogTimer()
    with tempfile.TemporaryDirectory(prefix="gdc-bench-", dir=os.path.expanduser("~")) as workdir:
        server = MuranoLocal(workdir).start()
        url = server.url
        try:
            server.add_device("bench")
            device = Device(url, serial="bench", identity="bench",
                            usage_db=os.path.join(args.usage_dir or workdir, "usage.db"))
            token = device.activate()
            nolog = Device(url, token=token, usage_db=False)
            plain = requests.Session()
            headers = {"X-Exosite-CIK": token, "Accept": FORM}
            post_headers = dict(headers, **{"Content-Type": FORM})
            alias_url = url + "/onep:v1/stack/alias"
            counter = iter(range(10 ** 9))
            arms = {
                "write": {
                    "device": lambda: device.write("temp", next(counter)),
                    "nolog": lambda: nolog.write("temp", next(counter)),
                    "plain": lambda: plain.post(alias_url, data="temp=%d" % next(counter), headers=post_headers,
                                                timeout=10).raise_for_status(),
                },
                "read": {
                    "device": lambda: device.read("temp"),
                    "nolog": lambda: nolog.read("temp"),
                    "plain": lambda: plain.get(alias_url + "?temp", headers=headers, timeout=10).raise_for_status(),
                },
            }
            rates = {op: {arm: [] for arm in arms[op]} for op in arms}
            for run in range(args.runs):
                for op, calls in arms.items():
                    order = list(calls)
                    order = order[run % len(order):] + order[:run % len(order)]  # no arm always goes first
                    for arm in order:
                        rates[op][arm].append(rate(calls[arm], args.seconds))
            device.close()
            nolog.close()
            isolated = isolated_record_cost(os.path.join(args.usage_dir or workdir, "isolated.db"))
        finally:
            server.stop()

    results = {
        "log_overhead_us_median": statistics.median(timer.samples) * 1e6,
        "log_overhead_us_p99": percentile(timer.samples, 0.99) * 1e6,
        "log_samples": len(timer.samples),
        "log_record_isolated_us_median": statistics.median(isolated) * 1e6,
        "log_record_isolated_us_p99": percentile(isolated, 0.99) * 1e6,
    }
    for op in arms:
        for arm in arms[op]:
            results["%s_rps_%s" % (op, arm)] = statistics.median(rates[op][arm])
            results["%s_rps_%s_min_max" % (op, arm)] = [min(rates[op][arm]), max(rates[op][arm])]
        results["%s_ratio_device_to_plain" % op] = results["%s_rps_device" % op] / results["%s_rps_plain" % op]
        results["%s_ratio_device_to_nolog" % op] = results["%s_rps_device" % op] / results["%s_rps_nolog" % op]

    print("usage logger overhead per request: median %.1f us, p99 %.1f us (%d requests)"
          % (results["log_overhead_us_median"], results["log_overhead_us_p99"], results["log_samples"]))
    print("UsageLog.record alone (tight loop): median %.1f us, p99 %.1f us"
          % (results["log_record_isolated_us_median"], results["log_record_isolated_us_p99"]))
    for op in arms:
        print("%-5s req/s (median of %d x %.0fs): device %.0f | nolog %.0f | plain requests %.0f"
              "  -> device/plain %.2f, device/nolog %.2f"
              % (op, args.runs, args.seconds, results["%s_rps_device" % op], results["%s_rps_nolog" % op],
                 results["%s_rps_plain" % op], results["%s_ratio_device_to_plain" % op],
                 results["%s_ratio_device_to_nolog" % op]))
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
        for key in ("log_overhead_us_median", "log_overhead_us_p99", "log_record_isolated_us_median",
                    "log_record_isolated_us_p99", "write_ratio_device_to_plain", "read_ratio_device_to_plain"):
            if key in baseline:
                print("%-30s now %10.3f  baseline %10.3f  (x%.2f)" % (key, results[key], baseline[key],
                                                                     results[key] / baseline[key]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
