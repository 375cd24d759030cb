"""gmq: the Gateway Message Queue, a durable store-and-forward queue in front of Murano.

Apps POST Device-API writes and records to it on 127.0.0.1:8090; a 204 means the values
are fsynced in sqlite. A forwarder thread delivers them upstream in order, in batches.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
