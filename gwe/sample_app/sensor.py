"""sample_sensor: posts a temperature reading to gmq every half second.

gmq listens where gmq.cfg says (127.0.0.1:8090 unless `gmq cfg set server port N`), found with
the suite's small gmq client (apps run on the suite's Python); GMQ_URL overrides it. SENSOR_VMS
is the "<vendor> <model> <serial>" identity gmq provisions upstream for this app.
"""
import math
import os
import sys
import time
import urllib.request

from gmq.client import local_url

path = "/onep:v1/stack/alias"
url = os.environ["GMQ_URL"] + path if os.environ.get("GMQ_URL") else local_url(path)
vms = os.environ.get("SENSOR_VMS", "localproduct localproduct sensor-1")
print("sample_sensor %s posting to %s as %s" % (os.environ.get("GWE_APP_VERSION"), url, vms), flush=True)
n = 0
while True:
    body = ("temperature=%.2f" % (21 + 2 * math.sin(n / 5.0))).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "X-Exosite-VMS": vms, "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    try:
        urllib.request.urlopen(request, timeout=5).read()
    except OSError as exc:
        print("gmq not reachable: %s" % exc, file=sys.stderr, flush=True)
    n += 1
    time.sleep(0.5)
