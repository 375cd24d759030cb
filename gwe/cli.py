"""The ``gwe`` command: legacy flags as options of one click group, modern subcommands beside them.

Legacy gwe took ``-I/--install-apps A B C`` (argparse ``nargs='+'``); click options take one
value each, so :func:`main` first rewrites ``-I A B C`` into ``-I A -I B -I C``.
Each legacy flag is handled by a small function that calls into the library packages;
more flags and subcommands (``gwe demo``, ``gwe status``) are added the same way.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

import click

from . import __version__

INSTALL_FLAGS = ("-I", "--install-apps")


def expand_install_args(argv: Sequence[str]) -> List[str]:
    """``-I a b c`` -> ``-I a -I b -I c`` (values run until the next option)."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in INSTALL_FLAGS:
            first = True
            while i < len(argv) and not argv[i].startswith("-"):
                if not first:
                    out.append(arg)
                out.append(argv[i])
                first = False
                i += 1
    return out


def fail(message: str, code: int = 1) -> None:
    """Exit with ``code`` and one line on stderr."""
    click.echo("gwe: " + message.replace("\n", " "), err=True)
    sys.exit(code)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--version", "show_version", is_flag=True, help="Print the gwe version.")
@click.pass_context
def cli(ctx: click.Context, show_version: bool) -> None:
    """Gateway Engine: over-the-air app installs, reports and the local message queue."""
    if ctx.invoked_subcommand is not None:
        return
    if show_version:
        click.echo(__version__)
        return
    click.echo(ctx.get_help())


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    cli.main(args=expand_install_args(args), prog_name="gwe")
