"""Boot guard for self-updated Gateway Engine programs (gwe, gmq): reverts a crash-looping update.

otau copies this file into ``var/lib/gwe/otau/boot_guard.py`` and, for a self-update, runs
the program as ``python boot_guard.py MARKER VERSION MAX_ATTEMPTS -- <command>``. It must
work even when the new version's Python packages are broken, so it imports nothing from
this project (hence its own few lines of atomic replace).

Each start of VERSION while MARKER says ``pending`` counts an attempt. Past MAX_ATTEMPTS
the previous version is put back on disk (program file, ``current`` link), the marker
becomes ``reverted``, and the previous command is exec'd in place of the new one; the
next ``otau.recover()`` (gwe calls it on start) applies the restored program file to
supervisord and reports ``rolled_back``. A confirmed update removes the marker.
"""
import json
import os
import sys


def _replace(path, data):
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, ".%s.guard-%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _relink(link, target):
    tmp = "%s.guard-%d" % (link, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _revert(marker):
    previous = marker["previous"]
    _replace(marker["conf_path"], previous["conf"].encode("utf-8"))
    if previous.get("version"):  # a factory-installed program has no version directory
        _relink(marker["current_link"], previous.get("current") or previous["version"])


def _exec(argv, directory=None, environment=None):
    env = dict(os.environ)
    env.update(environment or {})
    if directory:
        os.chdir(directory)
    os.execvpe(argv[0], argv, env)


def main(argv):
    if "--" not in argv or len(argv) < 5:
        sys.stderr.write("usage: boot_guard.py MARKER VERSION MAX_ATTEMPTS -- COMMAND...\n")
        return 2
    split = argv.index("--")
    marker_path, version, max_attempts = argv[1], argv[2], int(argv[3])
    command = argv[split + 1:]
    try:
        with open(marker_path, "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        marker = None
    if marker and marker.get("version") == version:
        if marker.get("state") == "pending":
            marker["attempts"] = int(marker.get("attempts", 0)) + 1
            if marker["attempts"] > max_attempts and marker.get("previous"):
                _revert(marker)
                marker["state"] = "reverted"
                sys.stderr.write("boot guard: %s %s failed %d starts; reverted to %s\n"
                                 % (marker.get("name"), version, max_attempts,
                                    marker["previous"].get("version") or "the previous program"))
            _replace(marker_path, json.dumps(marker, sort_keys=True).encode("utf-8"))
        if marker.get("state") == "reverted":
            previous = marker["previous"]
            _exec(previous["argv"], previous.get("directory"), previous.get("environment"))
    _exec(command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
