"""Crash-safe files for Gateway Engine: atomic writes, INI configs, locked edits, paths, sqlite, Gateway.cfg."""
from .disk import DEFAULT_MIN_FREE_DISK, free_disk, min_free_disk
from .gateway_cfg import ConfigError, GatewayConfig, load_gateway_config, update_gateway_config
from .files import (RecoveryError, atomic_write, fsync_dir, make_dirs, previous_path, read_recovering,
                    remove_stale_temps)
from .locking import edit_config, file_lock, read_config, set_option
from .parser import AtomicConfigParser
from .paths import GwePaths, gwe_paths
from .sqlite import connect_sqlite

__all__ = [
    "AtomicConfigParser", "ConfigError", "DEFAULT_MIN_FREE_DISK", "GatewayConfig", "GwePaths", "RecoveryError", "atomic_write", "connect_sqlite",
    "edit_config", "file_lock", "free_disk", "fsync_dir", "gwe_paths", "make_dirs", "min_free_disk",
    "load_gateway_config", "previous_path", "read_config", "read_recovering", "remove_stale_temps", "set_option",
    "update_gateway_config",
]
