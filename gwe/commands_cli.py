"""The ``gwe`` command's click CLI (see :mod:`gwe.cli`): legacy flags as options of one click group, modern subcommands beside them.

Legacy gwe took ``-I/--install-apps A B C`` (argparse ``nargs='+'``); click options take one
value each, so :func:`main` first rewrites ``-I A B C`` into ``-I A -I B -I C``.
Each legacy flag is handled by a small function that calls into the library packages;
more flags and subcommands (``gwe demo``, ``gwe status``) are added the same way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import List, Optional, Sequence

import click

from . import __version__
from .daemon_cli import run_daemon

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
@click.option("-p", "--path", "show_path", is_flag=True, help="Print where the gwe Python package is installed.")
@click.option("-g", "--gateway-cfg", "show_gateway_cfg", is_flag=True, help="Print Gateway.cfg.")
@click.option("-e", "--engine-conf", "show_engine_cfg", is_flag=True, help="Print the engine settings.")
@click.option("-C", "--gateway-cik", "show_cik", is_flag=True, help="Print the gateway's CIK ('' before activation).")
@click.option("--mac-address", metavar="IFACE", help="Print the MAC address of IFACE.")
@click.option("-o", "--once", is_flag=True, help="Run one cycle of the daemon (activate, report, check) and exit.")
@click.option("-c", "--set-cik", metavar="CIK", help="Set the CIK (token) in Gateway.cfg.")
@click.option("-m", "--set-model", metavar="MODEL")
@click.option("-r", "--set-vendor", metavar="VENDOR")
@click.option("-P", "--set-product-id", "--product-id", "set_product_id", metavar="PRODUCT_ID",
              help="Set both vendor and model to PRODUCT_ID.")
@click.option("-u", "--set-uuid", metavar="UUID", help="Set the serial ('' clears it).")
@click.option("-i", "--set-iface", metavar="IFACE", help="Take the serial from IFACE's MAC address.")
@click.option("--set-host", metavar="URL", help="Murano base URL (default https://<product_id>.m2.exosite.io).")
@click.option("-l", "--set-act-retry-interval", metavar="SECONDS", help="Seconds between activation attempts.")
@click.option("-d", "--set-debug-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                                           case_sensitive=False))
@click.option("-t", "--set-update-interval", metavar="SECONDS", help="Seconds between reports.")
@click.option("-a", "--set-user-agent", metavar="USER_AGENT", help="User-Agent ('' restores the default).")
@click.option("--set-transport", type=click.Choice(["http", "mqtt"]), help="Talk to Murano over HTTP or MQTT.")
@click.option("--set-mqtt-url", metavar="URL", help="MQTT endpoint (default mqtts://<host>:8883).")
@click.option("-I", "--install-apps", "install_apps", multiple=True, metavar="APP_TARBALL...",
              help="Install or update app packages <name>.v<version>.tar.gz now.")
@click.option("--force", is_flag=True, help="With -I: reinstall a version that is already installed.")
@click.option("--build-app", "build_buildfile", metavar="BUILDFILE", help="Build an app package from a buildfile.")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Where --build-app writes the package.")
@click.option("-z", "--check-tarball", "--check-tarfile", "check_tarball", metavar="TARBALL",
              help="Check a package without installing it; print what is wrong.")
@click.option("--sign-tarball", metavar="TARBALL", help="Add a signed manifest to a package (needs --key).")
@click.option("--key", type=click.Path(dir_okay=False), help="Private key for --sign-tarball or --build-app.")
@click.option("--gen-key", metavar="KEYFILE", help="Create an ed25519 key pair KEYFILE and KEYFILE.pub.")
@click.option("--recover", "recover_installs", is_flag=True,
              help="Finish or undo an install that a crash or power cut interrupted.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (fetch_status JSON).")
@click.pass_context
def cli(ctx: click.Context, show_version: bool, show_path: bool, show_gateway_cfg: bool, show_engine_cfg: bool,
        show_cik: bool, mac_address: Optional[str], once: bool, set_product_id: Optional[str],
        install_apps: tuple, force: bool, build_buildfile: Optional[str], output_dir: Optional[str],
        check_tarball: Optional[str], sign_tarball: Optional[str], key: Optional[str], gen_key: Optional[str],
        recover_installs: bool, as_json: bool, **settings: Optional[str]) -> None:
    """Gateway Engine. With no option, runs the gwe daemon (as supervisord does)."""
    if settings.get("set_debug_level"):
        logging.getLogger().setLevel(settings["set_debug_level"].upper())
    if ctx.invoked_subcommand is not None:
        return
    from . import apps_cli, config_cli
    from .config import ConfigError

    try:
        if show_version:
            click.echo(__version__)
            return
        if show_path:
            click.echo(os.path.dirname(os.path.abspath(__file__)))
            return
        configured, problems = config_cli.apply_settings(settings, set_product_id, as_json)
        if show_gateway_cfg:
            problems += config_cli.echo_gateway_cfg(as_json)
        if show_engine_cfg:
            problems += config_cli.echo_engine_cfg(as_json)
        if show_cik:
            config_cli.print_cik(as_json)
        if mac_address:
            config_cli.print_mac(mac_address)
        if gen_key:
            sys.exit(apps_cli.gen_key(gen_key, as_json))
        if build_buildfile:
            sys.exit(apps_cli.build_app(build_buildfile, output_dir, key, as_json))
        if sign_tarball:
            sys.exit(apps_cli.sign_tarball(sign_tarball, key, as_json))
        if check_tarball:
            sys.exit(apps_cli.check_tarball(check_tarball, as_json))
        if recover_installs:
            sys.exit(apps_cli.recover_installs(as_json))
        if install_apps:
            sys.exit(apps_cli.install_apps(install_apps, as_json, force))
        if configured or show_gateway_cfg or show_engine_cfg or show_cik or mac_address:
            if problems:  # what was printed holds values gwe cannot use
                fail(problems[0] + ("" if len(problems) == 1 else " (and %d more above)" % (len(problems) - 1)))
            return
    except apps_cli.CliError as exc:
        fail(str(exc), exc.code)
    except ConfigError as exc:
        fail(str(exc))
    except Exception as exc:  # one line, never a traceback
        logging.getLogger(__name__).debug("gwe failed", exc_info=True)
        fail("%s: %s" % (type(exc).__name__, exc))
    sys.exit(run_daemon(once, settings.get("set_debug_level")))


@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave everything running at the end (Ctrl-C stops it).")
def demo(keep_running: bool) -> None:
    """Run the whole suite on this machine against a local Murano, and show what it does."""
    from .demo import run_demo

    sys.exit(run_demo(keep_running))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--wait", "wait_for", metavar="APP[=VERSION]",
              help="First wait until APP runs and no install is in progress (exit 1 if its install fails).")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds --wait waits at most.")
def status(as_json: bool, wait_for: Optional[str], timeout: float) -> None:
    """Installed apps, versions, supervisord states, an install in progress, the last installs and gmq's queue."""
    from .status import gateway_status, render_status, wait_until_up

    problem = None
    if wait_for:
        app, _, version = wait_for.partition("=")
        doc, problem = wait_until_up(app, version or None, timeout)
    else:
        doc = gateway_status()
    click.echo(json.dumps(doc, indent=2, sort_keys=True) if as_json else render_status(doc))
    if problem or doc["problems"]:
        fail(problem or doc["problems"][0])


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print each step's upload_status as one JSON line.")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Largest archive (default and cap: [upload] max_bytes).")
@click.option("--no-compress", "plain", is_flag=True, help="A plain tar instead of tar.gz.")
@click.option("--url", help="Upload to this http(s) URL (PUT/POST) instead of the Murano content area.")
@click.option("--method", type=click.Choice(["PUT", "POST"]), default="PUT", show_default=True)
@click.option("--id", "upload_id", help="The upload's id in upload_status (default cli-<time>).")
@click.option("--give-up-after", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds of failed attempts before giving up.")
def upload(files, as_json, max_bytes, plain, url, method, upload_id, give_up_after) -> None:
    """Pack FILES (paths or globs inside the allowed roots) and upload them, reporting each step."""
    from .upload_cli import run_upload

    try:
        code = run_upload(files, as_json, max_bytes, not plain, url, method, upload_id, give_up_after)
    except Exception as exc:  # one line, never a traceback
        logging.getLogger(__name__).debug("gwe upload failed", exc_info=True)
        fail("%s: %s" % (type(exc).__name__, exc))
    sys.exit(code)


@cli.command("supervisor-config")
@click.option("--bin-dir", type=click.Path(file_okay=False), help="Where the gwe and gmq commands are "
              "(default: beside this Python).")
@click.option("--programs/--no-programs", default=True, help="Also write the gwe and gmq program files.")
def supervisor_config(bin_dir: Optional[str], programs: bool) -> None:
    """Write supervisord.conf (and the gwe/gmq program files) for this GWE_HOME."""
    from atomic_config import gwe_paths

    from .supervisor_conf import missing_commands, write_suite_configs

    missing = missing_commands(bin_dir or os.path.dirname(sys.executable)) if programs else []
    if missing:
        fail("%s has no %s: give --bin-dir, the bin directory of the virtualenv the suite is installed in "
             "(e.g. /opt/gateway-engine/venv/bin); nothing written"
             % (bin_dir or os.path.dirname(sys.executable), " or ".join(missing)))
    try:
        written = write_suite_configs(gwe_paths(), bin_dir, programs)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    for path in written:
        click.echo(path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.ERROR, format="gwe: %(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    cli.main(args=expand_install_args(args), prog_name="gwe")
