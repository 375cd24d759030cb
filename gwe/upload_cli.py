"""``gwe upload FILES...``: collect, pack and upload files now, from this shell, reporting each step.

The job runs in this process (not in the daemon) from a private spool directory that the
daemon never reads, and each step is also written to ``upload_status`` as the daemon would.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Optional, Sequence

import click

from atomic_config import gwe_paths


def run_upload(files: Sequence[str], as_json: bool, max_bytes: Optional[int], compress: bool, url: Optional[str],
               method: str, upload_id: Optional[str], give_up_after: float) -> int:
    """Exit code: 0 done, 1 failed (one line on stderr)."""
    from .upload import NotReady, Spool, UploadRunner
    from .upload_collect import CollectError, check_patterns
    from .upload_request import Roots, UploadRequestError, check_request, load_settings

    paths = gwe_paths()
    settings = load_settings(paths)
    doc = {"id": upload_id or "cli-%d" % time.time(), "files": [os.path.abspath(f) for f in files],
           "compress": compress}
    if max_bytes is not None:
        doc["max_bytes"] = max_bytes
    if url is not None:
        doc.update(url=url, method=method)
    try:
        request = check_request(doc, settings, trigger="cli")
        check_patterns(request.patterns, Roots.for_gateway(paths, settings), os.getcwd())
    except (UploadRequestError, CollectError) as exc:
        return _fail("upload refused: %s" % exc)
    directory = os.path.join(paths.var_lib, "uploads", "cli", str(os.getpid()))
    spool = Spool(paths, directory)
    echo = _echo_json if as_json else _echo_human
    runner = UploadRunner(paths, echo=echo, spool=spool, overrides={"give_up_after": give_up_after})
    try:
        if not url:
            runner.device()  # not activated: say so before collecting anything
        job = spool.new_job(request)
        job.advance("queued", step="queued")
        runner.run(job)
    except NotReady as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("upload interrupted")
    finally:
        runner.drop_device()
        shutil.rmtree(directory, ignore_errors=True)
    if job.state != "done":
        return _fail("upload failed (%s): %s" % (job.step, job.error))
    return 0


def _fail(message: str) -> int:
    click.echo("gwe: " + message.replace("\n", " "), err=True)
    return 1


def _echo_json(status: dict) -> None:
    click.echo(json.dumps(status, sort_keys=True))


def _echo_human(status: dict) -> None:
    state = status["state"]
    if state == "collecting":
        click.echo("collecting %s" % status["id"])
    elif state == "uploading" and status["last_error"] and status["retry_in"] is not None:
        click.echo("retrying in %.0fs: %s" % (status["retry_in"], status["last_error"]))
    elif state == "uploading" and not status["bytes_done"]:
        click.echo("uploading %d files, %d bytes, sha256 %s%s" % (
            status["files"], status["size"], status["sha256"],
            "; skipped %d" % len(status["skipped"]) if status["skipped"] else ""))
    elif state == "uploading":
        click.echo("uploading %d/%d bytes" % (status["bytes_done"], status["size"]))
    elif state == "done":
        click.echo("done: %s, %d bytes, sha256 %s" % (status["name"], status["size"], status["sha256"]))
