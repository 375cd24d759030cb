"""Every path the suite uses, relocated under ``GWE_HOME`` (unset means ``/``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .files import make_dirs


@dataclass(frozen=True)
class GwePaths:
    home: str

    def _at(self, *parts: str) -> str:
        return os.path.join(self.home, *parts)

    @property
    def etc(self) -> str:
        return self._at("etc", "gwe")

    @property
    def gateway_cfg(self) -> str:
        return self._at("etc", "gwe", "Gateway.cfg")

    @property
    def engine_cfg(self) -> str:
        return self._at("etc", "gwe", "Engine.config")

    @property
    def gmq_cfg(self) -> str:
        return self._at("etc", "gwe", "gmq.cfg")

    @property
    def trusted_keys(self) -> str:
        return self._at("etc", "gwe", "trusted_keys")

    @property
    def supervisor_etc(self) -> str:
        return self._at("etc", "supervisor")

    @property
    def supervisord_conf(self) -> str:
        return self._at("etc", "supervisor", "supervisord.conf")

    @property
    def supervisor_include(self) -> str:
        return self._at("etc", "supervisor", "conf.d")

    @property
    def var_lib(self) -> str:
        return self._at("var", "lib", "gwe")

    @property
    def apps(self) -> str:
        return self._at("var", "lib", "gwe", "apps")

    @property
    def tokens(self) -> str:
        return self._at("var", "lib", "gwe", "tokens")

    @property
    def usage_db(self) -> str:
        return self._at("var", "lib", "gwe", "usage.db")

    @property
    def gmq_db(self) -> str:
        return self._at("var", "lib", "gwe", "gmq.db")

    @property
    def log(self) -> str:
        return self._at("var", "log", "gwe")

    @property
    def run(self) -> str:
        return self._at("run", "gwe")

    @property
    def supervisor_socket(self) -> str:
        return self._at("run", "gwe", "supervisord.sock")

    def ensure(self) -> "GwePaths":
        """Create the directory tree (private where secrets live)."""
        for directory, mode in ((self.etc, 0o755), (self.supervisor_include, 0o755), (self.var_lib, 0o755),
                                (self.apps, 0o755), (self.tokens, 0o700), (self.log, 0o755), (self.run, 0o755)):
            make_dirs(directory, mode=mode)
        return self


def gwe_paths(home: Optional[str] = None) -> GwePaths:
    """Paths under ``home``, or under ``$GWE_HOME`` read now, or under ``/``."""
    if home is None:
        home = os.environ.get("GWE_HOME") or "/"
    return GwePaths(os.path.abspath(home))
