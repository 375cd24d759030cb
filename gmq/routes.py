"""What each request means: the Device API's activate, write and record, plus status and reread.

``route()`` turns one parsed request into either a ``Reply`` (answer now) or a ``Store``
(values to commit; the answer is 204 once they are on disk). It knows nothing of
sockets or of how values are stored.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple, Union
from urllib.parse import unquote

from device_client.form import FormError, decode_form

from .clients import BadIdentity, Client

ALIAS_PATH = "/onep:v1/stack/alias"
RECORD_PATH = "/onep:v1/stack/record"
ACTIVATE_PATH = "/provision/activate"
MAX_TS = 1e11  # Unix seconds; larger looks like milliseconds or microseconds
MAX_ALIAS = 256

Value = Tuple[str, Optional[float], str]


class App(Protocol):
    """What the routes need from the running gmq (see server.py)."""

    clients: object

    def status(self) -> dict: ...

    def connection(self) -> dict: ...

    def reread(self) -> dict: ...

    def clear_alarms(self) -> int: ...


@dataclass
class Request:
    method: str
    target: str
    headers: Dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"


@dataclass
class Store:
    client: Client
    values: List[Value]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def text(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode("utf-8", "replace"))


def route(app: App, req: Request) -> Union[Reply, Store]:
    """The answer to ``req``, or the values it asks gmq to store."""
    try:
        return _route(app, req)
    except HTTPError as exc:
        return text(exc.status, exc.message)


def _route(app: App, req: Request) -> Union[Reply, Store]:
    path, _, query = req.target.partition("?")
    if req.method == "POST":
        if path == ALIAS_PATH:
            if query:
                raise HTTPError(400, "gmq does not serve reads; POST writes without a query")
            return Store(_client(app, req), _write_values(_form(req)))
        if path.startswith(ALIAS_PATH + "/"):
            return Store(_client(app, req), _timed_values(_alias(path[len(ALIAS_PATH) + 1:]), _form(req)))
        if path == RECORD_PATH:
            return Store(_client(app, req), _record_values(_form(req)))
        if path == ACTIVATE_PATH:
            return _activate(app, dict(_form(req)))
        if path == "/alarms/clear":
            return Reply(200, json.dumps({"cleared": app.clear_alarms()}).encode() + b"\n", "application/json")
        if path == "/reread":
            try:
                result = app.reread()
            except ValueError as exc:
                raise HTTPError(422, "gmq.cfg not applied: %s" % exc) from None
            return Reply(200, json.dumps(result, sort_keys=True).encode() + b"\n", "application/json")
        raise HTTPError(404, "no such path")
    if req.method in ("GET", "HEAD"):
        if path == "/status":
            return Reply(200, json.dumps(app.status(), sort_keys=True).encode() + b"\n", "application/json")
        if path == "/timestamp":
            return Reply(200, str(int(time.time())).encode())
        if path == "/connection":
            return Reply(200, json.dumps(app.connection(), sort_keys=True).encode() + b"\n", "application/json")
    if path.startswith(ALIAS_PATH) or path in (RECORD_PATH, ACTIVATE_PATH, "/reread", "/alarms/clear"):
        raise HTTPError(405, "gmq serves writes only: use POST")
    if path in ("/status", "/timestamp", "/connection"):
        raise HTTPError(405, "use GET")
    raise HTTPError(404, "no such path")


def _client(app: App, req: Request) -> Client:
    clients = app.clients
    cik = req.headers.get("x-exosite-cik")
    vms = req.headers.get("x-exosite-vms")
    try:
        if cik is not None:
            return clients.by_token(cik.strip())
        if vms is not None:
            parts = vms.split()
            if len(parts) != 3:
                raise HTTPError(400, "X-Exosite-VMS must be '<vendor> <model> <serial>'")
            return clients.by_serial(parts[2], parts[0], parts[1])
    except BadIdentity as exc:
        raise HTTPError(401 if cik is not None else 400, str(exc)) from None
    raise HTTPError(401, "X-Exosite-CIK or X-Exosite-VMS required")


def _form(req: Request) -> List[Tuple[str, str]]:
    try:
        return decode_form(req.body)
    except FormError as exc:
        raise HTTPError(400, "bad form: %s" % exc) from None


def _activate(app: App, form: dict) -> Reply:
    serial = form.get("sn", form.get("id"))
    if not serial:
        raise HTTPError(400, "activate needs id=<serial> or vendor=&model=&sn=")
    try:
        client = app.clients.by_serial(serial, form.get("vendor") or None, form.get("model") or None)
    except BadIdentity as exc:
        raise HTTPError(400, str(exc)) from None
    return Reply(200, client.local_token.encode())


def _alias(raw: str) -> str:
    try:
        alias = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(400, "alias is not UTF-8") from None
    return _check_alias(alias)


def _check_alias(alias: str) -> str:
    if not alias or len(alias) > MAX_ALIAS or "/" in alias or any(ord(c) < 32 for c in alias):
        raise HTTPError(400, "bad alias %r" % alias[:40])
    return alias


def _ts(raw: str) -> float:
    try:
        ts = float(raw)
    except ValueError:
        raise HTTPError(400, "bad timestamp %r: Unix seconds expected" % raw[:40]) from None
    if not math.isfinite(ts) or ts < 0 or ts >= MAX_TS:
        raise HTTPError(400, "bad timestamp %r: Unix seconds expected" % raw[:40])
    return ts


def _nonempty(values: List[Value]) -> List[Value]:
    if not values:
        raise HTTPError(400, "no values in the body")
    return values


def _write_values(pairs: List[Tuple[str, str]]) -> List[Value]:
    return _nonempty([(_check_alias(alias), None, value) for alias, value in pairs])


def _timed_values(alias: str, pairs: List[Tuple[str, str]]) -> List[Value]:
    return _nonempty([(alias, _ts(ts), value) for ts, value in pairs])


def _record_values(pairs: List[Tuple[str, str]]) -> List[Value]:
    out: List[Value] = []
    alias = None
    for key, value in pairs:
        if key == "alias":
            alias = _check_alias(value)
        elif alias is None:
            raise HTTPError(400, "record body must start with alias=<name>")
        else:
            out.append((alias, _ts(key), value))
    return _nonempty(out)
