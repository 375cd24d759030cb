"""The admin HTTP API: the Device2 subset MuranoCLI uses (reference §7.8) plus content upload and history.

Paths live under ``/api:1/``; bodies and answers are JSON. No authentication: the server
binds loopback by default and is a development stand-in.
"""
from __future__ import annotations

import json
import re
from typing import Callable, List, Optional, Tuple
from urllib.parse import parse_qsl

from atomic_config.version import VERSION as __version__
from device_api import check_alias

from .service import Murano
from .wire import HttpError, Request, Response, json_response, path_segment

_SERVICE = re.compile(r"^/api:1/service/([^/]+)/(device2|content)(/.*)?$")
DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 100000
DEFAULT_MAX_CONTENT = 2 * 1024 ** 3


def _state_value(value: object) -> str:
    """Murano state values are strings; other JSON values are kept as their JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class AdminApi:
    def __init__(self, murano: Murano, long_polls_waiting: Optional[Callable[[], int]] = None,
                 max_content_bytes: int = DEFAULT_MAX_CONTENT) -> None:
        self.murano = murano
        self.long_polls_waiting = long_polls_waiting or (lambda: murano.hub.waiting)
        self.max_content_bytes = max_content_bytes

    def handle(self, req: Request) -> Optional[Response]:
        if req.path == "/api:1/info" and req.method == "GET":
            return json_response(200, {"version": __version__, "default_product": self.murano.default_pid,
                                        "long_polls_waiting": self.long_polls_waiting()})
        match = _SERVICE.match(req.path)
        if not match:
            return None
        pid = path_segment(match.group(1)).lower()
        if not (pid.isascii() and pid.isalnum()):
            raise HttpError(400, "product id must be letters and digits")
        rest = [path_segment(p) for p in (match.group(3) or "").split("/")[1:]]
        if match.group(2) == "device2":
            return self._device2(req, pid, rest)
        return self._content(req, pid, rest)

    # -- device2 -------------------------------------------------------------------------
    def _device2(self, req: Request, pid: str, rest: List[str]) -> Response:
        m = req.method
        if not rest or rest == [""]:
            if m == "GET":
                product = self.murano.product(pid)
                return json_response(200, {"fqdn": "%s.m2.localhost" % pid, "resources": {},
                                           "provisioning": {"enabled": True,
                                                            "presenter_identity": product["allow_self_register"]}})
            if m == "PATCH":
                body = req.json()
                provisioning = body.get("provisioning") if isinstance(body, dict) else None
                flag = provisioning.get("presenter_identity") if isinstance(provisioning, dict) else None
                if not isinstance(flag, bool):
                    raise HttpError(400, 'expected {"provisioning": {"presenter_identity": true|false}}')
                self.murano.set_self_register(pid, flag)
                return Response(204)
            raise HttpError(405, "method not allowed")
        if rest[0] != "identity":
            raise HttpError(404, "no such endpoint")
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
            if m != "GET":
                raise HttpError(405, "method not allowed")
            items = [self._identity(pid, d) for d in self.murano.store.devices(pid)]
            return json_response(200, {"items": items, "mayLoadMore": False})
        identity = rest[1]
        if len(rest) == 2:
            return self._identity_endpoint(req, pid, identity)
        if rest[2] == "state" and len(rest) == 3:
            if m == "GET":
                return json_response(200, self.murano.state(pid, identity))
            if m == "PATCH":
                body = req.json()
                if not isinstance(body, dict) or not body:
                    raise HttpError(400, 'expected a JSON object {"alias": "value"}')
                values = [(check_alias(str(k)), _state_value(v)) for k, v in body.items()]
                self.murano.operator_set(pid, identity, values)
                return Response(204)
            raise HttpError(405, "method not allowed")
        if rest[2] == "history" and len(rest) == 4 and m == "GET":
            return json_response(200, self.murano.history(pid, identity, rest[3], self._limit(req)))
        raise HttpError(404, "no such endpoint")

    def _identity_endpoint(self, req: Request, pid: str, identity: str) -> Response:
        m = req.method
        if m == "GET":
            device = self.murano.store.device(pid, identity)
            if device is None:
                raise HttpError(404, "no such device")
            return json_response(200, self._identity(pid, device))
        if m == "PUT":
            req.json()  # auth options are accepted and ignored: token auth only
            created = self.murano.add_device(pid, identity)
            return Response(201 if created else 204)
        if m == "PATCH":
            body = req.json()
            if not isinstance(body, dict) or not isinstance(body.get("reprovision"), bool):
                raise HttpError(400, 'expected {"reprovision": true|false}')
            self.murano.store.set_reprovision(pid, identity, body["reprovision"])
            return Response(204)
        if m == "DELETE":
            self.murano.store.remove_device(pid, identity)
            return Response(204)
        raise HttpError(405, "method not allowed")

    def _identity(self, pid: str, device: dict) -> dict:
        return {"identity": device["identity"], "status": device["status"],
                "auth": {"type": "token"}, "locked": False, "reprovision": device["reprovision"],
                "devmode": False, "online": False, "lastseen": self.murano.last_seen(pid, device["identity"]) or device["activated_us"],
                "state": self.murano.store.state(pid, device["identity"])}

    @staticmethod
    def _limit(req: Request) -> int:
        params = dict(_query(req))
        try:
            limit = int(params.get("limit", DEFAULT_HISTORY_LIMIT))
        except ValueError:
            raise HttpError(400, "limit must be an integer")
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise HttpError(400, "limit must be 1..%d" % MAX_HISTORY_LIMIT)
        return limit

    # -- content -------------------------------------------------------------------------
    def _content(self, req: Request, pid: str, rest: List[str]) -> Response:
        if not rest or rest[0] != "item":
            raise HttpError(404, "no such endpoint")
        m = req.method
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
            if m != "GET":
                raise HttpError(405, "method not allowed")
            device = dict(_query(req)).get("device")  # local extension: one device's uploads
            return json_response(200, [_content_json(c) for c in self.murano.content.list(pid, device)])
        name = "/".join(rest[1:])
        if m == "GET" and dict(_query(req)).get("download") == "true":  # local extension: the blob itself
            info, blob = self.murano.content.open(pid, name)
            if blob is None:
                raise HttpError(404, "content not found")
            filename = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1]) or "content"
            return Response(200, content_type=info["type"], file=blob, offset=0, length=info["size"],
                            headers=[("Content-Disposition", 'attachment; filename="%s"' % filename)])
        if m == "GET":
            return json_response(200, _content_json(self.murano.content.info(pid, name)))
        if m == "DELETE":
            self.murano.content.delete(pid, name)
            return Response(204)
        if m == "PUT":
            if req.length > self.max_content_bytes:
                raise HttpError(413, "content larger than %d bytes" % self.max_content_bytes)
            if req.header("Content-Length") is None:
                raise HttpError(411, "send Content-Length")
            ctype = req.header("Content-Type") or "application/octet-stream"
            if "," in ctype:  # the device API's info line is comma-separated: the size would shift
                raise HttpError(400, "Content-Type must not contain a comma")
            meta = req.header("X-Content-Meta") or ""
            if "\n" in meta or "\r" in meta or len(meta) > 1024:
                raise HttpError(400, "X-Content-Meta must be one line up to 1024 characters")
            req.consumed = True
            self.murano.store.ensure_product(pid, default_self_register=self.murano.allow_self_register)
            info = self.murano.content.put(pid, name, req.stream, req.length, ctype, meta)
            return json_response(201, _content_json(info))
        raise HttpError(405, "method not allowed")


def _content_json(info: dict) -> dict:
    return {"id": info["name"], "type": info["type"], "length": info["size"], "updated": info["updated"],
            "meta": info["meta"], "device": info["device"], "sha256": info["sha256"]}


def _query(req: Request) -> List[Tuple[str, str]]:
    try:
        return parse_qsl(req.query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed query")

