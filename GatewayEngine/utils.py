"""The original GatewayEngine helpers for apps: the gateway's CIK and where its Gateway.cfg is."""
from __future__ import annotations

from atomic_config import gwe_paths
from gwe.config import load_gateway_config


def gwe_conf() -> str:
    """The path of Gateway.cfg (``$GWE_HOME/etc/gwe/Gateway.cfg``), e.g. for ``exo.device.Device``."""
    return gwe_paths().gateway_cfg


def gwe_cik() -> str:
    """The gateway's CIK, or ``""`` before gwe has activated; read from Gateway.cfg at every call."""
    return load_gateway_config(gwe_conf()).cik
