"""gmq: the Gateway Message Queue, a durable store-and-forward queue in front of Murano.

Apps POST Device-API writes and records to it on 127.0.0.1:8090; a 204 means the values
are fsynced in sqlite. A forwarder thread delivers them upstream in order, in batches.
The public face for other programs is the local client (``gmq.status()``, ``gmq.call()``).
"""
from atomic_config.version import VERSION as __version__

from .client import GmqClientError, call, local_url, status

__all__ = ["GmqClientError", "__version__", "call", "local_url", "status"]
