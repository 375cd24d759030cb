"""What ``Device`` needs from a transport (HTTP today; MQTT behind the same calls later).

Values cross this boundary as text (``Device`` turns numbers, booleans and JSON into
strings), aliases as lists, and failures as :mod:`device_client.errors` exceptions.
A transport meters its own requests into the usage log, since only it sees the wire.
``token`` None means the connection authenticates itself (TLS client certificate).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Protocol, Sequence, Tuple

from device_api import Pairs


class ContentStream(Protocol):
    status: int                 # 200 whole file, 206 from ``start``, 416 nothing past the offset asked
    start: int
    total: Optional[int]

    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def activate(self, pairs: Pairs) -> str: ...

    def write(self, token: Optional[str], pairs: Pairs) -> None: ...

    def read(self, token: Optional[str], aliases: Sequence[str]) -> Pairs: ...

    def read_write(self, token: Optional[str], pairs: Pairs, aliases: Sequence[str]) -> Pairs: ...

    def long_poll(self, token: Optional[str], aliases: Sequence[str], timeout_ms: int,
                  since: Optional[str]) -> Tuple[Pairs, Optional[str]]: ...

    def encode_record(self, entries: List[Tuple[str, Pairs]]) -> bytes:
        """The record body of ``entries`` (alias, [(timestamp text, value)]): pure, any thread."""
        ...

    def send_record(self, token: Optional[str], body: bytes, aliases: Sequence[str]) -> None: ...

    def timestamp(self) -> str: ...

    def list_content(self, token: Optional[str], product_id: Optional[str]) -> str: ...

    def content_info(self, token: Optional[str], product_id: Optional[str], name: str) -> str: ...

    def open_content(self, token: Optional[str], product_id: Optional[str], name: str,
                     offset: int) -> ContentStream: ...

    def send_file(self, token: Optional[str], method: str, path: str, headers: dict, data: object,
                  expect: Tuple[int, ...], label: str) -> Tuple[int, str, dict]: ...

    def close(self) -> None: ...
