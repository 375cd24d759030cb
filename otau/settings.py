"""OTAU settings: limits, timeouts and the signature policy, from Engine.config ``[otau]``."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Optional

from atomic_config import GwePaths, gwe_paths, read_config

log = logging.getLogger(__name__)

SECTION = "otau"


SIGNATURE_POLICIES = ("auto", "true", "false")


def signature_policy(raw: object) -> str:
    """``auto``, ``true`` or ``false`` from a setting (booleans and their usual words accepted)."""
    low = str(raw).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return "true"
    if low in ("0", "false", "no", "off"):
        return "false"
    if low == "auto":
        return "auto"
    raise ValueError("require_signatures must be auto, true or false, not %r" % raw)


@dataclass(frozen=True)
class OtauSettings:
    require_signatures: str = "auto"       # auto: as soon as a trusted key is configured (verify.py)
    app_user: str = ""                     # the user apps run as; empty: supervisord's own
    keep_versions: int = 3                 # installed versions kept on disk, the current one included
    install_timeout: float = 600.0         # seconds for install.sh / setup.py, then the group is killed
    settle_seconds: float = 5.0            # RUNNING this long past startsecs before an install counts
    health_timeout: float = 60.0           # extra time allowed to reach RUNNING
    max_package_bytes: int = 1 << 30
    max_unpacked_bytes: int = 2 << 30
    max_members: int = 20000
    output_limit: int = 64 * 1024          # bytes of install output kept (the tail)
    boot_attempts: int = 3                 # starts of a self-updated gwe/gmq before it is reverted
    download_retry: float = 300.0          # seconds gwe's download resumes through a cut link or a 5xx

    def __post_init__(self) -> None:
        object.__setattr__(self, "require_signatures", signature_policy(self.require_signatures))


def otau_dir(paths: GwePaths) -> str:
    """otau's own state: journal, last fetch_status per app, boot guard and its markers."""
    return os.path.join(paths.var_lib, "otau")


def load_settings(paths: Optional[GwePaths] = None) -> OtauSettings:
    """Defaults overridden by ``[otau]`` in Engine.config; a bad value is logged and ignored."""
    paths = paths or gwe_paths()
    cfg = read_config(paths.engine_cfg)
    if not cfg.has_section(SECTION):
        return OtauSettings()
    values = {}
    for field in dataclasses.fields(OtauSettings):
        if not cfg.has_option(SECTION, field.name):
            continue
        raw = cfg.get(SECTION, field.name).strip()
        try:
            if field.name == "require_signatures":
                values[field.name] = signature_policy(raw)
            elif field.type in ("str", str):
                values[field.name] = "" if raw in ("''", '""') else raw
            elif field.type in ("int", int):
                values[field.name] = int(raw)
            else:
                values[field.name] = float(raw)
        except ValueError:
            log.warning("ignoring [otau] %s = %r in %s", field.name, raw, paths.engine_cfg)
    return OtauSettings(**values)
