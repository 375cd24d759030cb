"""The original Gateway Engine device-client API (``exo``) for gateway apps, over ``device_client``.

``exo.api.ExositeAPI`` talks for one CIK, ``exo.device.Device`` for an identity kept in an INI
device file such as gwe's Gateway.cfg, and ``exo.handlers`` holds the answers they return.
See docs/legacy.md for what is and is not the original's.
"""
from . import handlers
from .api import ExositeAPI
from .device import Device

__all__ = ["Device", "ExositeAPI", "handlers"]
