"""Gateway Engine daemon and CLI."""

from atomic_config.version import VERSION as __version__

__all__ = ["__version__"]
