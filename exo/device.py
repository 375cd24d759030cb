"""``Device``: the original device-client's INI-backed identity, over ``device_client``.

``Device(user_agent, cfg_path)`` reads ``[device]`` ``cik``, ``vendor``, ``model`` and ``uuid``
(plus this suite's ``host``, and the original's optional ``activation_retry_interval``) from an
INI device file. ``Device(UA, gwe_conf())`` uses gwe's own Gateway.cfg, and so shares gwe's
identity: a CIK gwe writes there is picked up, and one this Device obtains is written there
(through ``atomic_config``, under the lock gwe's own edits take) for gwe to use.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import time

from atomic_config import read_config
from device_client import Device as DeviceClient, errors
from device_client.device import __version__ as CLIENT_VERSION

from .api import ExositeAPI
from .handlers import ActivationHandler, Requests_Response

log = logging.getLogger(__name__)

SECTION = "device"
DEFAULT_ACTIVATION_RETRY_INTERVAL = 300.0  # the original's default
POLL_FILE_S = 1.0


class Device(ExositeAPI):
    """An identity kept in an INI device file; subclass it as the original documented.

    ``activated()`` is True once the file (or an activation) gave a CIK that no 401 has
    rejected; while it is False, the file is read again at each call, so a CIK gwe writes into
    Gateway.cfg is used at once. Calls made while not activated answer 401 without a request.
    """

    def __init__(self, user_agent: str, cfg_file: str) -> None:
        self._cfg_file = os.path.abspath(cfg_file)
        self._rejected_cik = ""
        self._next_activation = 0.0
        super().__init__(user_agent=user_agent, url=self._read()[0])
        self.update_device_from_cfg()

    # -- the device file ------------------------------------------------------------------------

    def _read(self):
        """(Murano URL, GatewayConfig, activation retry interval) of the device file."""
        from gwe.config import ConfigError, load_gateway_config

        raw_cfg = read_config(self._cfg_file)
        if not raw_cfg.has_section(SECTION):
            raise ValueError("device file %s: missing, or no [%s] section" % (self._cfg_file, SECTION))
        config = load_gateway_config(self._cfg_file)
        try:
            url = config.murano_url
        except ConfigError as exc:
            raise ValueError("device file %s: %s" % (self._cfg_file, exc)) from None
        raw = raw_cfg.get(SECTION, "activation_retry_interval", fallback="").strip("'\" ")
        try:
            interval = float(raw) if raw else DEFAULT_ACTIVATION_RETRY_INTERVAL
        except ValueError:
            raise ValueError("device file %s: activation_retry_interval %r is not seconds"
                             % (self._cfg_file, raw)) from None
        return url, config, max(interval, 0.0)

    def update_device_from_cfg(self) -> None:
        """Read the device file again (identity, host, CIK)."""
        url, config, self._retry_interval = self._read()
        if url != self._host:
            self._drop_client()
            self._host = url
        self._vendor, self._model, self._uuid = config.vendor, config.model, config.uuid
        self._product_id = config.product_id or None
        if config.cik and config.cik != self._rejected_cik:
            self._cik = config.cik

    def _cik_in_file(self) -> str:
        from gwe.config import load_gateway_config

        try:
            return load_gateway_config(self._cfg_file).cik
        except OSError as exc:
            log.warning("cannot read %s: %s", self._cfg_file, exc)
            return ""

    # -- activation -----------------------------------------------------------------------------

    def activated(self) -> bool:
        if not self._holds_cik():
            cik = self._cik_in_file()
            if cik and cik != self._rejected_cik:
                self._cik = cik
                log.info("using the CIK now in %s", self._cfg_file)
        return self._holds_cik()

    def _holds_cik(self) -> bool:
        return bool(self._cik) and self._cik != self._rejected_cik

    def _usable_cik(self) -> str:
        return self._cik if self.activated() else ""

    def _rejected(self, cik: str) -> None:
        log.warning("%s: the CIK was rejected (401); activate() again, or wait for a new CIK in %s",
                    self._uuid, self._cfg_file)
        self._rejected_cik = cik
        self._drop_client()

    def activate(self) -> None:
        """Provision this identity unless it is activated; the CIK goes into the device file.

        At most one request per ``activation_retry_interval`` (default 300 s, as the original):
        a call sooner waits out the rest, returning early if a CIK appears in the file. Failures
        are logged; ``activated()`` says whether it worked.
        """
        if self.activated():
            return
        while time.monotonic() < self._next_activation:
            time.sleep(min(POLL_FILE_S, max(0.0, self._next_activation - time.monotonic())))
            if self.activated():
                return
        self._next_activation = time.monotonic() + self._retry_interval
        if not self._uuid:
            log.warning("%s has no uuid: cannot activate", self._cfg_file)
            return
        client = DeviceClient(self._host, product_id=self._product_id, serial=self._uuid, identity=self._identity,
                              user_agent=self._user_agent)
        try:
            token = client.activate()
        except errors.DeviceAPIError as exc:
            code = 0 if isinstance(exc, errors.NetworkError) else (exc.status or 0)
            log.warning("activation of %s failed: %s (%s)", self._uuid,
                        ActivationHandler(Requests_Response(code)).body, exc)
            return
        finally:
            client.close()
        self._cik = token
        self._rejected_cik = ""
        log.info("activated %s", self._uuid)
        self._store_cik(token)

    def _store_cik(self, token: str) -> None:
        """Into the device file, made 0600 (and written as gwe edits Gateway.cfg: locked, atomic)."""
        from gwe.config import update_gateway_config

        try:
            if stat.S_IMODE(os.stat(self._cfg_file).st_mode) & 0o077:  # it now holds a secret
                os.chmod(self._cfg_file, 0o600)
            update_gateway_config({"cik": token}, self._cfg_file)
        except OSError as exc:  # it still works for this process; a restart must activate again (409)
            log.error("could not write the CIK into %s: %s", self._cfg_file, exc)

    # -- the original's getters -----------------------------------------------------------------

    def __str__(self) -> str:
        return json.dumps({"version": CLIENT_VERSION, "model": self._model, "vendor": self._vendor,
                           "uuid": self._uuid})

    def cfg_file(self) -> str:
        return self._cfg_file

    def vendor(self) -> str:
        return self._vendor

    def model(self) -> str:
        return self._model

    def uuid(self) -> str:
        return self._uuid

    def activation_retry_interval(self) -> float:
        return self._retry_interval
