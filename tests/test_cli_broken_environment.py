"""Every command and subcommand of gwe, gmq, gdc and murano-local, run as a new user would meet
them on a broken gateway: Gateway.cfg, Engine.config and gmq.cfg damaged, no supervisord, no
server. Each must end with one line on stderr and a non-zero exit code (or, for the few that
need none of these, succeed), never a traceback, never hang.

The command lines come from the click trees themselves, so a command added later is run too.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from typing import Dict, Iterator, List, Tuple

import click
import pytest

from harness import free_port

# the four commands: (console script, module run with ``python -m``, its click root)
COMMANDS = (("gwe", "gwe", "gwe.commands_cli:cli"), ("gmq", "gmq", "gmq.commands_cli:cli"),
            ("gdc", "device_client", "device_client.cli:main"), ("murano-local", "murano_local", "murano_local.cli:main"))

# placeholders filled per test: an existing file that is not what it should be, a path that does
# not exist yet, a directory (holding a damaged murano-local database), a URL where nothing listens
FILE, NEW, DIR, URL = "{file}", "{new}", "{dir}", "{url}"

# Lines that may succeed, in the environments named, and why.
BOTH = ("unparsable", "bad-values")
MAY_SUCCEED = {
    ("gwe", "-v"): (BOTH, "prints the version"),
    ("gwe", "-p"): (BOTH, "prints where the package is"),
    ("gwe", "--mac-address", "lo"): (BOTH, "reads the interface, no config"),
    ("gwe", "--gen-key", NEW): (BOTH, "writes a new key pair"),
    ("gwe", "--recover"): (BOTH, "no install was interrupted: nothing to recover"),
    ("gwe", "supervisor-config"): (BOTH, "writes supervisord.conf; reads no config"),
    ("gwe", "supervisor-config", "--no-programs"): (BOTH, "the same"),
    ("gmq", "-g"): (BOTH, "prints gmq.cfg's path"),
    ("gmq", "-v"): (BOTH, "prints the version"),
    ("gdc", "--version"): (BOTH, "prints the version"),
    ("gdc", "usage"): (BOTH, "reads the usage log, which is sound"),
    ("gdc", "usage", "--json"): (BOTH, "the same"),
    ("gdc", "usage", "--flush"): (BOTH, "the same"),
    ("murano-local", "ca"): (BOTH, "makes or prints murano-local's own CA; reads no gateway config"),
    ("gwe", "-C"): (("bad-values",), "prints the cik, which is sound"),
    ("gwe", "--set-host", URL): (("bad-values",), "replaces the one bad value of Gateway.cfg"),
}

# a daemon's log record (gwe, gmq, murano-local serve log to stderr, which supervisord keeps)
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (gmq\[\d+\] )?(DEBUG|INFO|WARNING|ERROR) ")

# Lines not run here, with the test that covers them.
NOT_RUN = {
    ("gwe", "demo"): "builds its own GWE_HOME and servers (tests/test_gwe_demo.py)",
    ("gwe", "demo", "--keep-running"): "the same",
}
# Lines not run in one environment: with gmq.cfg damaged beyond recovery gmq serves on its
# defaults, and its commands talk to the default port, by design (tests/test_gmq_config_damage.py);
# here they would bind or reach 127.0.0.1:8090, which is not this test's.
NOT_RUN_IN = {"unparsable": {("gmq",), ("gmq", "serve"), ("gmq", "status"), ("gmq", "reread"),
                             ("gmq", "clear-alarms")}}


def _root(spec: str) -> click.Command:
    module, _, name = spec.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def _sample(param: click.Parameter) -> str:
    """A plausible value for ``param``: files exist (but hold garbage), numbers are numbers."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, (click.IntRange, click.FloatRange)) or kind in (click.INT, click.FLOAT):
        low = getattr(kind, "min", None)
        return str(1 if low is None else max(low, 1))
    if isinstance(kind, click.Path):
        if not kind.file_okay:
            return DIR
        return FILE if kind.exists or (param.name or "").endswith(("key", "file")) else NEW
    name = (param.name or "").lower()
    metavar = (getattr(param, "metavar", None) or "").upper()
    if "tarball" in name or "buildfile" in name or name in ("file", "install_apps"):
        return FILE
    if "URL" in metavar or name in ("url", "host", "set_host"):
        return URL
    if "SECONDS" in metavar:
        return "60"
    if name in ("gen_key",):
        return NEW
    if name in ("assignments", "points"):
        return "1=1"
    if name in ("mac_address", "set_iface"):
        return "lo"
    return "x"


def _arguments(command: click.Command) -> List[str]:
    out: List[str] = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            out += [_sample(param)] * (param.nargs if param.nargs > 0 else 1)
        elif isinstance(param, click.Option) and param.required:
            out += [param.opts[0], _sample(param)]
    return out


def _option_lines(command: click.Command, flags_only: bool) -> Iterator[List[str]]:
    """Each option of ``command`` on its own: a flag as the non-default form, else with a value."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.required or "--help" in param.opts:
            continue
        if param.is_flag or param.count:
            yield [(param.secondary_opts or param.opts)[0]]
        elif not flags_only:
            yield [param.opts[0], _sample(param)]


def command_lines(prog: str, command: click.Command, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    """Every command that does something: each subcommand with its required arguments, alone and
    with each of its flags (--json, --flush: other code paths); a group that runs without a
    subcommand, alone and with each of its options (gwe's legacy flags are options of the root)."""
    if isinstance(command, click.Group):
        if command.invoke_without_command:
            yield (prog,) + prefix
            for line in _option_lines(command, flags_only=False):
                yield (prog,) + prefix + tuple(line)
        for name in sorted(command.commands):
            yield from command_lines(prog, command.commands[name], prefix + (name,))
    else:
        base = (prog,) + prefix + tuple(_arguments(command))
        yield base
        for line in _option_lines(command, flags_only=True):
            yield base + tuple(line)


def all_lines() -> List[Tuple[str, ...]]:
    lines: List[Tuple[str, ...]] = []
    for prog, _module, spec in COMMANDS:
        for line in command_lines(prog, _root(spec)):
            if line not in lines and line not in NOT_RUN:
                lines.append(line)
    # the original gdc form reads Gateway.cfg for the host
    lines.append(("gdc", "write", "0" * 40, "a", "1"))
    return lines


BROKEN = {
    # not INI at all, no previous generation to recover from
    "unparsable": {"Gateway.cfg": b"\x00\xff[device\ncik = \x00\n", "Engine.config": b"engine]]\n\xff\xfe",
                   "gmq.cfg": b"\x00garbage\n[[server\n"},
    # INI, with values that cannot be used
    "bad-values": {"Gateway.cfg": b"[device]\ncik = short\nmodel = p\nvendor = p\nuuid = gw-1\niface = ''\n"
                                  b"host = not a url\n",
                   "Engine.config": b"[engine]\nupdate_interval = banana\ntransport = pigeon\ndebug_level = LOUD\n"
                                    b"activation_retry_interval = -3\n",
                   "gmq.cfg": b"[server]\nport = banana\n[queue]\nmax_bytes = lots\n"},
}


def broken_environment(tmp: str, kind: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """A GWE_HOME with damaged configs, a stale supervisord socket (nobody listening) and a
    damaged murano-local database; returns (environment, placeholders)."""
    home = os.path.join(tmp, "home")
    etc = os.path.join(home, "etc", "gwe")
    run = os.path.join(home, "run", "gwe")
    for d in (etc, run, os.path.join(tmp, "dir"), os.path.join(tmp, "xdg", "murano-local")):
        os.makedirs(d, exist_ok=True)
    for name, data in BROKEN[kind].items():
        with open(os.path.join(etc, name), "wb") as f:
            f.write(data)
    if kind == "bad-values":  # a socket file left by a supervisord that is gone
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(run, "supervisord.sock"))
        stale.close()
    for data in (os.path.join(tmp, "xdg", "murano-local"), os.path.join(tmp, "dir")):  # --data's default, DIR
        with open(os.path.join(data, "murano_local.sqlite3"), "wb") as f:
            f.write(b"not a database" * 100)
    garbage = os.path.join(tmp, "garbage.v1.tar.gz")
    with open(garbage, "wb") as f:
        f.write(b"\x1f\x8bnot really gzip")
    url = "http://127.0.0.1:%d" % free_port()
    env = dict(os.environ, GWE_HOME=home, XDG_DATA_HOME=os.path.join(tmp, "xdg"), MURANO_LOCAL_URL=url,
               GDC_HOST=url, GDC_SERIAL="gw-1", HOME=tmp)
    return env, {FILE: garbage, NEW: os.path.join(tmp, "new"), DIR: os.path.join(tmp, "dir"), URL: url}


def run_line(line: Tuple[str, ...], env: Dict[str, str], values: Dict[str, str], cwd: str,
             timeout: float = 40.0) -> subprocess.CompletedProcess:
    module = {prog: mod for prog, mod, _ in COMMANDS}[line[0]]
    argv = [values.get(arg, arg) for arg in line[1:]]
    if line[:2] == ("gdc", "write") and "=" not in line[2]:
        env = {k: v for k, v in env.items() if k != "GDC_HOST"}
    return subprocess.run([sys.executable, "-m", module] + argv, env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def kinds(line: Tuple[str, ...]) -> Tuple[str, ...]:
    """gdc (but for its CIK form) and murano-local read neither config file: the bad values
    would only test "no server" again."""
    if line[0] == "murano-local" or (line[0] == "gdc" and line[:3] != ("gdc", "write", "0" * 40)):
        return ("unparsable",)
    return tuple(kind for kind in sorted(BROKEN) if line not in NOT_RUN_IN.get(kind, ()))


CASES = [(line, kind) for line in all_lines() for kind in kinds(line)]


@pytest.mark.parametrize("line,kind", CASES, ids=["%s-%s" % (" ".join(line), kind) for line, kind in CASES])
def test_every_command_fails_cleanly_on_a_broken_gateway(tmp_path, line, kind):
    env, values = broken_environment(str(tmp_path), kind)
    try:
        result = run_line(line, env, values, cwd=str(tmp_path))
    except subprocess.TimeoutExpired as exc:
        pytest.fail("%s hung (no answer in %.0f s)" % (" ".join(line), exc.timeout))
    shown = "%s\nrc=%s\nstdout:\n%s\nstderr:\n%s" % (" ".join(line), result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, shown
    if kind in MAY_SUCCEED.get(line, ((), ""))[0]:
        return
    assert result.returncode != 0, "exit code 0 although the gateway is broken:\n" + shown
    errors = [ln for ln in result.stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)]
    assert len(errors) == 1, "not one line on stderr (beside a daemon's log records):\n" + shown
    assert errors[0].startswith(line[0] + ":"), "the line does not name the command:\n" + shown
    assert result.stderr.rstrip("\n").endswith(errors[0]), "the error is not the last line:\n" + shown


def command_paths(prog: str, command: click.Command, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    yield (prog,) + prefix
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from command_paths(prog, command.commands[name], prefix + (name,))


PATHS = [(spec,) + path for prog, _module, spec in COMMANDS for path in command_paths(prog, _root(spec))]


@pytest.mark.parametrize("prog", [prog for prog, _module, _spec in COMMANDS])
def test_every_command_answers_dash_h(tmp_path, prog):
    """DESIGN.md: every command answers -h as well as --help, on a broken gateway too."""
    env, values = broken_environment(str(tmp_path), "unparsable")
    result = run_line((prog, "-h"), env, values, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: %s " % prog), result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(path[1:]) for path in PATHS])
def test_every_subcommand_answers_dash_h_as_help(path):
    from click.testing import CliRunner

    spec, prog, words = path[0], path[1], list(path[2:])
    short = CliRunner().invoke(_root(spec), words + ["-h"], prog_name=prog)
    assert short.exit_code == 0, short.output
    assert short.output == CliRunner().invoke(_root(spec), words + ["--help"], prog_name=prog).output
    assert short.output.startswith("Usage: %s " % " ".join([prog] + words))
