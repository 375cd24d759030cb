"""The ``engine_fetch`` job: parse what the cloud asked for, fetch each package, install it."""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional

from atomic_config import GwePaths

if TYPE_CHECKING:
    from otau import FetchStatus, PackageName

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_JOBS = 32
SELF = "gwe"


class FetchRequestError(ValueError):
    """``engine_fetch`` holds something that is not a valid install request."""


@dataclass(frozen=True)
class InstallJob:
    package: "PackageName"     # the request's name, parsed once here
    sha256: Optional[str] = None
    force: bool = False        # reinstall even if this version is already installed

    @property
    def name(self) -> str:
        return self.package.filename


def parse_engine_fetch(raw: str) -> List[InstallJob]:
    """``{"install": [{"name": "<app>.v<version>.tar.gz", "sha256"?: hex, "force"?: bool}]}`` -> jobs.

    Names come from the network: they must be valid package names (no paths) before
    anything is downloaded or written.
    """
    from otau import PackageError, parse_package_name

    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deep nesting raises RecursionError
        raise FetchRequestError("engine_fetch is not JSON: %s" % exc) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("install"), list):
        raise FetchRequestError('engine_fetch must be {"install": [{"name": "<app>.v<version>.tar.gz"}]}')
    entries = doc["install"]
    if not entries or len(entries) > MAX_JOBS:
        raise FetchRequestError("engine_fetch must name 1 to %d packages" % MAX_JOBS)
    jobs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise FetchRequestError("each install entry needs a \"name\" string")
        if "/" in entry["name"] or "\\" in entry["name"]:
            raise FetchRequestError("package name %r must be a bare file name" % entry["name"][:80])
        try:
            package = parse_package_name(entry["name"])
        except PackageError as exc:
            raise FetchRequestError(str(exc)) from None
        sha = entry.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not SHA256_RE.match(sha)):
            raise FetchRequestError("sha256 of %s must be 64 hex digits" % entry["name"])
        force = entry.get("force", False)
        if not isinstance(force, bool):
            raise FetchRequestError("force of %s must be true or false" % entry["name"])
        jobs.append(InstallJob(package, sha.lower() if sha else None, force))
    # installing gwe restarts this process: do it last so the other jobs are not cut off
    return sorted(jobs, key=lambda job: job.package.name == SELF)


def request_error_status(raw: str, error: str) -> "FetchStatus":
    """fetch_status for a request that could not even be parsed."""
    from otau import FetchStatus

    return FetchStatus.failure(error, "request", request=raw)


def fetch_and_install(device, job: InstallJob, paths: GwePaths,
                      stopped: Callable[[float], bool] = lambda seconds: False) -> "FetchStatus":
    """Download ``job`` from the content area and install it; returns its fetch_status.

    A download the network or the cloud cuts (no answer, a 5xx) resumes with backoff for up to
    ``[otau] download_retry`` seconds: a cloud that restarts, or a link that drops for a minute, must not fail
    an install (and halt a rollout). ``stopped(seconds)`` waits between attempts and says whether
    gwe is stopping."""
    from device_client import Backoff, DeviceAPIError, NetworkError, ServerError, TLSError
    from otau import install_package, load_settings

    downloads = os.path.join(paths.var_lib, "downloads")
    os.makedirs(downloads, exist_ok=True)
    dest = os.path.join(downloads, job.name)
    started = time.monotonic()
    retry_for = load_settings(paths).download_retry
    backoff = Backoff(1.0, 30.0)
    while True:
        try:
            device.download_content(job.name, dest, sha256=job.sha256)
            break
        except TLSError as exc:  # the server's certificate: waiting does not change it
            return _download_failed(job, exc, started)
        except (NetworkError, ServerError) as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay - started > retry_for:
                return _download_failed(job, exc, started)
            log.warning("download of %s cut (%s); resuming in %.1f s", job.name, exc, delay)
            if stopped(delay):
                return _download_failed(job, exc, started)
        except (DeviceAPIError, OSError) as exc:
            return _download_failed(job, exc, started)
    download_s = time.monotonic() - started
    try:
        status = install_package(dest, sha256=job.sha256, paths=paths, package=job.package, force=job.force)
    finally:
        _remove(dest)
    status.timings["download"] = download_s
    return status


def _download_failed(job: InstallJob, exc: Exception, started: float) -> "FetchStatus":
    from otau import FetchStatus

    status = FetchStatus.failure("download failed: %s" % exc, "download", package=job.package, sha256=job.sha256)
    status.timings["download"] = time.monotonic() - started
    return status  # a partial download stays for the next request to resume


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
