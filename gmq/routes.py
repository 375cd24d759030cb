"""What each request means: the Device API's activate, write and record, plus status and reread.

``route()`` turns one parsed request into either a ``Reply`` (answer now) or a ``Store``
(values to commit; the answer is 204 once they are on disk). It knows nothing of
sockets or of how values are stored.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple, Union

from device_api import (
    ACTIVATE_PATH, ALIAS_PATH, RECORD_PATH, TIMESTAMP_PATH, ContractError, Pairs, activation_identity,
    alias_from_path, check_identity, decode_form, decode_record, decode_write, form_type_ok, token_shaped,
)

from .clients import Client
from .http_parser import Request
from .queue import Value

Identity = Tuple[Optional[str], Optional[str], Optional[str], Optional[str]]  # token, serial, vendor, model


class App(Protocol):
    """What the routes need from the running gmq (see server.py)."""

    clients: object

    def status(self) -> dict: ...

    def connection(self) -> dict: ...

    def reread(self) -> dict: ...

    def clear_alarms(self) -> int: ...


@dataclass
class Reply:
    status: int
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"


@dataclass
class Store:
    """Values to commit (and a new client's row, if it is new); answered ``reply`` (204 if None) once durable."""

    client: Client
    values: List[Value]
    reply: Optional[Reply] = None


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
    except ContractError as exc:  # what Murano would refuse is refused here, with Murano's status
        return text(exc.status, str(exc))


BROWSER_ONLY_TYPES = ("text/plain", "multipart/form-data")  # what a page may POST cross-origin without asking


def _from_a_browser(req: Request) -> Optional[Reply]:
    """A web page open on the gateway must not change gmq: a request a browser made is refused.

    Browsers send ``Origin`` (and ``Sec-Fetch-*``) with every cross-site POST, also the CORS
    "simple" ones that need no preflight; apps and murano-client never do. The types a form or
    ``fetch(mode: "no-cors")`` can send beside the form type are refused too.
    """
    if "origin" in req.headers or any(name.startswith("sec-fetch-") for name in req.headers):
        return text(403, "requests from web pages are refused (Origin header); gmq is for local apps")
    ctype = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype in BROWSER_ONLY_TYPES:
        return text(415, "Content-Type %s is refused; send application/x-www-form-urlencoded" % ctype)
    return None


def _route(app: App, req: Request) -> Union[Reply, Store]:
    path, _, query = req.target.partition("?")
    if req.method not in ("GET", "HEAD"):
        refused = _from_a_browser(req)
        if refused is not None:
            return refused
    if req.method == "POST":
        if path == ALIAS_PATH:
            if query:
                raise HTTPError(400, "gmq does not serve reads; POST writes without a query")
            who = _identity(app, req)
            return _store(app, who, [(alias, None, value) for alias, value in decode_write(_form(req))])
        if path.startswith(ALIAS_PATH + "/"):
            who = _identity(app, req)
            alias = alias_from_path(path[len(ALIAS_PATH) + 1:])
            return _store(app, who, _timed(decode_record(_form(req), alias)))
        if path == RECORD_PATH:
            who = _identity(app, req)
            return _store(app, who, _timed(decode_record(_form(req))))
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
        if path == TIMESTAMP_PATH:
            return Reply(200, str(int(time.time())).encode())
        if path == "/connection":
            return Reply(200, json.dumps(app.connection(), sort_keys=True).encode() + b"\n", "application/json")
    if path.startswith(ALIAS_PATH) or path in (RECORD_PATH, ACTIVATE_PATH, "/reread", "/alarms/clear"):
        raise HTTPError(405, "gmq serves writes only: use POST")
    if path in ("/status", TIMESTAMP_PATH, "/connection"):
        raise HTTPError(405, "use GET")
    raise HTTPError(404, "no such path")


def _identity(app: App, req: Request) -> Identity:
    """Who the request says it is, checked (401, 400) but not registered: a refused request adds no client.

    With both headers they must name one device: the CIK must be one gmq issued to the VMS serial,
    or the gateway's own token with the gateway's serial; anything else (another device's token, a
    CIK gmq cannot place) would send the values to a device the request did not name: 400.
    """
    cik = req.headers.get("x-exosite-cik")
    token = None
    if cik is not None:
        token = cik.strip()
        if not token_shaped(token):
            raise HTTPError(401, "bad X-Exosite-CIK: 20-64 letters and digits")
    vms = req.headers.get("x-exosite-vms")
    if vms is None:
        if token is None:
            raise HTTPError(401, "X-Exosite-CIK or X-Exosite-VMS required")
        return token, None, None, None
    parts = vms.split()
    if len(parts) != 3:
        raise HTTPError(400, "X-Exosite-VMS must be '<vendor> <model> <serial>'")
    vendor, model, serial = (check_identity(p) for p in parts)
    if token is not None and app.clients.serial_of(token) != serial:
        raise HTTPError(400, "X-Exosite-CIK and X-Exosite-VMS name different devices: this CIK is not %s's; "
                             "send one of them" % serial)
    return None, serial, vendor, model


def _store(app: App, who: Identity, values: List[Value]) -> Store:
    token, serial, vendor, model = who
    clients = app.clients
    client = clients.by_token(token) if token is not None else clients.by_serial(serial, vendor, model)
    return Store(client, values)


def _timed(points: List[Tuple[str, int, str]]) -> List[Value]:
    return [(alias, us / 1e6, value) for alias, us, value in points]


def _form(req: Request) -> Pairs:
    if not form_type_ok(req.headers.get("content-type")):
        raise HTTPError(415, "Content-Type must be application/x-www-form-urlencoded")
    return decode_form(req.body)


def _activate(app: App, form: Dict[str, str]) -> Union[Reply, Store]:
    serial = activation_identity(form)
    client = app.clients.by_serial(serial, _optional(form.get("vendor")), _optional(form.get("model")))
    reply = Reply(200, client.local_token.encode())
    return reply if client.durable else Store(client, [], reply)  # a token is handed out once it is on disk


def _optional(name: Optional[str]) -> Optional[str]:
    return check_identity(name) if name else None
