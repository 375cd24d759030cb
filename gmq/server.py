"""The running gmq: queue, clients, forwarder and HTTP front end composed, with reread and status."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Mapping, Optional

from atomic_config import GwePaths, gwe_paths
from atomic_config.version import VERSION as __version__

from . import config
from .clients import ClientRegistry
from .forwarder import Forwarder, UpstreamSettings
from .http_api import GmqHTTPServer
from .queue import DurableQueue

log = logging.getLogger(__name__)

MAINTAIN_RETRY_S = 1.0  # expiry due again right after a pass (it failed): try again this much later
BENCH_NO_FSYNC_ENV = "GWE_GMQ_BENCH_NO_FSYNC"  # bench only: "1" runs the queue with synchronous=OFF


def bench_fsync(environ: Mapping[str, str]) -> bool:
    """Whether the queue fsyncs its commits: yes (synchronous=FULL), unless the ingest bench asks.

    ``GWE_GMQ_BENCH_NO_FSYNC=1`` exists so that bench/gmq_ceiling_bench.py can measure what
    durability costs. A 204 then means nothing across a power cut, so it is refused under
    supervisord (which sets SUPERVISOR_ENABLED in every program's environment: every installed
    gmq runs under it, and an exported variable would reach it) and warned about at every start
    otherwise; any value but "1" is refused.
    """
    value = environ.get(BENCH_NO_FSYNC_ENV, "")
    if not value:
        return True
    if value != "1":
        raise config.ConfigError("%s=%r: unset it (it is for bench/gmq_ceiling_bench.py only)"
                                 % (BENCH_NO_FSYNC_ENV, value))
    if environ.get("SUPERVISOR_ENABLED"):
        raise config.ConfigError("%s=1 is for bench/gmq_ceiling_bench.py only and refused under supervisord: "
                                 "unset it in the environment supervisord was started with" % BENCH_NO_FSYNC_ENV)
    log.warning("%s=1: the queue runs WITHOUT FSYNC (synchronous=OFF); a power cut loses values already "
                "answered 204. For the ingest bench only: never run a gateway like this", BENCH_NO_FSYNC_ENV)
    return False


def upstream_settings(cfg: config.GmqConfig) -> UpstreamSettings:
    return UpstreamSettings(url=cfg.upstream, batch_size=cfg.batch_size, backoff_initial=cfg.backoff_initial,
                            backoff_max=cfg.backoff_max, timeout=cfg.upstream_timeout, verify=cfg.verify,
                            ca_file=cfg.ca_file, transport=cfg.transport, mqtt_url=cfg.mqtt_url,
                            probe_interval=cfg.probe_interval)


class Gmq:
    """Everything one gmq process runs; ``serve_forever()`` until SIGTERM/SIGINT."""

    def __init__(self, paths: Optional[GwePaths] = None, port: Optional[int] = None) -> None:
        self.paths = (paths or gwe_paths()).ensure()
        damage: list = []
        self.cfg = config.load(self.paths, damage)  # a damaged gmq.cfg or Gateway.cfg: defaults and an alarm
        logging.getLogger().setLevel(self.cfg.log_level)
        self.started = time.time()
        fsync = bench_fsync(os.environ)  # off only for the ingest bench
        self.queue = DurableQueue(self.paths.gmq_db, self.cfg.limits, fsync=fsync)  # the one owner of gmq.db
        self.clients = ClientRegistry(self.queue, config.GatewayIdentity(self.paths.gateway_cfg))
        for problem in damage:
            log.error("%s", problem)
            self.queue.add_alarm("config_damaged", problem)
        self.forwarder = Forwarder(self.queue, self.clients, upstream_settings(self.cfg))
        self.clients.on_new = lambda client: self.forwarder.wake()
        self.queue.on_append = self.forwarder.wake  # the forwarder sleeps until there is something to send
        self._apply_server_settings(self.cfg)
        address = (self.cfg.host, self.cfg.port if port is None else port)
        try:
            self.httpd = GmqHTTPServer(address, self)
        except OSError as exc:  # the port gmq.cfg names is taken (another gmq?) or the address is not ours
            self.queue.close()
            raise config.ConfigError("cannot listen on %s:%d: %s: stop what listens there, or give gmq another "
                                     "port (gmq cfg set server port N)" % (address + (exc.strerror or exc,))) from None
        self._stop = threading.Event()
        self._maintain_wake = threading.Event()  # set by stop, reread (a new TTL), the queue (reserve released)
        self.queue.on_maintenance_due = self._maintain_wake.set

    def _apply_server_settings(self, cfg: config.GmqConfig) -> None:
        self.max_body_bytes = cfg.max_body_bytes
        self.request_timeout = cfg.request_timeout
        self.max_connections = cfg.max_connections

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return "%s:%d" % (host, port)

    # -- the App protocol of http_api -------------------------------------------------------
    def reread(self) -> dict:
        """Reload gmq.cfg and apply it (listen address and port need a restart)."""
        cfg = config.load(self.paths)
        self.queue.set_limits(cfg.limits)
        self._apply_server_settings(cfg)
        self.forwarder.configure(upstream_settings(cfg))
        self._maintain_wake.set()
        logging.getLogger().setLevel(cfg.log_level)
        restart = [k for k in ("host", "port") if getattr(cfg, k) != getattr(self.cfg, k)]
        self.cfg = cfg
        log.info("gmq.cfg reread%s", "; restart needed for %s" % ", ".join(restart) if restart else "")
        return {"applied": True, "restart_needed_for": restart, "upstream": cfg.upstream}

    def clear_alarms(self) -> int:
        """Acknowledge the alarms (the quarantined files stay where they are)."""
        n = self.queue.clear_alarms()
        log.info("%d alarms cleared", n)
        return n

    def status(self) -> dict:
        q = self.queue.stats()
        fwd = self.forwarder.status()
        depths = self.queue.depth_by_client()
        for c in fwd["clients"]:
            c["queued"] = depths.get(c.pop("id"), 0)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "listen": self.address,
            "connections": self.httpd.open_connections,
            "counters": q.pop("counters"),
            "alarms": q.pop("alarms"),
            "queue": q,
            "forwarder": fwd,
            "connection": self.connection(),
        }

    def connection(self) -> dict:
        """The upstream link's state (``GET /connection``), from the forwarder's last exchanges."""
        return self.forwarder.link.snapshot()

    # -- running ------------------------------------------------------------------------------
    def _maintain(self) -> None:
        """Run the queue's maintenance when it says it is due next; without a TTL (and with the disk
        reserve held) that is never, until a reread."""
        due: Optional[float] = 0.0
        while True:
            self._maintain_wake.wait(due)
            self._maintain_wake.clear()
            if self._stop.is_set():
                return
            try:
                due = self.queue.maintain()
            except Exception:
                log.exception("queue maintenance failed")
                due = MAINTAIN_RETRY_S
            if due is not None:
                due = max(MAINTAIN_RETRY_S if due <= 0 else 0.0, due)

    def serve_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.httpd.shutdown())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self._reread_logged, daemon=True).start())
        threading.Thread(target=self._maintain, name="gmq-maintain", daemon=True).start()
        self.forwarder.start()
        log.info("gmq %s listening on %s; queue %s (%d values); upstream %s", __version__, self.address,
                 self.paths.gmq_db, self.queue.depth, self.cfg.upstream or "(none configured)")
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def _reread_logged(self) -> None:
        try:
            self.reread()
        except ValueError as exc:
            log.error("gmq.cfg not applied: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._maintain_wake.set()
        self.forwarder.stop()
        self.httpd.server_close()
        self.forwarder.join(timeout=10)
        self.queue.close()
