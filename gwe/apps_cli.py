"""What the gwe CLI's app flags do: install, build, check, sign, recover (all through otau).

Each handler prints the human result on stdout (or fetch_status JSON with ``--json``) and
returns the exit code; errors become one line on stderr via :class:`CliError`.
"""
from __future__ import annotations

import json
from typing import List, Optional, Sequence

import click


class CliError(Exception):
    """Reported as one line on stderr with exit code ``code`` (1 unless said)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _emit_json(doc) -> None:
    click.echo(json.dumps(doc, sort_keys=True))


def install_apps(tarballs: Sequence[str], as_json: bool, force: bool = False) -> int:
    import otau

    statuses = []
    for tarball in tarballs:
        status = otau.install_package(tarball, force=force)
        statuses.append(status)
        if as_json:
            _emit_json(status.to_dict())  # one fetch_status per line
        elif status.ok:
            click.echo(status.summary())
    failed = [s for s in statuses if not s.ok]
    if failed:
        raise CliError("; ".join(s.summary() for s in failed))
    return 0


def build_app(buildfile: str, output_dir: Optional[str], key: Optional[str], as_json: bool) -> int:
    import otau

    try:
        path = otau.build_app(buildfile, output_dir=output_dir, key_path=key)
    except otau.BuildError as exc:  # a failing build command: its exit code
        raise CliError(str(exc), exc.exit_code)
    except otau.OtauError as exc:
        raise CliError(str(exc))
    if as_json:
        _emit_json({"tarball": path, "signed": bool(key)})
    else:
        click.echo(path)
    return 0


def check_tarball(tarball: str, as_json: bool) -> int:
    import otau

    report = otau.check_tarball(tarball)
    if as_json:
        _emit_json({"tarball": tarball, "ok": report.ok, "problems": report.problems,
                    "signature": report.signature, "installer": report.installer,
                    "supervised": report.has_program})
    elif report.ok:
        click.echo("[PASS] %s %s: %s%s, signature %s" % (
            report.package.name, report.package.version, report.installer,
            " + supervisor.conf" if report.has_program else " (one-off)", report.signature))
    if not report.ok:
        raise CliError("[FAIL] %s: %s" % (tarball, "; ".join(report.problems)))
    return 0


def sign_tarball(tarball: str, key: Optional[str], as_json: bool) -> int:
    import otau

    if not key:
        raise CliError("--sign-tarball needs --key PRIVATE_KEY_FILE")
    try:
        path = otau.sign_tarball(tarball, key)
    except otau.OtauError as exc:
        raise CliError(str(exc))
    if as_json:
        _emit_json({"tarball": path})
    else:
        click.echo("signed %s" % path)
    return 0


def gen_key(path: str, as_json: bool) -> int:
    import otau

    try:
        private, public = otau.generate_keypair(path)
    except otau.OtauError as exc:
        raise CliError(str(exc))
    if as_json:
        _emit_json({"private_key": private, "public_key": public})
    else:
        click.echo("private key: %s (keep it secret)\npublic key:  %s (copy it into etc/gwe/trusted_keys/ "
                   "on gateways)" % (private, public))
    return 0


def recover_installs(as_json: bool) -> int:
    import otau

    statuses: List = otau.recover()
    if as_json:
        _emit_json([s.to_dict() for s in statuses])
    else:
        for status in statuses:
            click.echo("recovered: " + status.summary())
        if not statuses:
            click.echo("no interrupted install")
    return 0
