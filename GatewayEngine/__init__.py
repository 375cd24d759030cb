"""The original Gateway Engine package name, for apps written against it: ``GatewayEngine.utils``.

The engine itself is the ``gwe`` package; see docs/legacy.md.
"""
from . import utils

__all__ = ["utils"]
