"""Bare ``gwe`` and ``gwe -o``: run the daemon, logging to stderr (supervisord keeps and rotates it).

It imports only what the daemon's first cycle needs (no click), so the long-running process stays small.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional


def run_daemon(once: bool, level: Optional[str]) -> int:
    """The daemon at the configured log level (``level`` overrides it); returns the exit code."""
    from .config import ConfigError, load_engine_settings
    from .daemon import Engine

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # logging is set up first: the settings' own warnings go to the log
        root.setLevel((level or load_engine_settings()["debug_level"]).upper())
    except ConfigError as exc:
        print("gwe: " + str(exc).replace("\n", " "), file=sys.stderr)
        return 1
    engine = Engine(once=once)
    engine.install_signal_handlers()
    return engine.run()
