"""The ``gwe`` command: bare ``gwe`` runs the daemon (as supervisord does); options and subcommands
are the click CLI of :mod:`gwe.commands_cli`.

The daemon does not import click (a few MiB of RSS it does not need).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and "_GWE_COMPLETE" not in os.environ:  # shell completion asks click
        from .daemon_cli import run_daemon
        sys.exit(run_daemon(False, None))
    from .commands_cli import main as commands_main
    commands_main(args)


if __name__ == "__main__":
    main()
