"""gmq's management subcommands (click): serve, cfg, reread, status, clear-alarms."""
from __future__ import annotations

import json
import sys
from typing import Optional

import click

from atomic_config import gwe_paths

from atomic_config.version import VERSION as __version__

from . import config
from .client import GmqClientError, call
from .serve_cli import serve as run_server


def fail(message: str) -> None:
    click.echo("gmq: %s" % message, err=True)
    sys.exit(1)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-v", "--version", prog_name="gmq")
@click.option("-g", "--cfg-path", is_flag=True, help="Print the path of gmq.cfg and exit.")
@click.pass_context
def cli(ctx: click.Context, cfg_path: bool) -> None:
    """Gateway Message Queue. Without a command, `gmq` runs the server (also `gmq serve`)."""
    if cfg_path:
        click.echo(gwe_paths().gmq_cfg)
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
def serve() -> None:
    """Run the server in the foreground (what bare `gmq` does, without loading click)."""
    run_server()


@cli.group("cfg", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def cfg(ctx: click.Context, as_json: bool) -> None:
    """Show every setting with its effective value; `get` and `set` one."""
    if ctx.invoked_subcommand is None:
        try:
            values = config.effective(gwe_paths())
        except config.ConfigError as exc:
            fail(str(exc))
        if as_json:
            click.echo(json.dumps(values, indent=2, sort_keys=True))
            return
        for section, options in values.items():
            click.echo("[%s]" % section)
            for option, value in options.items():
                click.echo("%s = %s" % (option, value))
            click.echo("")


@cfg.command("get")
@click.argument("section", required=False)
@click.argument("option", required=False)
def cfg_get(section: str, option: str) -> None:
    """No argument: the sections; SECTION: its options; SECTION OPTION: the value."""
    try:
        values = config.effective(gwe_paths())
        if section is None:
            click.echo("\n".join(values))
        elif section not in values:
            fail("no section [%s]; sections: %s" % (section, ", ".join(values)))
        elif option is None:
            click.echo("\n".join(values[section]))
        else:
            click.echo(config.get(gwe_paths(), section, option))
    except config.ConfigError as exc:
        fail(str(exc))


@cfg.command("set")
@click.argument("section")
@click.argument("option")
@click.argument("value")
def cfg_set(section: str, option: str, value: str) -> None:
    """Set one value in gmq.cfg (checked first); `gmq reread` applies it."""
    try:
        config.set_value(gwe_paths(), section, option, value)
    except config.ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail("cannot write %s: %s" % (gwe_paths().gmq_cfg, exc.strerror or exc))


def ask(method: str, path: str, indent: Optional[int] = None) -> None:
    """Call the running gmq and print its JSON answer; one line on stderr if it fails."""
    try:
        result = call(method, path)
    except GmqClientError as exc:
        fail(str(exc))
    click.echo(json.dumps(result, indent=indent, sort_keys=True))


@cli.command()
def reread() -> None:
    """Make the running gmq reload gmq.cfg without a restart."""
    ask("POST", "/reread")


@cli.command()
def status() -> None:
    """The running gmq's status as JSON: queue, counters, alarms, forwarder, clients."""
    ask("GET", "/status", indent=2)


@cli.command("clear-alarms")
def clear_alarms() -> None:
    """Acknowledge the running gmq's alarms (e.g. a salvaged database; its old file is kept)."""
    ask("POST", "/alarms/clear")
