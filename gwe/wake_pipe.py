"""A pipe a signal handler or another thread writes to wake a ``select`` (the self-pipe trick)."""
from __future__ import annotations

import os
import select
from typing import List, Optional, Sequence


class WakePipe:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def wake(self) -> None:
        """Safe in a signal handler; never blocks."""
        try:
            os.write(self._write, b"\0")
        except OSError:  # the pipe is full: a wake-up is pending anyway
            pass

    def wait(self, seconds: Optional[float], fds: Sequence[int] = ()) -> List[int]:
        """Sleep until woken, one of ``fds`` is readable or ``seconds`` pass (None: no limit); the
        wake-ups are consumed. Returns the ``fds`` that are readable."""
        ready, _, _ = select.select([self._read, *fds], [], [], seconds)
        if self._read in ready:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass
        return [fd for fd in ready if fd != self._read]
