"""The version of Gateway Engine, written here and nowhere else.

``setup.py`` reads this file; every part's ``__version__`` (gwe, gmq, device_client,
murano_local) is this value. It lives in the shared layer because every part imports
that layer anyway; to release, raise it here (docs/install.md).
"""
VERSION = "0.1.0"
