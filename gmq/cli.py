"""The ``gmq`` command: bare ``gmq`` (or ``gmq serve``) runs the server; subcommands manage it."""
from __future__ import annotations

import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if (not args or args == ["serve"]) and "_GMQ_COMPLETE" not in os.environ:  # shell completion asks click
        from .serve_cli import serve  # without click
        serve()
        return
    from .commands_cli import cli
    cli.main(args=args, prog_name="gmq")


if __name__ == "__main__":
    main()
