"""Fleet commands of ``murano-local``: tags, ``fleet status``, ``rollout ...`` and ``simulate``.

Thin: each command is one or two calls of the fleet admin API (:mod:`murano_local.fleet_api`)
and a rendering of its JSON; the rules live in the server.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence

import click

from .admin_client import Admin, CliError, dump, dump_rows


def ago(timestamp_us: Optional[int], now: Optional[float] = None) -> str:
    if not timestamp_us:
        return "never"
    seconds = max(0, int((now or time.time()) - timestamp_us / 1e6))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return "%d%s ago" % (seconds // size, unit)
    return "%ds ago" % seconds


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _percent(part: Optional[dict]) -> str:
    return "-" if not part or part.get("percent") is None else "%d%%" % round(part["percent"])


def fleet_rows(gateways: List[dict]) -> str:
    rows = []
    for g in gateways:
        apps = ", ".join("%s %s %s" % (a["name"], a["version"], a["status"]) for a in g["apps"]) or "-"
        fetch = g["fetch_status"]
        gmq = g["gmq"]
        rows.append((g["serial"], ",".join(g["tags"]) or "-", ago(g["last_seen"]), g["gwe_version"] or "-", apps,
                     "%s %s" % (fetch["package"], fetch["status"]) if fetch else "-",
                     "-" if not gmq else ("error" if gmq["error"] else "%s%s" % (
                         gmq["depth"], " alarms:%d" % len(gmq["alarms"]) if gmq["alarms"] else "")),
                     _percent(g["disk"]), _percent(g["memory"]), "; ".join(g["problems"]) or "ok"))
    return table(rows, ("SERIAL", "TAGS", "LAST SEEN", "GWE", "APPS", "LAST INSTALL", "GMQ", "DISK", "MEM",
                        "PROBLEMS"))


def rollout_line(r: dict) -> str:
    c = r["counts"]
    in_flight = c["requested"] + c["installed"]
    return ("%s: %s, %s to %s; batch %d of %d; %d/%d healthy, %d in flight, %d failed (halts at %d)%s"
            % (r["name"], r["state"], r["package"], ",".join(r["tags"]), r["batch"], r["batches"], c["healthy"],
               r["total"], in_flight, c["failed"], r["threshold"], ("; " + r["reason"]) if r["reason"] else ""))


def rollout_detail(r: dict) -> str:
    rows = [(t["serial"], str(t["batch"]), t["state"], ago(t["requested_us"]) if t["requested_us"] else "-",
             t["detail"] or "-") for t in r["targets"]]
    return rollout_line(r) + "\n" + table(rows, ("SERIAL", "BATCH", "STATE", "ASKED", "DETAIL"))


def register_fleet_commands(main: click.Group, device: click.Group) -> None:
    """Add the fleet commands to the ``murano-local`` command group and its ``device`` group."""

    def tags_command(verb: str, change: str, help_text: str):
        @click.argument("identity")
        @click.argument("tags", nargs=-1, required=True)
        @click.pass_context
        def command(ctx: click.Context, identity: str, tags) -> None:
            admin = Admin.of(ctx)
            answer = admin.call("POST", admin.fleet("/gateways/%s/tags" % _q(identity)), brief=True,
                                json={change: list(tags)}).json()
            click.echo("%s: %s" % (identity, ", ".join(answer["tags"]) or "(no tags)"))
        command.__doc__ = help_text
        return device.command(verb)(command)

    tags_command("tag", "add", "Add TAGS to IDENTITY (its groups for fleet status and rollouts).")
    tags_command("untag", "remove", "Remove TAGS from IDENTITY.")

    @main.group()
    def fleet() -> None:
        """The gateways as their reports show them."""

    @fleet.command("status")
    @click.option("--tag", "tags", multiple=True, help="Only gateways with this tag (repeat for any of several).")
    @click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
    @click.pass_context
    def fleet_status(ctx: click.Context, tags, as_json: bool) -> None:
        """One row per gateway: last seen, gwe version, apps, last install, gmq queue, disk, memory."""
        admin = Admin.of(ctx)
        answer = admin.call("GET", admin.fleet("/gateways"), brief=True, params=[("tag", t) for t in tags]).json()
        for tag in tags:
            if tag not in answer["tags"]:
                raise CliError("no gateway has tag %s" % tag)
        if as_json:
            dump_rows(answer["gateways"])
        else:
            click.echo(fleet_rows(answer["gateways"]))

    @main.group()
    def rollout() -> None:
        """Staged rollouts of a package to the gateways of some tags."""

    @rollout.command("create")
    @click.argument("name")
    @click.option("--package", "package_file", required=True, metavar="FILE",
                  help="The <app>.v<version>.tar.gz to roll out (uploaded if the content area lacks it).")
    @click.option("--tag", "tags", multiple=True, required=True, help="Gateways with this tag (repeatable).")
    @click.option("--batch-size", default="1", show_default=True, metavar="N|P%",
                  help="Gateways asked at once: a count or a percentage of the rollout.")
    @click.option("--max-failures", default="1", show_default=True, metavar="N|P%",
                  help="Halt when this many gateways failed.")
    @click.option("--health-window", default=60.0, show_default=True, type=float, metavar="SECONDS",
                  help="How long the app must run after the install before a gateway counts as healthy.")
    @click.option("--fetch-timeout", default=600.0, show_default=True, type=float, metavar="SECONDS",
                  help="A gateway without fetch_status this long after it was asked has failed.")
    @click.option("--report-timeout", default=300.0, show_default=True, type=float, metavar="SECONDS",
                  help="Time past the health window for an engine_report that shows the app RUNNING.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def rollout_create(ctx: click.Context, name: str, package_file: str, tags, batch_size: str, max_failures: str,
                       health_window: float, fetch_timeout: float, report_timeout: float, as_json: bool) -> None:
        """Start rollout NAME: ask the gateways with TAG, one batch at a time, to install the package."""
        from otau.verify import sha256_file

        admin = Admin.of(ctx)
        package = os.path.basename(package_file)
        try:
            sha256 = sha256_file(package_file)
            size = os.path.getsize(package_file)
        except OSError as exc:
            raise CliError("cannot read package %s: %s" % (package_file, exc.strerror or exc))
        found = admin.call("GET", admin.content(package), expect=(200, 404))
        if found.status_code == 404:
            with open(package_file, "rb") as body:
                admin.call("PUT", admin.content(package), expect=(201,), brief=True, data=body,
                           headers={"Content-Type": "application/gzip", "Content-Length": str(size)})
            click.echo("uploaded %s (%d bytes)" % (package, size), err=True)
        answer = admin.call("POST", admin.fleet("/rollouts"), expect=(201,), brief=True, json={
            "name": name, "package": package, "sha256": sha256, "tags": list(tags), "batch_size": batch_size,
            "max_failures": max_failures, "health_window": health_window, "fetch_timeout": fetch_timeout,
            "report_timeout": report_timeout}).json()
        if as_json:
            dump(answer)
        else:
            click.echo(rollout_line(answer))

    @rollout.command("status")
    @click.argument("name", required=False)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def rollout_status(ctx: click.Context, name: Optional[str], as_json: bool) -> None:
        """Every rollout in one line each, or NAME with each of its gateways."""
        admin = Admin.of(ctx)
        answer = admin.call("GET", admin.fleet("/rollouts" + ("/" + _q(name) if name else "")), brief=True).json()
        if as_json:
            dump(answer)
        elif name:
            click.echo(rollout_detail(answer))
        else:
            click.echo("\n".join(rollout_line(r) for r in answer) or "no rollouts")

    def action(verb: str, help_text: str):
        @click.argument("name")
        @click.option("--json", "as_json", is_flag=True)
        @click.pass_context
        def command(ctx: click.Context, name: str, as_json: bool) -> None:
            admin = Admin.of(ctx)
            answer = admin.call("POST", admin.fleet("/rollouts/%s/%s" % (_q(name), verb)), brief=True).json()
            if as_json:
                dump(answer)
            else:
                click.echo(rollout_line(answer))
        command.__doc__ = help_text
        return rollout.command(verb)(command)

    action("pause", "Ask no further batch of NAME (the gateways in flight are still watched).")
    action("resume", "Go on with paused rollout NAME.")
    action("abort", "Stop NAME for good: no further batch, the gateways in flight are no longer watched.")

    @main.command()
    @click.option("--gateways", "count", required=True, type=click.IntRange(1, 100000), help="How many.")
    @click.option("--prefix", default="sim-", show_default=True, help="Serials are PREFIX00001, ...")
    @click.option("--tag", "tags", multiple=True, help="Tag every simulated gateway (repeatable); "
                  "NAME=P% tags that share of them, e.g. --tag canary=10%.")
    @click.option("--mix", default="success=1", show_default=True,
                  help="How gateways answer engine_fetch: success, failed, rolled_back, silent, crash "
                       "with weights, e.g. success=0.9,rolled_back=0.05,silent=0.05.")
    @click.option("--app", "apps", multiple=True, default=("sensor.v1",), show_default=True,
                  help="Apps each gateway runs at start, as NAME.vVERSION (repeatable).")
    @click.option("--report-interval", default=60.0, show_default=True, type=float,
                  help="Seconds between reports (device_info, engine_report, usage_report).")
    @click.option("--poll-interval", default=5.0, show_default=True, type=float,
                  help="Seconds between reads of engine_fetch.")
    @click.option("--install-seconds", default=2.0, show_default=True, type=float,
                  help="How long a simulated install takes.")
    @click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 512))
    @click.option("--duration", default=None, type=float, help="Stop after this many seconds (default: Ctrl-C).")
    @click.option("--seed", default=1, show_default=True, type=int, help="Seed of the outcome draw and the figures.")
    @click.pass_context
    def simulate(ctx: click.Context, count: int, prefix: str, tags, mix: str, apps, report_interval: float,
                 poll_interval: float, install_seconds: float, threads: int, duration: Optional[float],
                 seed: int) -> None:
        """Run COUNT lightweight gateways in this process, talking to the server like gwe."""
        from .simulator import SimulationError, Simulator

        admin = Admin.of(ctx)
        try:
            sim = Simulator(admin.url, admin.product, count, prefix=prefix, tags=tags, mix=mix, apps=apps,
                            report_interval=report_interval, poll_interval=poll_interval,
                            install_seconds=install_seconds, threads=threads, seed=seed)
            started = time.monotonic()
            sim.setup()
        except SimulationError as exc:
            raise CliError(str(exc))
        click.echo("%d gateways whitelisted, tagged and activated in %.1f s; running (Ctrl-C stops)"
                   % (count, time.monotonic() - started), err=True)
        try:
            sim.run(duration)  # stops its threads on the way out, Ctrl-C included
        except KeyboardInterrupt:
            pass
        click.echo(sim.stats_line(), err=True)


def _q(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")
