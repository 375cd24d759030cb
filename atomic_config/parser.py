"""AtomicConfigParser: INI files that survive power cuts and old hand-written quirks."""
from __future__ import annotations

import configparser
import io
import os
from typing import Iterable, Optional, Union

from .files import PathLike, atomic_write, read_recovering


class AtomicConfigParser(configparser.RawConfigParser):
    """A RawConfigParser whose ``write(filename)`` replaces the file atomically.

    Keys keep their case; duplicate keys or sections in old files are accepted (the
    last one wins); a damaged file is recovered from its previous generation on read.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("strict", False)
        kwargs.setdefault("interpolation", None)
        super().__init__(*args, **kwargs)

    def optionxform(self, optionstr: str) -> str:
        return optionstr

    def read(self, filenames: Union[PathLike, Iterable[PathLike]], encoding: Optional[str] = None) -> list:
        """Read each existing file, recovering damaged ones; returns the files read."""
        if isinstance(filenames, (str, bytes, os.PathLike)):
            filenames = [filenames]
        done = []
        for filename in filenames:
            text = read_recovering(filename, _parse_check)
            if text is None:
                continue
            self.read_string(text, source=os.fspath(filename))
            done.append(os.fspath(filename))
        return done

    def write(self, fp_or_filename, space_around_delimiters: bool = True, mode: Optional[int] = None) -> None:
        """Atomically replace the named file; a file object is written as RawConfigParser does."""
        if hasattr(fp_or_filename, "write"):
            super().write(fp_or_filename, space_around_delimiters)
            return
        atomic_write(fp_or_filename, self.to_string(space_around_delimiters), mode=mode,
                     is_valid=_is_valid_config)

    def to_string(self, space_around_delimiters: bool = True) -> str:
        buf = io.StringIO()
        super().write(buf, space_around_delimiters)
        return buf.getvalue()


def _parse_check(raw: bytes) -> str:
    """Decode and parse ``raw``; returns the text, raises if it is not a config file."""
    text = raw.decode("utf-8")
    probe = configparser.RawConfigParser(strict=False, interpolation=None)
    probe.read_string(text)
    if "\x00" in text:
        raise ValueError("NUL bytes in config")
    return text


def _is_valid_config(raw: bytes) -> bool:
    try:
        _parse_check(raw)
    except (UnicodeDecodeError, configparser.Error, ValueError):
        return False
    return True
