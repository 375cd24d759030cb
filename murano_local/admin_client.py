"""The operator commands' client of the admin HTTP API, and their one-line errors."""
from __future__ import annotations

import json
from typing import Optional
from urllib.parse import quote, urlsplit

import click

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file=None) -> None:
        click.echo("murano-local: error: %s" % self.message, err=True)


class Admin:
    """A thin client of the admin HTTP API (requests is imported only by operator commands)."""

    def __init__(self, url: str, product: Optional[str]) -> None:
        import requests
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError("--url %r is not an http:// or https:// URL (e.g. %s)" % (url, DEFAULT_URL))
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self._product = product

    def call(self, method: str, path: str, expect=(200,), brief: bool = False, **kwargs):
        """One admin request; an unexpected status is a CliError (``brief``: the server's message alone)."""
        import requests
        try:
            resp = self.session.request(method, self.url + path, timeout=60, **kwargs)
        except requests.ConnectionError as exc:
            raise CliError(unreachable(self.url, exc)) from None
        except requests.Timeout:
            raise CliError("%s did not answer %s %s within 60 s" % (self.url, method, path)) from None
        except requests.RequestException as exc:
            raise CliError("cannot reach %s: %s" % (self.url, " ".join(str(exc).split()))) from None
        if resp.status_code not in expect:
            reason = resp.text.strip().splitlines()[0] if resp.text.strip() else resp.reason
            if brief and 400 <= resp.status_code < 500:
                raise CliError(reason)
            raise CliError("%s %s: %d %s" % (method, path, resp.status_code, reason))
        return resp

    @classmethod
    def of(cls, ctx: click.Context) -> "Admin":
        """The client for the ``--url`` and ``--product`` of the command line."""
        return cls(ctx.obj["url"], ctx.obj["product"])

    @property
    def product(self) -> str:
        if self._product is None:
            self._product = self.call("GET", "/api:1/info").json()["default_product"]
        return self._product

    def device2(self, suffix: str = "") -> str:
        return "/api:1/service/%s/device2%s" % (quote(self.product, safe=""), suffix)

    def identity(self, identity: str, suffix: str = "") -> str:
        return self.device2("/identity/%s%s" % (quote(identity, safe=""), suffix))

    def fleet(self, suffix: str = "") -> str:
        return "/api:1/service/%s/fleet%s" % (quote(self.product, safe=""), suffix)

    def content(self, name: str = "") -> str:
        return "/api:1/service/%s/content/item/%s" % (quote(self.product, safe=""), quote(name, safe=""))


def dump_rows(rows: list) -> None:
    """A JSON array with one compact row per line (json's C encoder: indent would make 1,000 rows
    take a second)."""
    click.echo("[\n" + ",\n".join(json.dumps(row, sort_keys=True) for row in rows) + "\n]" if rows else "[]")


def unreachable(url: str, exc: Exception) -> str:
    """Nothing answers at ``url``: say so, and how to start one or point at the right one."""
    text = str(exc).lower()
    parts = urlsplit(url)
    reason = ("connection refused" if "refused" in text else "cannot resolve %s" % parts.hostname
              if "resolve" in text else exc.__class__.__name__)
    port = parts.port
    return ("nothing answers at %s (%s): start the server (murano-local serve%s) or point --url "
            "(or MURANO_LOCAL_URL) at the one running" % (url, reason, " --port %d" % port if port else ""))


def dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
