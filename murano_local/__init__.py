"""A local Murano-compatible Device API server (like DynamoDB Local or Azurite, for Exosite Murano)."""
from atomic_config.version import VERSION as __version__

from .events import Change
from .server import serve
from .service import Murano

__all__ = ["Change", "Murano", "__version__", "serve"]
