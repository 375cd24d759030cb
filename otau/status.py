"""fetch_status: the JSON summary gwe writes to Murano after every install (DESIGN.md).

The last status of each app is also kept on disk (``var/lib/gwe/otau/status/<name>.json``),
so a status produced by recovery after a power cut is not lost before gwe can report it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional

from atomic_config import GwePaths, atomic_write

from .package import PackageName
from .settings import otau_dir

INSTALLED = "installed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
OUTPUT_TAIL_CHARS = 4096  # what fits comfortably in one dataport write
REQUEST_CHARS = 512


@dataclass
class FetchStatus:
    """The one fetch_status schema; every status gwe writes is one of these (failures via :meth:`failure`)."""
    name: Optional[str]                        # None when the request named no valid package
    version: Optional[str]
    package: Optional[str]                     # the file name asked for
    status: str
    exit_code: Optional[int] = None
    output: str = ""
    error: Optional[str] = None
    step: Optional[str] = None                 # the step that failed
    previous_version: Optional[str] = None
    running_version: Optional[str] = None      # what is installed once this is over
    signature: Optional[str] = None
    sha256: Optional[str] = None
    killed: List[str] = field(default_factory=list)  # what the installer left running, killed after it
    request: Optional[str] = None              # the start of an engine_fetch request refused as a whole
    timings: Dict[str, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished_at: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.status == INSTALLED

    @classmethod
    def failure(cls, error: str, step: str, package: Optional[PackageName] = None, filename: Optional[str] = None,
                request: Optional[str] = None, sha256: Optional[str] = None) -> "FetchStatus":
        """A ``failed`` status for something that never reached the install pipeline (or broke it)."""
        now = time.time()
        return cls(name=package.name if package else None, version=package.version if package else None,
                   package=filename or (package.filename if package else None), status=FAILED, error=error,
                   step=step, sha256=sha256, request=request[:REQUEST_CHARS] if request is not None else None,
                   started_at=now, finished_at=now)

    @classmethod
    def from_dict(cls, doc: Dict) -> "FetchStatus":
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def to_dict(self) -> Dict:
        doc = asdict(self)
        doc["output"] = self.output[-OUTPUT_TAIL_CHARS:]
        doc["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def summary(self) -> str:
        """One human line."""
        if self.ok:
            line = "installed %s %s" % (self.name, self.version)
            if self.previous_version and self.previous_version != self.version:
                line += " (was %s)" % self.previous_version
            return line + " in %.1fs" % self.timings.get("total", 0.0)
        line = "%s %s %s: %s" % (self.status, self.name, self.version or "?", self.error)
        if self.running_version:
            line += " (running: %s)" % self.running_version
        return line


def status_dir(paths: GwePaths) -> str:
    return os.path.join(otau_dir(paths), "status")


def save_status(paths: GwePaths, status: FetchStatus) -> None:
    """Keep ``status`` as its app's last one (statuses naming no app are not kept)."""
    if status.name is None:
        return
    directory = status_dir(paths)
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, status.name + ".json"), status.to_json() + "\n", mode=0o644)


def load_statuses(paths: GwePaths) -> List[Dict]:
    """The last fetch_status of every app, oldest first."""
    directory = status_dir(paths)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    docs = []
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                docs.append(json.load(f))
        except (OSError, ValueError):
            continue
    return sorted(docs, key=lambda d: d.get("finished_at") or 0)
