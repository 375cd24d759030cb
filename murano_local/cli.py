"""``murano-local``: run the server, and operate it (devices, state, history, content) over its admin API."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional
from urllib.parse import quote

import click

from .admin_client import DEFAULT_URL, Admin, CliError, dump as _dump
from .fleet_cli import register_fleet_commands


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "murano-local")


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="MURANO_LOCAL_URL",
              help="Base URL of the murano-local server to operate.")
@click.option("--product", default=None, help="Product id (default: the server's default product).")
@click.pass_context
def main(ctx: click.Context, url: str, product: Optional[str]) -> None:
    """A local Murano-compatible Device API server and its operator commands."""
    ctx.obj = {"url": url, "product": product}


def _admin(ctx: click.Context) -> Admin:
    return Admin.of(ctx)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--data", "data_dir", default=default_data_dir, show_default="~/.local/share/murano-local",
              type=click.Path(file_okay=False), help="Directory holding the database and content.")
@click.option("--product-id", default="localproduct", show_default=True,
              help="Product used when the Host header names none.")
@click.option("--allow-self-register", is_flag=True,
              help="Let unknown identities activate themselves in the default product.")
@click.option("--history-limit", default=100000, show_default=True, type=click.IntRange(1, 10 ** 9),
              help="Points kept per device and alias (the oldest go first; up to 10% more between trims).")
@click.option("--max-connections", default=None, type=click.IntRange(1, 1 << 20),
              help="Open connections served at once, long polls included; more get 503 "
                   "[default: the open-file limit (raised to its hard limit) less 256, at most 65536].")
@click.option("--request-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a request (head and body) may take to arrive; slower ones get 408.")
@click.option("--https-port", default=None, type=click.IntRange(0, 65535),
              help="Also serve the Device and admin APIs over HTTPS on this port (certificate from the local CA).")
@click.option("--mqtt-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the MQTT Device API on this port, plain TCP (needs the mqtt-server extra).")
@click.option("--mqtts-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the MQTT Device API over TLS on this port (certificate from the local CA).")
@click.option("--mqtt-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate (chain) for MQTT over TLS instead of the local CA's; without "
                   "--mqtts-port it makes --mqtt-port TLS.")
@click.option("--mqtt-key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM private key for --mqtt-cert.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--detach", is_flag=True, help="Run in the background: return once the server answers, printing "
              "its pid (also in DATA/murano-local.pid; its log is DATA/murano-local.log).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, data_dir: str, product_id: str, allow_self_register: bool,
          history_limit: int, max_connections: Optional[int], request_timeout: float, https_port: Optional[int],
          mqtt_port: Optional[int], mqtts_port: Optional[int], mqtt_cert: Optional[str], mqtt_key: Optional[str],
          log_level: str, detach: bool) -> None:
    """Serve the Device API and the admin API (with --https-port also over HTTPS; MQTT with --mqtt-port
    and --mqtts-port) until SIGTERM or Ctrl-C."""
    import sqlite3

    if detach:
        from .detach import serve_detached
        try:
            click.echo(serve_detached(_serve_argv(ctx), host, port, data_dir))
        except RuntimeError as exc:
            raise CliError(str(exc))
        return

    from .server import serve as run
    from .service import Murano
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not product_id.isalnum() or not product_id.isascii():
        raise CliError("--product-id must be letters and digits")
    if (mqtt_cert is None) != (mqtt_key is None):
        raise CliError("--mqtt-cert and --mqtt-key go together")
    if mqtt_cert and mqtt_port is None and mqtts_port is None:
        raise CliError("--mqtt-cert needs --mqtts-port (or --mqtt-port)")
    if mqtt_port is not None or mqtts_port is not None:
        from .mqtt import MqttUnavailable, require_amqtt
        try:
            require_amqtt()
        except MqttUnavailable as exc:
            raise CliError(str(exc))
    try:
        murano = Murano(data_dir, default_pid=product_id, allow_self_register=allow_self_register,
                        history_limit=history_limit)
    except (OSError, sqlite3.Error) as exc:
        raise CliError("cannot use data directory %s: %s" % (data_dir, getattr(exc, "strerror", None) or exc))
    ssl_context = None
    listeners = []  # MQTT: (port, certfile, keyfile)
    if mqtt_port is not None:
        listeners.append((mqtt_port, mqtt_cert, mqtt_key) if mqtts_port is None else (mqtt_port, None, None))
    if https_port is not None or mqtts_port is not None:
        from .tls import LocalCA, TlsError
        try:
            local_ca = LocalCA(data_dir).ensure([host])
            ssl_context = local_ca.server_context() if https_port is not None else None
        except TlsError as exc:
            murano.close()
            raise CliError(str(exc))
        if mqtts_port is not None:
            listeners.append((mqtts_port, mqtt_cert or local_ca.server_cert, mqtt_key or local_ca.server_key))
    mqtt = None
    if listeners:
        from .mqtt import MqttFrontEnd
        try:
            mqtt = MqttFrontEnd(murano, host, listeners, max_connections or 1000).start()
        except Exception as exc:  # amqtt wraps bind errors in its own exception types
            murano.close()
            raise CliError("cannot serve MQTT on %s: %s" % (
                " or ".join("%s:%d" % (host, p) for p, _c, _k in listeners), getattr(exc, "strerror", None) or exc))
    from .console import FleetConsole
    console = FleetConsole(murano).start()  # resumes the rollouts a stop interrupted

    def before_close() -> None:
        console.stop()
        if mqtt is not None:
            mqtt.stop()
    try:
        run(murano, host, port, max_connections=max_connections, request_timeout=request_timeout,
            before_close=before_close, front_ends=console.front_ends(), https_port=https_port,
            ssl_context=ssl_context)
    except OSError as exc:
        before_close()
        raise CliError("cannot serve on %s: %s" % (exc.filename or "%s:%d" % (host, port), exc.strerror or exc))


@main.command("ca")
@click.option("--data", "data_dir", default=default_data_dir, show_default="~/.local/share/murano-local",
              type=click.Path(file_okay=False), help="The data directory of the server.")
def ca_command(data_dir: str) -> None:
    """Print the path of the local CA's certificate (made now if the directory has none yet): the CA
    that clients trust for --https-port and --mqtts-port."""
    from .tls import LocalCA, TlsError
    try:
        click.echo(LocalCA(data_dir).ensure().ca_cert)
    except TlsError as exc:
        raise CliError(str(exc))


def _serve_argv(ctx: click.Context) -> list:
    """This ``serve`` command line, without --detach (every option spelled out)."""
    argv = ["serve"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "detach" or value is None or value is False:
            continue
        argv += [param.opts[0]] if value is True else [param.opts[0], str(value)]
    return argv


@main.group()
def device() -> None:
    """Whitelist devices, read and set their state, read their history."""


@device.command("add")
@click.argument("identity")
@click.pass_context
def device_add(ctx: click.Context, identity: str) -> None:
    """Whitelist IDENTITY so it can activate."""
    admin = _admin(ctx)
    resp = admin.call("PUT", admin.identity(identity), expect=(201, 204), json={})
    click.echo("added %s" % identity if resp.status_code == 201 else "%s was already whitelisted" % identity)


@device.command("remove")
@click.argument("identity")
@click.pass_context
def device_remove(ctx: click.Context, identity: str) -> None:
    """Delete IDENTITY with its token, state and history."""
    admin = _admin(ctx)
    admin.call("DELETE", admin.identity(identity), expect=(204,))
    click.echo("removed %s" % identity)


@device.command("reprovision")
@click.argument("identity")
@click.pass_context
def device_reprovision(ctx: click.Context, identity: str) -> None:
    """Let IDENTITY activate once more (its next activation replaces its token)."""
    admin = _admin(ctx)
    admin.call("PATCH", admin.identity(identity), expect=(204,), json={"reprovision": True})
    click.echo("%s may activate again" % identity)


@device.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the Device2 identity records as JSON.")
@click.pass_context
def device_list(ctx: click.Context, as_json: bool) -> None:
    """List the product's devices and their status."""
    admin = _admin(ctx)
    items = admin.call("GET", admin.device2("/identity/")).json()["items"]
    if as_json:
        _dump(items)
        return
    for item in items:
        click.echo("%s\t%s" % (item["identity"], item["status"]))


def holding_json(value):
    """A dataport's value with the JSON object or array it holds decoded (Murano stores text)."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


@device.command("read")
@click.argument("identity")
@click.argument("aliases", nargs=-1)
@click.option("--raw", is_flag=True, help="Values as stored: JSON dataports stay JSON text.")
@click.option("--json", "as_json", is_flag=True, help="One line of JSON, for scripts.")
@click.pass_context
def device_read(ctx: click.Context, identity: str, aliases, raw: bool, as_json: bool) -> None:
    """Print IDENTITY's state as JSON {alias: {reported, set, timestamp}}, dataports that hold JSON
    (engine_report, fetch_status...) decoded and indented."""
    admin = _admin(ctx)
    state = admin.call("GET", admin.identity(identity, "/state")).json()
    if aliases:
        state = {a: state[a] for a in aliases if a in state}
    if not raw:
        state = {alias: {k: holding_json(v) if k in ("reported", "set") else v for k, v in entry.items()}
                 for alias, entry in state.items()}
    if as_json:
        click.echo(json.dumps(state, sort_keys=True))
    else:
        _dump(state)


@device.command("write")
@click.argument("identity")
@click.argument("alias")
@click.argument("value")
@click.pass_context
def device_write(ctx: click.Context, identity: str, alias: str, value: str) -> None:
    """Set ALIAS to VALUE from the cloud side (changes only `set`; wakes long polls)."""
    admin = _admin(ctx)
    admin.call("PATCH", admin.identity(identity, "/state"), expect=(204,), json={alias: value})
    click.echo("set %s.%s" % (identity, alias))


@device.command("history")
@click.argument("identity")
@click.argument("alias")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@click.pass_context
def device_history(ctx: click.Context, identity: str, alias: str, limit: int) -> None:
    """Print ALIAS's values as JSON [{timestamp, value}], newest first (timestamps in µs)."""
    admin = _admin(ctx)
    path = admin.identity(identity, "/history/%s" % quote(alias, safe=""))
    _dump(admin.call("GET", path, params={"limit": limit}).json())


@main.group()
def content() -> None:
    """The product's content area (files devices download)."""


@content.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None, help="Content id (default: the file's name).")
@click.option("--type", "content_type", default="application/octet-stream", show_default=True)
@click.option("--meta", default="", help="Free-text meta field shown by content info.")
@click.pass_context
def content_upload(ctx: click.Context, file: str, name: Optional[str], content_type: str, meta: str) -> None:
    """Upload FILE (streamed) to the content area."""
    admin = _admin(ctx)
    name = name or os.path.basename(file)
    try:
        with open(file, "rb") as body:
            resp = admin.call("PUT", admin.content(name), expect=(201,), data=body,
                              headers={"Content-Type": content_type, "X-Content-Meta": meta,
                                       "Content-Length": str(os.fstat(body.fileno()).st_size)})
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (file, exc.strerror or exc))
    click.echo("uploaded %s (%d bytes)" % (name, resp.json()["length"]))


@content.command("list")
@click.option("--device", metavar="IDENTITY", help="Only the files this device uploaded (with their sha256).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def content_list(ctx: click.Context, device: Optional[str], as_json: bool) -> None:
    """List the content area (id, bytes, type; and sha256 for a device's uploads)."""
    admin = _admin(ctx)
    items = admin.call("GET", admin.content(), params={"device": device} if device else None).json()
    if as_json:
        _dump(items)
        return
    for item in items:
        line = "%s\t%d\t%s" % (item["id"], item["length"], item["type"])
        click.echo(line + ("\t%s" % item["sha256"] if item.get("sha256") else ""))


@content.command("download")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def content_download(ctx: click.Context, name: str, dest: Optional[str]) -> None:
    """Save NAME (e.g. a device's upload) as DEST (default: its base name); a device upload's sha256 is checked."""
    import hashlib

    admin = _admin(ctx)
    item = admin.call("GET", admin.content(name)).json()
    dest = dest or name.rsplit("/", 1)[-1]
    part = dest + ".part"
    digest = hashlib.sha256()
    resp = admin.call("GET", admin.content(name), params={"download": "true"}, stream=True)
    try:
        with open(part, "wb") as out:
            for chunk in resp.iter_content(64 * 1024):
                out.write(chunk)
                digest.update(chunk)
        if item.get("sha256") and digest.hexdigest() != item["sha256"]:
            raise CliError("%s: sha256 %s, the device announced %s" % (name, digest.hexdigest(), item["sha256"]))
        os.replace(part, dest)
    except OSError as exc:
        raise CliError("cannot write %s: %s" % (dest, exc.strerror or exc))
    finally:
        if os.path.exists(part):
            os.unlink(part)
    click.echo("saved %s (%d bytes, sha256 %s)" % (dest, os.path.getsize(dest), digest.hexdigest()))


@content.command("delete")
@click.argument("name")
@click.pass_context
def content_delete(ctx: click.Context, name: str) -> None:
    """Delete NAME from the content area."""
    admin = _admin(ctx)
    admin.call("DELETE", admin.content(name), expect=(204,))
    click.echo("deleted %s" % name)


register_fleet_commands(main, device)
