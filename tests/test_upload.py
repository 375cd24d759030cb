"""File and log upload end to end: a real gwe, real supervisord apps writing logs, real murano_local."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from atomic_config import gwe_paths, set_option
from device_client import Device
from gwe_helpers import SERIAL, configure_gateway, start_gwe
from harness import stop_process, wait_for

LOG_LINE = "app %s: reading %d\n"


def _upload_settings(**options):
    paths = gwe_paths()
    for key, value in options.items():
        set_option(paths.engine_cfg, "upload", key, str(value))


def _statuses(murano, rid=None):
    """upload_status values reported, oldest first (optionally those of one request id)."""
    out = []
    for point in reversed(murano.history(SERIAL, "upload_status")):
        if point["value"]:
            doc = json.loads(point["value"])
            if rid is None or doc["id"] == rid:
                out.append(doc)
    return out


def _final(murano, rid, timeout=60.0):
    def finished():
        done = [s for s in _statuses(murano, rid) if s["state"] in ("done", "failed")]
        return done[-1] if done else None
    return wait_for(finished, timeout, interval=0.1, message="final upload_status of %s" % rid)


def _download(murano, name, dest):
    from gwe.config import load_gateway_config

    with Device(murano.url, token=load_gateway_config().cik, usage_db=False) as dev:
        return dev.download_content(name, str(dest))


@pytest.fixture
def gateway(gwe_home, murano):
    configure_gateway(murano)
    procs = []

    def start():
        proc = start_gwe(gwe_home)
        procs.append(proc)
        wait_for(lambda: murano.state(SERIAL).get("engine_report"), 20, message="gwe reporting")
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def _logging_app(supervisord, name):
    code = ("import sys, time\n"
            "for i in range(10 ** 9):\n"
            "    sys.stdout.write(%r %% (%r, i)); sys.stdout.flush(); time.sleep(0.01)\n" % (LOG_LINE, name))
    script = os.path.join(supervisord.home, name + ".py")
    with open(script, "w") as f:
        f.write(code)
    supervisord.add_program(name, "%s %s" % (sys.executable, script), autorestart="false",
                            stdout_logfile=os.path.join(supervisord.log, name + ".log"))


def test_a_request_uploads_two_apps_logs_and_the_sha256_is_what_upload_status_said(gateway, murano, supervisord,
                                                                                     tmp_path):
    for app in ("app_a", "app_b"):
        _logging_app(supervisord, app)
    log_dir = gwe_paths().log
    wait_for(lambda: all(os.path.getsize(os.path.join(log_dir, a + ".log")) > 500 for a in ("app_a", "app_b")), 20,
             message="both apps logging")
    gateway()
    murano.set(SERIAL, "upload_request", json.dumps({"id": "logs-1", "files": ["app_a*.log", "app_b*.log"]}))
    done = _final(murano, "logs-1")
    assert done["state"] == "done", done
    assert [s["state"] for s in _statuses(murano, "logs-1")][:2] == ["collecting", "uploading"]
    assert murano.state(SERIAL)["upload_request"]["reported"] == ""  # taken and cleared
    # stdout logs, and the stderr logs supervisord keeps beside them (app_a-stderr---supervisor-*.log)
    assert done["files"] == 4 and done["trigger"] == "request" and done["bytes_done"] == done["size"]

    got = _download(murano, done["name"], tmp_path / "got.tar.gz")
    assert got.sha256 == done["sha256"] and got.size == done["size"]
    with tarfile.open(str(tmp_path / "got.tar.gz")) as tar:
        names = sorted(tar.getnames())
        manifest = json.load(tar.extractfile("upload-manifest.json"))
        logs = {n: tar.extractfile(n).read() for n in names if n.endswith(".log")}
    assert "var/log/gwe/app_a.log" in names and "var/log/gwe/app_b.log" in names and len(names) == 5
    assert all(n.startswith(("var/log/gwe/app_a", "var/log/gwe/app_b")) for n in names if n != "upload-manifest.json")
    assert logs["var/log/gwe/app_a.log"].startswith(b"app app_a: reading 0\n")
    assert logs["var/log/gwe/app_b.log"].startswith(b"app app_b: reading 0\n")
    for entry in manifest["files"]:
        assert hashlib.sha256(logs[entry["name"]]).hexdigest() == entry["sha256"]
    assert manifest["id"] == "logs-1"
    listed = subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "list",
                             "--device", SERIAL, "--json"], capture_output=True, text=True, timeout=30)
    assert [(i["id"], i["sha256"]) for i in json.loads(listed.stdout)] == [(done["name"], done["sha256"])]
    assert os.listdir(os.path.join(gwe_paths().var_lib, "uploads")) == []  # nothing left behind


def test_a_network_cut_mid_upload_resumes_and_completes(gateway, murano, tmp_path):
    log = os.path.join(gwe_paths().log, "big.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "wb") as f:
        f.write(os.urandom(1536 * 1024))  # incompressible: the archive is as big
    _upload_settings(max_rate=256 * 1024, piece_bytes=64 * 1024, status_interval=0.1, retry_max=1)
    gateway()
    murano.set(SERIAL, "upload_request", json.dumps({"id": "cut-1", "files": ["big.log"]}))
    wait_for(lambda: any(s["state"] == "uploading" and s["bytes_done"] >= 256 * 1024
                         for s in _statuses(murano, "cut-1")), 30, interval=0.05, message="upload under way")
    before = max(s["bytes_done"] for s in _statuses(murano, "cut-1"))
    murano.stop()  # the cut: the server is gone mid-upload
    wait_for(lambda: (_spooled("cut-1") or {}).get("last_error"), 20, message="gwe noticing the cut")
    murano.start()
    done = _final(murano, "cut-1")
    assert done["state"] == "done", done
    assert done["resumed_from"] >= before > 0  # carried on from the server's offset, not from zero
    assert done["size"] - done["resumed_from"] < done["size"]
    assert done["attempts"] >= 2 and done["last_error"].startswith("NetworkError")
    got = _download(murano, done["name"], tmp_path / "got.tar.gz")
    assert got.sha256 == done["sha256"]
    with tarfile.open(str(tmp_path / "got.tar.gz")) as tar:
        data = tar.extractfile("var/log/gwe/big.log").read()
    with open(log, "rb") as f:
        assert data == f.read()


def _spooled(rid):
    """The record gwe keeps of its upload of ``rid`` (None once it is finished and reported)."""
    spool = os.path.join(gwe_paths().var_lib, "uploads")
    for entry in os.listdir(spool):
        if entry.startswith(rid + "-") and entry.endswith(".json"):
            with open(os.path.join(spool, entry)) as f:
                return json.load(f)
    return None


def test_gwe_killed_mid_upload_resumes_from_its_spool(gateway, murano, tmp_path):
    log = os.path.join(gwe_paths().log, "big.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "wb") as f:
        f.write(os.urandom(1024 * 1024))
    _upload_settings(max_rate=256 * 1024, piece_bytes=64 * 1024, status_interval=0.1, retry_max=1)
    gwe = gateway()
    murano.set(SERIAL, "upload_request", json.dumps({"id": "kill-1", "files": ["big.log"]}))
    wait_for(lambda: any(s["bytes_done"] >= 128 * 1024 for s in _statuses(murano, "kill-1")), 30, interval=0.05,
             message="upload under way")
    gwe.kill()  # SIGKILL: nothing is flushed on the way out
    gwe.wait(10)
    assert _spooled("kill-1")["state"] == "uploading"
    before = max(s["bytes_done"] for s in _statuses(murano, "kill-1"))
    gateway()
    done = _final(murano, "kill-1")
    assert done["state"] == "done" and done["resumed_from"] >= before > 0, done
    assert _download(murano, done["name"], tmp_path / "k.tar.gz").sha256 == done["sha256"]
    assert len([s for s in _statuses(murano) if s["state"] == "done"]) == 1  # the request ran once
    assert _spooled("kill-1") is None


REFUSED = [
    ({"id": "r-shadow", "files": ["/etc/shadow"]}, "outside the allowed roots"),
    ({"id": "r-dotdot", "files": ["../../../../etc/shadow"]}, "'..' is not allowed"),
    ({"id": "r-dotdot2", "files": ["sub/../../x.log"]}, "'..' is not allowed"),
    ({"id": "r-glob", "files": ["/etc/*"]}, "outside the allowed roots"),
    ({"id": "r-cap", "files": ["*.log"], "max_bytes": 10 ** 12}, "over this gateway's cap"),
    ({"id": "r-none", "files": []}, "list of 1 to"),
    ({"id": "r-extra", "files": ["*.log"], "delete": True}, "unknown field"),
    ({"id": "r-plain", "files": ["*.log"], "url": "http://example.com/put"}, "https://"),
    ({"id": "r-link", "files": ["etc-link/shadow"]}, "outside the allowed roots"),
]


def test_bad_requests_get_a_failed_status_and_change_nothing(gateway, murano):
    log_dir = gwe_paths().log
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "ok.log"), "w") as f:
        f.write("fine\n")
    os.symlink("/etc", os.path.join(log_dir, "etc-link"))
    gateway()
    for doc, reason in REFUSED:
        murano.set(SERIAL, "upload_request", json.dumps(doc))
        status = _final(murano, doc["id"], timeout=20)
        assert status["state"] == "failed" and status["step"] == "request", status
        assert reason in status["error"], (doc, status["error"])
        assert "\n" not in status["error"]
    for raw, reason in (("{not json", "not JSON"), ('["a"]', "must be"), ('{"files": ["*.log"]}', "id must be")):
        before = len(_statuses(murano))
        murano.set(SERIAL, "upload_request", raw)
        wait_for(lambda n=before: len(_statuses(murano)) > n, 20, interval=0.1, message="refusal of %r" % raw)
        status = _statuses(murano)[-1]
        assert status["state"] == "failed" and reason in status["error"] and status["id"] is None
    assert murano.state(SERIAL)["upload_request"]["reported"] == ""
    assert os.listdir(os.path.join(gwe_paths().var_lib, "uploads")) == []
    assert json.loads(subprocess.run([sys.executable, "-m", "murano_local", "--url", murano.url, "content", "list",
                                      "--device", SERIAL, "--json"], capture_output=True, text=True,
                                     timeout=30).stdout) == []
    assert all(s["state"] != "collecting" for s in _statuses(murano))  # refused before anything was read


def test_links_out_of_the_roots_fifos_and_loops_are_skipped_not_followed(gwe_home, murano, tmp_path):
    """The collection itself (in process): what a request cannot refuse up front is skipped at collection."""
    from gwe.upload_collect import CollectError, collect, pack
    from gwe.upload_request import Roots, UploadSettings

    paths = gwe_paths().ensure()
    logs = paths.log
    os.makedirs(os.path.join(logs, "sub"), exist_ok=True)
    with open(os.path.join(logs, "a.log"), "w") as f:
        f.write("a\n")
    with open(os.path.join(logs, "sub", "b.log"), "w") as f:
        f.write("b\n")
    os.symlink("/etc/passwd", os.path.join(logs, "passwd.log"))
    os.symlink(os.path.join(logs, "a.log"), os.path.join(logs, "inside.log"))
    os.symlink("/", os.path.join(logs, "root"))              # a walk must not go through it
    os.symlink(logs, os.path.join(logs, "sub", "loop"))      # nor round this
    os.mkfifo(os.path.join(logs, "pipe.log"))                # nor block on this
    roots = Roots.for_gateway(paths, UploadSettings())
    found = collect(["*.log", "**"], roots, logs, paths.home)
    names = sorted(n for _real, _root, n in found.files)
    assert names == ["var/log/gwe/a.log", "var/log/gwe/sub/b.log"]  # inside.log is a.log: once
    reasons = {os.path.basename(s["path"]): s["reason"] for s in found.skipped}
    assert reasons["passwd.log"] == "a symlink leading out of the allowed roots"
    assert reasons["pipe.log"] == "not a regular file" and "root" in reasons
    packed = pack(found, roots, str(tmp_path / "out.tar.gz"), 1 << 20, True, {"id": "t"})
    with tarfile.open(packed.path) as tar:
        assert "upload-manifest.json" in tar.getnames() and not any("passwd" in n for n in tar.getnames())
    with open(os.path.join(logs, "big.log"), "wb") as f:
        f.write(os.urandom(200_000))
    with pytest.raises(CollectError, match="over max_bytes"):
        pack(collect(["big.log"], roots, logs, paths.home), roots, str(tmp_path / "capped.tar.gz"), 100_000, True,
             {"id": "t"})
    assert not os.path.exists(str(tmp_path / "capped.tar.gz")) and not os.path.exists(str(tmp_path / "capped.tar.gz.tmp"))
    with pytest.raises(CollectError, match="no file to upload"):
        collect(["nothing*.log"], roots, logs, paths.home)


def test_the_schedule_uploads_at_its_interval(gateway, murano):
    log_dir = gwe_paths().log
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "gwe-own.log"), "w") as f:
        f.write("a line of gwe's own log\n")
    _upload_settings(schedule_interval=3, schedule_files="*.log")
    started = time.time()  # before gwe starts: its first scheduled upload is one interval after its start
    gateway()

    def two_done():
        done = [s for s in _statuses(murano) if s["trigger"] == "schedule" and s["state"] == "done"]
        return done if len(done) >= 2 else None
    first, second = wait_for(two_done, 40, interval=0.2, message="two scheduled uploads")[:2]
    gap = second["requested_at"] - first["requested_at"]
    assert 3.0 <= gap < 15.0, gap  # never early; late only by a loaded machine's slack
    assert first["requested_at"] - started >= 3.0  # not at start: one interval after it
    assert first["files"] == second["files"] == 1 and first["name"] != second["name"]


def test_outside_its_time_window_the_schedule_waits(gateway, murano):
    log_dir = gwe_paths().log
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "x.log"), "w") as f:
        f.write("x\n")
    later = time.localtime(time.time() + 3 * 3600)
    _upload_settings(schedule_interval=1, schedule_window="%02d:00-%02d:59" % (later.tm_hour, later.tm_hour))
    gateway()
    murano.set(SERIAL, "upload_request", json.dumps({"id": "marker", "files": ["x.log"]}))
    assert _final(murano, "marker")["state"] == "done"
    time.sleep(3.0)  # three intervals: none may start outside the window
    assert not [s for s in _statuses(murano) if s["trigger"] == "schedule"]


def test_in_window_wraps_midnight():
    from gwe.upload import in_window

    noon = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))
    late = time.mktime((2026, 6, 1, 23, 30, 0, 0, 0, -1))
    early = time.mktime((2026, 6, 1, 1, 15, 0, 0, 0, -1))
    assert in_window(noon, (11 * 60, 13 * 60)) and not in_window(noon, (13 * 60, 14 * 60))
    assert in_window(late, (23 * 60, 2 * 60)) and in_window(early, (23 * 60, 2 * 60))
    assert not in_window(noon, (23 * 60, 2 * 60))


class _Receiver:
    """A plain HTTP endpoint on loopback that takes PUTs (what a presigned URL stands for)."""

    def __init__(self):
        self.bodies, self.headers = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                outer.headers.append(dict(self.headers))
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/bucket/obj?sig=abc" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_request_with_a_url_uploads_there_without_the_token(gateway, murano):
    log_dir = gwe_paths().log
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "u.log"), "w") as f:
        f.write("to the url\n" * 100)
    receiver = _Receiver()
    try:
        gateway()
        murano.set(SERIAL, "upload_request", json.dumps({"id": "url-1", "files": ["u.log"], "url": receiver.url}))
        done = _final(murano, "url-1")
        assert done["state"] == "done" and done["target"] == receiver.url and done["name"] == receiver.url
        [body] = receiver.bodies
        assert hashlib.sha256(body).hexdigest() == done["sha256"] and len(body) == done["size"]
        assert "X-Exosite-CIK" not in receiver.headers[0] and receiver.headers[0]["Content-Type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            assert tar.extractfile("var/log/gwe/u.log").read() == b"to the url\n" * 100
    finally:
        receiver.close()


def _gwe_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gwe", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=dict(os.environ))


def test_gwe_upload_from_the_cli(gwe_home, murano, tmp_path):
    log_dir = gwe_paths().ensure().log
    with open(os.path.join(log_dir, "cli.log"), "w") as f:
        f.write("from the shell\n")
    not_yet = _gwe_cli("upload", os.path.join(log_dir, "cli.log"))
    assert not_yet.returncode == 1 and not_yet.stderr.count("\n") == 1 and "not" in not_yet.stderr
    configure_gateway(murano)
    assert _gwe_cli("-o").returncode == 0  # activates
    out = _gwe_cli("upload", "--json", "cli.log", cwd=log_dir)
    assert out.returncode == 0, out.stderr
    steps = [json.loads(line) for line in out.stdout.splitlines()]
    assert [s["state"] for s in steps] == ["collecting", "uploading", "done"]
    assert steps[-1]["trigger"] == "cli" and _statuses(murano)[-1] == steps[-1]  # reported to the cloud too
    got = _download(murano, steps[-1]["name"], tmp_path / "cli.tar.gz")
    assert got.sha256 == steps[-1]["sha256"]
    human = _gwe_cli("upload", os.path.join(log_dir, "cli.log"))
    assert human.returncode == 0 and human.stdout.splitlines()[-1].startswith("done: upload/%s/" % SERIAL)
    for bad in (["/etc/shadow"], ["--max-bytes", str(10 ** 12), "cli.log"], ["--url", "ftp://x/y", "cli.log"]):
        refused = _gwe_cli("upload", *bad, cwd=log_dir)
        assert refused.returncode == 1 and refused.stderr.startswith("gwe: upload refused: "), refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert os.listdir(os.path.join(gwe_paths().var_lib, "uploads")) == ["cli"] or \
        os.listdir(os.path.join(gwe_paths().var_lib, "uploads", "cli")) == []


def test_a_job_moves_only_along_its_steps_and_its_status_stays_small():
    from gwe.upload import TransitionError, UploadJob
    from gwe.upload_request import UploadRequest

    job = UploadJob("k", UploadRequest("r", ("*.log",), 1000).to_dict(), created=time.time())
    with pytest.raises(TransitionError):
        job.advance("done")
    job.advance("queued")
    job.advance("collecting")
    with pytest.raises(TransitionError):
        job.advance("queued")
    job.advance("uploading", skipped=[{"path": "/x/%d" % i, "reason": "not a regular file"} for i in range(500)])
    job.advance("failed", error="why")
    for state in ("uploading", "done", "failed", "collecting"):
        with pytest.raises(TransitionError):
            job.advance(state)
    status = job.status()
    assert status["state"] == "failed" and status["finished_at"] and len(status["skipped"]) == 20
    assert status["skipped_count"] == 500 and len(json.dumps(status)) < 4096
