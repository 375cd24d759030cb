"""sqlite's write-ahead log read frame by frame, as sqlite's own recovery reads it, and past that.

sqlite replays the WAL's frames in order up to the first one whose salts or checksum do not
match, and keeps what was committed before it; every frame after it is dropped without a word,
even committed transactions that are intact (``PRAGMA quick_check`` then passes). ``inspect``
finds those: frames of the WAL's current generation, beyond the break, whose own checksum is
right (each frame's checksum continues the previous frame's stored one, so a frame can be
checked without the frames before it) and that end in a commit. ``write_image`` writes the
database as it would be with them: the best source a salvage can read.

Format: https://www.sqlite.org/fileformat2.html#walformat (32-byte header, then frames of a
24-byte header and one page). Reading only: nothing here opens the database with sqlite.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, List, Optional, Tuple

HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
MAGIC_ORDER = {0x377F0682: "<", 0x377F0683: ">"}  # the magic's low bit: checksums of big-endian words
VERSION = 3007000
DB_HEADER_BYTES = 100
MASK = 0xFFFFFFFF


@dataclass
class Frame:
    index: int   # 1-based, in file order
    offset: int  # of its page in the WAL file
    page: int
    commit: int  # the database's size in pages after this commit; 0: not a commit frame


@dataclass
class WalScan:
    """What sqlite makes of a WAL, and what it leaves out."""

    page_size: int
    frames: int                       # whole frames in the file
    replayed: List[Frame] = field(default_factory=list)  # what sqlite replays (up to its last commit)
    broken_at: Optional[int] = None   # the frame where sqlite stops reading (None: at the end of the file)
    dropped: List[Frame] = field(default_factory=list)   # intact committed frames after the break

    @property
    def damaged(self) -> bool:
        """Committed transactions after the break: data sqlite would drop silently."""
        return bool(self.dropped)

    def describe(self) -> str:
        commits = sum(1 for f in self.dropped if f.commit)
        return ("WAL damaged: sqlite stops at frame %s of %d and would drop %d intact committed frames "
                "(%d commits) after it" % (self.broken_at, self.frames, len(self.dropped), commits))


def checksum(data: bytes, order: str, s0: int, s1: int) -> Tuple[int, int]:
    """sqlite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from ``(s0, s1)``."""
    words = struct.unpack("%s%dI" % (order, len(data) // 4), data)
    whole = len(words) - len(words) % 8
    it = iter(words[:whole])
    for x0, x1, x2, x3, x4, x5, x6, x7 in zip(it, it, it, it, it, it, it, it):  # unrolled: 1.5x faster
        s0 += x0 + s1
        s1 += x1 + s0
        s0 += x2 + s1
        s1 += x3 + s0
        s0 += x4 + s1
        s1 += x5 + s0
        s0 += x6 + s1
        s1 = (s1 + x7 + s0) & MASK
        s0 &= MASK
    for i in range(whole, len(words), 2):
        s0 = (s0 + words[i] + s1) & MASK
        s1 = (s1 + words[i + 1] + s0) & MASK
    return s0, s1


def _page_size_ok(n: int) -> bool:
    return 512 <= n <= 65536 and n & (n - 1) == 0


def db_page_size(db_path: str) -> Optional[int]:
    """The page size in a database file's header, None if it has no readable header."""
    try:
        with open(db_path, "rb") as f:
            head = f.read(DB_HEADER_BYTES)
    except FileNotFoundError:
        return None
    if len(head) < DB_HEADER_BYTES or not head.startswith(b"SQLite format 3\0"):
        return None
    n = struct.unpack(">H", head[16:18])[0]
    n = 65536 if n == 1 else n
    return n if _page_size_ok(n) else None


def _walk(f: BinaryIO, page_size: int, order: str, salts: Tuple[int, int], seed: Tuple[int, int],
          trusted: bool) -> WalScan:
    """Read every frame: the chain sqlite accepts (if ``trusted``: the header is good), then the
    frames after the break that check out on their own."""
    scan = WalScan(page_size=page_size, frames=0, broken_at=None if trusted else 1)
    chain = trusted
    pending: List[Frame] = []   # the chain's frames since its last commit
    beyond: List[Frame] = []    # intact frames after the break since the last intact commit there
    prev = seed
    offset = HEADER_BYTES
    while True:
        f.seek(offset)
        head = f.read(FRAME_HEADER_BYTES)
        data = f.read(page_size)
        if len(head) < FRAME_HEADER_BYTES or len(data) < page_size:
            break
        scan.frames += 1
        page, commit, salt1, salt2, c1, c2 = struct.unpack(">6I", head)
        frame = Frame(scan.frames, offset + FRAME_HEADER_BYTES, page, commit)
        ok = page != 0 and (salt1, salt2) == salts and checksum(head[:8] + data, order, *prev) == (c1, c2)
        if chain and ok:
            pending.append(frame)
            if commit:
                scan.replayed.extend(pending)
                pending = []
        elif chain:
            chain = False
            scan.broken_at = frame.index
        elif ok:
            beyond.append(frame)
            if commit:
                scan.dropped.extend(beyond)
                beyond = []
        prev = (c1, c2)  # the next frame continues this frame's stored checksum, right or not
        offset += FRAME_HEADER_BYTES + page_size
    return scan


def inspect(db_path: str) -> Optional[WalScan]:
    """The scan of ``<db_path>-wal``; None if there is none (or not even one frame's worth)."""
    wal_path = db_path + "-wal"
    try:
        f = open(wal_path, "rb")
    except FileNotFoundError:
        return None
    with f:
        head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            return None
        magic, version, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", head)
        order = MAGIC_ORDER.get(magic)
        if (order is not None and version == VERSION and _page_size_ok(page_size)
                and checksum(head[:24], order, 0, 0) == (c1, c2)):
            return _walk(f, page_size, order, (salt1, salt2), (c1, c2), trusted=True)
        # a damaged header: sqlite replays none of the WAL. Frames that check out under the first
        # frame's salts and the database's page size were committed all the same.
        size = db_page_size(db_path) or (page_size if _page_size_ok(page_size) else 4096)
        f.seek(HEADER_BYTES + 8)
        frame_salts = f.read(8)
        if len(frame_salts) < 8:
            return WalScan(page_size=size, frames=0, broken_at=1)
        salts = struct.unpack(">2I", frame_salts)
        scans = [_walk(f, size, o, salts, (c1, c2), trusted=False) for o in ([order] if order else ["<", ">"])]
        return max(scans, key=lambda s: len(s.dropped))


def write_image(db_path: str, scan: WalScan, out_path: str) -> int:
    """Write to ``out_path`` the database as the WAL's intact commits leave it: the database file's
    pages, then every replayed frame and every intact committed frame after the break, in order
    (a page damaged in the WAL keeps its previous version). The image is a rollback-journal
    database (no WAL of its own), to be opened read-only. Returns its size in pages."""
    frames = scan.replayed + scan.dropped
    commits = [f.commit for f in frames if f.commit]
    ps = scan.page_size
    pages = commits[-1] if commits else 0
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if os.path.exists(db_path):
            with open(db_path, "rb") as db:
                for n in range(pages or (os.path.getsize(db_path) // ps)):
                    chunk = db.read(ps)
                    if len(chunk) < ps:
                        break
                    os.pwrite(fd, chunk, n * ps)
        pages = pages or os.fstat(fd).st_size // ps
        with open(db_path + "-wal", "rb") as wal:
            for frame in frames:
                if frame.page <= pages:
                    wal.seek(frame.offset)
                    os.pwrite(fd, wal.read(ps), (frame.page - 1) * ps)
        os.ftruncate(fd, pages * ps)
        if pages:
            os.pwrite(fd, b"\x01\x01", 18)  # file format versions 1: rollback journal, not WAL
    finally:
        os.close(fd)
    return pages
