"""A real gmq server process for tests, under a test's GWE_HOME, on a free loopback port."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import requests

from atomic_config import gwe_paths, set_option
from device_api import decode_form
from harness import GiveUp, ManagedProcess, free_port, port_open, wait_for


class ScriptedUpstream:
    """A scripted Device API server (real HTTP on loopback) for gmq's forwarder.

    Activation always succeeds; every other POST is answered by ``answer(pairs)``, which
    subclasses define, returning ``(status, body text)``.
    """

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                if self.path == "/provision/activate":
                    status, text = 200, "t" * 40
                else:
                    status, text = outer.answer(decode_form(body))
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, pairs: List[tuple]) -> tuple:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raw(gmq: "GmqProcess", data: bytes, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send raw bytes on a fresh connection (``shut``: then half-close); return all until EOF or quiet."""
    with socket.create_connection(("127.0.0.1", gmq.port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


class GmqProcess(ManagedProcess):
    def __init__(self, home: str, port: Optional[int] = None, **settings: Dict[str, object]) -> None:
        self.home = str(home)
        self.paths = gwe_paths(self.home).ensure()
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = os.path.join(self.home, "gmq.log")
        self.proc: Optional[subprocess.Popen] = None
        settings.setdefault("server", {})["port"] = self.port
        self.configure(**settings)

    def configure(self, **sections: Dict[str, object]) -> None:
        """Write ``section={option: value}`` into gmq.cfg."""
        for section, options in sections.items():
            for option, value in options.items():
                set_option(self.paths.gmq_cfg, section, option, str(value))

    def start(self, timeout: float = 15.0) -> "GmqProcess":
        env = dict(os.environ, GWE_HOME=self.home)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gmq", "serve"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._up, timeout, message="gmq on port %d (log %s)" % (self.port, self.log))
        return self

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise GiveUp("gmq exited %s: %s" % (self.proc.returncode, self.log_text()[-2000:]))
        return port_open(self.port)

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def status(self) -> dict:
        resp = requests.get(self.url + "/status", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: str, serial: str = "sn1", **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {"X-Exosite-VMS": "p p %s" % serial})
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return requests.post(self.url + path, data=body, headers=headers, timeout=10, **kwargs)

    def queued(self) -> List[tuple]:
        """Rows in the queue file now: (client serial, alias, ts, value), in queue order."""
        return self.rows("SELECT c.serial, q.alias, q.ts, q.value FROM queue q JOIN clients c ON c.id = q.client "
                         "ORDER BY q.id")

    def rows(self, sql: str, args: tuple = ()) -> List[tuple]:
        conn = sqlite3.connect(self.paths.gmq_db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
