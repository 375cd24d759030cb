"""A buildfile's pre/post-build commands: the publisher's own, run as if typed at the caller's shell.

They get the caller's stdin and their output streams to the caller's stderr as it comes (stdout
stays free for the package path ``gwe --build-app`` prints). A command that fails fails the build
with its exit code. Interactive build scripts (gmq-sine-demo's ``gwe.build`` asks questions) work
from a terminal or with the answers piped in; without a terminal and with no input at all, a
command that reads stdin would read EOF and bake empty answers into the package, so it is
stopped instead and the build fails saying why. That a command waits on its stdin is read from
``/proc`` (the process is asleep in a pipe read on that pipe); where there is no ``/proc`` it
gets EOF, as it would have from ``/dev/null``.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Dict, List, Union

from .errors import BuildError

Command = Union[str, List[str]]
POLL_S = 0.1
CHUNK = 65536
BLOCKED_POLLS = 3  # a read seen blocked this many polls in a row is a wait for input
NO_INPUT_EXIT = 1


class BuildCommands:
    """Runs one build's commands; the caller's input left over by one command goes to the next."""

    def __init__(self) -> None:
        self.stdin_tty = _isatty(0)
        self.pending = b""       # read from the caller's stdin, not yet taken by a command
        self.eof = not _is_open(0)
        self.given = 0           # bytes of input the caller gave in all

    def run(self, cmd: Command, cwd: str, env: Dict[str, str]) -> None:
        """Run one command (a string through ``/bin/sh -c``, a list as argv); BuildError when it fails."""
        shell = isinstance(cmd, str)
        try:
            if self.stdin_tty:
                proc = subprocess.Popen(cmd, shell=shell, cwd=cwd, env=env, stdout=sys.stderr.fileno(),
                                        stderr=sys.stderr.fileno())
                code = proc.wait()
            else:
                code = self._relayed(cmd, shell, cwd, env)
        except OSError as exc:
            raise BuildError("build command %r failed to start: %s" % (cmd, exc))
        if code != 0:
            raise BuildError("build command %r exited with %d (its output is above)" % (cmd, code), exit_code=code)

    def _relayed(self, cmd: Command, shell: bool, cwd: str, env: Dict[str, str]) -> int:
        """Without a terminal: the command reads a pipe that this loop fills from the caller's stdin."""
        read_fd, write_fd = os.pipe()
        pipe_inode = os.fstat(read_fd).st_ino
        try:
            proc = subprocess.Popen(cmd, shell=shell, cwd=cwd, env=env, stdin=read_fd, stdout=sys.stderr.fileno(),
                                    stderr=sys.stderr.fileno(), start_new_session=True)
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)
        blocked = 0
        try:
            while proc.poll() is None:
                write_fd = self._pump(write_fd)
                if write_fd >= 0 and self.eof and not self.pending and not self.given:
                    if not os.path.isdir("/proc/%d" % proc.pid):  # no /proc: EOF, as from /dev/null
                        os.close(write_fd)
                        write_fd = -1
                        continue
                    blocked = blocked + 1 if _waits_on(proc.pid, pipe_inode) else 0
                    if blocked >= BLOCKED_POLLS:
                        raise BuildError("build command %r waits for input, but gwe --build-app has no terminal "
                                         "and was given no input; run it from a terminal, or pipe the answers in "
                                         "(printf 'answer\\n' | gwe --build-app ...)" % (cmd,),
                                         exit_code=NO_INPUT_EXIT)
            return proc.returncode
        finally:
            if proc.poll() is None:  # stopped before its stdin closes: EOF would let it go on
                _kill_group(proc.pid)
                proc.wait()
            if write_fd >= 0:
                os.close(write_fd)

    def _pump(self, write_fd: int) -> int:
        """Move the caller's input towards the command for up to one poll; returns the pipe's fd
        (-1 once closed: all input given and taken, so the command sees EOF)."""
        readers = [0] if not self.eof and len(self.pending) < CHUNK and write_fd >= 0 else []
        writers = [write_fd] if self.pending and write_fd >= 0 else []
        readable, writable, _ = select.select(readers, writers, [], POLL_S)
        if readable:
            try:
                chunk = os.read(0, CHUNK)
            except OSError:
                chunk = b""
            if chunk:
                self.pending += chunk
                self.given += len(chunk)
            else:
                self.eof = True
        if writable:
            try:
                self.pending = self.pending[os.write(write_fd, self.pending):]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # the command closed its stdin: what is left stays for the next one
                pass
        if write_fd >= 0 and self.eof and not self.pending and self.given:
            os.close(write_fd)
            return -1
        return write_fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _waits_on(pgid: int, pipe_inode: int) -> bool:
    """Is a process of group ``pgid`` asleep reading the pipe ``pipe_inode`` (its stdin)?"""
    import psutil

    target = "pipe:[%d]" % pipe_inode
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            with open("/proc/%d/wchan" % proc.pid) as f:
                wchan = f.read()
            if "pipe_read" in wchan or "pipe_wait" in wchan:
                if any(os.readlink("/proc/%d/fd/%s" % (proc.pid, fd)) == target
                       for fd in os.listdir("/proc/%d/fd" % proc.pid)):
                    return True
        except (OSError, psutil.Error):
            continue
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
