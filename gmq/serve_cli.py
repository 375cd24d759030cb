"""``gmq`` / ``gmq serve``: run the server in the foreground until SIGTERM/SIGINT.

Serving does not import click (a few MiB of RSS the daemon does not need).
"""
from __future__ import annotations

import logging
import sys


def serve() -> None:
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
