"""Shell completion (click's) for the four commands, as a user enables it: bash sources the
script the command prints, then completes a word."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)  # the suite's console scripts


@pytest.mark.parametrize("prog,words,expected", [
    ("gwe", "gwe sta", "status"),
    ("gwe", "gwe supervisor-config --no", "--no-programs"),
    ("gmq", "gmq cf", "cfg"),  # bare gmq runs the server: completion must not
    ("gdc", "gdc con", "content"),
    ("murano-local", "murano-local device rea", "read"),
])
def test_bash_completes_each_command(gwe_home, prog, words, expected):
    assert os.path.exists(os.path.join(BIN, prog)), "console script %s not installed beside %s" % (prog, sys.executable)
    var = "_%s_COMPLETE" % prog.upper().replace("-", "_")
    function = "_%s_completion" % prog.replace("-", "_")
    script = ('eval "$(%s=bash_source %s)" && COMP_WORDS=(%s) && COMP_CWORD=%d && %s && '
              'printf "%%s\\n" "${COMPREPLY[@]}"' % (var, prog, words, len(words.split()) - 1, function + " " + prog))
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout.split(), result.stdout
    assert result.stderr == ""


def test_zsh_source_is_generated_for_each_command(gwe_home):
    for prog in ("gwe", "gmq", "gdc", "murano-local"):
        var = "_%s_COMPLETE" % prog.upper().replace("-", "_")
        result = subprocess.run([os.path.join(BIN, prog)], env=dict(os.environ, **{var: "zsh_source"}),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "#compdef %s" % prog in result.stdout, (prog, result.stderr)
        if shutil.which("zsh"):
            check = subprocess.run(["zsh", "-n", "-c", result.stdout], capture_output=True, text=True, timeout=60)
            assert check.returncode == 0, check.stderr
