"""A small client of the gmq running on this machine: its status, connection, reread and alarms.

What gwe (engine_report, ``gwe status``) and the ``gmq`` command use. It talks to the address
in gmq.cfg and never through an http_proxy from the environment (gmq is local; urllib does not
bypass 127.0.0.1 by itself).
"""
from __future__ import annotations

import json
from typing import Optional

from atomic_config import GwePaths, gwe_paths


class GmqClientError(RuntimeError):
    """gmq did not answer, answered an error, or what answers is not gmq; the message is one line."""


def local_url(path: str, paths: Optional[GwePaths] = None) -> str:
    """URL of the running gmq's ``path`` on this machine (host and port from gmq.cfg)."""
    from . import config

    try:
        return config.local_url(config.load(paths or gwe_paths(), []), path)  # damaged: gmq runs on defaults too
    except config.ConfigError as exc:
        raise GmqClientError(str(exc)) from None


def call(method: str, path: str, timeout: float = 10.0, paths: Optional[GwePaths] = None) -> dict:
    """The JSON answer of the running gmq to ``method path``; raises GmqClientError."""
    import urllib.error
    import urllib.request

    url = local_url(path, paths)
    req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via http_proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise GmqClientError("%s %s: %s" % (exc.code, path, exc.read().decode("utf-8", "replace").strip())) from None
    except (urllib.error.URLError, OSError) as exc:
        raise GmqClientError("gmq is not answering at %s: %s" % (url, getattr(exc, "reason", exc))) from None
    except ValueError:  # JSON or UTF-8: something else listens on gmq's port
        raise GmqClientError("what answers at %s is not gmq (no JSON)" % url) from None


def status(timeout: float = 10.0, paths: Optional[GwePaths] = None) -> dict:
    """``GET /status``: queue, counters, alarms, forwarder, clients."""
    return call("GET", "/status", timeout, paths)
