"""The one line each command prints when a new user gets something wrong, and its exit code
(issue 18's list: each named what was wrong but not what to do, or exited 0)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from harness import free_port


def run(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_gdc_read_before_activation_says_which_command_activates(gwe_home):
    url = "http://127.0.0.1:%d" % free_port()
    result = run("device_client", "--host", url, "--serial", "gw-1", "read", "temp")
    assert result.returncode == 3
    assert result.stderr == ("gdc: error: not activated: no token for gw-1 yet: run 'gdc --host %s --serial gw-1 "
                             "activate' first (or give --token)\n" % url)


def test_gmq_names_the_address_it_cannot_listen_on(gwe_home):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        assert run("gmq", "cfg", "set", "server", "port", str(port)).returncode == 0
        result = run("gmq")
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr == ("gmq: cannot listen on 127.0.0.1:%d: Address already in use: stop what listens there, "
                             "or give gmq another port (gmq cfg set server port N)\n" % port)


def test_murano_local_names_the_url_nothing_answers_at_and_what_to_do(gwe_home):
    port = free_port()
    result = run("murano_local", "--url", "http://127.0.0.1:%d" % port, "device", "list")
    assert result.returncode == 1
    assert result.stderr == ("murano-local: error: nothing answers at http://127.0.0.1:%d (connection refused): "
                             "start the server (murano-local serve --port %d) or point --url (or MURANO_LOCAL_URL) "
                             "at the one running\n" % (port, port))
    result = run("murano_local", "--url", "127.0.0.1:8080", "device", "list")
    assert (result.returncode, result.stderr) == (1, "murano-local: error: --url '127.0.0.1:8080' is not an http:// "
                                                     "or https:// URL (e.g. http://127.0.0.1:8080)\n")


def test_gwe_status_without_supervisord_exits_1_naming_the_socket(gwe_home):
    sock = os.path.join(str(gwe_home), "run", "gwe", "supervisord.sock")
    conf = os.path.join(str(gwe_home), "etc", "supervisor", "supervisord.conf")
    result = run("gwe", "status")
    assert result.returncode == 1
    assert result.stderr == ("gwe: supervisord is not answering on %s (no such socket): start it with supervisord "
                             "-c %s (on an installed gateway: systemctl start gateway-engine)\n" % (sock, conf))
    assert "APP" in result.stdout  # what can be read locally is still shown
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)  # left by a supervisord that is gone
    stale.close()
    result = run("gwe", "status", "--json")
    assert result.returncode == 1
    assert "(Connection refused)" in result.stderr or "[Errno 111]" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and sock in result.stderr


def test_gwe_set_iface_refuses_an_interface_this_machine_lacks(gwe_home):
    import psutil

    result = run("gwe", "--set-iface", "nosuchif")
    assert result.returncode == 1
    assert result.stderr == ("gwe: interface 'nosuchif' not found on this machine (it has %s); nothing changed: "
                             "name one of them, or give the serial itself with gwe --set-uuid SERIAL\n"
                             % ", ".join(sorted(psutil.net_if_addrs())))
    assert not os.path.exists(os.path.join(str(gwe_home), "etc", "gwe", "Gateway.cfg"))
    result = run("gwe", "--set-iface", "lo")
    assert result.returncode == 0
    assert result.stdout.startswith("Found interface 'lo' with MAC address (serial/uuid): ")


def test_gwe_set_host_refuses_what_is_not_a_url(gwe_home):
    result = run("gwe", "--set-host", "127.0.0.1:8080")
    assert result.returncode == 1
    assert result.stderr == ("gwe: Gateway.cfg: host = '127.0.0.1:8080' is not an http:// or https:// URL: fix it "
                             "with gwe --set-host URL ('' for https://<product_id>.m2.exosite.io)\n")
    assert not os.path.exists(os.path.join(str(gwe_home), "etc", "gwe", "Gateway.cfg"))


def test_supervisor_config_refuses_a_bin_dir_without_the_commands(gwe_home):
    result = run("gwe", "supervisor-config", "--bin-dir", "/nonexistent")
    assert result.returncode == 1
    assert result.stderr == ("gwe: /nonexistent has no gwe or gmq: give --bin-dir, the bin directory of the "
                             "virtualenv the suite is installed in (e.g. /opt/gateway-engine/venv/bin); nothing "
                             "written\n")
    assert not os.path.exists(os.path.join(str(gwe_home), "etc", "supervisor"))
    result = run("gwe", "supervisor-config", "--bin-dir", os.path.dirname(sys.executable))
    assert result.returncode == 0, result.stderr


def test_engine_config_value_gwe_cannot_use_is_shown_and_refused(gwe_home):
    etc = os.path.join(str(gwe_home), "etc", "gwe")
    os.makedirs(etc)
    path = os.path.join(etc, "Engine.config")
    with open(path, "w") as f:
        f.write("[engine]\nupdate_interval = banana\n")
    result = run("gwe", "-e")
    assert result.returncode == 1
    assert "update_interval = banana\n" in result.stdout
    assert result.stderr == ("gwe: %s: update_interval must be a number of seconds, not 'banana'; fix it with "
                             "gwe -t SECONDS (gwe uses 14400 until then)\n" % path)
    fixed = run("gwe", "-t", "600")
    assert fixed.returncode == 0 and "update_interval = 600\n" in fixed.stdout, fixed.stderr


def test_the_daemon_runs_with_the_default_for_an_unusable_engine_setting(gwe_home, caplog):
    """A hand edit gwe cannot use must not keep the gateway from reporting: default, and a warning."""
    from gwe import config

    os.makedirs(os.path.join(str(gwe_home), "etc", "gwe"))
    with open(config.engine_config_path(), "w") as f:
        f.write("[engine]\nupdate_interval = banana\ntransport = pigeon\ndebug_level = debug\n")
    settings = config.load_engine_settings()
    assert (settings["update_interval"], settings["transport"], settings["debug_level"]) == ("14400", "http", "DEBUG")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and "'banana'" in warned[0] and "'pigeon'" in warned[1]


def test_a_damaged_config_is_one_line_saying_to_repair_or_remove_it(gwe_home):
    etc = os.path.join(str(gwe_home), "etc", "gwe")
    os.makedirs(etc)
    for name in ("Gateway.cfg", "gmq.cfg"):
        with open(os.path.join(etc, name), "wb") as f:
            f.write(b"no section\n[[\n")
    # (gmq itself serves on its defaults then, with an alarm: tests/test_gmq_config_damage.py)
    for module, args, prefix in (("gwe", ["-g"], "gwe: Gateway.cfg unreadable: "),
                                 ("gmq", ["cfg"], "gmq: gmq.cfg unreadable: "),
                                 ("gmq", ["cfg", "set", "server", "port", "8091"], "gmq: gmq.cfg unreadable, nothing "
                                                                                  "changed: ")):
        result = run(module, *args)
        assert result.returncode == 1, (module, args, result.stderr)
        assert result.stderr.startswith(prefix) and result.stderr.count("\n") == 1, (module, args, result.stderr)
        assert result.stderr.endswith(" is unparsable (File contains no section headers. file: '<string>', "
                                      "line: 1 'no section\\n') and has no previous generation: repair or remove "
                                      "it\n"), result.stderr


def test_murano_local_serve_detach_returns_once_it_answers(tmp_path):
    import requests

    port = free_port()
    data = str(tmp_path / "ml")
    result = run("murano_local", "serve", "--port", str(port), "--data", data, "--detach")
    pid_file = os.path.join(data, "murano-local.pid")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == open(pid_file).read().strip()
        assert requests.get("http://127.0.0.1:%d/timestamp" % port, timeout=5).status_code == 200  # no wait needed
        again = run("murano_local", "serve", "--port", str(port), "--data", str(tmp_path / "other"), "--detach")
        assert (again.returncode, again.stderr) == (1, "murano-local: error: something already answers at "
                                                       "http://127.0.0.1:%d: stop it, or choose another --port\n" % port)
    finally:
        if os.path.exists(pid_file):
            os.kill(int(open(pid_file).read()), 15)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "murano_local.sqlite3").write_bytes(b"not a database" * 100)
    failed = run("murano_local", "serve", "--port", str(free_port()), "--data", str(bad), "--detach")
    assert failed.returncode == 1
    assert failed.stderr.startswith("murano-local: error: the server exited (1): cannot use data directory %s" % bad)
    assert failed.stderr.count("\n") == 1
    assert run("murano_local", "serve", "--port", "0", "--detach").stderr == (
        "murano-local: error: --detach needs a --port: with 0 nobody would know which one it took\n")


def test_release_refuses_a_python_without_the_suite_before_building(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    result = subprocess.run([os.path.join(root, "scripts", "release"), "--python", python, "--output-dir",
                             str(tmp_path / "dist")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == ("scripts/release: %s cannot build the packages (ModuleNotFoundError: No module named "
                             "'click'): give --python the python of a virtualenv with the suite installed "
                             "(scripts/demo makes .venv)\n" % python)
    assert not (tmp_path / "dist").exists()  # refused before anything was made
