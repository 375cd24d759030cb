"""Every error otau raises; ``step`` names the pipeline step for fetch_status."""
from typing import Optional


class OtauError(Exception):
    step = "install"


class PackageError(OtauError):
    """The package name, layout or supervisor.conf is wrong."""
    step = "package"


class VerifyError(OtauError):
    """Size, sha256, manifest or signature check failed."""
    step = "verify"


class UnpackError(OtauError):
    """The archive is corrupt, hostile or over the limits."""
    step = "unpack"


class SupervisorError(OtauError):
    """supervisord is unreachable or refused a request (``fault``: its ``supervisor.xmlrpc.Faults`` code)."""
    step = "supervisor"

    def __init__(self, message: str, fault: Optional[int] = None) -> None:
        super().__init__(message)
        self.fault = fault


class BuildError(OtauError):
    """A buildfile is invalid or one of its commands failed (``exit_code``: what the build exits with)."""
    step = "build"

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
