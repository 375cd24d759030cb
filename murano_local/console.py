"""The fleet console of one murano_local: read model, change feed, rollout engine and their
HTTP front ends (the fleet API and the dashboard page), started and stopped with the server."""
from __future__ import annotations

from typing import Optional

from .fleet import FleetFeed, FleetView
from .fleet_api import FleetApi
from .rollout import RolloutEngine
from .ui import DashboardPages


class FleetConsole:
    """The fleet side of one murano_local: read model, change feed and rollout engine."""

    def __init__(self, murano, tick: Optional[float] = None) -> None:
        self.murano = murano
        self.view = FleetView(murano)
        self.feed = FleetFeed(murano.hub)
        kwargs = {} if tick is None else {"tick": tick}
        self.rollouts = RolloutEngine(murano, on_change=self.feed.bump, **kwargs)

    def start(self) -> "FleetConsole":
        self.rollouts.start()
        return self

    def stop(self) -> None:
        self.feed.close()
        self.rollouts.stop()

    def front_ends(self) -> list:
        """The HTTP front ends to add to the server: the fleet API and the dashboard page."""
        return [FleetApi(self).handle, DashboardPages(self).handle]

    def tag_counts(self, pid: str) -> dict:
        counts: dict = {}
        for tags in self.murano.store.tags(pid).values():
            for tag in tags:
                counts[tag] = counts.get(tag, 0) + 1
        return dict(sorted(counts.items()))
