"""A local Murano-compatible Device API server (like DynamoDB Local or Azurite, for Exosite Murano)."""
__version__ = "0.1.0"

from .service import Murano  # noqa: E402  (after __version__, which server modules read)

__all__ = ["Murano", "__version__"]
