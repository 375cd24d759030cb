"""Package model, safe unpack of legitimate links, buildfiles, signing, and the gwe CLI for publishers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from otau_helpers import add_special, app_files, write_tarball

import otau
from otau.package import PackageName, find_layout, parse_package_name
from otau.program import read_supervisor_conf, render_program
from otau.unpack import unpack_package


@pytest.mark.parametrize("filename, name, version", [
    ("counter.v1.tar.gz", "counter", "1"),
    ("gmq.v10_0ca92e7.tar.gz", "gmq", "10_0ca92e7"),
    ("device-client.v1-4-13.tar.gz", "device-client", "1-4-13"),
    ("/some/dir/gwe.v1.5.RC68.tar.gz", "gwe", "1.5.RC68"),
    ("send_some_logs.v1.tar.gz", "send_some_logs", "1"),
])
def test_package_names(filename, name, version):
    assert parse_package_name(filename) == PackageName(name, version)


@pytest.mark.parametrize("filename", ["counter.tar.gz", "counter.v1.tgz", ".v1.tar.gz", "a/b.v1.tar.gz/",
                                      "x y.v1.tar.gz", "app.v.tar.gz", "app.v1..2.tar.gz", "app.v1/../x.tar.gz"])
def test_bad_package_names(filename):
    with pytest.raises(otau.PackageError):
        parse_package_name(filename)


def test_layout_top_level_or_single_directory():
    assert find_layout(["install.sh", "supervisor.conf"]).root == ""
    layout = find_layout(["app.v1/install.sh", "app.v1/lib/x.py"])
    assert (layout.root, layout.installer, layout.has_supervisor_conf) == ("app.v1", "install.sh", False)
    assert find_layout(["setup.py"]).installer == "setup.py"
    with pytest.raises(otau.PackageError):
        find_layout(["a/install.sh", "b/x"])


def test_supervisor_conf_duplicates_and_user_keys_win(tmp_path):
    options = read_supervisor_conf("[supervisord]\nCommand = sleep 1\nenvironment = A=1\nEnvironment = A=2\n"
                                   "stdout_logfile_backups = 5\n")
    assert options["environment"] == "A=2"
    program = render_program("x", options, str(tmp_path), {"GWE_APP_NAME": "x"}, str(tmp_path))
    assert "stdout_logfile_backups = 5" in program.conf and "redirect_stderr = true" in program.conf
    assert program.environment == {"GWE_APP_NAME": "x", "A": "2"}
    assert program.argv == ("sleep", "1") and program.directory == str(tmp_path)


def test_legitimate_links_and_modes_are_kept(tmp_path):
    def extra(tf):
        add_special(tf, "bin", tarfile.DIRTYPE)
        add_special(tf, "bin/run", tarfile.SYMTYPE, "../app.py")
        add_special(tf, "copy.py", tarfile.LNKTYPE, "app.py")
    files = dict(app_files("1"), **{"suid": ("x", 0o4777)})
    tarball = write_tarball(str(tmp_path / "linky.v1.tar.gz"), files, extra)
    target = str(tmp_path / "out")
    unpacked = unpack_package(tarball, str(tmp_path / "staging"), target, 1 << 20, 100)
    assert os.readlink(os.path.join(target, "bin", "run")) == "../app.py"
    assert os.stat(os.path.join(target, "copy.py")).st_ino == os.stat(os.path.join(target, "app.py")).st_ino
    assert os.stat(os.path.join(target, "suid")).st_mode & 0o7777 == 0o755
    assert os.stat(os.path.join(target, "install.sh")).st_mode & 0o777 == 0o755
    assert unpacked.entries["copy.py"] == unpacked.entries["app.py"]
    assert not os.path.exists(str(tmp_path / "staging"))


def gwe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gwe", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def write_project(directory):
    os.makedirs(os.path.join(directory, "src", "__pycache__"))
    with open(os.path.join(directory, "install.sh"), "w") as f:
        f.write("#!/bin/sh\ncp -r src \"$GWE_APP_DIR/installed\"\n")
    with open(os.path.join(directory, "supervisor.conf"), "w") as f:
        f.write("[supervisord]\ncommand = %(ENV_GWE_PYTHON)s src/main.py\n")
    with open(os.path.join(directory, "src", "main.py"), "w") as f:
        f.write("print('hi')\n")
    with open(os.path.join(directory, "src", "__pycache__", "main.cpython-311.pyc"), "wb") as f:
        f.write(b"\0")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_build_check_sign_round_trip(tmp_path, fmt, monkeypatch):
    monkeypatch.setenv("GWE_HOME", str(tmp_path / "home"))
    project = str(tmp_path / "project")
    write_project(project)
    spec = {"name": "sine", "version": "2.1", "includes": ["install.sh", "supervisor.conf", "src"],
            "excludes": ["__pycache__", "*.pyc"], "pre_build_cmds": ["echo generated > src/gen.txt"],
            "post_build_cmds": [["sh", "-c", "test -f \"$GWE_BUILD_TARBALL\""]]}
    buildfile = os.path.join(project, "gwe-buildfile." + fmt)
    with open(buildfile, "w") as f:
        if fmt == "json":
            json.dump(spec, f)
        else:
            import yaml
            yaml.safe_dump(spec, f)
    built = gwe("--build-app", buildfile, "--output-dir", str(tmp_path / "dist"))
    assert built.returncode == 0, built.stderr
    tarball = built.stdout.strip()
    assert tarball == str(tmp_path / "dist" / "sine.v2.1.tar.gz")
    with tarfile.open(tarball) as tf:
        names = sorted(tf.getnames())
        assert tf.getmember("install.sh").mode & 0o111
    assert names == ["gwe-manifest.json", "install.sh", "src/gen.txt", "src/main.py", "supervisor.conf"]

    checked = gwe("--check-tarball", tarball)
    assert checked.returncode == 0 and checked.stdout.startswith("[PASS] sine 2.1: install.sh + supervisor.conf")
    assert "signature unsigned" in checked.stdout

    key = str(tmp_path / "keys" / "publisher")
    os.makedirs(os.path.dirname(key))
    assert gwe("--gen-key", key).returncode == 0
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert gwe("--gen-key", key).returncode == 1  # never overwrites a key
    signed = gwe("--sign-tarball", tarball, "--key", key)
    assert signed.returncode == 0, signed.stderr
    unknown = json.loads(gwe("--check-tarball", tarball, "--json").stdout)
    assert unknown["ok"] and unknown["signature"].startswith("unverified")
    trusted = tmp_path / "home" / "etc" / "gwe" / "trusted_keys"
    trusted.mkdir(parents=True)
    os.rename(key + ".pub", str(trusted / "publisher.pub"))
    verified = json.loads(gwe("--check-tarball", tarball, "--json").stdout)
    assert verified["ok"] and verified["signature"].startswith("verified")


def test_cli_errors_are_one_line(tmp_path):
    hostile = write_tarball(str(tmp_path / "evil.v1.tar.gz"), dict(app_files("1"), **{"../x": "x"}))
    for args, fragment in [
        (["--check-tarball", hostile], "[FAIL] %s: path traversal" % hostile),
        (["--check-tarball", str(tmp_path / "nope.v1.tar.gz")], "no such file"),
        (["--build-app", str(tmp_path / "missing.json")], "cannot read buildfile"),
        (["--sign-tarball", hostile], "needs --key"),
    ]:
        proc = gwe(*args)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_bad_buildfiles(tmp_path):
    cases = {
        "noname.json": ({"version": "1", "includes": ["x"]}, "'name' is missing"),
        "badname.json": ({"name": "a b", "version": "1", "includes": ["x"]}, "bad app name"),
        "noinc.json": ({"name": "a", "version": "1", "includes": []}, "'includes' is empty"),
        "nomatch.json": ({"name": "a", "version": "1", "includes": ["nothing*"]}, "matches nothing"),
        "failing.json": ({"name": "a", "version": "1", "includes": ["x"], "pre_build_cmds": ["echo boom; exit 4"]},
                         "exited with 4 "),
        "noinstaller.json": ({"name": "a", "version": "1", "includes": ["x"]}, "no install.sh or setup.py"),
    }
    (tmp_path / "x").write_text("x")
    for filename, (doc, fragment) in cases.items():
        path = tmp_path / filename
        path.write_text(json.dumps(doc))
        with pytest.raises(otau.BuildError, match=fragment.replace("(", r"\(")):
            otau.build_app(str(path))


def test_build_refuses_a_symlink_leading_outside(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "install.sh").write_text("#!/bin/sh\n")
    (tmp_path / "shared.py").write_text("x = 1\n")
    os.symlink("../shared.py", str(project / "shared.py"))
    (project / "b.json").write_text(json.dumps({"name": "a", "version": "1", "includes": ["install.sh", "shared.py"]}))
    with pytest.raises(otau.BuildError, match="points outside the package"):
        otau.build_app(str(project / "b.json"))
    os.unlink(str(project / "shared.py"))
    os.symlink("install.sh", str(project / "shared.py"))
    tarball = otau.build_app(str(project / "b.json"))
    assert otau.check_tarball(tarball).ok


def interactive_buildfile(directory):
    """Like gmq-sine-demo's gwe.build: a pre-build command asks a question and bakes the answer in."""
    directory.mkdir()
    (directory / "install.sh").write_text("#!/bin/sh\ncp answer.txt \"$GWE_APP_DIR/copied\"\n")
    ask = "printf 'Install where? ' >&2; read -r answer; echo \"building for $answer\"; echo \"$answer\" > answer.txt"
    spec = {"name": "asker", "version": "1", "includes": ["install.sh", "answer.txt"], "pre_build_cmds": [ask],
            "post_build_cmds": [["sh", "-c", "echo post; exit 3"]]}
    (directory / "build.json").write_text(json.dumps(spec))
    return directory / "build.json"


def gwe_build(buildfile, stdin, *extra):
    return subprocess.run([sys.executable, "-m", "gwe", "--build-app", str(buildfile), *extra], stdin=stdin,
                          capture_output=True, text=True, timeout=60, cwd=str(buildfile.parent))


def test_build_command_reads_the_callers_input_and_streams_its_output(tmp_path):
    buildfile = interactive_buildfile(tmp_path / "src")
    done = subprocess.run([sys.executable, "-m", "gwe", "--build-app", str(buildfile)], input="/opt/sine\n",
                          capture_output=True, text=True, timeout=60)
    # the post-build command fails: the build fails with its exit code, after the output of both
    assert done.returncode == 3, done
    assert "Install where? building for /opt/sine" in done.stderr and "post" in done.stderr
    assert "exited with 3" in done.stderr.splitlines()[-1]
    with tarfile.open(tmp_path / "src" / "asker.v1.tar.gz") as tf:
        assert tf.extractfile("answer.txt").read() == b"/opt/sine\n"


def test_build_without_a_terminal_or_input_fails_when_a_command_waits_for_input(tmp_path):
    buildfile = interactive_buildfile(tmp_path / "src")
    started = time.monotonic()
    done = gwe_build(buildfile, subprocess.DEVNULL)
    assert done.returncode == 1, done
    last = done.stderr.strip().splitlines()[-1]
    assert "gwe: build command" in last and "waits for input" in last and "no terminal" in last, done.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "src" / "answer.txt").exists()  # the answer was never baked as an empty one
    assert not (tmp_path / "src" / "asker.v1.tar.gz").exists()


def test_build_from_a_terminal_gets_the_typed_answer(tmp_path):
    import pty

    buildfile = interactive_buildfile(tmp_path / "src")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gwe", "--build-app", str(buildfile)], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(slave)
        os.write(master, b"/srv/typed\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 3 and "building for /srv/typed" in err, (out, err)
    with tarfile.open(tmp_path / "src" / "asker.v1.tar.gz") as tf:
        assert tf.extractfile("answer.txt").read() == b"/srv/typed\n"
