"""The fleet part of the admin HTTP API (a local extension), under ``/api:1/service/<pid>/fleet/``.

The CLI and the dashboard page both call these; they read :class:`~murano_local.fleet.FleetView`
and drive :class:`~murano_local.rollout.RolloutEngine`, so there is one copy of the rules.

| request | answer |
|---|---|
| ``GET fleet/gateways[?tag=T...]`` | ``{"gateways": [row...], "tags": {tag: count}, "version"}`` |
| ``GET fleet/gateways/<id>`` | the gateway page: row, app table, series, usage, fetch history |
| ``POST fleet/gateways/<id>/tags`` ``{"add": [...], "remove": [...]}`` | ``{"serial", "tags"}`` |
| ``GET fleet/rollouts`` / ``POST fleet/rollouts`` (spec) | summaries / ``201`` the new rollout |
| ``GET fleet/rollouts/<name>`` | the rollout with its gateways |
| ``POST fleet/rollouts/<name>/pause|resume|abort`` | the rollout after the action (``409`` if its state forbids it) |
| ``GET fleet/changes?since=V&timeout=S`` | ``{"version"}`` once it differs from ``V`` (long poll, at most 60 s) |
"""
from __future__ import annotations

import re
from typing import List, Optional
from urllib.parse import parse_qsl

from .rollout import RolloutError
from .wire import HttpError, Request, Response, json_response, path_segment

_FLEET = re.compile(r"^/api:1/service/([^/]+)/fleet(/.*)?$")
MAX_CHANGES_WAIT_S = 60.0


def query_params(req: Request) -> List[tuple]:
    try:
        return parse_qsl(req.query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed query")


def product_of(segment: str) -> str:
    pid = path_segment(segment).lower()
    if not (pid.isascii() and pid.isalnum()):
        raise HttpError(400, "product id must be letters and digits")
    return pid


class FleetApi:
    def __init__(self, console) -> None:
        self.console = console

    def handle(self, req: Request) -> Optional[Response]:
        match = _FLEET.match(req.path)
        if not match:
            return None
        pid = product_of(match.group(1))
        rest = [path_segment(p) for p in (match.group(2) or "").split("/")[1:]]
        try:
            return self._route(req, pid, rest)
        except RolloutError as exc:
            raise HttpError(exc.status, str(exc))

    def _route(self, req: Request, pid: str, rest: List[str]) -> Response:
        c, m = self.console, req.method
        if rest == ["gateways"]:
            _only(m, "GET")
            tags = [v for k, v in query_params(req) if k == "tag" and v]
            version = c.feed.version(pid)
            return json_response(200, {"gateways": c.view.rows(pid, tags), "tags": c.tag_counts(pid),
                                       "version": version})
        if len(rest) == 2 and rest[0] == "gateways":
            _only(m, "GET")
            return json_response(200, c.view.gateway(pid, rest[1]))
        if len(rest) == 3 and rest[0] == "gateways" and rest[2] == "tags":
            _only(m, "POST")
            body = req.json()
            if not isinstance(body, dict) or not all(isinstance(body.get(k, []), list) for k in ("add", "remove")):
                raise HttpError(400, 'expected {"add": [tags], "remove": [tags]}')
            tags = c.murano.change_tags(pid, rest[1], body.get("add", []), body.get("remove", []))
            return json_response(200, {"serial": rest[1], "tags": tags})
        if rest == ["tags"]:
            _only(m, "GET")
            return json_response(200, c.tag_counts(pid))
        if rest == ["rollouts"]:
            if m == "GET":
                return json_response(200, c.rollouts.status(pid))
            _only(m, "POST")
            return json_response(201, c.rollouts.create(pid, req.json()))
        if len(rest) == 2 and rest[0] == "rollouts":
            _only(m, "GET")
            return json_response(200, c.rollouts.status(pid, rest[1])[0])
        if len(rest) == 3 and rest[0] == "rollouts" and rest[2] in ("pause", "resume", "abort"):
            _only(m, "POST")
            return json_response(200, c.rollouts.act(pid, rest[1], rest[2]))
        if rest == ["changes"]:
            _only(m, "GET")
            params = dict(query_params(req))
            try:
                since = int(params.get("since", "-1"))
                timeout = min(float(params.get("timeout", "25")), MAX_CHANGES_WAIT_S)
            except ValueError:
                raise HttpError(400, "since must be an integer and timeout a number of seconds")
            if not timeout >= 0:
                raise HttpError(400, "timeout must not be negative")
            return json_response(200, {"version": c.feed.wait(pid, since, timeout)})
        raise HttpError(404, "no such endpoint")


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, "method not allowed", [("Allow", allowed)])
