"""A local Murano-compatible Device API server (like DynamoDB Local or Azurite, for Exosite Murano)."""
from importlib import import_module

from atomic_config.version import VERSION as __version__

__all__ = ["Change", "Murano", "__version__", "serve"]
_HOMES = {"Change": "events", "Murano": "service", "serve": "server"}


def __getattr__(name: str):
    """The server's parts are imported on first use, so an operator command starts without them."""
    if name in _HOMES:
        return getattr(import_module("." + _HOMES[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
