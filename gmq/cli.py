"""The ``gmq`` command: bare ``gmq`` (or ``gmq serve``) runs the server; subcommands manage it.

Serving does not import click (a few MiB of RSS the daemon does not need); the
management subcommands do.
"""
from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from typing import List, Optional


def serve() -> None:
    """Run gmq in the foreground until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s gmq[%(process)d] %(levelname)s %(name)s: %(message)s")
    from .config import ConfigError
    from .server import Gmq
    try:
        gmq = Gmq()
    except (ConfigError, OSError) as exc:
        print("gmq: %s" % exc, file=sys.stderr)
        sys.exit(1)
    gmq.serve_forever()


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args == ["serve"]:
        serve()
        return
    from ._commands import cli
    cli.main(args=args, prog_name="gmq")


def local_url(path: str) -> str:
    """URL of the running gmq's ``path`` on this machine (from gmq.cfg)."""
    from atomic_config import gwe_paths

    from . import config
    return config.local_url(config.load(gwe_paths()), path)


def call(method: str, path: str, timeout: float = 10.0) -> dict:
    """Ask the running gmq; raises RuntimeError with a one-line reason."""
    url = local_url(path)
    req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # gmq is local: never via http_proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise RuntimeError("%s %s: %s" % (exc.code, path, exc.read().decode("utf-8", "replace").strip())) from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError("gmq is not answering at %s: %s" % (url, getattr(exc, "reason", exc))) from None
    except ValueError:  # JSON or UTF-8: something else listens on gmq's port
        raise RuntimeError("what answers at %s is not gmq (no JSON)" % url) from None


if __name__ == "__main__":
    main()
