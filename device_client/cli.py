"""``gdc``: the Device API from the shell, over the same ``Device`` library the daemons use.

Every failure is one line on stderr and an exit code that says what kind it was.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import sys
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import click

from atomic_config import ConfigError, gwe_paths, load_gateway_config

from . import errors
from .device import Device, __version__
from .usage import usage_report

EXIT_FAILURE = 1          # any other Device API failure, bad local file
EXIT_USAGE = 2            # click's own code for bad arguments
EXIT_NOT_ACTIVATED = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_NETWORK = 6
EXIT_SERVER = 7
EXIT_CONTENT = 8

_EXIT_CODES = (
    (errors.NotActivated, EXIT_NOT_ACTIVATED), (errors.NotFound, EXIT_NOT_FOUND),
    (errors.Conflict, EXIT_CONFLICT), (errors.NetworkError, EXIT_NETWORK), (errors.ServerError, EXIT_SERVER),
    (errors.ContentMismatch, EXIT_CONTENT),
)


class GdcError(click.ClickException):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(exc: errors.DeviceAPIError) -> int:
    for kind, code in _EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_FAILURE


def default_token_file(serial: Optional[str], host: str) -> Optional[str]:
    """Where gdc keeps the token of ``serial`` on ``host`` between runs:
    ``$GWE_HOME/var/lib/gwe/tokens/<serial>@<host[_port]>.token``.

    One file per host: the same serial against another server (a local dev server, a
    staging product) must neither send it this host's token nor lose it to that server's 401.
    """
    if not serial:
        return None
    safe_serial = re.sub(r"[^A-Za-z0-9._-]", "_", serial).lstrip(".") or "_"
    safe_host = re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(host).netloc.rpartition("@")[2])
    return os.path.join(gwe_paths().tokens, "%s@%s.token" % (safe_serial, safe_host))


class Context:
    def __init__(self, options: Dict[str, object]) -> None:
        self.options = options
        self.as_json = bool(options.pop("as_json"))
        self._device: Optional[Device] = None

    def device(self) -> Device:
        if self._device is None:
            o = self.options
            host = o["host"] or (("https://%s.m2.exosite.io" % o["product_id"]) if o["product_id"] else None)
            if not host:
                raise GdcError("give --host (or --product-id for https://<product_id>.m2.exosite.io)", EXIT_USAGE)
            cert = (o["cert"], o["key"] or o["cert"]) if o["cert"] else None
            usage_db = False if o["no_usage"] else o["usage_db"]
            token_file = o["token_file"] or default_token_file(o["serial"], host)  # type: ignore[arg-type]
            try:
                self._device = Device(host, product_id=o["product_id"], serial=o["serial"], token=o["token"],
                                      token_file=token_file, identity=o["identity"], ca_file=o["ca_file"],
                                      cert=cert, usage_db=usage_db, connect_timeout=o["connect_timeout"],
                                      read_timeout=o["read_timeout"], transport=o["transport"],
                                      mqtt_url=o["mqtt_url"])
            except ValueError as exc:
                raise GdcError(str(exc), EXIT_USAGE) from None
        return self._device

    def use_cik(self, cik: str) -> None:
        """The original ``gdc write CIK ALIAS VALUE``: that CIK, on the gateway's Murano unless --host says."""
        cik = cik.strip()
        if cik in ("", "''", '""'):
            raise GdcError("the CIK is empty: the gateway is not activated yet (gwe --gateway-cik printed '')",
                           EXIT_NOT_ACTIVATED)
        if self.options["token"] and self.options["token"] != cik:
            raise GdcError("--token and the CIK argument differ", EXIT_USAGE)
        self.options["token"] = cik
        if not self.options["host"] and not self.options["product_id"]:
            try:
                self.options["host"] = load_gateway_config(gwe_paths().gateway_cfg).murano_url
            except ConfigError as exc:
                raise GdcError("give --host: %s" % exc, EXIT_USAGE) from None

    def not_activated(self, exc: errors.NotActivated) -> str:
        """What to do: the library's message names a Python call, gdc's names the command."""
        o = self.options
        again = "gdc%s%s activate" % (" --host %s" % o["host"] if o["host"] else "",
                                      " --serial %s" % o["serial"] if o["serial"] else "")
        if exc.status is None:
            return "not activated: no token for %s yet: run '%s' first (or give --token)" % (o["serial"] or "this device",
                                                                                          again)
        return "%s: the token was rejected and dropped: run '%s' for a new one" % (exc, again)

    def emit(self, data: object, human: str) -> None:
        click.echo(json.dumps(data, sort_keys=True) if self.as_json else human)

    def close(self) -> None:
        if self._device is not None:
            self._device.close()


class _Group(click.Group):
    """Turns every failure into one stderr line and an exit code, never a traceback or a usage dump."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo("gdc: error: %s" % exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("gdc: error: aborted", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except errors.NotActivated as exc:
            raise GdcError(ctx.obj.not_activated(exc), EXIT_NOT_ACTIVATED) from None
        except errors.DeviceAPIError as exc:
            raise GdcError(str(exc), exit_code_for(exc)) from None
        except ValueError as exc:
            raise GdcError(str(exc), EXIT_USAGE) from None
        except OSError as exc:
            raise GdcError("%s: %s" % (exc.filename or "I/O", exc.strerror or exc)) from None
        except sqlite3.Error as exc:
            raise GdcError("usage log: %s" % exc) from None


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "GDC", "help_option_names": ["-h", "--help"]})
@click.option("--host", help="Murano base URL, e.g. https://<pid>.m2.exosite.io or http://127.0.0.1:8080.")
@click.option("--product-id", help="Product id (vendor/model for activation, content queries).")
@click.option("--serial", help="Device identity (serial number, MAC, UUID).")
@click.option("--token", help="Use this token instead of activating.")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Token file (0600). Default: $GWE_HOME/var/lib/gwe/tokens/<serial>.token.")
@click.option("--identity", default="gdc", show_default=True, help="Consumer name in the usage report.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle to verify the server.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="TLS client certificate (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Key of --cert (if not in the same file).")
@click.option("--transport", type=click.Choice(["http", "mqtt"]), default="http", show_default=True,
              help="mqtt: writes, records, activation and poll over MQTT (reads, time, content stay HTTP).")
@click.option("--mqtt-url", help="mqtts://host:port or mqtt://host:port (default: --host's host, 8883/1883).")
@click.option("--usage-db", type=click.Path(dir_okay=False), help="Usage log (default: the gateway's).")
@click.option("--no-usage", is_flag=True, help="Do not log this run's requests.")
@click.option("--connect-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--read-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug).")
@click.version_option(version=__version__, prog_name="gdc")
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Murano Device API client: activate, read, write, poll, record, timestamp, content, usage."""
    verbose = options.pop("verbose")
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="gdc: %(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(options)
    ctx.call_on_close(ctx.obj.close)


def _json_option(command):
    """``--json`` is accepted after the subcommand too (``gdc read a --json``)."""
    def take(ctx: click.Context, _param, value: bool) -> None:
        if value:
            ctx.find_object(Context).as_json = True
    return click.option("--json", "as_json_here", is_flag=True, expose_value=False, callback=take,
                        help="Machine-readable output.")(command)


@main.command()
@_json_option
@click.option("--force", is_flag=True, help="Activate even when a token is already stored.")
@click.pass_obj
def activate(obj: Context, force: bool) -> None:
    """Provision the device and store its token."""
    token = obj.device().activate(force=force)
    obj.emit({"token": token}, token)


@main.command()
@_json_option
@click.argument("aliases", nargs=-1, required=True)
@click.pass_obj
def read(obj: Context, aliases: Tuple[str, ...]) -> None:
    """Read the current value of ALIASES."""
    values = obj.device().read(*aliases)
    obj.emit(values, "\n".join("%s=%s" % item for item in values.items()))


def _assignments(items: Tuple[str, ...], what: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter("expected %s=VALUE, got %r" % (what, item))
        pairs.append((key, value))
    return pairs


@main.command()
@_json_option
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def write(obj: Context, assignments: Tuple[str, ...]) -> None:
    """Write ALIAS=VALUE pairs (all in one request).

    The original gdc's form works too: write CIK ALIAS VALUE (e.g. the CIK from gwe --gateway-cik),
    to the gateway's Murano (Gateway.cfg) unless --host is given.
    """
    if "=" not in assignments[0]:  # a CIK never holds "="; ALIAS=VALUE always does
        if len(assignments) != 3:
            raise click.BadParameter("expected ALIAS=VALUE... or CIK ALIAS VALUE, got %d argument(s), "
                                     "the first without '='" % len(assignments))  # never echo a CIK
        cik, alias, value = assignments
        obj.use_cik(cik)
        values = {alias: value}
    else:
        values = dict(_assignments(assignments, "ALIAS"))
    obj.device().write(values)
    obj.emit({"written": sorted(values)}, "written: %s" % ", ".join(values))


@main.command()
@_json_option
@click.argument("aliases", nargs=-1, required=True)
@click.option("--timeout-ms", default=30000, show_default=True, type=click.IntRange(1, 300000))
@click.option("--since", help="If-Modified-Since: the Last-Modified of the previous poll, or unix seconds.")
@click.pass_obj
def poll(obj: Context, aliases: Tuple[str, ...], timeout_ms: int, since: Optional[str]) -> None:
    """Long-poll ALIASES for a new value; prints nothing new on timeout."""
    values, last_modified = obj.device().long_poll(list(aliases), timeout_ms=timeout_ms, since=since)
    human = "\n".join("%s=%s" % item for item in values.items()) if values else "(no new value)"
    obj.emit({"values": values, "last_modified": last_modified}, human)


@main.command()
@_json_option
@click.argument("alias")
@click.argument("points", nargs=-1, required=True)
@click.pass_obj
def record(obj: Context, alias: str, points: Tuple[str, ...]) -> None:
    """Record historical values of ALIAS: TIMESTAMP=VALUE ... (unix seconds)."""
    series = []
    for stamp, value in _assignments(points, "TIMESTAMP"):
        try:
            series.append((float(stamp) if "." in stamp else int(stamp), value))
        except ValueError:
            raise click.BadParameter("timestamp %r is not unix seconds" % stamp) from None
    try:
        obj.device().record({alias: series})
    except errors.Conflict as exc:
        if exc.conflicts:
            raise GdcError("conflicting timestamps: %s" % json.dumps(exc.conflicts, sort_keys=True),
                           EXIT_CONFLICT) from None
        raise
    obj.emit({"recorded": len(series)}, "recorded %d value(s)" % len(series))


@main.command()
@_json_option
@click.pass_obj
def timestamp(obj: Context) -> None:
    """Print the server's clock (unix seconds)."""
    now = obj.device().timestamp()
    obj.emit({"timestamp": now}, str(now))


@main.group()
def content() -> None:
    """The product's content area (OTA files)."""


@content.command("list")
@_json_option
@click.pass_obj
def content_list(obj: Context) -> None:
    names = obj.device().list_content()
    obj.emit(names, "\n".join(names))


@content.command("info")
@_json_option
@click.argument("name")
@click.pass_obj
def content_info(obj: Context, name: str) -> None:
    info = obj.device().content_info(name)
    obj.emit(info, "%(content_type)s %(size)d bytes, updated %(updated)d %(meta)s" % info)


@content.command("get")
@_json_option
@click.argument("name")
@click.argument("dest", required=False, type=click.Path(dir_okay=False))
@click.option("--sha256", help="Expected sha256 (hex); a mismatch fails and discards the file.")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Refuse content larger than this.")
@click.pass_obj
def content_get(obj: Context, name: str, dest: Optional[str], sha256: Optional[str], max_bytes: Optional[int]) -> None:
    """Download NAME to DEST (default: ./NAME), resuming a partial download."""
    dest = dest or os.path.basename(name)
    if not dest or dest in (".", ".."):
        raise click.BadParameter("give DEST: %r is not a file name" % name)
    bar = _ProgressBar(enabled=not obj.as_json and sys.stderr.isatty())
    try:
        result = obj.device().download_content(name, dest, sha256=sha256, progress=bar.update, max_bytes=max_bytes)
    finally:
        bar.finish()
    obj.emit(result._asdict(), "%s: %d bytes, sha256 %s" % (result.path, result.size, result.sha256))


class _ProgressBar:
    """click's progress bar on stderr, created once the total size is known."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._shown = 0

    def update(self, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="downloading", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._shown)
        self._shown = done

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@main.command()
@_json_option
@click.option("--flush", is_flag=True, help="Also empty the log of the rows reported (what gwe does).")
@click.pass_obj
def usage(obj: Context, flush: bool) -> None:
    """Print the current usage_report (of --usage-db, default the gateway's) as JSON."""
    report = usage_report(obj.options["usage_db"], flush=flush)  # type: ignore[arg-type]
    click.echo(json.dumps(report, indent=None if obj.as_json else 2, sort_keys=True))

