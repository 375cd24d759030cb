"""A local Murano-compatible Device API server (like DynamoDB Local or Azurite, for Exosite Murano)."""
__version__ = "0.1.0"

from .events import Change  # noqa: E402  (after __version__, which server modules read)
from .server import serve  # noqa: E402
from .service import Murano  # noqa: E402

__all__ = ["Change", "Murano", "__version__", "serve"]
